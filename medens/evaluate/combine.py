"""Rules that combine the members' probabilities into the ensemble's.

- ``mean`` (the paper's rule): the plain average of the members' probabilities.
- ``weighted``: a convex combination whose weights minimise the validation negative log-likelihood.
- ``geometric``: the renormalised geometric mean (the average of log-probabilities, then softmax).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medens.evaluate.calibration import log_probs, softmax
from medens.evaluate.metrics import PROB_EPS, check_probs_labels

#: Accepted values of ``method``, the first being the default.
ENSEMBLE_METHODS: tuple[str, ...] = ("mean", "weighted", "geometric")


def _stack(member_probs: Sequence[np.ndarray]) -> np.ndarray:
    if len(member_probs) < 1:
        raise ValueError("member_probs: expected at least one member, received none")
    arrays = [check_probs_labels(p)[0] for p in member_probs]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(
            f"member_probs: expected arrays of one shape (N, K), received shapes {sorted(shapes)}"
        )
    return np.stack(arrays)


def combine(
    member_probs: Sequence[np.ndarray], method: str = "mean", weights: Sequence[float] | None = None
) -> np.ndarray:
    """The ensemble's probabilities.

    Args:
        member_probs: M arrays of ``(N, K)`` probabilities over the same images and classes.
        method: one of :data:`ENSEMBLE_METHODS`.
        weights: M non-negative weights summing to 1; required for ``weighted``, refused otherwise.

    Returns:
        ``(N, K)`` float64 probabilities.

    Raises:
        ValueError: on an unknown method, mismatched shapes or bad weights.
    """
    if method not in ENSEMBLE_METHODS:
        raise ValueError(f"method: expected one of {list(ENSEMBLE_METHODS)}, received {method!r}")
    stack = _stack(member_probs)
    if method == "weighted":
        if weights is None:
            raise ValueError("weights: expected M weights for method 'weighted', received None")
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (stack.shape[0],) or np.any(w < 0) or not np.isclose(w.sum(), 1.0):
            raise ValueError(
                f"weights: expected {stack.shape[0]} non-negative values summing to 1, received {w.tolist()}"
            )
        return np.tensordot(w, stack, axes=1)
    if weights is not None:
        raise ValueError(f"weights: only used by method 'weighted', received weights for {method!r}")
    if method == "geometric":
        return softmax(log_probs(stack).mean(axis=0))
    return stack.mean(axis=0)


def fit_weights(
    member_probs: Sequence[np.ndarray], labels: np.ndarray, iterations: int = 2000, step: float = 0.5
) -> np.ndarray:
    """Simplex weights minimising the negative log-likelihood of the weighted mean.

    The objective ``-mean(log sum_m w_m p_m[label])`` is convex on the simplex; exponentiated-gradient descent
    (multiplicative updates, which keep the weights positive and summing to one) converges to its minimum.

    Args:
        member_probs: M arrays of ``(N, K)`` validation probabilities.
        labels: ``(N,)`` validation labels.
        iterations: number of updates.
        step: learning rate of the updates.

    Returns:
        ``(M,)`` weights, non-negative and summing to 1.
    """
    stack = _stack(member_probs)
    _, labels = check_probs_labels(stack[0], labels)
    if labels.size == 0:
        raise ValueError("labels: expected at least one validation example, received none")
    # p_true[m, n]: member m's probability of image n's true class.
    p_true = np.clip(stack[:, np.arange(labels.size), labels], PROB_EPS, None)
    m = stack.shape[0]
    w = np.full(m, 1.0 / m)
    for _ in range(iterations):
        mix = w @ p_true
        grad = -(p_true / mix).mean(axis=1)
        w = w * np.exp(-step * (grad - grad.min()))
        w /= w.sum()
    return w
