"""Bootstrap intervals and McNemar's test."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from medens.evaluate.bootstrap import (
    bootstrap_indices,
    bootstrap_samples,
    confidence_intervals,
    difference_intervals,
    percentile_interval,
)
from medens.evaluate.mcnemar import chi2_continuity, exact_binomial_p, mcnemar
from medens.evaluate.metrics import summary_metrics


def _probs_with_accuracy(rng: np.random.Generator, labels: np.ndarray, acc: float, k: int) -> np.ndarray:
    right = rng.random(labels.size) < acc
    preds = np.where(right, labels, (labels + 1) % k)
    probs = np.full((labels.size, k), 0.1 / (k - 1))
    probs[np.arange(labels.size), preds] = 0.9
    return probs


def test_bootstrap_is_repeatable_and_paired() -> None:
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 2
    a = _probs_with_accuracy(rng, labels, 0.8, 2)
    first = bootstrap_samples({"a": a, "b": a.copy()}, labels, n_boot=50, seed=3)
    again = bootstrap_samples({"a": a}, labels, n_boot=50, seed=3)
    np.testing.assert_array_equal(first["a"]["accuracy"], again["a"]["accuracy"])
    # The same resamples score identical models identically, so their difference is exactly zero.
    diffs = difference_intervals(first, "a")
    assert diffs["b"]["accuracy"] == (0.0, 0.0)
    other = bootstrap_samples({"a": a}, labels, n_boot=50, seed=4)
    assert not np.array_equal(first["a"]["accuracy"], other["a"]["accuracy"])


def test_bootstrap_samples_are_metrics_of_resampled_sets() -> None:
    rng = np.random.default_rng(1)
    labels = np.arange(30) % 3
    probs = _probs_with_accuracy(rng, labels, 0.7, 3)
    samples = bootstrap_samples({"m": probs}, labels, n_boot=5, seed=7)
    idx = bootstrap_indices(30, 5, 7)
    for b in range(5):
        expected = summary_metrics(probs[idx[b]], labels[idx[b]])
        for name, values in samples["m"].items():  # to rounding: AUROC by ranks, not by scikit-learn's curve
            np.testing.assert_allclose(values[b], expected[name], rtol=1e-12, atol=1e-15)


def test_accuracy_interval_width_matches_binomial_theory() -> None:
    rng = np.random.default_rng(2)
    n = 400
    labels = np.arange(n) % 2
    probs = _probs_with_accuracy(rng, labels, 0.8, 2)
    acc = summary_metrics(probs, labels)["accuracy"]
    low, high = confidence_intervals(bootstrap_samples({"m": probs}, labels, n_boot=400, seed=0))["m"][
        "accuracy"
    ]
    assert low < acc < high
    expected_width = 2 * 1.96 * np.sqrt(acc * (1 - acc) / n)
    assert (high - low) == pytest.approx(expected_width, rel=0.2)


def test_percentile_interval_ignores_nan_and_checks_confidence() -> None:
    samples = np.array([np.nan, *np.arange(101.0)])
    assert percentile_interval(samples, 0.9) == pytest.approx((5.0, 95.0))
    assert all(np.isnan(percentile_interval(np.array([np.nan, np.nan]))))
    with pytest.raises(ValueError, match=r"confidence: expected a value in \(0, 1\)"):
        percentile_interval(samples, 95)


def test_bootstrap_rejects_unknown_metric() -> None:
    with pytest.raises(ValueError, match="metrics: expected names"):
        bootstrap_samples({"m": np.eye(2)}, np.array([0, 1]), n_boot=2, metrics=("kappa",))


@pytest.mark.parametrize(("b", "c"), [(0, 0), (0, 1), (3, 3), (1, 9), (12, 30), (200, 170), (0, 25)])
def test_exact_mcnemar_matches_integer_binomial_tail(b: int, c: int) -> None:
    # Written independently of scipy: min(1, 2 P(X <= min(b, c))) for X ~ Binomial(b + c, 1/2), in exact integers.
    n = b + c
    expected = min(1.0, 2 * sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n)
    assert exact_binomial_p(b, c) == pytest.approx(expected, rel=1e-9)
    assert exact_binomial_p(c, b) == exact_binomial_p(b, c)


@pytest.mark.parametrize(("b", "c"), [(5, 15), (40, 22), (7, 7), (10, 11), (0, 0)])
def test_chi2_mcnemar_matches_closed_form(b: int, c: int) -> None:
    stat, p = chi2_continuity(b, c)
    expected = max(abs(b - c) - 1, 0) ** 2 / (b + c) if b + c else 0.0
    assert stat == pytest.approx(expected)
    # The chi-square(1) survival function is erfc(sqrt(x / 2)).
    assert p == pytest.approx(math.erfc(math.sqrt(expected / 2)), rel=1e-9)


def test_mcnemar_counts_discordant_pairs() -> None:
    a = np.array([1, 1, 1, 0, 0, 1, 0, 1], dtype=bool)
    b = np.array([1, 0, 0, 1, 0, 1, 0, 0], dtype=bool)
    result = mcnemar(a, b)
    assert (result.b, result.c) == (3, 1)
    assert result.p_value == pytest.approx(stats.binomtest(1, 4, 0.5).pvalue)
    assert mcnemar(a, b, method="chi2").method == "chi2"
    with pytest.raises(ValueError, match="method: expected one of"):
        mcnemar(a, b, method="z")
    with pytest.raises(ValueError, match="correct_b: expected shape"):
        mcnemar(a, b[:3])
