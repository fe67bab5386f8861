"""The evidence for duplicate groups, drawn: a contact sheet of the groups, and the nearest-neighbour distances.

People should look instead of reading hash lists. :func:`duplicate_sheet` draws one row per group, each image
captioned with its file, its class, and its hash distance (bits) and aligned detail correlation to the group's
medoid (the image marked ``medoid``). :func:`distance_plot` draws, for every image, the distance to its nearest
other image by hash and its best aligned correlation, with the thresholds on them: copies and distinct images
should form two humps on either side of each line.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

from medens.errors import OverwritesInputError, refuse_output_over_inputs
from medens.io import atomic_path

from .base import LabeledDataset
from .duplicates import DuplicateGroups
from .errors import CorruptImageError
from .imageio import open_regular
from .signatures import HASH_BITS

_TILE = 112
_CAPTION = 40
_MAX_PER_ROW = 8
_RED, _GREY = (200, 30, 30), (90, 90, 90)
_CHARS = 18
#: PNG text chunk that marks a contact sheet or distance plot medens wrote (the next run may replace such a file).
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
    scale = _TILE / max(image.size)  # small images (MedMNIST's 28 px) are enlarged to be seen
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (_TILE, _TILE), (0, 0, 0))
    canvas.paste(image, ((_TILE - image.width) // 2, (_TILE - image.height) // 2))
    return canvas


def _short(text: str) -> str:
    """The end of an id, which tells files apart (``.../benign (12).png``)."""
    return text if len(text) <= _CHARS else "..." + text[-(_CHARS - 3):]


def duplicate_sheet(dataset: LabeledDataset, duplicates: DuplicateGroups, path: str | os.PathLike[str], *,
                    max_groups: int = 12) -> Path:
    """Write a PNG with one row per group: every conflicting group first (title in red), then the largest others.

    Each image is captioned with the end of its id, its class, and (but the medoid's) its distance in bits and
    its aligned correlation to the group's medoid; a row shows at most eight images and says how many more.

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
            f"images, {len(duplicates.conflicts)} with conflicting labels (hash <= {duplicates.threshold} bits, "
            f"detail correlation >= {duplicates.min_correlation})")
    draw.text((4, 4), head if rows else head + "; nothing to show", fill=(0, 0, 0))
    for r, group in enumerate(rows):
        top = 24 + r * row_h
        conflict = group in conflicts
        label = f"group of {len(group)}" + (" - LABEL CONFLICT" if conflict else "")
        if len(group) > _MAX_PER_ROW:
            label += f" (first {_MAX_PER_ROW} shown)"
        draw.text((4, top + 2), label, fill=_RED if conflict else _GREY)
        medoids = {duplicates.evidence[i][0] for i in group if i in duplicates.evidence}
        shown = sorted(group, key=lambda i: (i not in medoids, i))[:_MAX_PER_ROW]
        for c, index in enumerate(shown):
            left = 4 + c * (_TILE + 4)
            sheet.paste(_tile(dataset, index), (left, top + title_h))
            y = top + title_h + _TILE + 1
            draw.text((left, y), _short(dataset.ids[index]), fill=(0, 0, 0))
            draw.text((left, y + 12), dataset.classes[dataset.targets[index]][:_CHARS], fill=(0, 0, 0))
            if index in duplicates.evidence:
                _, bits, similarity = duplicates.evidence[index]
                draw.text((left, y + 24), f"{bits} bits, r={similarity:.2f}", fill=_GREY)
            elif index in medoids:
                draw.text((left, y + 24), "medoid", fill=_GREY)
            else:
                draw.text((left, y + 24), "same group (dataset)", fill=_GREY)
    path = Path(path)
    with atomic_path(path, fsync=False) as tmp:
        mark = PngInfo()
        mark.add_text(*SHEET_MARK)
        sheet.save(tmp, format="PNG", pnginfo=mark)
    return path


def distance_plot(dataset_name: str, duplicates: DuplicateGroups, path: str | os.PathLike[str]) -> Path:
    """Write a PNG with two histograms over the images: nearest-neighbour hash distance, best aligned correlation.

    Each has its threshold drawn on it (``threshold`` bits; ``min_correlation``); the counts are on a log scale
    so that a hump of a few copies shows beside thousands of distinct images.

    Raises:
        ValueError: ``duplicates`` has no nearest-neighbour measurements (made by an older detector run).

    Returns:
        The path written (atomically).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if duplicates.nearest_distance is None or duplicates.nearest_similarity is None:
        raise ValueError("argument 'duplicates': expected nearest-neighbour measurements "
                         "(from find_duplicates), received none")
    distance = duplicates.nearest_distance[np.isfinite(duplicates.nearest_distance)]
    similarity = duplicates.nearest_similarity[np.isfinite(duplicates.nearest_similarity)]
    fig = Figure(figsize=(10, 3.8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    left.hist(distance, bins=np.arange(0, HASH_BITS + 5, 4), color="tab:blue", log=True)
    left.axvline(duplicates.threshold, color="tab:red", linestyle="--",
                 label=f"threshold {duplicates.threshold} bits (candidates left of it)")
    left.set_xlabel(f"hash distance to the nearest other image (bits of {HASH_BITS})")
    left.set_ylabel("images")
    left.legend(loc="upper right", fontsize=8)
    right.hist(similarity, bins=np.linspace(-0.2, 1.0, 61), color="tab:green", log=True)
    right.axvline(duplicates.min_correlation, color="tab:red", linestyle="--",
                  label=f"min_correlation {duplicates.min_correlation} (copies right of it)")
    right.set_xlabel("aligned detail correlation with the most alike candidate")
    right.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"{dataset_name}: {len(duplicates.groups)} duplicate groups, {duplicates.images_in_groups} "
                 f"images; largest {duplicates.largest_group}")
    path = Path(path)
    with atomic_path(path, fsync=False) as tmp:
        fig.savefig(tmp, format="png", metadata=dict([SHEET_MARK]))
    return path
