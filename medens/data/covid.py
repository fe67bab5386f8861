"""The COVID-19 Radiography Database (Chowdhury et al., 2020; Rahman et al., 2021), as published on Kaggle.

Current release::

    COVID-19_Radiography_Dataset/
        COVID/images/*.png            COVID/masks/*.png (ignored)
        Lung_Opacity/images/*.png     Normal/images/*.png     Viral Pneumonia/images/*.png
        COVID.metadata.xlsx, ... (ignored)

Older releases keep the images directly in the class folders (``COVID/*.png``), and the first ones had no
``Lung_Opacity`` class and spelled folders ``COVID-19`` and ``NORMAL``; all of these are accepted. ``root`` may
be the dataset folder or its parent. No official split.

Classes, in label order, are those present among ``COVID``, ``Lung_Opacity``, ``Normal``, ``Viral Pneumonia``
(alphabetical). A class whose folder is absent is left out with a warning, so with an old release the classes
are ``["COVID", "Normal", "Viral Pneumonia"]``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .errors import DatasetError
from .filedataset import ImageDataset, class_folder_samples
from .files import describe_folder, find_child_dir, list_images, require_root, subfolders

logger = logging.getLogger(__name__)

NAME = "covid"
# Canonical class name -> folder names seen across releases (matched case-insensitively).
CLASS_FOLDERS: dict[str, tuple[str, ...]] = {
    "COVID": ("COVID", "COVID-19"),
    "Lung_Opacity": ("Lung_Opacity", "Lung Opacity"),
    "Normal": ("Normal",),
    "Viral Pneumonia": ("Viral Pneumonia", "Viral_Pneumonia"),
}
ALL_CLASSES: list[str] = list(CLASS_FOLDERS)


def _class_dirs(folder: Path) -> dict[str, Path]:
    found = {}
    for name, aliases in CLASS_FOLDERS.items():
        match = find_child_dir(folder, aliases)
        if match is not None:
            found[name] = match
    return found


def find_covid_dir(root: Path) -> tuple[Path, dict[str, Path]]:
    """The folder holding the class folders (``root`` or one of its sub-folders) and the class folders found."""
    for candidate in [root, *subfolders(root)]:
        found = _class_dirs(candidate)
        if found:
            return candidate, found
    raise DatasetError(
        f"{NAME}: expected class folders among {ALL_CLASSES} in {str(root)!r} or one of its sub-folders; "
        f"found {describe_folder(root)}"
    )


def class_images(folder: Path) -> list[Path]:
    """Images of one class: ``<class>/images/*`` in the current release, else ``<class>/*`` (masks ignored)."""
    images_dir = find_child_dir(folder, ["images"])
    return list_images(images_dir if images_dir is not None else folder)


def load_covid(root: str | os.PathLike[str], **options) -> ImageDataset:
    """Read the COVID-19 Radiography Database from ``root``.

    Args:
        root: The dataset folder (e.g. ``COVID-19_Radiography_Dataset``) or its parent.
        **options: Passed to :class:`ImageDataset` (``strict``, ``verify``, ``high_bit_depth``).

    Raises:
        DatasetNotFoundError: ``root`` does not exist.
        DatasetError: No class folder found, or a class folder holds no images.
    """
    base, found = find_covid_dir(require_root(root, NAME))
    missing = [name for name in ALL_CLASSES if name not in found]
    if missing:
        logger.warning("%s: class folders %s not found in %s; these classes are left out", NAME, missing, base)
    classes = [name for name in ALL_CLASSES if name in found]
    samples = class_folder_samples(NAME, classes, found, list_files=class_images)
    return ImageDataset(NAME, base, classes, samples, **options)
