"""Classification metrics over predicted probabilities, computed with scikit-learn where it has them.

Every function takes ``probs`` of shape ``(N, K)`` (rows are probability vectors over the K classes, float) and/or
``labels`` of shape ``(N,)`` (integer class indices in ``[0, K)``). The predicted class is the arg-max of a row.

What comes from :mod:`sklearn.metrics` and how it is called:

- the confusion matrix: ``confusion_matrix(labels, preds, labels=range(K))``;
- per-class precision, recall (sensitivity), F1 and support: ``precision_recall_fscore_support`` with
  ``labels=range(K)`` and ``zero_division=0``, so a class whose denominator is zero scores 0; the macro values
  average over all K classes;
- specificity (which scikit-learn does not name): TN / (TN + FP) from ``multilabel_confusion_matrix``, 0 when
  TN + FP is 0;
- AUROC: ``roc_auc_score`` one-vs-rest per class, averaged over the classes (macro), and the ROC curve from
  ``roc_curve``. A class with no positive or no negative example has no AUROC: its value, and then the macro value,
  is NaN (scikit-learn raises or warns instead).

Kept here, with the same definitions as before:

- balanced accuracy: the mean recall over the classes that occur in ``labels`` (``balanced_accuracy_score``'s
  definition, taken from the recalls above without that function's warning about predicted classes absent from
  ``labels``, which a bootstrap resample meets all the time);
- expected calibration error (scikit-learn has none for K classes), binning the top-class confidence into
  equal-width bins ``(lo, hi]``;
- negative log-likelihood with probabilities clipped at :data:`PROB_EPS` (``log_loss`` renormalises the rows and
  clips at the machine epsilon, which would change the values).

Empty inputs (N = 0), which scikit-learn refuses, give an all-zero confusion matrix and rates, and NaN for the
accuracies, AUROC, ECE and NLL. scikit-learn is imported on first use: importing it takes over a second, which
the command line's ``--help`` would otherwise pay.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Scalar metrics reported for every model, in table order.
SUMMARY_METRICS: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "auroc_macro",
    "ece",
    "nll",
)

#: Summary metrics that lie in [0, 1] (all but the negative log-likelihood): their intervals must stay inside it.
UNIT_INTERVAL_METRICS: frozenset[str] = frozenset(SUMMARY_METRICS) - {"nll"}

#: Default number of confidence bins for the expected calibration error.
DEFAULT_ECE_BINS = 15

#: Probabilities are clipped to at least this before taking logs.
PROB_EPS = 1e-12


def check_probs_labels(
    probs: np.ndarray, labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate and convert probabilities and labels.

    Args:
        probs: ``(N, K)`` class probabilities.
        labels: optional ``(N,)`` integer labels in ``[0, K)``.

    Returns:
        ``probs`` as float64 and ``labels`` as int64 (or None).

    Raises:
        ValueError: if shapes disagree, a value is out of range or not finite.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probs: expected shape (N, K) with K >= 2, received shape {probs.shape}")
    if not np.all(np.isfinite(probs)):
        raise ValueError("probs: expected finite values, received NaN or infinity")
    if labels is None:
        return probs, None
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != probs.shape[0]:
        raise ValueError(
            f"labels: expected shape ({probs.shape[0]},) to match probs, received shape {labels.shape}"
        )
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels: expected integer class indices, received dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(
            f"labels: expected values in [0, {probs.shape[1]}), received range [{labels.min()}, {labels.max()}]"
        )
    return probs, labels


def predict(probs: np.ndarray) -> np.ndarray:
    """Arg-max class of each row, shape ``(N,)`` int64."""
    return np.asarray(probs).argmax(axis=1).astype(np.int64)


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class) pairs (:func:`sklearn.metrics.confusion_matrix`).

    Args:
        labels: ``(N,)`` true class indices.
        preds: ``(N,)`` predicted class indices.
        num_classes: K.

    Returns:
        ``(K, K)`` int64 matrix; rows are true classes, columns predicted classes.
    """
    from sklearn import metrics as skm

    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    if labels.size == 0:
        return np.zeros((num_classes, num_classes), dtype=np.int64)
    return skm.confusion_matrix(labels, preds, labels=np.arange(num_classes)).astype(np.int64)


