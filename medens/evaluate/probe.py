"""Did pre-training learn anything? Linear and k-nearest-neighbour probes of a frozen encoder.

The first number to look at after a self-supervised pre-training (MAE's linear probe, DINO's k-NN probe): the
encoder is frozen, every image is encoded once into its globally average-pooled final feature map, and two simple
classifiers are scored on those features:

- ``linear``: a logistic regression on standardised features (scikit-learn);
- ``knn``: the majority label of the ``k`` nearest neighbours (Euclidean, on the same standardised features).

Both are scored by cross-validation over the images they are given (a pre-training passes its training and
validation images, never the test images), folds grouped so that near-duplicates and images of one lesion stay on
one side, as every split of medens keeps them: a handful of validation images alone cannot tell a few points
apart. The same is done for the same network at its random initialisation; the gain of the encoder over it is what
pre-training bought. Labels are used to score only; pre-training itself never sees them.

A BatchNorm encoder's running statistics were gathered on masked images (visible positions only, beside empty
ones), not on the whole images the probe and fine-tuning show it. On real BUSI, encoding with those statistics
scored the linear probe 0.52 where the same weights with statistics of the whole images scored 0.61 (random init
0.41-0.44; benchmarks/RESULTS.md). So the probe re-estimates them (``refresh_batchnorm``) on a copy of the encoder,
over the probe's own images and without labels, for the encoder and for random init alike.

scikit-learn does the fitting and the fold bookkeeping (``StratifiedGroupKFold``, ``cross_val_predict``); what is
written here is the feature extraction and the record.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "PROBE_KNN_NEIGHBOURS",
    "PROBE_FOLDS",
    "ProbeSkipped",
    "fold_count",
    "encoder_features",
    "probe_groups",
    "probe_scores",
    "probe_record",
]

_logger = logging.getLogger(__name__)

#: Neighbours of the k-NN probe (fewer when a fold's training part is smaller).
PROBE_KNN_NEIGHBOURS = 20
#: Cross-validation folds of both probes (fewer when the smallest class has fewer groups).
PROBE_FOLDS = 5
#: The probes, as ``probe.json`` names them.
PROBES = ("linear", "knn")


class ProbeSkipped(Exception):
    """The probe cannot be scored on these images (no labels, one class, too few images); the message says why."""


@torch.no_grad()
def encoder_features(
    encoder: nn.Module,
    images: Any,
    *,
    normalize: Any = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = False,
    refresh_batchnorm: bool = False,
) -> np.ndarray:
    """Globally average-pooled final features of ``encoder`` for every image, in evaluation mode.

    Args:
        encoder: a timm ConvNeXt (or any timm model) with ``forward_features``; its mode is restored afterwards.
        images: a map-style dataset of ``(image, label)`` pairs, images ``(3, H, W)`` float tensors.
        normalize: applied to each batch before the encoder (e.g. ``MaskedConvNeXt.normalize``), or None.
        batch_size: images per forward pass.
        device: where to run.
        progress: show a progress bar.
        refresh_batchnorm: first replace the BatchNorm running statistics, on a copy of ``encoder`` (the model
            passed in is never changed), by their average over ``images``.

    Returns:
        ``(N, C)`` float64 features.
    """
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    if refresh_batchnorm and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in encoder.modules()):
        from medens.engine import recompute_batchnorm_statistics

        encoder = copy.deepcopy(encoder)
        recompute_batchnorm_statistics(_Features(encoder, normalize), images, batch_size=batch_size)

    was_training = encoder.training
    encoder.eval()
    chunks = []
    try:
        loader = DataLoader(images, batch_size=batch_size, shuffle=False)
        for batch, _ in tqdm(loader, desc="probe features", disable=not progress, leave=False):
            batch = batch.to(device)
            if normalize is not None:
                batch = normalize(batch)
            feats = encoder.forward_features(batch)
            chunks.append(feats.float().mean(dim=(-2, -1)).cpu().double().numpy())
    finally:
        encoder.train(was_training)
    width = getattr(encoder, "num_features", 0)
    return np.concatenate(chunks) if chunks else np.zeros((0, width))


class _Features(nn.Module):
    """``encoder.forward_features`` of normalised images, as one module (for the BatchNorm re-estimation)."""

    def __init__(self, encoder: nn.Module, normalize: Any) -> None:
        super().__init__()
        self.encoder = encoder
        self.normalize = normalize

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.forward_features(images if self.normalize is None else self.normalize(images))


def probe_groups(ids: Sequence[str], dataset_groups: Sequence[str | None] | None,
                 duplicate_groups: Sequence[Sequence[str]] | None) -> np.ndarray:
    """One integer group per image: images of one duplicate group, or of one dataset group (a lesion), share it.

    Args:
        ids: the images' ids, in probe order.
        dataset_groups: the dataset's own group of each image (``None`` entries or ``None``: none known).
        duplicate_groups: near-duplicate groups as lists of ids (``splits.json``'s ``duplicates.groups``).

    Returns:
        ``(N,)`` int64 group labels; a group joins every image linked by either relation.
    """
    parent = list(range(len(ids)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(members: list[int]) -> None:
        roots = [find(i) for i in members]
        for r in roots[1:]:
            parent[r] = roots[0]

    position = {item: i for i, item in enumerate(ids)}
    for group in duplicate_groups or ():
        join([position[i] for i in group if i in position])
    by_dataset_group: dict[str, list[int]] = {}
    for i, group in enumerate(dataset_groups or ()):
        if group is not None:
            by_dataset_group.setdefault(group, []).append(i)
    for members in by_dataset_group.values():
        join(members)
    roots = [find(i) for i in range(len(ids))]
    _, labels = np.unique(roots, return_inverse=True)
    return labels.astype(np.int64)


def fold_count(labels: np.ndarray, groups: np.ndarray, folds: int = PROBE_FOLDS) -> int:
    """The folds a probe's cross-validation can have: ``folds``, or fewer when a class has fewer groups.

    Raises:
        ProbeSkipped: fewer than two classes, or a class with fewer than two groups.
    """
    classes = np.unique(labels)
    if len(classes) < 2:
        raise ProbeSkipped(f"the probe images carry {len(classes)} class(es); a probe needs labels of two or more")
    groups_per_class = min(len(np.unique(groups[labels == c])) for c in classes)
    usable = min(int(folds), int(groups_per_class))
    if usable < 2:
        raise ProbeSkipped("a class has fewer than two groups of images; no cross-validation can score a probe")
    return usable


def probe_scores(
    features: np.ndarray,
    labels: Sequence[int],
    groups: Sequence[int] | None = None,
    *,
    folds: int = PROBE_FOLDS,
    neighbours: int = PROBE_KNN_NEIGHBOURS,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Cross-validated accuracy and balanced accuracy of the linear and the k-NN probe.

    Every image is predicted once, by the probe fitted on the folds that do not hold it (grouped, stratified).

    Args:
        features: ``(N, C)`` features.
        labels: ``(N,)`` class indices.
        groups: ``(N,)`` group labels kept within one fold (None: every image its own group).
        folds: folds of the cross-validation (fewer when the smallest class has fewer groups).
        neighbours: ``k`` of the k-NN probe.
        seed: seed of the fold assignment.

    Returns:
        ``{"linear": {"accuracy", "balanced_accuracy"}, "knn": {...}}``.

    Raises:
        ProbeSkipped: fewer than two classes, or a class with fewer than two groups.
        ValueError: features and labels of different lengths.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"features: expected an (N, C) array with one row per label ({y.shape[0]}), received {x.shape}"
        )
    g = np.arange(len(y)) if groups is None else np.asarray(groups)
    folds = fold_count(y, g, folds)
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    splits = list(cv.split(x, y, g))
    smallest_train = min(len(train) for train, _ in splits)
    probes = {
        "linear": make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
        "knn": make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=min(neighbours, smallest_train))),
    }
    scores = {}
    for name, estimator in probes.items():
        predicted = cross_val_predict(estimator, x, y, cv=splits)
        scores[name] = {
            "accuracy": float(accuracy_score(y, predicted)),
            "balanced_accuracy": float(balanced_accuracy_score(y, predicted)),
        }
    return scores


def probe_record(
    encoder_features_: np.ndarray,
    random_features: np.ndarray,
    labels: Sequence[int],
    groups: Sequence[int] | None,
    *,
    mask_grid: Sequence[int],
    seed: int = 0,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The content of ``probe.json``: both probes for the encoder and for random init, and the gains.

    Returns:
        ``{"mask_grid": [rows, cols], "num_images", "num_classes", "folds", "neighbours", "encoder": {"linear":
        {...}, "knn": {...}}, "random_init": {...}, "gain": {"linear": {...}, "knn": {...}}, **extra}``.

    Raises:
        ProbeSkipped: as :func:`probe_scores`.
    """
    y = np.asarray(labels, dtype=np.int64)
    folds = fold_count(y, np.arange(len(y)) if groups is None else np.asarray(groups))
    encoder = probe_scores(encoder_features_, y, groups, seed=seed)
    random_init = probe_scores(random_features, y, groups, seed=seed)
    gain = {
        probe: {metric: encoder[probe][metric] - random_init[probe][metric] for metric in encoder[probe]}
        for probe in PROBES
    }
    return {
        "mask_grid": [int(v) for v in mask_grid],
        "num_images": int(len(y)),
        "num_classes": int(len(np.unique(y))),
        "folds": folds,
        "neighbours": PROBE_KNN_NEIGHBOURS,
        "encoder": encoder,
        "random_init": random_init,
        "gain": gain,
        **(extra or {}),
    }
