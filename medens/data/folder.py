"""A generic image-folder dataset: one sub-folder per class, any image type Pillow reads.

Layouts::

    root/<class>/**/*.<ext>                         classes = sorted sub-folder names
    root/{train,val,test}/<class>/**/*.<ext>        the same, with official splits taken from the top folders
                                                    (``valid``/``validation`` count as ``val``)

Images may sit in nested folders inside a class folder. Hidden files, ``__MACOSX`` and files whose extension
Pillow does not register (``.txt``, ``.csv``, ...) are ignored. Classes, in label order, are the class folder
names sorted alphabetically (case-sensitive, as :func:`sorted` orders strings).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import DatasetError
from .filedataset import ImageDataset, Sample, class_folder_samples
from .files import describe_folder, list_images, require_root, subfolders

NAME = "folder"
SPLIT_FOLDERS: dict[str, str] = {"train": "train", "val": "val", "valid": "val", "validation": "val",
                                 "test": "test"}


def _split_dirs(root: Path) -> dict[str, Path] | None:
    """``{split: folder}`` when every sub-folder of ``root`` is a split folder, else None."""
    children = subfolders(root)
    names = [c.name.lower() for c in children]
    if not children or not all(n in SPLIT_FOLDERS for n in names):
        return None
    found = {SPLIT_FOLDERS[c.name.lower()]: c for c in children}
    if len(found) != len(children):
        raise DatasetError(f"{NAME}: {str(root)!r} holds more than one folder for the same split: {names}")
    return found


def _class_dirs(folder: Path) -> dict[str, Path]:
    classes = {c.name: c for c in subfolders(folder)}
    if len(classes) < 2:
        inner = f" (it holds {describe_folder(folder)})"
        raise DatasetError(
            f"{NAME}: expected one sub-folder per class (at least two) in {str(folder)!r}; "
            f"found {len(classes)} sub-folder(s){inner}. If the class folders sit one level deeper, "
            f"point root at that folder."
        )
    return classes


def load_folder(root: str | os.PathLike[str], **options) -> ImageDataset:
    """Read an image-folder dataset from ``root`` (see the module docstring).

    Args:
        root: Folder of class folders, or of ``train``/``val``/``test`` folders of class folders.
        **options: Passed to :class:`ImageDataset` (``strict``, ``verify``, ``high_bit_depth``).

    Raises:
        DatasetNotFoundError: ``root`` does not exist.
        DatasetError: Fewer than two class folders, an empty class folder, or split folders whose class
            folders differ.
    """
    base = require_root(root, NAME)
    splits = _split_dirs(base)
    if splits is None:
        per_split = {None: _class_dirs(base)}
        classes = sorted(per_split[None])
    else:
        per_split = {split: _class_dirs(folder) for split, folder in splits.items()}
        classes = sorted(set().union(*per_split.values()))
        if "train" in per_split and set(per_split["train"]) != set(classes):
            raise DatasetError(
                f"{NAME}: the train folder must hold every class; expected {classes}, "
                f"found {sorted(per_split['train'])} in {str(splits['train'])!r}"
            )
    samples: list[Sample] = []
    for split, class_dirs in per_split.items():
        samples += class_folder_samples(NAME, classes, class_dirs, split=split,
                                        list_files=lambda folder: list_images(folder, recursive=True))
    return ImageDataset(NAME, base, classes, samples, **options)
