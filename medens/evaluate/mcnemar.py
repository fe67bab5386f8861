"""McNemar's test: do two classifiers err on the same test images at different rates?

Only the discordant pairs matter: ``b`` images that model A gets right and model B wrong, ``c`` the reverse.
Under the null hypothesis each discordant image is equally likely to fall either way, so ``b ~ Binomial(b + c, 1/2)``.
The p-values come from :mod:`scipy.stats` (``binomtest``, ``chi2``), imported on first use; scipy has no
McNemar test as such, so the discordant counts and the continuity-corrected statistic are computed here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

#: Accepted values of ``method``.
MCNEMAR_METHODS: tuple[str, ...] = ("exact", "chi2")


@dataclass(frozen=True)
class McNemarResult:
    """Outcome of McNemar's test.

    Attributes:
        b: images model A classifies correctly and model B does not.
        c: images model B classifies correctly and model A does not.
        statistic: ``min(b, c)`` for the exact test; the continuity-corrected chi-square for ``chi2``.
        p_value: two-sided p-value.
        method: ``exact`` or ``chi2``.
    """

    b: int
    c: int
    statistic: float
    p_value: float
    method: str

    def to_dict(self) -> dict[str, float | int | str]:
        """JSON-ready fields."""
        return asdict(self)


def exact_binomial_p(b: int, c: int) -> float:
    """Two-sided exact p-value of ``min(b, c)`` under ``Binomial(b + c, 1/2)`` (:func:`scipy.stats.binomtest`).

    For this symmetric null it is ``min(1, 2 * P(X <= min(b, c)))``; 1.0 when there is no discordant pair.
    """
    from scipy import stats

    n = b + c
    if n == 0:
        return 1.0
    return float(stats.binomtest(min(b, c), n, 0.5).pvalue)


def chi2_continuity(b: int, c: int) -> tuple[float, float]:
    """Edwards' continuity-corrected statistic and its chi-square(1) p-value.

    The statistic is ``max(|b - c| - 1, 0)^2 / (b + c)``; the p-value is the survival function of
    :data:`scipy.stats.chi2` with one degree of freedom. ``(0, 1)`` when there is no discordant pair.
    """
    from scipy import stats

    n = b + c
    if n == 0:
        return 0.0, 1.0
    stat = max(abs(b - c) - 1, 0) ** 2 / n
    return float(stat), float(stats.chi2.sf(stat, df=1))


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray, method: str = "exact") -> McNemarResult:
    """McNemar's test of two classifiers on the same images.

    Args:
        correct_a: ``(N,)`` booleans, whether model A is right on each image.
        correct_b: ``(N,)`` booleans for model B, same image order.
        method: ``exact`` (binomial, valid for any count) or ``chi2`` (with continuity correction).

    Returns:
        The discordant counts, statistic and p-value.

    Raises:
        ValueError: on an unknown method or arrays of different shapes.
    """
    if method not in MCNEMAR_METHODS:
        raise ValueError(f"method: expected one of {list(MCNEMAR_METHODS)}, received {method!r}")
    a = np.asarray(correct_a, dtype=bool)
    bb = np.asarray(correct_b, dtype=bool)
    if a.ndim != 1 or a.shape != bb.shape:
        raise ValueError(f"correct_b: expected shape {a.shape} to match correct_a, received {bb.shape}")
    b = int(np.sum(a & ~bb))
    c = int(np.sum(~a & bb))
    if method == "exact":
        return McNemarResult(
            b=b, c=c, statistic=float(min(b, c)), p_value=exact_binomial_p(b, c), method=method
        )
    stat, p = chi2_continuity(b, c)
    return McNemarResult(b=b, c=c, statistic=stat, p_value=p, method=method)
