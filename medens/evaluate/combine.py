"""Rules that combine the members' probabilities into the ensemble's.

- ``mean`` (the paper's rule): the plain average of the members' probabilities.
- ``weighted``: a convex combination whose weights minimise the validation negative log-likelihood.
- ``geometric``: the renormalised geometric mean (the average of log-probabilities, then softmax).

:class:`EnsembleRule` bundles a rule with the per-member temperatures and weights fitted on the validation split
(:func:`fit_rule`), so the same rule scores the test split and predicts new images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from medens.evaluate.calibration import apply_temperature, fit_temperature, log_probs, softmax
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


@dataclass(frozen=True)
class EnsembleRule:
    """How to turn members' probabilities into the ensemble's: per-member temperatures, then a combination rule.

    Attributes:
        members: member names, in the order of ``weights``.
        method: one of :data:`ENSEMBLE_METHODS`.
        temperatures: member name to fitted temperature, or None without calibration.
        weights: ``(M,)`` weights for ``weighted``, else None.
    """

    members: tuple[str, ...]
    method: str = "mean"
    temperatures: dict[str, float] | None = None
    weights: tuple[float, ...] | None = None

    def calibrate(self, probs_by_member: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each member's probabilities after its temperature (unchanged without calibration).

        Raises:
            KeyError: if a member of the rule is missing from ``probs_by_member``.
        """
        missing = [m for m in self.members if m not in probs_by_member]
        if missing:
            raise KeyError(
                f"probs_by_member: expected probabilities of {list(self.members)}, missing {missing}"
            )
        if self.temperatures is None:
            return {m: np.asarray(probs_by_member[m], dtype=np.float64) for m in self.members}
        return {m: apply_temperature(probs_by_member[m], self.temperatures[m]) for m in self.members}

    def apply(self, probs_by_member: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """``(calibrated member probabilities, ensemble probabilities (N, K))``."""
        calibrated = self.calibrate(probs_by_member)
        ensemble = combine([calibrated[m] for m in self.members], self.method, self.weights)
        return calibrated, ensemble


def fit_rule(
    val_probs: Mapping[str, np.ndarray] | None,
    val_labels: np.ndarray | None,
    method: str = "mean",
    calibrate: bool = False,
    members: Sequence[str] | None = None,
) -> EnsembleRule:
    """Fit temperatures (with ``calibrate``) and weights (for ``weighted``) on validation predictions.

    Args:
        val_probs: member name to ``(N, K)`` validation probabilities; may be None when nothing is fitted.
        val_labels: ``(N,)`` validation labels.
        method: one of :data:`ENSEMBLE_METHODS`.
        calibrate: fit a temperature per member.
        members: member names when ``val_probs`` is None.

    Returns:
        The rule; temperatures are fitted first and the weights on the calibrated probabilities.

    Raises:
        ValueError: on an unknown method, or when fitting is asked for without validation predictions.
    """
    if method not in ENSEMBLE_METHODS:
        raise ValueError(f"method: expected one of {list(ENSEMBLE_METHODS)}, received {method!r}")
    names = tuple(val_probs) if val_probs is not None else tuple(members or ())
    if not names:
        raise ValueError("members: expected at least one member name, received none")
    if not (calibrate or method == "weighted"):
        return EnsembleRule(members=names, method=method)
    if val_probs is None or val_labels is None:
        raise ValueError(
            f"val_probs: expected validation predictions to fit method {method!r}/calibrate, received None"
        )
    temperatures = {m: fit_temperature(val_probs[m], val_labels) for m in names} if calibrate else None
    rule = EnsembleRule(members=names, method=method, temperatures=temperatures)
    weights = None
    if method == "weighted":
        calibrated = rule.calibrate(val_probs)
        weights = tuple(float(w) for w in fit_weights([calibrated[m] for m in names], val_labels))
    return EnsembleRule(members=names, method=method, temperatures=temperatures, weights=weights)
