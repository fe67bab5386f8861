"""Percentile bootstrap confidence intervals, paired across models.

All models are scored on the same resamples of the test images, so the interval of a difference between two
models (``ensemble - member``) is taken over paired draws and reflects that they share their hard and easy cases.
The point estimates come from :func:`~medens.evaluate.metrics.summary_metrics` (scikit-learn). The resamples are
scored by :func:`resample_summary`, the same definitions on numpy arrays: a confusion matrix by ``np.bincount``
and AUROC as the Mann-Whitney statistic on :func:`scipy.stats.rankdata` ranks. scikit-learn's per-call input
checks cost about 30 ms per summary on a 2-core machine, which made 1000 resamples of three models take over a
minute for every ensemble; the numpy path takes well under a millisecond and agrees with scikit-learn to
rounding (``tests/evaluate`` checks it on random resamples).

The resampling is written here because :func:`scipy.stats.bootstrap` does not fit: its percentile interval is
NaN as soon as one resample leaves the metric undefined (an AUROC on a resample that misses a class, common on
small test sets), where these intervals skip such resamples; and one set of draws must score every model and
every metric, so that the intervals of differences are taken over the very same draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from medens.evaluate.metrics import (
    DEFAULT_ECE_BINS,
    SUMMARY_METRICS,
    check_probs_labels,
    expected_calibration_error,
    negative_log_likelihood,
)

#: Default number of bootstrap resamples.
DEFAULT_N_BOOT = 1000

#: Default two-sided confidence level.
DEFAULT_CONFIDENCE = 0.95


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """Resampling indices drawn with replacement.

    Args:
        n: number of test images (N >= 1).
        n_boot: number of resamples (B >= 1).
        seed: seed of the numpy generator, so the draws can be repeated.

    Returns:
        ``(B, N)`` int64 indices into the test set.
    """
    if n < 1:
        raise ValueError(f"n: expected at least 1 test image, received {n}")
    if n_boot < 1:
        raise ValueError(f"n_boot: expected at least 1 resample, received {n_boot}")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n), dtype=np.int64)


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den``, 0 where ``den`` is 0 (scikit-learn's ``zero_division=0``)."""
    return np.divide(num, den, out=np.zeros(num.shape, dtype=np.float64), where=den > 0)


def _mann_whitney_auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """AUROC as the Mann-Whitney U statistic over (average-tie) ranks; NaN when either outcome is absent."""
    from scipy.stats import rankdata

    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def resample_summary(probs: np.ndarray, labels: np.ndarray, n_bins: int = DEFAULT_ECE_BINS) -> dict[str, float]:
    """:func:`~medens.evaluate.metrics.summary_metrics` of checked arrays, on numpy alone (see the module notes).

    Args:
        probs: ``(N, K)`` float64 probabilities, already checked.
        labels: ``(N,)`` int64 labels in ``[0, K)``, already checked, N >= 1.
        n_bins: ECE bins.
    """
    k = probs.shape[1]
    preds = probs.argmax(axis=1)
    cm = np.bincount(labels * k + preds, minlength=k * k).reshape(k, k).astype(np.float64)
    tp, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    precision, recall = _divide(tp, predicted), _divide(tp, support)
    f1 = _divide(2 * precision * recall, precision + recall)
    present = support > 0
    if k == 2:
        aucs = np.full(2, _mann_whitney_auroc(probs[:, 1], labels == 1))
    else:
        aucs = np.array([_mann_whitney_auroc(probs[:, c], labels == c) for c in range(k)])
    return {
        "accuracy": float(np.mean(preds == labels)),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else float("nan"),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "auroc_macro": float(aucs.mean()) if not np.isnan(aucs).any() else float("nan"),
        "ece": expected_calibration_error(probs, labels, n_bins),
        "nll": negative_log_likelihood(probs, labels),
    }


def bootstrap_samples(
    probs_by_model: Mapping[str, np.ndarray],
    labels: np.ndarray,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    n_bins: int = DEFAULT_ECE_BINS,
    metrics: Sequence[str] = SUMMARY_METRICS,
    progress: bool = False,
) -> dict[str, dict[str, np.ndarray]]:
    """Each metric of each model on the same bootstrap resamples.

    Args:
        probs_by_model: model name to ``(N, K)`` probabilities, all over the same N test images.
        labels: ``(N,)`` labels.
        n_boot: number of resamples B.
        seed: seed for the resampling.
        n_bins: ECE bins.
        metrics: which of :data:`SUMMARY_METRICS` to keep.
        progress: show a tqdm bar.

    Returns:
        Model name to metric name to ``(B,)`` float64 values (NaN where a resample leaves a metric undefined,
        e.g. AUROC when a class is missing).
    """
    unknown = [m for m in metrics if m not in SUMMARY_METRICS]
    if unknown:
        raise ValueError(f"metrics: expected names from {list(SUMMARY_METRICS)}, received {unknown}")
    checked = {}
    for name, probs in probs_by_model.items():
        checked[name], _ = check_probs_labels(probs, labels)
    labels = np.asarray(labels, dtype=np.int64)
    idx = bootstrap_indices(labels.shape[0], n_boot, seed)
    out = {name: {m: np.empty(n_boot) for m in metrics} for name in checked}
    for b in tqdm(range(n_boot), desc="bootstrap", disable=not progress, leave=False):
        sel = idx[b]
        y = labels[sel]
        for name, probs in checked.items():
            values = resample_summary(probs[sel], y, n_bins)
            for m in metrics:
                out[name][m][b] = values[m]
    return out


def percentile_interval(samples: np.ndarray, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """Two-sided percentile interval of bootstrap samples, ignoring NaNs.

    Args:
        samples: ``(B,)`` bootstrap values.
        confidence: coverage in (0, 1).

    Returns:
        ``(low, high)``; ``(nan, nan)`` if no sample is finite.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: expected a value in (0, 1), received {confidence}")
    finite = np.asarray(samples, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(low), float(high)


def confidence_intervals(
    samples: Mapping[str, Mapping[str, np.ndarray]], confidence: float = DEFAULT_CONFIDENCE
) -> dict[str, dict[str, tuple[float, float]]]:
    """Percentile intervals for every model and metric of :func:`bootstrap_samples`' output."""
    return {
        name: {m: percentile_interval(vals, confidence) for m, vals in per_metric.items()}
        for name, per_metric in samples.items()
    }


def difference_intervals(
    samples: Mapping[str, Mapping[str, np.ndarray]],
    reference: str,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict[str, dict[str, tuple[float, float]]]:
    """Paired intervals of ``reference - other`` for every other model and metric.

    Args:
        samples: output of :func:`bootstrap_samples`.
        reference: the model the others are compared with (e.g. the ensemble).
        confidence: coverage in (0, 1).

    Returns:
        Other model name to metric name to ``(low, high)`` of the difference.
    """
    if reference not in samples:
        raise KeyError(f"reference: expected one of {list(samples)}, received {reference!r}")
    ref = samples[reference]
    return {
        name: {m: percentile_interval(ref[m] - vals, confidence) for m, vals in per_metric.items()}
        for name, per_metric in samples.items()
        if name != reference
    }
