"""Metrics agree with scikit-learn (or an independent loop where scikit-learn has none)."""

from __future__ import annotations

import subprocess
from pathlib import Path

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


def test_one_outcome_has_no_auroc_and_no_roc_curve() -> None:
    scores = np.array([0.2, 0.9, 0.4])
    assert np.isnan(M.binary_auroc(scores, np.ones(3, dtype=bool)))
    assert np.isnan(M.binary_auroc(scores, np.zeros(3, dtype=bool)))
    with pytest.raises(ValueError, match="positive: expected both positive and negative examples, received 3 and 0"):
        M.roc_curve(scores, np.ones(3, dtype=bool))


def test_per_class_rates_by_hand_with_empty_rows_and_columns() -> None:
    # Class 1 is never true, class 2 never predicted.
    cm = np.array([[3, 1, 0], [0, 0, 0], [2, 0, 0]])
    rates = M.per_class_rates(cm)
    np.testing.assert_allclose(rates["precision"], [3 / 5, 0.0, 0.0])
    np.testing.assert_allclose(rates["sensitivity"], [3 / 4, 0.0, 0.0])
    np.testing.assert_allclose(rates["specificity"], [0 / 2, 5 / 6, 4 / 4])
    np.testing.assert_allclose(rates["f1"], [2 * 3 / (2 * 3 + 2 + 1), 0.0, 0.0])
    np.testing.assert_array_equal(rates["support"], [4, 0, 2])
    assert rates["support"].dtype == np.int64


@pytest.mark.parametrize(
    ("cm", "match"),
    [
        (np.ones((2, 3), dtype=int), r"cm: expected a square \(K, K\) matrix, received shape \(2, 3\)"),
        (np.array([[1, -1], [0, 2]]), "cm: expected non-negative integer counts, received -1 at row 0, column 1"),
        (np.array([[1.0, 0.0], [0.0, 2.5]]), "cm: expected non-negative integer counts, received 2.5 at row 1"),
        (np.array([[1.0, np.nan], [0.0, 2.0]]), "cm: expected non-negative integer counts, received nan at row 0"),
    ],
)
def test_per_class_rates_rejects_a_bad_matrix(cm: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        M.per_class_rates(cm)


def test_empty_input_keeps_its_values() -> None:
    # scikit-learn refuses empty arrays; here they give zero counts and rates, NaN where a mean is undefined.
    probs, labels = np.zeros((0, 3)), np.zeros(0, dtype=np.int64)
    got = M.summary_metrics(probs, labels)
    assert got["macro_precision"] == got["macro_recall"] == got["macro_f1"] == 0.0
    assert all(np.isnan(got[k]) for k in ("accuracy", "balanced_accuracy", "auroc_macro", "ece", "nll"))
    report = M.classification_report(probs, labels, ["a", "b", "c"])
    assert report["confusion_matrix"] == [[0, 0, 0]] * 3
    assert report["per_class"]["a"]["support"] == 0 and report["per_class"]["a"]["specificity"] == 0.0


def test_a_class_absent_from_the_labels() -> None:
    # Class 2 never occurs: no AUROC for it (nor a macro AUROC); balanced accuracy averages classes 0 and 1 only.
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.2, 0.2, 0.6], [0.3, 0.6, 0.1]])
    labels = np.array([0, 1, 0, 1])
    report = M.classification_report(probs, labels, ["a", "b", "c"])
    assert np.isnan(report["per_class"]["c"]["auroc"]) and np.isnan(report["auroc_macro"])
    assert report["per_class"]["a"]["auroc"] == pytest.approx(skm.roc_auc_score(labels == 0, probs[:, 0]))
    assert report["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 2) / 2)
    assert report["macro_recall"] == pytest.approx((1 / 2 + 2 / 2 + 0) / 3)
    assert report["per_class"]["c"]["specificity"] == pytest.approx(3 / 4)


def test_importing_the_evaluation_loads_no_scikit_learn(tmp_path: Path) -> None:
    # scikit-learn takes over a second to import; the command line's --help must not pay it. The child imports
    # the installed build (tests/_installed.py checks that); its check imports torch, never scikit-learn.
    from tests._installed import installed

    code = (
        "import sys\n"
        "import medens.evaluate, medens.evaluate.ensemble\n"
        "loaded = sorted(m for m in ('sklearn', 'scipy.stats') if m in sys.modules)\n"
        "assert not loaded, f'imported with medens.evaluate: {loaded}'\n"
    )
    result = subprocess.run(**installed("-c", code, cwd=tmp_path), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


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
