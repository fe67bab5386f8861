"""Statistics over repeated runs: a metric's spread across folds and seeds, and paired comparisons of two models.

A cross-validated study gives one value of a metric per run (fold x seed). For each model this module reports
the mean, the standard deviation and a 95% interval of the mean over runs (a t-interval; for a metric bounded to
[0, 1], a t-interval on the logit scale, which stays inside the bounds, and none from fewer than three runs; see
:func:`spread`). For two models evaluated on the same runs it
reports the per-run differences, how many runs each side wins, and two paired tests:

- the **Wilcoxon signed-rank test** (:func:`scipy.stats.wilcoxon`), which assumes nothing about the shape of the
  differences but treats the runs as independent;
- the **corrected resampled t-test** of Nadeau and Bengio (2003), which scipy does not have: the runs of a
  cross-validation share most of their training images, so their differences are correlated and a plain t-test
  is over-confident. The variance is inflated by ``1/J + n_test/n_train`` instead of ``1/J`` (J runs)::

      t = mean(d) / sqrt((1/J + n_test/n_train) * var(d)),   J - 1 degrees of freedom.

A difference is called *within noise* when the corrected test's two-sided p-value is 0.05 or more.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .metrics import UNIT_INTERVAL_METRICS

#: Two-sided level of the intervals and of the "within noise" verdict.
ALPHA = 0.05


@dataclass(frozen=True)
class Spread:
    """A metric over runs: ``n`` values, their mean, standard deviation (ddof 1) and 95% t-interval."""

    n: int
    mean: float
    std: float
    ci: tuple[float, float]

    def as_dict(self) -> dict:
        return {**asdict(self), "ci": list(self.ci)}


#: Fewest runs from which a bounded metric gets an interval, and a paired comparison a verdict: over two runs a
#: t-interval of the mean needs the 97.5% point of Student's t with one degree of freedom (12.7), so it spans most of
#: the metric's range whatever the runs are (an accuracy interval of [-0.196, 0.863] from two runs), and says
#: nothing; a "beyond noise" from the same one degree of freedom would say as little.
MIN_RUNS_BOUNDED = 3
def gives_verdict(n_runs: int) -> bool:
    """Whether ``n_runs`` paired runs are enough for a verdict on their difference (:data:`MIN_RUNS_BOUNDED`)."""
    return n_runs >= MIN_RUNS_BOUNDED


#: How close to a bound a value is taken on the logit scale (a share of the range): 1.0 accuracy is not infinite.
_BOUND_MARGIN = 1e-3


def spread(values: Sequence[float], bounds: tuple[float, float] | None = None) -> Spread:
    """Mean, standard deviation and a 95% interval of the mean of ``values`` (NaNs dropped).

    Without ``bounds``: the Student-t interval ``mean +- t * sd / sqrt(n)``. A metric that lies between ``bounds``
    (accuracy, F1 and AUROC in [0, 1]; a difference of two of them in [-1, 1]) gets an interval that stays
    inside them: the t-interval of the values mapped to the logit scale (``logit((v - low) / (high - low))``,
    values within 0.1% of a bound taken at that distance), mapped back. It is asymmetric near a bound, as the
    metric's spread is, and close to the plain t-interval away from the bounds; clipping the plain interval would
    hide how little the runs say. From fewer than :data:`MIN_RUNS_BOUNDED` runs a bounded metric gets no
    interval: ``(nan, nan)``, which reports say plainly.

    With a single value no interval can be claimed: it is ``(nan, nan)``, and so is the standard deviation.
    """
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if x.size == 0:
        return Spread(0, math.nan, math.nan, (math.nan, math.nan))
    mean = float(x.mean())
    if x.size == 1:
        return Spread(1, mean, math.nan, (math.nan, math.nan))
    std = float(x.std(ddof=1))
    t = float(stats.t.ppf(1 - ALPHA / 2, x.size - 1))
    if bounds is None:
        half = t * std / math.sqrt(x.size)
        return Spread(int(x.size), mean, std, (mean - half, mean + half))
    low, high = (float(b) for b in bounds)
    if x.size < MIN_RUNS_BOUNDED:
        return Spread(int(x.size), mean, std, (math.nan, math.nan))
    if std == 0.0:
        return Spread(int(x.size), mean, std, (mean, mean))
    share = np.clip((x - low) / (high - low), _BOUND_MARGIN, 1 - _BOUND_MARGIN)
    z = np.log(share) - np.log1p(-share)
    centre, half = float(z.mean()), t * float(z.std(ddof=1)) / math.sqrt(x.size)
    back = [low + (high - low) / (1.0 + math.exp(-v)) for v in (centre - half, centre + half)]
    return Spread(int(x.size), mean, std, (back[0], back[1]))


def corrected_resampled_ttest(differences: Sequence[float], test_train_ratio: float) -> tuple[float, float]:
    """Nadeau and Bengio's corrected resampled t-test of ``mean(differences) == 0``.

    Args:
        differences: One paired difference per run (J >= 2).
        test_train_ratio: Test images over training images of one run (``1 / (K - 1)`` for K folds); 0 gives
            the plain one-sample t-test.

    Returns:
        ``(t statistic, two-sided p-value)``; ``(0, 1)`` when every difference is zero, ``(+-inf, 0)`` when they
        are all equal and non-zero.

    Raises:
        ValueError: fewer than two differences, or a negative ratio.
    """
    from scipy import stats

    d = np.asarray(differences, dtype=float)
    if d.size < 2:
        raise ValueError(f"differences: expected at least 2 paired runs, received {d.size}")
    if test_train_ratio < 0:
        raise ValueError(f"test_train_ratio: expected a non-negative ratio, received {test_train_ratio}")
    mean, var = float(d.mean()), float(d.var(ddof=1))
    if var == 0.0:
        return (0.0, 1.0) if mean == 0.0 else (math.copysign(math.inf, mean), 0.0)
    t = mean / math.sqrt((1.0 / d.size + test_train_ratio) * var)
    return t, float(2 * stats.t.sf(abs(t), d.size - 1))


def wilcoxon_p(differences: Sequence[float]) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test (zero differences dropped; 1.0 when all are zero)."""
    from scipy import stats

    d = np.asarray(differences, dtype=float)
    if not np.any(d != 0):
        return 1.0
    return float(stats.wilcoxon(d, zero_method="wilcox").pvalue)


