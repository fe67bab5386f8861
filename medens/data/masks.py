"""Lesion masks, where a dataset ships them: where in each image the lesion is.

- ``busi``: the segmentation masks beside each image (``benign (1)_mask.png``, and for some images also
  ``benign (1)_mask_1.png``, ...): an image's lesion is the **union** of its masks.
- ``synthetic``: the generator knows where it painted each lesion (:meth:`SyntheticDataset.lesion_mask`).
- Any dataset of image files (``kvasir``, ``isic2018``, ``folder``, ``covid``; ``busi`` to replace its own), with
  the reader option ``mask_dir=PATH`` (:func:`match_mask_dir`): masks released apart from the images, matched to
  them by image id. Kvasir v2 and ISIC 2018 Task 3 are classification releases; their masks are separate
  downloads: Kvasir-SEG (``images/<id>.jpg`` + ``masks/<id>.jpg``) and ISIC 2018 Task 1
  (``ISIC2018_Task1_{Training,Validation,Test}_GroundTruth/ISIC_<id>_segmentation.png``), whose images only partly
  overlap the classification releases'.

**No mask means no score**, never a zero: :func:`lesion_mask` returns ``None`` for an image without a mask file,
for an empty mask (BUSI's ``normal`` images ship all-black masks) and for an image of a class without a lesion.

A mask is a ``bool (H, W)`` array in the image's own pixels, as stored; :func:`mask_view` puts it in a model's
input frame (the evaluation transform's resize and centre crop).
"""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .busi import is_mask
from .errors import CorruptImageError, DatasetNotFoundError
from .files import list_images, subfolders
from .imageio import read_image

logger = logging.getLogger(__name__)

__all__ = ["NO_LESION_CLASSES", "MASK_THRESHOLD", "MaskFiles", "busi_mask_files", "is_no_lesion_class",
           "mask_image_id", "match_mask_dir",
           "read_union_mask", "lesion_mask", "has_lesion_masks", "mask_view"]

#: Classes whose images show no lesion, so they are never scored (whatever file lies beside them); compared
#: without case, and a class named ``normal-<site>`` (Kvasir's ``normal-cecum``, ...) counts as normal too.
NO_LESION_CLASSES: frozenset[str] = frozenset({"normal"})
#: A mask pixel is lesion from this value of 255 on (half white), so that the ringing of a JPEG mask
#: (Kvasir-SEG's) is not lesion; a mask whose values all lie below it (a 0/1 label image) counts every non-zero pixel.
MASK_THRESHOLD = 128
#: File-name endings that mark a mask and are not part of its image's id: ``_mask``, ``_mask_<k>`` (BUSI),
#: ``_segmentation`` (ISIC 2018 Task 1), ``_segmentation_<k>``; without case.
_MASK_ENDING = re.compile(r"_(?:mask|segmentation)(?:_\d+)?$", re.IGNORECASE)
#: Folders of a release that hold its masks beside a folder of its images: Kvasir-SEG's ``masks/``, ISIC's
#: ``ISIC2018_Task1_*_GroundTruth/``.
_MASK_FOLDER = re.compile(r"^masks?$|groundtruth", re.IGNORECASE)