def _class_rates(
    labels: np.ndarray, preds: np.ndarray, num_classes: int, specificity: bool
) -> dict[str, np.ndarray]:
    """Per-class rates of predictions (see :func:`per_class_rates`); ``specificity`` only when asked for."""
    from sklearn import metrics as skm

    k = num_classes
    if labels.size == 0:
        zeros = np.zeros(k)
        rates = {"precision": zeros, "sensitivity": zeros, "f1": zeros, "support": np.zeros(k, dtype=np.int64)}
        return {**rates, "specificity": zeros} if specificity else rates
    classes = np.arange(k)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, preds, labels=classes, average=None, zero_division=0
    )
    rates = {"precision": precision, "sensitivity": recall, "f1": f1, "support": support.astype(np.int64)}
    if specificity:
        # One 2x2 matrix [[TN, FP], [FN, TP]] per class, "class k" against the rest.
        per_class = skm.multilabel_confusion_matrix(labels, preds, labels=classes)
        tn, fp = per_class[:, 0, 0].astype(np.float64), per_class[:, 0, 1]
        rates["specificity"] = np.divide(tn, tn + fp, out=np.zeros(k), where=(tn + fp) > 0)
    return rates


def per_class_rates(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class rates from a confusion matrix, computed by scikit-learn on the pairs it counts.

    Args:
        cm: ``(K, K)`` confusion matrix (rows true, columns predicted) of non-negative integer counts.

    Returns:
        ``precision``, ``sensitivity`` (recall), ``specificity``, ``f1`` (float64) and ``support`` (int64), each
        ``(K,)``. Rates with a zero denominator are 0.

    Raises:
        ValueError: if ``cm`` is not a square matrix of non-negative integer counts.
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"cm: expected a square (K, K) matrix, received shape {cm.shape}")
    values = cm.astype(np.float64)
    bad = ~np.isfinite(values) | (values < 0) | (values != np.round(values))
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"cm: expected non-negative integer counts, received {cm[i, j]} at row {i}, column {j}")
    counts = cm.astype(np.int64)
    k = cm.shape[0]
    labels, preds = np.divmod(np.repeat(np.arange(k * k), counts.ravel()), k)
    rates = _class_rates(labels, preds, k, specificity=True)
    return {name: rates[name] for name in ("precision", "sensitivity", "specificity", "f1", "support")}


def _accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(preds == labels)) if labels.size else float("nan")


def _balanced_accuracy(rates: dict[str, np.ndarray]) -> float:
    present = rates["support"] > 0
    return float(rates["sensitivity"][present].mean()) if present.any() else float("nan")


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose arg-max equals the label."""
    probs, labels = check_probs_labels(probs, labels)
    return _accuracy(predict(probs), labels)


def balanced_accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``labels``."""
    probs, labels = check_probs_labels(probs, labels)
    return _balanced_accuracy(_class_rates(labels, predict(probs), probs.shape[1], specificity=False))


def _both_outcomes(positive: np.ndarray) -> tuple[int, int]:
    n_pos = int(positive.sum())
    return n_pos, positive.size - n_pos


def binary_auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the boolean target ``positive``.

    :func:`sklearn.metrics.roc_auc_score`; tied scores count one half. NaN when either outcome is absent.
    """
    from sklearn import metrics as skm

    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = _both_outcomes(positive)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float(skm.roc_auc_score(positive, np.asarray(scores, dtype=np.float64)))


def auroc_per_class(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One-vs-rest AUROC of each class's probability column, shape ``(K,)`` (NaN where undefined).

    With two classes both entries are the binary AUROC of column 1: mathematically the two columns give the same
    value, but ``p0`` and ``1 - p1`` can differ in the last bit, which would break or make ties differently.
    """
    probs, labels = check_probs_labels(probs, labels)
    if probs.shape[1] == 2:
        return np.full(2, binary_auroc(probs[:, 1], labels == 1))
    return np.array([binary_auroc(probs[:, k], labels == k) for k in range(probs.shape[1])])


def _macro_auroc(per_class: np.ndarray) -> float:
    return float(per_class.mean()) if not np.isnan(per_class).any() else float("nan")


