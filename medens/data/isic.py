"""ISIC 2018 Task 3 (skin lesion classification, Codella et al. 2019; Tschandl et al. 2018), and HAM10000.

ISIC 2018 Task 3 layout, as downloaded from the challenge site::

    ISIC2018_Task3_Training_Input/ISIC_0024306.jpg ...          (+ ATTRIBUTION.txt, LICENSE.txt)
    ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv
    ISIC2018_Task3_Training_LesionGroupings.csv                 (optional: image,lesion_id,...)
    ISIC2018_Task3_Validation_Input/  ISIC2018_Task3_Validation_GroundTruth/...csv   (optional)
    ISIC2018_Task3_Test_Input/        ISIC2018_Task3_Test_GroundTruth/...csv         (optional)

The ground-truth CSVs are one-hot: ``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC`` with values ``0.0``/``1.0``. Each
part present becomes the official split of its images (Training -> ``train``, Validation -> ``val``,
Test -> ``test``). With the lesion groupings, every image carries its ``lesion_id`` as group, so that when a
split is carved out of the training set, all images of one lesion land in the same split.

HAM10000 layout (the same training images, as published on the Harvard Dataverse and Kaggle)::

    HAM10000_metadata.csv      lesion_id,image_id,dx,dx_type,age,sex,localization
    HAM10000_images_part_1/ISIC_0024306.jpg ...   HAM10000_images_part_2/...   (any image folders under root)

``dx`` (``mel``, ``nv``, ...) gives the label and ``lesion_id`` the group. No official split.

``root`` may hold these folders directly or one level down. Classes, in label order, are the CSV columns:
``MEL, NV, BCC, AKIEC, BKL, DF, VASC``. A CSV row whose image file is missing is an error; an image with no
row is left out and listed among the skipped files.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

from .base import Skipped
from .errors import DatasetError, DatasetNotFoundError, DatasetUsageError
from .filedataset import ImageDataset, Sample
from .files import describe_folder, find_child_dir, list_images, require_root, subfolders

logger = logging.getLogger(__name__)

NAME = "isic2018"
CLASSES: list[str] = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
# Official part name in file names -> split name.
PARTS: dict[str, str] = {"Training": "train", "Validation": "val", "Test": "test"}
HAM_METADATA = "HAM10000_metadata.csv"
LAYOUTS: tuple[str, ...] = ("auto", "isic2018", "ham10000")


def _read_csv(path: Path, required: list[str]) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV as ``(line number, row)``, after checking the header has the ``required`` columns.

    Raises:
        DatasetError: missing columns, or a file that is not UTF-8 text (naming the file and the byte offset).
    """
    try:
        return _read_csv_rows(path, required)
    except UnicodeDecodeError as err:
        raise DatasetError(
            f"{NAME}: CSV {str(path)!r}: expected UTF-8 text, received a byte that is not (0x{err.object[err.start]:02x} "
            f"at offset {err.start}); re-save the file as UTF-8"
        ) from None
    except csv.Error as err:
        raise DatasetError(f"{NAME}: CSV {str(path)!r}: expected a CSV file, received one the reader refuses ({err})") \
            from None


def _read_csv_rows(path: Path, required: list[str]) -> list[tuple[int, dict[str, str]]]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise DatasetError(
                f"{NAME}: CSV {str(path)!r} must have the columns {required}; missing {missing}, header is {header}"
            )
        rows = []
        for row in reader:
            clean = {k.strip(): (v or "").strip() for k, v in row.items() if isinstance(k, str)}
            if any(clean.values()):
                rows.append((reader.line_num, clean))
        return rows


def _one_hot_label(row: dict[str, str], path: Path, line: int) -> int:
    try:
        values = [float(row[c]) for c in CLASSES]
    except ValueError as exc:
        raise DatasetError(f"{NAME}: {str(path)!r} line {line}: expected numbers in {CLASSES}, got {row}") from exc
    hot = [i for i, v in enumerate(values) if v >= 0.5]
    if len(hot) != 1:
        raise DatasetError(
            f"{NAME}: {str(path)!r} line {line}: expected exactly one 1 among {CLASSES} (one-hot), "
            f"got {dict(zip(CLASSES, values, strict=True))} for image {row.get('image')!r}"
        )
    return hot[0]


def _images_by_stem(folders: list[Path]) -> dict[str, Path]:
    """Image files under ``folders`` keyed by file name without extension (first one wins for duplicates)."""
    index: dict[str, Path] = {}
    for folder in folders:
        for path in list_images(folder, recursive=True):
            index.setdefault(path.stem, path)
    return index


def _find_file(base: Path, name: str, folder: str | None = None) -> Path | None:
    """``base/folder/name`` or ``base/name`` (folder matched case-insensitively), if it exists."""
    sub = find_child_dir(base, [folder]) if folder else None
    for candidate in ([sub / name] if sub else []) + [base / name]:
        if candidate.is_file():
            return candidate
    return None


def _lesion_groups(base: Path) -> dict[str, str]:
    path = _find_file(base, "ISIC2018_Task3_Training_LesionGroupings.csv", "ISIC2018_Task3_Training_GroundTruth")
    if path is None:
        return {}
    return {row["image"]: row["lesion_id"] for _, row in _read_csv(path, ["image", "lesion_id"])}


def _left_out(images: dict[str, Path], used: set[str], reason: str) -> list[Skipped]:
    extra = sorted(stem for stem in images if stem not in used)
    if extra:
        logger.warning("%s: %d images have %s and are left out, e.g. %s", NAME, len(extra), reason, extra[:3])
    return [Skipped(str(images[stem]), reason) for stem in extra]


