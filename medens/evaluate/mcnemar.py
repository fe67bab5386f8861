"""McNemar's test: do two classifiers err on the same test images at different rates?

Only the discordant pairs matter: ``b`` images that model A gets right and model B wrong, ``c`` the reverse.
Under the null hypothesis each discordant image is equally likely to fall either way, so ``b ~ Binomial(b + c, 1/2)``.
"""

from __future__ import annotations

import math
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
    """Two-sided exact p-value: ``min(1, 2 * P(X <= min(b, c)))`` for ``X ~ Binomial(b + c, 1/2)``.

    Uses exact integer arithmetic, so it stays accurate for any number of discordant pairs.
    """
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def chi2_continuity(b: int, c: int) -> tuple[float, float]:
    """Edwards' continuity-corrected statistic ``max(|b - c| - 1, 0)^2 / (b + c)`` and its chi-square(1) p-value."""
    n = b + c
    if n == 0:
        return 0.0, 1.0
    stat = max(abs(b - c) - 1, 0) ** 2 / n
    # Survival function of chi-square with one degree of freedom.
    return float(stat), float(math.erfc(math.sqrt(stat / 2.0)))


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
