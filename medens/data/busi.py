"""BUSI, the Breast Ultrasound Images dataset (Al-Dhabyani et al., 2020), as published.

Layout::

    Dataset_BUSI_with_GT/
        benign/     benign (1).png, benign (1)_mask.png, benign (1)_mask_1.png, ...
        malignant/  malignant (1).png, malignant (1)_mask.png, ...
        normal/     normal (1).png, normal (1)_mask.png, ...

``root`` may be the ``Dataset_BUSI_with_GT`` folder or its parent. The segmentation masks beside the
images (``*_mask.png``, ``*_mask_<k>.png``) are never taken for images. BUSI ships no official split and
no patient ids. Classes, in label order: ``benign``, ``malignant``, ``normal``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import DatasetError
from .filedataset import ImageDataset, class_folder_samples
from .files import describe_folder, find_child_dir, list_images, require_root

NAME = "busi"
CLASSES: list[str] = ["benign", "malignant", "normal"]
FOLDER = "Dataset_BUSI_with_GT"
_MASK = re.compile(r"_mask(_\d+)?$", re.IGNORECASE)


def is_mask(path: Path) -> bool:
    """True for BUSI segmentation masks: ``benign (1)_mask.png``, ``benign (1)_mask_1.png``."""
    return bool(_MASK.search(path.stem))


def class_images(folder: Path) -> list[Path]:
    """The images of one class folder, without the segmentation masks beside them."""
    return [p for p in list_images(folder) if not is_mask(p)]


def find_busi_dir(root: Path) -> tuple[Path, dict[str, Path]]:
    """The folder holding the three class folders (``root`` or ``root/Dataset_BUSI_with_GT``), and those folders."""
    for candidate in (root, find_child_dir(root, [FOLDER])):
        if candidate is None:
            continue
        found = {name: find_child_dir(candidate, [name]) for name in CLASSES}
        if all(found.values()):
            return candidate, found  # type: ignore[return-value]
    raise DatasetError(
        f"{NAME}: expected the folders {CLASSES} in {str(root)!r} or in {str(root / FOLDER)!r}; "
        f"found {describe_folder(root)}"
    )


def load_busi(root: str | os.PathLike[str], **options) -> ImageDataset:
    """Read BUSI from ``root`` (see the module docstring for the layout).

    Args:
        root: ``Dataset_BUSI_with_GT`` or the folder that contains it.
        **options: Passed to :class:`ImageDataset` (``strict``, ``verify``, ``high_bit_depth``).

    Raises:
        DatasetNotFoundError: ``root`` does not exist.
        DatasetError: A class folder is missing or holds no images (masks do not count).
    """
    base, folders = find_busi_dir(require_root(root, NAME))
    samples = class_folder_samples(NAME, CLASSES, folders, list_files=class_images)
    return ImageDataset(NAME, base, CLASSES, samples, **options)
