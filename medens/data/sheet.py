"""Contact sheets: duplicate groups drawn as rows of images, so people can look instead of reading hash lists."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

from medens.engine.atomic import atomic_path
from medens.errors import OverwritesInputError, refuse_output_over_inputs

from .base import LabeledDataset
from .duplicates import DuplicateGroups
from .errors import CorruptImageError
from .imageio import open_regular

_TILE = 112
_CAPTION = 14
_MAX_PER_ROW = 8
_RED, _GREY = (200, 30, 30), (90, 90, 90)
#: PNG text chunk that marks a contact sheet medens wrote (such a file may be replaced by the next sheet).
SHEET_MARK = ("Software", "medens duplicate contact sheet")


def _input_files(dataset: LabeledDataset) -> list[str]:
    """Every file the dataset reads or listed: its images (or archive), and the files it skipped."""
    fingerprint = dataset.fingerprint()
    while "cached" in fingerprint:  # a decode cache wraps the dataset it serves
        fingerprint = fingerprint["cached"]
    files = [str(entry[0]) for entry in fingerprint.get("files", [])]
    return files + [s.path for s in dataset.skipped]


def _is_sheet(path: Path) -> bool:
    try:
        with open_regular(path) as handle, Image.open(handle) as image:  # never blocks on a pipe
            return image.info.get(SHEET_MARK[0]) == SHEET_MARK[1]
    except (CorruptImageError, OSError, ValueError, SyntaxError):
        return False


def check_sheet_path(dataset: LabeledDataset, path: str | os.PathLike[str], option: str = "--sheet") -> None:
    """Refuse a contact-sheet path that would overwrite the dataset's data or become part of it.

    Refused: one of the dataset's files (an image, an archive, a skipped file, under any name or link); inside
    the dataset's folder, a folder that holds its images (the sheet would be read as an image next time) and an
    existing file that is not an earlier contact sheet (a mask, a CSV: data the dataset ships).

    Raises:
        OverwritesInputError: (a usage error) naming ``option``, the path and the input it would overwrite.
    """
    files = _input_files(dataset)
    refuse_output_over_inputs(option, path, files=files)
    target = Path(path).expanduser().resolve()
    if dataset.root is None or not target.is_relative_to(Path(dataset.root).resolve()):
        return
    image_folders = {Path(f).resolve().parent for f in files}
    if target.parent in image_folders:
        raise OverwritesInputError(
            f"{option}: expected a path outside the image folders of {dataset.name}, received {path}: a PNG there "
            f"would be read as one of its images next time; choose another {option}"
        )
    if target.exists() and not _is_sheet(target):
        raise OverwritesInputError(
            f"{option}: expected a new file or an earlier contact sheet, received {path}, a file of the dataset "
            f"folder {dataset.root} that medens did not write; choose another {option}"
        )


def _tile(dataset: LabeledDataset, index: int) -> Image.Image:
    try:
        image = dataset.load_image(index)
    except CorruptImageError:
        return Image.new("RGB", (_TILE, _TILE), (255, 0, 255))
    image.thumbnail((_TILE, _TILE))
    canvas = Image.new("RGB", (_TILE, _TILE), (0, 0, 0))
    canvas.paste(image, ((_TILE - image.width) // 2, (_TILE - image.height) // 2))
    return canvas


def duplicate_sheet(dataset: LabeledDataset, duplicates: DuplicateGroups, path: str | os.PathLike[str], *,
                    max_groups: int = 12) -> Path:
    """Write a PNG with one row per group: every conflicting group first (title in red), then the largest others.

    Each image is captioned with its class; a row shows at most eight images and says how many more there are.

    Returns:
        The path written (atomically).

    Raises:
        OverwritesInputError: ``path`` would overwrite the dataset's data or become part of it
            (:func:`check_sheet_path`, checked before drawing).
    """
    check_sheet_path(dataset, path)
    conflicts = duplicates.conflicts
    others = [g for g in duplicates.groups if g not in conflicts]
    rows = (conflicts + others)[:max_groups] if max_groups > 0 else conflicts + others
    title_h = 18
    row_h = title_h + _TILE + _CAPTION + 6
    width = _MAX_PER_ROW * (_TILE + 4) + 4
    sheet = Image.new("RGB", (width, max(1, len(rows)) * row_h + 24), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    head = (f"{dataset.name}: {len(duplicates.groups)} duplicate groups holding {duplicates.images_in_groups} "
            f"images, {len(duplicates.conflicts)} with conflicting labels (threshold {duplicates.threshold} bits)")
    draw.text((4, 4), head if rows else head + "; nothing to show", fill=(0, 0, 0))
    for r, group in enumerate(rows):
        top = 24 + r * row_h
        conflict = group in conflicts
        label = f"group of {len(group)}" + (" - LABEL CONFLICT" if conflict else "")
        if len(group) > _MAX_PER_ROW:
            label += f" (first {_MAX_PER_ROW} shown)"
        draw.text((4, top + 2), label, fill=_RED if conflict else _GREY)
        for c, index in enumerate(group[:_MAX_PER_ROW]):
            left = 4 + c * (_TILE + 4)
            sheet.paste(_tile(dataset, index), (left, top + title_h))
            caption = dataset.classes[dataset.targets[index]]
            draw.text((left, top + title_h + _TILE + 1), caption[:18], fill=(0, 0, 0))
    path = Path(path)
    with atomic_path(path, fsync=False) as tmp:
        mark = PngInfo()
        mark.add_text(*SHEET_MARK)
        sheet.save(tmp, format="PNG", pnginfo=mark)
    return path
