"""PNG figures of an evaluation: confusion matrices, ROC curves and reliability diagrams.

Figures are drawn with matplotlib's non-interactive Agg canvas (no display needed) and saved atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medens.evaluate.metrics import (
    DEFAULT_ECE_BINS,
    binary_auroc,
    confusion_matrix,
    expected_calibration_error,
    predict,
    reliability_bins,
    roc_curve,
)
from medens.io import atomic_path

_PANEL_INCHES = 3.6
_DPI = 120


def _grid(n_panels: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(n_panels, max_cols)
    return math.ceil(n_panels / cols), cols


def _new_figure(n_panels: int) -> tuple[Figure, list]:
    rows, cols = _grid(n_panels)
    fig = Figure(figsize=(_PANEL_INCHES * cols, _PANEL_INCHES * rows + 0.3), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def plot_confusion_matrices(
    probs_by_model: Mapping[str, np.ndarray],
    labels: np.ndarray,
    classes: Sequence[str],
    path: str | os.PathLike[str],
) -> Path:
    """One confusion matrix per model: cells shaded by the row fraction and labelled with counts.

    Args:
        probs_by_model: display name to ``(N, K)`` probabilities.
        labels: ``(N,)`` labels.
        classes: the K class names.
        path: PNG to write.

    Returns:
        ``path``.
    """
    k = len(classes)
    fig, axes = _new_figure(len(probs_by_model))
    for ax, (name, probs) in zip(axes, probs_by_model.items(), strict=True):
        cm = confusion_matrix(labels, predict(probs), k)
        row_sum = cm.sum(axis=1, keepdims=True)
        frac = np.divide(cm, row_sum, out=np.zeros(cm.shape), where=row_sum > 0)
        ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    f"{cm[i, j]}\n{frac[i, j]:.0%}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if frac[i, j] > 0.5 else "black",
                )
        ax.set_xticks(range(k), classes, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(k), classes, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(name, fontsize=9)
    fig.suptitle("Confusion matrices (test split; shade = fraction of the true class)", fontsize=10)
    return _save(fig, path)


def plot_roc_curves(
    probs_by_model: Mapping[str, np.ndarray],
    labels: np.ndarray,
    classes: Sequence[str],
    path: str | os.PathLike[str],
) -> Path:
    """One-vs-rest ROC curves: a panel per class, a line per model with its AUROC in the legend.

    Classes without both positive and negative test images get an empty panel saying so.
    """
    labels = np.asarray(labels)
    fig, axes = _new_figure(len(classes))
    for k, (ax, cls) in enumerate(zip(axes, classes, strict=True)):
        positive = labels == k
        ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
        if positive.all() or not positive.any():
            ax.text(0.5, 0.5, "undefined:\nonly one outcome", ha="center", va="center")
        else:
            for name, probs in probs_by_model.items():
                fpr, tpr = roc_curve(probs[:, k], positive)
                ax.plot(fpr, tpr, linewidth=1.5, label=f"{name} ({binary_auroc(probs[:, k], positive):.3f})")
            # Below the panel: inside it would hide the steep start of the curves.
            ax.legend(
                fontsize=7,
                loc="upper center",
                bbox_to_anchor=(0.5, -0.22),
                title="model (AUROC)",
                title_fontsize=7,
            )
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate")
        ax.set_title(f"{cls} vs rest", fontsize=9)
    fig.suptitle("ROC curves (test split, one-vs-rest)", fontsize=10)
    return _save(fig, path)


def plot_reliability(
    probs_by_model: Mapping[str, np.ndarray],
    labels: np.ndarray,
    path: str | os.PathLike[str],
    n_bins: int = DEFAULT_ECE_BINS,
) -> Path:
    """Reliability diagrams: accuracy against top-class confidence per bin, a panel per model.

    Bars show each bin's accuracy, red dots its mean confidence (the red line is the gap); the diagonal is perfect
    calibration. The title gives the expected calibration error.
    """
    fig, axes = _new_figure(len(probs_by_model))
    width = 1.0 / n_bins
    for ax, (name, probs) in zip(axes, probs_by_model.items(), strict=True):
        bins = reliability_bins(probs, labels, n_bins)
        left = bins["edges"][:-1]
        filled = bins["count"] > 0
        acc = bins["accuracy"][filled]
        conf = bins["confidence"][filled]
        centre = left[filled] + width / 2
        ax.bar(
            left[filled],
            acc,
            width=width,
            align="edge",
            color="tab:blue",
            alpha=0.8,
            edgecolor="white",
        )
        ax.vlines(centre, acc, conf, color="tab:red", linewidth=1.5)
        ax.plot(centre, conf, "o", color="tab:red", markersize=3.5)
        ax.plot([0, 1], [0, 1], color="0.3", linestyle="--", linewidth=1)
        ece = expected_calibration_error(probs, labels, n_bins)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_xlabel("confidence (top class)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{name}\nECE = {ece:.3f}", fontsize=9)
    fig.suptitle(
        f"Reliability diagrams (test split, {n_bins} bins): bars = accuracy per bin, "
        "red dots = the bin's mean confidence (red line = gap), dashed = perfect calibration",
        fontsize=9,
    )
    return _save(fig, path)


def plot_loss_curve(
    history: Sequence[Mapping[str, object]], path: str | os.PathLike[str], *, title: str = "training loss"
) -> Path:
    """The loss of every epoch of a run (``Trainer.history`` or the rows of ``log.csv``), on a log-scaled axis.

    Rows without a finite ``train_loss`` are left out. A note under the title gives the share by which the last fifth of
    the epochs lowered the loss (a curve that has flattened changes by little). Where rows carry a pre-training's
    probe columns (``probe_linear_bacc``, ``probe_knn_bacc`` and their ``random_`` baselines), a second panel draws
    the probes' balanced accuracy against the epoch, random init dashed.
    """
    points = [(int(row["epoch"]), float(row["train_loss"])) for row in history
              if row.get("train_loss") is not None and math.isfinite(float(row["train_loss"]))]
    probe_rows = [row for row in history if row.get("probe_linear_bacc") is not None]
    fig, axes = _new_figure(2 if probe_rows else 1)
    fig.set_size_inches(_PANEL_INCHES * (2.4 if probe_rows else 1.6), _PANEL_INCHES)
    ax = axes[0]
    if points:
        epochs, losses = zip(*points, strict=True)
        ax.plot(epochs, losses, marker="o" if len(points) < 30 else None, markersize=3)
        if all(v > 0 for v in losses):
            ax.set_yscale("log")
        ax.set_title(f"{title}\n{_last_fifth_note(losses)}", fontsize=9)
    else:
        ax.set_title(f"{title}\n(no finished epoch)", fontsize=9)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if probe_rows:
        ax = axes[1]
        epochs = [int(row["epoch"]) for row in probe_rows]
        for probe, colour in (("linear", "tab:blue"), ("knn", "tab:orange")):
            ax.plot(epochs, [float(row[f"probe_{probe}_bacc"]) for row in probe_rows], marker="o", markersize=3,
                    color=colour, label=f"{probe} probe, encoder")
            ax.plot(epochs, [float(row[f"probe_{probe}_random_bacc"]) for row in probe_rows], linestyle="--",
                    color=colour, label=f"{probe} probe, random init")
        ax.set_title("probes of the frozen encoder (cross-validated)", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("balanced accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def _last_fifth_note(losses: Sequence[float]) -> str:
    n = len(losses)
    start = n - max(1, n // 5) - 1
    if start < 0 or losses[start] == 0:
        return f"final loss {losses[-1]:.4g}"
    change = (losses[start] - losses[-1]) / losses[start]
    return f"final loss {losses[-1]:.4g}; the last fifth of the epochs lowered it by {100 * change:.1f}%"
