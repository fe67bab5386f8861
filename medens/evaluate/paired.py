"""Statistics over repeated runs: a metric's spread across folds and seeds, and paired comparisons of two models.

A cross-validated study gives one value of a metric per run (fold x seed). For each model this module reports
the mean, the standard deviation and a 95% t-interval over runs. For two models evaluated on the same runs it
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


def spread(values: Sequence[float]) -> Spread:
    """Mean, standard deviation and the 95% Student-t interval of the mean of ``values`` (NaNs dropped).

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
    half = float(stats.t.ppf(1 - ALPHA / 2, x.size - 1) * std / math.sqrt(x.size))
    return Spread(int(x.size), mean, std, (mean - half, mean + half))


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
    def within_noise(self) -> bool:
        return not self.corrected_p < ALPHA

    def verdict(self) -> str:
        """One plain sentence on the difference."""
        sign = "higher" if self.spread.mean > 0 else "lower"
        if self.within_noise:
            return (f"within noise: the mean difference ({self.spread.mean:+.3f}) is not distinguishable from zero "
                    f"(corrected t-test p = {self.corrected_p:.3g})")
        return f"{sign} beyond noise (corrected t-test p = {self.corrected_p:.3g})"

    def as_dict(self) -> dict:
        return {"name": self.name, "metric": self.metric, "differences": self.differences, "wins": self.wins,
                "losses": self.losses, "ties": self.ties, "mean": self.spread.mean, "std": self.spread.std,
                "ci": list(self.spread.ci), "wilcoxon_p": self.wilcoxon_p, "corrected_t": self.corrected_t,
                "corrected_p": self.corrected_p, "within_noise": self.within_noise}


def compare(name: str, metric: str, a: Sequence[float], b: Sequence[float], test_train_ratio: float) -> Comparison:
    """Paired comparison of ``a`` and ``b`` (one value per run, same order).

    Raises:
        ValueError: ``a`` and ``b`` differ in length, or hold fewer than two runs.
    """
    if len(a) != len(b):
        raise ValueError(f"b: expected as many runs as a ({len(a)}), received {len(b)}")
    d = [float(x) - float(y) for x, y in zip(a, b, strict=True) if not (math.isnan(x) or math.isnan(y))]
    t, p = corrected_resampled_ttest(d, test_train_ratio)
    return Comparison(name, metric, d, sum(v > 0 for v in d), sum(v < 0 for v in d), sum(v == 0 for v in d),
                      spread(d), wilcoxon_p(d), t, p)
