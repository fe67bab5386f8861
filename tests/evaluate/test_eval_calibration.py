"""Temperature scaling and the combination rules."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize

from medens.evaluate.calibration import apply_temperature, fit_temperature, softmax
from medens.evaluate.combine import combine, fit_rule, fit_weights
from medens.evaluate.metrics import expected_calibration_error, negative_log_likelihood


def sampled_problem(seed: int, n: int, k: int, sharpness: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z); returns the over- or under-confident softmax(sharpness * z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * 1.5
    true = softmax(z)
    labels = (rng.random(n)[:, None] > true.cumsum(axis=1)).sum(axis=1)
    return softmax(sharpness * z), labels


def test_fitted_temperature_recovers_the_distortion() -> None:
    probs, labels = sampled_problem(0, 20000, 4, sharpness=2.5)
    t = fit_temperature(probs, labels)
    assert t == pytest.approx(2.5, rel=0.05)
    calibrated = apply_temperature(probs, t)
    assert expected_calibration_error(calibrated, labels) < expected_calibration_error(probs, labels) / 3


def test_fitted_temperature_matches_scipy_minimiser() -> None:
    probs, labels = sampled_problem(1, 300, 3, sharpness=0.6)
    t = fit_temperature(probs, labels)
    res = optimize.minimize_scalar(
        lambda temp: negative_log_likelihood(apply_temperature(probs, temp), labels),
        bounds=(0.05, 20.0),
        method="bounded",
        options={"xatol": 1e-8},
    )
    assert t == pytest.approx(res.x, rel=1e-4)
    assert negative_log_likelihood(apply_temperature(probs, t), labels) <= res.fun + 1e-9


def test_temperature_keeps_argmax_and_identity_at_one() -> None:
    probs, _ = sampled_problem(2, 50, 5, sharpness=1.0)
    np.testing.assert_allclose(apply_temperature(probs, 1.0), probs, rtol=1e-9, atol=1e-15)
    np.testing.assert_array_equal(apply_temperature(probs, 3.7).argmax(1), probs.argmax(1))
    with pytest.raises(ValueError, match="temperature: expected a positive finite number"):
        apply_temperature(probs, 0.0)


def test_mean_is_the_mean_to_float_precision() -> None:
    rng = np.random.default_rng(3)
    members = [softmax(rng.normal(size=(17, 3))) for _ in range(3)]
    out = combine(members, "mean")
    np.testing.assert_array_equal(out, np.mean(np.stack(members), axis=0))
    np.testing.assert_allclose(out, (members[0] + members[1] + members[2]) / 3, rtol=0, atol=1e-15)


def test_geometric_is_normalised_geometric_mean() -> None:
    rng = np.random.default_rng(4)
    a, b = softmax(rng.normal(size=(9, 4))), softmax(rng.normal(size=(9, 4)))
    g = np.sqrt(a * b)
    np.testing.assert_allclose(combine([a, b], "geometric"), g / g.sum(1, keepdims=True), rtol=1e-12)


def test_weighted_uses_the_weights() -> None:
    rng = np.random.default_rng(5)
    a, b = softmax(rng.normal(size=(9, 2))), softmax(rng.normal(size=(9, 2)))
    np.testing.assert_allclose(combine([a, b], "weighted", [0.25, 0.75]), 0.25 * a + 0.75 * b, rtol=1e-12)
    with pytest.raises(ValueError, match="weights: expected 2 non-negative values summing to 1"):
        combine([a, b], "weighted", [0.5, 0.6])
    with pytest.raises(ValueError, match="weights: expected M weights"):
        combine([a, b], "weighted")
    with pytest.raises(ValueError, match="weights: only used by method 'weighted'"):
        combine([a, b], "mean", [0.5, 0.5])


def test_combine_refuses_unknown_method_and_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="method: expected one of"):
        combine([np.eye(2)], "median")
    with pytest.raises(ValueError, match="member_probs: expected arrays of one shape"):
        combine([np.eye(2), np.eye(3)[:2]], "mean")


def test_fitted_weights_match_constrained_scipy_optimum() -> None:
    good, labels = sampled_problem(6, 400, 3, sharpness=1.0)
    noisy, _ = sampled_problem(7, 400, 3, sharpness=1.0)  # unrelated to these labels
    mid = 0.5 * good + 0.5 * softmax(np.zeros((400, 3)))
    members = [good, noisy, mid]
    w = fit_weights(members, labels)
    assert w.sum() == pytest.approx(1.0) and np.all(w >= 0)

    def nll(v: np.ndarray) -> float:
        return negative_log_likelihood(combine(members, "weighted", v / v.sum()), labels)

    res = optimize.minimize(
        nll,
        np.full(3, 1 / 3),
        method="SLSQP",
        bounds=[(0, 1)] * 3,
        constraints=({"type": "eq", "fun": lambda v: v.sum() - 1},),
        options={"ftol": 1e-12},
    )
    assert nll(w) == pytest.approx(res.fun, abs=1e-6)
    assert w[0] > w[1]  # the informative member gets more weight than the unrelated one


def test_fit_rule_fits_temperatures_then_weights() -> None:
    a, labels = sampled_problem(8, 300, 3, sharpness=3.0)
    b, _ = sampled_problem(9, 300, 3, sharpness=0.5)
    rule = fit_rule({"a": a, "b": b}, labels, method="weighted", calibrate=True)
    assert rule.temperatures["a"] == pytest.approx(fit_temperature(a, labels))
    calibrated = {
        "a": apply_temperature(a, rule.temperatures["a"]),
        "b": apply_temperature(b, rule.temperatures["b"]),
    }
    np.testing.assert_allclose(rule.weights, fit_weights([calibrated["a"], calibrated["b"]], labels))
    members, ensemble = rule.apply({"b": b, "a": a})
    np.testing.assert_allclose(members["a"], calibrated["a"])
    np.testing.assert_allclose(
        ensemble, combine([calibrated["a"], calibrated["b"]], "weighted", rule.weights)
    )


def test_plain_mean_rule_needs_no_validation() -> None:
    rule = fit_rule(None, None, members=["x", "y"])
    x, y = np.array([[0.2, 0.8]]), np.array([[0.6, 0.4]])
    _, ensemble = rule.apply({"x": x, "y": y})
    np.testing.assert_array_equal(ensemble, (x + y) / 2)
    with pytest.raises(ValueError, match="val_probs: expected validation predictions"):
        fit_rule(None, None, method="weighted", members=["x", "y"])
    with pytest.raises(KeyError, match="missing"):
        rule.apply({"x": x})
