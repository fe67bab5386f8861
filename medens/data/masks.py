"""Lesion masks, where a dataset ships them: where in each image the lesion is.

- ``busi``: the segmentation masks beside each image (``benign (1)_mask.png``, and for some images also
  ``benign (1)_mask_1.png``, ...): an image's lesion is the **union** of its masks.
- ``synthetic``: the generator knows where it painted each lesion (:meth:`SyntheticDataset.lesion_mask`).

Every other reader ships none (Kvasir v2 and ISIC 2018 Task 3 are classification releases; the masks of
Kvasir-SEG and ISIC Task 1 are separate downloads with other file names, not read yet). **No mask means no score**,
never a zero: :func:`lesion_mask` returns ``None`` for an image without a mask file, for an empty mask (BUSI's
``normal`` images ship all-black masks) and for an image of a class without a lesion.

A mask is a ``bool (H, W)`` array in the image's own pixels, as stored; :func:`mask_view` puts it in a model's
input frame (the evaluation transform's resize and centre crop).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .busi import is_mask
from .errors import CorruptImageError
from .imageio import read_image

logger = logging.getLogger(__name__)

__all__ = ["NO_LESION_CLASSES", "busi_mask_files", "read_union_mask", "lesion_mask", "has_lesion_masks", "mask_view"]

#: Classes whose images show no lesion, so they are never scored (whatever file lies beside them).
NO_LESION_CLASSES: frozenset[str] = frozenset({"normal"})


def busi_mask_files(image: str | Path) -> list[Path]:
    """The mask files BUSI ships beside ``image``: ``<stem>_mask.png`` and ``<stem>_mask_<k>.png``, sorted."""
    path = Path(image)
    if not path.parent.is_dir():
        return []
    found = [p for p in path.parent.glob(f"{_glob_escape(path.stem)}_mask*{path.suffix}")
             if is_mask(p) and p.stem[: len(path.stem)] == path.stem and _is_own_mask(p.stem[len(path.stem):])]
    return sorted(found)


def _glob_escape(text: str) -> str:
    """``text`` with glob's special characters (``[``, ``]``, ``*``, ``?``) taken literally."""
    return "".join(f"[{c}]" if c in "[]*?" else c for c in text)


def _is_own_mask(suffix: str) -> bool:
    """True for ``_mask`` and ``_mask_<k>`` (so ``a (1)`` does not take ``a (1)1_mask``, nor ``a (1)_mask_x``)."""
    if suffix == "_mask":
        return True
    return suffix.startswith("_mask_") and suffix[len("_mask_"):].isdigit()


def read_union_mask(files: Sequence[str | Path], size: tuple[int, int] | None = None) -> np.ndarray | None:
    """The union of mask files: a pixel is lesion where any mask is non-zero.

    Args:
        files: mask images (any mode; non-zero is lesion).
        size: ``(width, height)`` of the image the masks belong to; a mask of another size is resized (nearest).

    Returns:
        ``bool (H, W)``, or ``None`` when there is no file, or no file could be read.
    """
    union: np.ndarray | None = None
    for file in files:
        try:
            mask = read_image(file).convert("L")
        except CorruptImageError as err:
            logger.warning("%s; the mask is left out", err)
            continue
        if size is not None and mask.size != tuple(size):
            mask = mask.resize(tuple(size), Image.Resampling.NEAREST)
        arr = np.asarray(mask) > 0
        union = arr if union is None else (union | arr if union.shape == arr.shape else union)
    return union


def _base(dataset: Any) -> Any:
    """The dataset a decode cache wraps (masks are read from the files, never from the cache)."""
    return getattr(dataset, "base", dataset)


def has_lesion_masks(dataset: Any) -> bool:
    """Whether ``dataset`` is of a kind that ships lesion masks (some of its images may still have none)."""
    base = _base(dataset)
    return base.name == "busi" or callable(getattr(base, "lesion_mask", None))


def lesion_mask(dataset: Any, index: int) -> np.ndarray | None:
    """The lesion mask of item ``index``, ``bool (H, W)`` in the stored image's pixels, or ``None`` (no score).

    ``None`` for a dataset without masks, an image without a mask file, an all-zero mask, and an image of a
    class in :data:`NO_LESION_CLASSES`.
    """
    base = _base(dataset)
    if base.classes[base.targets[index]] in NO_LESION_CLASSES:
        return None
    own = getattr(base, "lesion_mask", None)
    if callable(own):
        mask = own(index)
    elif base.name == "busi":
        path = Path(base.paths[index])
        files = busi_mask_files(path)
        mask = read_union_mask(files, base.image_size(index)) if files else None
    else:
        return None
    if mask is None or not mask.any():
        return None
    return mask


def mask_view(mask: np.ndarray, transform_geometry: Any) -> np.ndarray:
    """``mask`` through an evaluation transform's geometry (resize and centre crop, nearest neighbour).

    Args:
        mask: ``bool (H, W)``.
        transform_geometry: a transform built with ``build_transforms(..., normalize=False,
            interpolation="nearest")``.

    Returns:
        ``bool (h, w)`` in the model input's frame.
    """
    image = Image.fromarray(mask.astype(np.uint8) * 255).convert("RGB")
    return np.asarray(transform_geometry(image))[0] > 0.5
