"""Kvasir v2, the gastrointestinal endoscopy dataset (Pogorelov et al., 2017), as published.

Layout: eight class folders of JPEGs, under ``kvasir-dataset-v2/`` or directly under ``root``::

    kvasir-dataset-v2/
        dyed-lifted-polyps/  dyed-resection-margins/  esophagitis/  normal-cecum/
        normal-pylorus/      normal-z-line/           polyps/       ulcerative-colitis/

Kvasir v1 (``kvasir-dataset/``, same classes, half the images) is read the same way. No official split.
Classes, in label order, are the folder names in the order above (alphabetical).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import DatasetError
from .filedataset import ImageDataset, class_folder_samples
from .files import describe_folder, find_child_dir, require_root, subfolders

NAME = "kvasir"
CLASSES: list[str] = [
    "dyed-lifted-polyps",
    "dyed-resection-margins",
    "esophagitis",
    "normal-cecum",
    "normal-pylorus",
    "normal-z-line",
    "polyps",
    "ulcerative-colitis",
]
FOLDERS: tuple[str, ...] = ("kvasir-dataset-v2", "kvasir-dataset")


def find_kvasir_dir(root: Path) -> Path:
    """The folder holding the class folders: ``root``, or ``root/kvasir-dataset-v2`` (or v1's name)."""
    candidates = [root] + [c for c in (find_child_dir(root, [f]) for f in FOLDERS) if c is not None]
    for candidate in candidates:
        present = {p.name for p in subfolders(candidate)}
        if present & set(CLASSES):
            missing = [c for c in CLASSES if c not in present]
            if missing:
                raise DatasetError(
                    f"{NAME}: expected the eight Kvasir class folders in {str(candidate)!r}; "
                    f"missing {missing}, found {describe_folder(candidate)}"
                )
            return candidate
    seg = [c for c in [root, *subfolders(root)] if find_child_dir(c, ["images"]) and find_child_dir(c, ["masks"])]
    hint = (f"; {str(seg[0])!r} looks like Kvasir-SEG (polyp images and their masks, one class): give it as "
            f"--dataset-option mask_dir={seg[0]} with the Kvasir v2 class folders as the data root") if seg else ""
    raise DatasetError(
        f"{NAME}: expected the eight Kvasir class folders ({', '.join(CLASSES)}) in {str(root)!r} "
        f"or in {str(root / FOLDERS[0])!r}; found {describe_folder(root)}{hint}"
    )


def load_kvasir(root: str | os.PathLike[str], **options) -> ImageDataset:
    """Read Kvasir v2 (or v1) from ``root``.

    Args:
        root: ``kvasir-dataset-v2``, the folder that contains it, or a folder holding the class folders.
        **options: Passed to :class:`ImageDataset` (``strict``, ``verify``, ``high_bit_depth``).

    Raises:
        DatasetNotFoundError: ``root`` does not exist.
        DatasetError: A class folder is missing or holds no images.
    """
    base = find_kvasir_dir(require_root(root, NAME))
    samples = class_folder_samples(NAME, CLASSES, {name: base / name for name in CLASSES})
    return ImageDataset(NAME, base, CLASSES, samples, **options)