def auroc_macro(probs: np.ndarray, labels: np.ndarray) -> float:
    """Macro average of the one-vs-rest AUROCs; NaN if any class lacks positives or negatives."""
    return _macro_auroc(auroc_per_class(probs, labels))


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold, from (0, 0) to (1, 1).

    :func:`sklearn.metrics.roc_curve` with ``drop_intermediate=False``.

    Args:
        scores: ``(N,)`` scores, higher meaning more likely positive.
        positive: ``(N,)`` boolean targets.

    Returns:
        ``(fpr, tpr)``, each of shape ``(T + 1,)`` for T distinct scores.

    Raises:
        ValueError: if ``positive`` has no positive or no negative example.
    """
    from sklearn import metrics as skm

    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = _both_outcomes(positive)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"positive: expected both positive and negative examples, received {n_pos} and {n_neg}"
        )
    fpr, tpr, _ = skm.roc_curve(positive, np.asarray(scores, dtype=np.float64), drop_intermediate=False)
    return fpr, tpr


def reliability_bins(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = DEFAULT_ECE_BINS
) -> dict[str, np.ndarray]:
    """Top-class confidence and accuracy in equal-width confidence bins.

    Args:
        probs: ``(N, K)`` probabilities.
        labels: ``(N,)`` labels.
        n_bins: number of bins over ``[0, 1]``; bin b holds confidences in ``(b/n, (b+1)/n]`` (bin 0 also holds 0).

    Returns:
        ``edges`` ``(n_bins + 1,)``, and per bin ``count`` (int), ``confidence`` and ``accuracy`` (mean over the
        bin; NaN for an empty bin), each ``(n_bins,)``.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins: expected a positive integer, received {n_bins}")
    probs, labels = check_probs_labels(probs, labels)
    conf = probs.max(axis=1)
    correct = (predict(probs) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / np.maximum(count, 1), np.nan)
        mean_acc = np.where(count > 0, acc_sum / np.maximum(count, 1), np.nan)
    return {"edges": edges, "count": count, "confidence": mean_conf, "accuracy": mean_acc}


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = DEFAULT_ECE_BINS
) -> float:
    """ECE: the count-weighted mean over bins of |accuracy - confidence| of the top class."""
    bins = reliability_bins(probs, labels, n_bins)
    n = bins["count"].sum()
    if n == 0:
        return float("nan")
    filled = bins["count"] > 0
    gaps = np.abs(bins["accuracy"][filled] - bins["confidence"][filled])
    return float(np.sum(bins["count"][filled] * gaps) / n)


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean of ``-log p[label]`` (probabilities clipped at 1e-12), in nats."""
    probs, labels = check_probs_labels(probs, labels)
    if not labels.size:
        return float("nan")
    p = probs[np.arange(labels.size), labels]
    return float(-np.mean(np.log(np.clip(p, PROB_EPS, None))))


def summary_metrics(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = DEFAULT_ECE_BINS
) -> dict[str, float]:
    """The scalar metrics of :data:`SUMMARY_METRICS` for one model.

    Args:
        probs: ``(N, K)`` probabilities.
        labels: ``(N,)`` labels.
        n_bins: ECE bins.

    Returns:
        Metric name to value (floats; NaN where undefined).
    """
    probs, labels = check_probs_labels(probs, labels)
    preds = predict(probs)
    rates = _class_rates(labels, preds, probs.shape[1], specificity=False)
    return _summary(probs, labels, preds, rates, auroc_per_class(probs, labels), n_bins)


def _summary(probs: np.ndarray, labels: np.ndarray, preds: np.ndarray, rates: dict[str, np.ndarray],
             aucs: np.ndarray, n_bins: int) -> dict[str, float]:
    """:func:`summary_metrics` from what the caller has already computed (predictions, rates, AUROCs)."""
    return {
        "accuracy": _accuracy(preds, labels),
        "balanced_accuracy": _balanced_accuracy(rates),
        "macro_precision": float(rates["precision"].mean()),
        "macro_recall": float(rates["sensitivity"].mean()),
        "macro_f1": float(rates["f1"].mean()),
        "auroc_macro": _macro_auroc(aucs),
        "ece": expected_calibration_error(probs, labels, n_bins),
        "nll": negative_log_likelihood(probs, labels),
    }


def classification_report(
    probs: np.ndarray, labels: np.ndarray, classes: list[str], n_bins: int = DEFAULT_ECE_BINS
) -> dict[str, Any]:
    """All metrics for one model, JSON-ready.

    Args:
        probs: ``(N, K)`` probabilities.
        labels: ``(N,)`` labels.
        classes: the K class names, in column order.
        n_bins: ECE bins.

    Returns:
        The summary metrics, plus ``per_class`` (class name to precision, sensitivity, specificity, f1, auroc,
        support) and ``confusion_matrix`` (nested lists, rows true).
    """
    probs, labels = check_probs_labels(probs, labels)
    if len(classes) != probs.shape[1]:
        raise ValueError(f"classes: expected {probs.shape[1]} names to match probs, received {len(classes)}")
    preds = predict(probs)
    cm = confusion_matrix(labels, preds, probs.shape[1])
    rates = _class_rates(labels, preds, probs.shape[1], specificity=True)
    aucs = auroc_per_class(probs, labels)
    out: dict[str, Any] = _summary(probs, labels, preds, rates, aucs, n_bins)
    out["per_class"] = {
        name: {
            "precision": float(rates["precision"][i]),
            "sensitivity": float(rates["sensitivity"][i]),
            "specificity": float(rates["specificity"][i]),
            "f1": float(rates["f1"][i]),
            "auroc": float(aucs[i]),
            "support": int(rates["support"][i]),
        }
        for i, name in enumerate(classes)
    }
    out["confusion_matrix"] = cm.tolist()
    return out
