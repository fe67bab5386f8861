"""Metrics agree with scikit-learn (or an independent loop where scikit-learn has none)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from medens.evaluate import metrics as M


def random_problem(
    rng: np.random.Generator, n: int, k: int, ties: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities loosely correlated with labels; every class present when n >= k."""
    labels = rng.permutation(np.arange(n) % k)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[labels]
    if ties:
        logits = np.round(logits)  # many equal scores
    probs = np.exp(logits)
    return probs / probs.sum(axis=1, keepdims=True), labels


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(6, 80), k=st.integers(2, 5), ties=st.booleans())
def test_scalar_metrics_match_sklearn(seed: int, n: int, k: int, ties: bool) -> None:
    probs, labels = random_problem(np.random.default_rng(seed), n, k, ties)
    preds = probs.argmax(axis=1)
    got = M.summary_metrics(probs, labels)
    kw = {"labels": list(range(k)), "average": "macro", "zero_division": 0}
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(labels, preds), abs=1e-12)
    assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, preds), abs=1e-12)
    assert got["macro_precision"] == pytest.approx(skm.precision_score(labels, preds, **kw), abs=1e-12)
    assert got["macro_recall"] == pytest.approx(skm.recall_score(labels, preds, **kw), abs=1e-12)
    assert got["macro_f1"] == pytest.approx(skm.f1_score(labels, preds, **kw), abs=1e-12)
    assert got["nll"] == pytest.approx(skm.log_loss(labels, probs, labels=list(range(k))), rel=1e-9)
    if k == 2:
        expected_auc = skm.roc_auc_score(labels, probs[:, 1])
    else:
        expected_auc = skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    assert got["auroc_macro"] == pytest.approx(expected_auc, abs=1e-12)


def test_confusion_matrix_and_per_class_rates_match_sklearn() -> None:
    probs, labels = random_problem(np.random.default_rng(1), 60, 4)
    preds = probs.argmax(axis=1)
    cm = M.confusion_matrix(labels, preds, 4)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(labels, preds, labels=range(4)))
    rates = M.per_class_rates(cm)
    np.testing.assert_allclose(
        rates["sensitivity"], skm.recall_score(labels, preds, average=None), atol=1e-12
    )
    np.testing.assert_allclose(rates["f1"], skm.f1_score(labels, preds, average=None), atol=1e-12)
    # Specificity of class k is the recall of "not k".
    for k in range(4):
        spec = skm.recall_score(labels != k, preds != k)
        assert rates["specificity"][k] == pytest.approx(spec, abs=1e-12)


def test_per_class_auroc_matches_sklearn_one_vs_rest() -> None:
    probs, labels = random_problem(np.random.default_rng(2), 50, 3, ties=True)
    got = M.auroc_per_class(probs, labels)
    for k in range(3):
        assert got[k] == pytest.approx(skm.roc_auc_score(labels == k, probs[:, k]), abs=1e-12)


def test_roc_curve_matches_sklearn() -> None:
    probs, labels = random_problem(np.random.default_rng(3), 40, 2, ties=True)
    fpr, tpr = M.roc_curve(probs[:, 1], labels == 1)
    sk_fpr, sk_tpr, _ = skm.roc_curve(labels == 1, probs[:, 1], drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)


def test_auroc_is_nan_when_a_class_is_missing() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    labels = np.array([0, 1, 0])
    assert np.isnan(M.auroc_per_class(probs, labels)[2])
    assert np.isnan(M.auroc_macro(probs, labels))


def test_rankdata_matches_scipy() -> None:
    from scipy.stats import rankdata

    x = np.random.default_rng(4).integers(0, 5, size=100).astype(float)
    np.testing.assert_allclose(M.rankdata(x), rankdata(x))


def ece_reference(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    """Loop-by-loop ECE with bins (lo, hi] (the first also holding 0), written independently."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        in_bin = (conf > lo) & (conf <= hi) if b > 0 else (conf <= hi)
        if in_bin.any():
            total += in_bin.sum() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return total / len(labels)


@pytest.mark.parametrize("n_bins", [1, 5, 15])
def test_ece_matches_loop_reference(n_bins: int) -> None:
    probs, labels = random_problem(np.random.default_rng(5), 200, 3)
    assert M.expected_calibration_error(probs, labels, n_bins) == pytest.approx(
        ece_reference(probs, labels, n_bins), abs=1e-12
    )


def test_ece_by_hand() -> None:
    # Two images at confidence 0.9 (one right), two at 0.6 (both right); 10 bins.
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 1])
    # |0.5 - 0.9| * 2/4 + |1.0 - 0.6| * 2/4 = 0.4
    assert M.expected_calibration_error(probs, labels, 10) == pytest.approx(0.4)


def test_ece_is_small_for_calibrated_predictions() -> None:
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(20000, 3)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = (rng.random(20000)[:, None] > probs.cumsum(axis=1)).sum(axis=1)  # sampled from probs
    assert M.expected_calibration_error(probs, labels) < 0.02
    overconfident = np.exp(3 * logits) / np.exp(3 * logits).sum(axis=1, keepdims=True)
    assert M.expected_calibration_error(overconfident, labels) > 0.1


def test_reliability_bins_count_every_image() -> None:
    probs, labels = random_problem(np.random.default_rng(7), 90, 4)
    bins = M.reliability_bins(probs, labels, 10)
    assert bins["count"].sum() == 90
    filled = bins["count"] > 0
    lo, hi = bins["edges"][:-1][filled], bins["edges"][1:][filled]
    assert np.all((bins["confidence"][filled] > lo) & (bins["confidence"][filled] <= hi))


def test_classification_report_per_class_entries() -> None:
    probs, labels = random_problem(np.random.default_rng(8), 30, 3)
    report = M.classification_report(probs, labels, ["a", "b", "c"])
    assert set(report["per_class"]) == {"a", "b", "c"}
    assert sum(report["per_class"][c]["support"] for c in "abc") == 30
    assert np.array(report["confusion_matrix"]).sum() == 30
    with pytest.raises(ValueError, match="classes: expected 3 names"):
        M.classification_report(probs, labels, ["a", "b"])


@pytest.mark.parametrize(
    ("probs", "labels", "match"),
    [
        (np.ones((3,)), np.zeros(3, dtype=int), r"probs: expected shape \(N, K\)"),
        (np.ones((3, 2)), np.zeros(2, dtype=int), r"labels: expected shape \(3,\)"),
        (np.ones((3, 2)), np.array([0, 1, 2]), r"labels: expected values in \[0, 2\)"),
        (np.ones((3, 2)), np.array([0.0, 1.0, 1.0]), "labels: expected integer"),
        (np.full((3, 2), np.nan), np.zeros(3, dtype=int), "probs: expected finite"),
    ],
)
def test_bad_input_is_named(probs: np.ndarray, labels: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        M.summary_metrics(probs, labels)