@dataclass(frozen=True)
class Comparison:
    """Model ``a`` against model ``b`` over the same runs, on one metric (``a - b``)."""

    name: str
    metric: str
    differences: list[float]
    wins: int
    losses: int
    ties: int
    spread: Spread
    wilcoxon_p: float
    corrected_t: float
    corrected_p: float

    @property
    def decided(self) -> bool:
        """Whether there are enough paired runs (:data:`MIN_RUNS_BOUNDED`) for a verdict at all."""
        return gives_verdict(len(self.differences))

    @property
    def within_noise(self) -> bool:
        """No evidence of a difference: too few runs to tell, or a corrected p of :data:`ALPHA` or more."""
        return not (self.decided and self.corrected_p < ALPHA)

    def verdict(self) -> str:
        """One plain sentence on the difference."""
        sign = "higher" if self.spread.mean > 0 else "lower"
        if not self.decided:
            return (f"too few runs to tell: {len(self.differences)} paired runs give no verdict (at least "
                    f"{MIN_RUNS_BOUNDED} are needed); mean difference {self.spread.mean:+.3f}")
        if self.within_noise:
            return (f"within noise: the mean difference ({self.spread.mean:+.3f}) is not distinguishable from zero "
                    f"(corrected t-test p = {self.corrected_p:.3g})")
        return f"{sign} beyond noise (corrected t-test p = {self.corrected_p:.3g})"

    def as_dict(self) -> dict:
        return {"name": self.name, "metric": self.metric, "differences": self.differences, "wins": self.wins,
                "losses": self.losses, "ties": self.ties, "mean": self.spread.mean, "std": self.spread.std,
                "ci": list(self.spread.ci), "wilcoxon_p": self.wilcoxon_p, "corrected_t": self.corrected_t,
                "corrected_p": self.corrected_p, "decided": self.decided, "within_noise": self.within_noise}


def compare(name: str, metric: str, a: Sequence[float], b: Sequence[float], test_train_ratio: float) -> Comparison:
    """Paired comparison of ``a`` and ``b`` (one value per run, same order).

    The interval of the mean difference of a metric in [0, 1] stays in [-1, 1] (see :func:`spread`).

    Raises:
        ValueError: ``a`` and ``b`` differ in length, or hold fewer than two runs.
    """
    if len(a) != len(b):
        raise ValueError(f"b: expected as many runs as a ({len(a)}), received {len(b)}")
    d = [float(x) - float(y) for x, y in zip(a, b, strict=True) if not (math.isnan(x) or math.isnan(y))]
    t, p = corrected_resampled_ttest(d, test_train_ratio)
    return Comparison(name, metric, d, sum(v > 0 for v in d), sum(v < 0 for v in d), sum(v == 0 for v in d),
                      spread(d, (-1.0, 1.0) if metric in UNIT_INTERVAL_METRICS else None), wilcoxon_p(d), t, p)