def is_no_lesion_class(name: str) -> bool:
    """True for a class whose images show no lesion (see :data:`NO_LESION_CLASSES`)."""
    low = name.lower()
    return low in NO_LESION_CLASSES or any(low.startswith(f"{c}-") for c in NO_LESION_CLASSES)


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
    """The union of mask files: a pixel is lesion where any mask is (see :data:`MASK_THRESHOLD`).

    Args:
        files: mask images (any mode; lesion from :data:`MASK_THRESHOLD` on).
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
        pixels = np.asarray(mask)
        arr = pixels >= MASK_THRESHOLD if pixels.max(initial=0) >= MASK_THRESHOLD else pixels > 0
        union = arr if union is None else (union | arr if union.shape == arr.shape else union)
    return union


def mask_image_id(path: str | Path) -> str:
    """The id of the image a mask file belongs to: its stem without a mask ending.

    ``ISIC_0000001_segmentation.png`` -> ``ISIC_0000001`` (ISIC 2018 Task 1); ``benign (1)_mask_1.png`` ->
    ``benign (1)`` (BUSI); a Kvasir-SEG mask keeps its stem, the id of its image (``masks/<id>.jpg``).
    """
    stem = Path(path).stem
    return _MASK_ENDING.sub("", stem) or stem


def _mask_folders(mask_dir: Path) -> list[Path]:
    """Where the masks of ``mask_dir`` are: ``mask_dir`` itself, unless it is a release that holds its masks in
    folders of their own (``masks/``, ``*GroundTruth*``) beside its images, up to two levels down."""
    if _MASK_FOLDER.search(mask_dir.name):
        return [mask_dir]
    found = [c for c in subfolders(mask_dir) if _MASK_FOLDER.search(c.name)]
    if not found:
        found = [g for c in subfolders(mask_dir) for g in subfolders(c) if _MASK_FOLDER.search(g.name)]
    return found or [mask_dir]


def _mask_files(folder: Path) -> list[Path]:
    """The masks under ``folder``; in a folder where some file names end in a mask ending (BUSI's layout), the
    files without one are the images and are left out."""
    by_parent: dict[Path, list[Path]] = defaultdict(list)
    for path in list_images(folder, recursive=True):
        by_parent[path.parent].append(path)
    out: list[Path] = []
    for files in by_parent.values():
        marked = [p for p in files if _MASK_ENDING.search(p.stem)]
        out += marked or files
    return sorted(out)


@dataclass(frozen=True)
class MaskFiles:
    """The mask files of a dataset's images, found in a folder released apart from the images.

    Attributes:
        mask_dir: the folder given (``--dataset-option mask_dir=PATH``).
        files: dataset index -> that image's mask files (several are united); images without one are absent.
        unmatched: ids of masks that name no image of the dataset (e.g. ISIC Task 1 images outside Task 3).
        ambiguous: ids of masks that name several images of the dataset by stem, and so none of them.
    """

    mask_dir: str
    files: dict[int, tuple[Path, ...]]
    unmatched: list[str] = field(default_factory=list)
    ambiguous: list[str] = field(default_factory=list)

    def coverage(self, n_images: int, name: str) -> str:
        """One line: how many of the dataset's ``n_images`` got a mask, and how many masks found no image."""
        share = f" ({100 * len(self.files) / n_images:.1f}%)" if n_images else ""
        line = (f"{name}: lesion masks from {self.mask_dir}: {len(self.files)} of {n_images} images have a mask"
                f"{share}; {len(self.unmatched)} mask ids name no image")
        if self.ambiguous:
            line += f"; {len(self.ambiguous)} name several images by stem and are left out (e.g. {self.ambiguous[0]!r})"
        return line


def match_mask_dir(dataset: Any, mask_dir: str | os.PathLike[str]) -> MaskFiles:
    """Match the masks in ``mask_dir`` to the images of ``dataset`` by image id, and log the coverage.

    A mask's id is its file name without extension and without a mask ending (:func:`mask_image_id`). It matches
    the image whose id without extension, relative to the dataset's root, is the mask's path relative to its mask
    folder (a copy of the dataset's own layout), or else the one image with that file stem. Several masks of one
    image are united when read. ``mask_dir`` may be a folder of masks (Kvasir-SEG's ``masks/``, one of ISIC's
    ``ISIC2018_Task1_*_GroundTruth/``) or a release holding such folders beside its images (searched two levels
    down); a folder mixing images and masks (BUSI's) gives its files with a mask ending. An image file is never
    its own mask (``mask_dir`` pointed at the images gives no mask).

    Args:
        dataset: a dataset of image files (``ids``, ``paths``, ``name``).
        mask_dir: the folder of the masks.

    Returns:
        The matches; a warning when no image got a mask.

    Raises:
        DatasetNotFoundError: ``mask_dir`` is not a folder (named as ``--dataset-option mask_dir``).
    """
    root = Path(mask_dir).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(f"{dataset.name}: --dataset-option mask_dir: expected a folder of lesion masks, "
                                   f"received {str(mask_dir)!r}, which is not a folder")
    by_relative: dict[str, list[Path]] = defaultdict(list)
    by_id: dict[str, list[Path]] = defaultdict(list)
    for folder in _mask_folders(root):
        for path in _mask_files(folder):
            key = mask_image_id(path)
            by_id[key].append(path)
            by_relative[(path.parent.relative_to(folder) / key).as_posix()].append(path)
    stems: dict[str, list[int]] = defaultdict(list)
    for index, path in enumerate(dataset.paths):
        stems[Path(path).stem].append(index)
    files: dict[int, tuple[Path, ...]] = {}
    ambiguous: set[str] = set()
    for index, item in enumerate(dataset.ids):
        image = Path(dataset.paths[index]).resolve()
        own = [p for p in by_relative.get(os.path.splitext(item)[0], []) if p.resolve() != image]
        if own:
            files[index] = tuple(own)
            continue
        stem = Path(item).stem
        found = [p for p in by_id.get(stem, []) if p.resolve() != image]  # never an image as its own mask
        if found:
            if len(stems[stem]) == 1:
                files[index] = tuple(found)
            else:
                ambiguous.add(stem)
    matched = {mask_image_id(p) for found in files.values() for p in found}
    found = MaskFiles(str(root), files, sorted(set(by_id) - matched - ambiguous), sorted(ambiguous))
    if files:
        logger.info("%s", found.coverage(len(dataset.ids), dataset.name))
    else:
        logger.warning("%s; the masks are matched by file name (e.g. mask %r, image %r), so no lesion score can be "
                       "given", found.coverage(len(dataset.ids), dataset.name), next(iter(by_id), None),
                       Path(dataset.ids[0]).stem if dataset.ids else None)
    return found


def _base(dataset: Any) -> Any:
    """The dataset a decode cache wraps (masks are read from the files, never from the cache)."""
    return getattr(dataset, "base", dataset)


def has_lesion_masks(dataset: Any) -> bool:
    """Whether ``dataset`` is of a kind that ships lesion masks (some of its images may still have none)."""
    base = _base(dataset)
    return (getattr(base, "mask_files", None) is not None or base.name == "busi"
            or callable(getattr(base, "lesion_mask", None)))


def lesion_mask(dataset: Any, index: int) -> np.ndarray | None:
    """The lesion mask of item ``index``, ``bool (H, W)`` in the stored image's pixels, or ``None`` (no score).

    ``None`` for a dataset without masks, an image without a mask file, an all-zero mask, and an image of a
    class without a lesion (:func:`is_no_lesion_class`). Masks from ``mask_dir`` (:attr:`mask_files`) come first,
    then the dataset's own.
    """
    base = _base(dataset)
    if is_no_lesion_class(base.classes[base.targets[index]]):
        return None
    given: MaskFiles | None = getattr(base, "mask_files", None)
    own = getattr(base, "lesion_mask", None)
    if given is not None:
        files = given.files.get(index)
        mask = read_union_mask(files, base.image_size(index) or base.load_image(index).size) if files else None
    elif callable(own):
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
