"""Temperature scaling of a classifier's probabilities, fitted on the validation split.

A member's files hold probabilities, not logits, so the logits are recovered up to a per-row constant as
``log p``. Dividing them by a temperature ``T > 0`` and renormalising keeps every arg-max (accuracy is unchanged)
and makes the probabilities softer (``T > 1``) or sharper (``T < 1``). ``T`` minimises the validation negative
log-likelihood, which is convex in ``1/T``; a golden-section search over ``1/T`` finds it.
"""

from __future__ import annotations

import math

import numpy as np

from medens.evaluate.metrics import PROB_EPS, check_probs_labels

#: Temperatures searched, ``(low, high)``.
TEMPERATURE_BOUNDS: tuple[float, float] = (0.05, 20.0)


def log_probs(probs: np.ndarray) -> np.ndarray:
    """``log`` of probabilities clipped at 1e-12, shape unchanged, float64."""
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), PROB_EPS, None))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(N, K)`` logits, computed stably."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Rescale ``(N, K)`` probabilities by a temperature: ``softmax(log p / T)``.

    Raises:
        ValueError: if ``temperature`` is not a positive finite number.
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature: expected a positive finite number, received {temperature}")
    probs, _ = check_probs_labels(probs)
    return softmax(log_probs(probs) / temperature)


def _nll_at_inverse_temperature(z: np.ndarray, labels: np.ndarray, beta: float) -> float:
    s = beta * z
    s_max = s.max(axis=1)
    lse = s_max + np.log(np.exp(s - s_max[:, None]).sum(axis=1))
    return float(np.mean(lse - s[np.arange(labels.size), labels]))


def fit_temperature(
    probs: np.ndarray,
    labels: np.ndarray,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
    tol: float = 1e-7,
) -> float:
    """The temperature that minimises the negative log-likelihood of ``labels``.

    Args:
        probs: ``(N, K)`` validation probabilities.
        labels: ``(N,)`` validation labels.
        bounds: ``(low, high)`` temperatures to search within.
        tol: stop when the bracket on ``1/T`` is narrower than this.

    Returns:
        The fitted temperature, within ``bounds``.

    Raises:
        ValueError: on empty input or bad bounds.
    """
    probs, labels = check_probs_labels(probs, labels)
    if labels.size == 0:
        raise ValueError("labels: expected at least one validation example, received none")
    low_t, high_t = bounds
    if not 0 < low_t < high_t:
        raise ValueError(f"bounds: expected 0 < low < high, received {bounds}")
    z = log_probs(probs)
    lo, hi = 1.0 / high_t, 1.0 / low_t
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    x1 = hi - ratio * (hi - lo)
    x2 = lo + ratio * (hi - lo)
    f1 = _nll_at_inverse_temperature(z, labels, x1)
    f2 = _nll_at_inverse_temperature(z, labels, x2)
    while hi - lo > tol:
        if f1 <= f2:
            hi, x2, f2 = x2, x1, f1
            x1 = hi - ratio * (hi - lo)
            f1 = _nll_at_inverse_temperature(z, labels, x1)
        else:
            lo, x1, f1 = x1, x2, f2
            x2 = lo + ratio * (hi - lo)
            f2 = _nll_at_inverse_temperature(z, labels, x2)
    return float(1.0 / ((lo + hi) / 2.0))