def _read_isic2018(base: Path) -> tuple[list[Sample], list[Skipped]]:
    groups = _lesion_groups(base)
    samples: list[Sample] = []
    skipped: list[Skipped] = []
    for part, split in PARTS.items():
        input_dir = find_child_dir(base, [f"ISIC2018_Task3_{part}_Input"])
        gt = _find_file(base, f"ISIC2018_Task3_{part}_GroundTruth.csv", f"ISIC2018_Task3_{part}_GroundTruth")
        if input_dir is None:
            if gt is not None:
                raise DatasetError(
                    f"{NAME}: found the ground truth {str(gt)!r} but not its images; expected the folder "
                    f"{str(base / f'ISIC2018_Task3_{part}_Input')!r}; found {describe_folder(base)}"
                )
            continue
        images = _images_by_stem([input_dir])
        if gt is None:
            skipped += _left_out(images, set(), f"no ground truth (ISIC2018_Task3_{part}_GroundTruth.csv not found)")
            continue
        used: set[str] = set()
        for line, row in _read_csv(gt, ["image", *CLASSES]):
            image = row["image"]
            if image not in images:
                raise DatasetError(
                    f"{NAME}: {str(gt)!r} line {line} names image {image!r}, but {str(input_dir)!r} holds no "
                    f"{image}.jpg (expected every ground-truth row to have its image)"
                )
            if image in used:
                raise DatasetError(f"{NAME}: {str(gt)!r} line {line}: image {image!r} is listed twice")
            used.add(image)
            samples.append(Sample(images[image], _one_hot_label(row, gt, line), split, groups.get(image)))
        skipped += _left_out(images, used, f"no row in {gt.name}")
    return samples, skipped


def _read_ham10000(base: Path, metadata: Path) -> tuple[list[Sample], list[Skipped]]:
    images = _images_by_stem(subfolders(base)) | {p.stem: p for p in list_images(base)}
    codes = {c.lower(): i for i, c in enumerate(CLASSES)}
    samples: list[Sample] = []
    used: set[str] = set()
    for line, row in _read_csv(metadata, ["lesion_id", "image_id", "dx"]):
        image, dx = row["image_id"], row["dx"].lower()
        if dx not in codes:
            raise DatasetError(
                f"{NAME}: {str(metadata)!r} line {line}: expected dx among {sorted(codes)}, got {row['dx']!r}"
            )
        if image not in images:
            raise DatasetError(
                f"{NAME}: {str(metadata)!r} line {line} names image {image!r}, but no {image}.jpg was found "
                f"under {str(base)!r} (expected the HAM10000 image folders there)"
            )
        if image in used:
            raise DatasetError(f"{NAME}: {str(metadata)!r} line {line}: image {image!r} is listed twice")
        used.add(image)
        samples.append(Sample(images[image], codes[dx], None, row["lesion_id"] or None))
    return samples, _left_out(images, used, f"no row in {metadata.name}")


def _has_isic2018(folder: Path) -> bool:
    return any(find_child_dir(folder, [f"ISIC2018_Task3_{part}_Input"]) for part in PARTS)


def find_isic_dir(root: Path, layout: str) -> tuple[Path, str]:
    """Locate the dataset folder (``root`` or a sub-folder) and which layout it holds."""
    if layout not in LAYOUTS:
        raise DatasetUsageError(f"{NAME}: option 'layout' (--dataset-option layout=...) must be one of {LAYOUTS}, "
                                f"got {layout!r}")
    for candidate in [root, *subfolders(root)]:
        if layout in ("auto", "isic2018") and _has_isic2018(candidate):
            return candidate, "isic2018"
    for candidate in [root, *subfolders(root)]:
        if layout in ("auto", "ham10000") and (candidate / HAM_METADATA).is_file():
            return candidate, "ham10000"
    raise DatasetError(
        f"{NAME}: expected ISIC2018_Task3_{{Training,Validation,Test}}_Input folders with their GroundTruth "
        f"CSVs, or {HAM_METADATA} with an image folder, in {str(root)!r} or one of its sub-folders "
        f"(layout={layout!r}); found {describe_folder(root)}"
    )


def load_isic2018(root: str | os.PathLike[str], *, layout: str = "auto", **options) -> ImageDataset:
    """Read ISIC 2018 Task 3 (or HAM10000) from ``root``.

    Args:
        root: Folder holding the ISIC 2018 Task 3 folders or the HAM10000 files (directly or one level down).
        layout: ``"auto"`` (ISIC 2018 when both are present), ``"isic2018"`` or ``"ham10000"``.
        **options: Passed to :class:`ImageDataset` (``strict``, ``verify``, ``high_bit_depth``).

    Raises:
        DatasetNotFoundError: ``root`` does not exist.
        DatasetError: Unrecognised layout, a bad CSV header or row, or a CSV row whose image is missing.
    """
    base, found = find_isic_dir(require_root(root, NAME), layout)
    if found == "isic2018":
        samples, skipped = _read_isic2018(base)
    else:
        samples, skipped = _read_ham10000(base, base / HAM_METADATA)
    if not samples:
        raise DatasetNotFoundError(
            f"{NAME}: no labelled images in {str(base)!r} (expected ground-truth CSVs beside the image folders); "
            f"found {describe_folder(base)}"
        )
    return ImageDataset(NAME, base, CLASSES, samples, skipped=skipped, **options)
