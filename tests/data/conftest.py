"""Tiny on-disk copies of each dataset layout, built by the tests themselves.

Each builder reproduces a publisher's layout exactly (folder and file names, mask files, CSV headers and
value formats) with a few small images, so the readers meet what users unpack.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_image(path: Path, size: tuple[int, int] = (16, 12), mode: str = "RGB", seed: int = 0,
                **save: object) -> Path:
    """Write a random image of ``size`` (width, height) and ``mode`` to ``path`` (format from the suffix)."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": None, "RGBA": 4}[mode]
    shape = (size[1], size[0]) if channels is None else (size[1], size[0], channels)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path, **save)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to ``keep`` of its length, like an interrupted download."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def big_jpeg(path: Path, seed: int = 0) -> Path:
    """A noisy 96 x 96 JPEG (about 11 KB), large enough that its tail is entropy-coded data, not headers."""
    return write_image(path, (96, 96), seed=seed, quality=95)


class Layouts:
    """Builders of each published layout under a given folder; each returns the folder users point at."""

    write_image = staticmethod(write_image)
    truncate = staticmethod(truncate)
    big_jpeg = staticmethod(big_jpeg)

    @staticmethod
    def busi(root: Path, per_class: int = 3) -> Path:
        base = root / "Dataset_BUSI_with_GT"
        for c, name in enumerate(["benign", "malignant", "normal"]):
            for i in range(1, per_class + 1):
                write_image(base / name / f"{name} ({i}).png", seed=10 * c + i)
                write_image(base / name / f"{name} ({i})_mask.png", mode="L", seed=100 + i)
            write_image(base / name / f"{name} (1)_mask_1.png", mode="L", seed=7)
        (base / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
        return root

    @staticmethod
    def isic2018(root: Path, parts: dict[str, int] | None = None, groupings: bool = True) -> Path:
        """ISIC 2018 Task 3; ``parts`` maps Training/Validation/Test to image counts. Labels cycle over classes;
        training images come in lesions of two."""
        parts = parts if parts is not None else {"Training": 14, "Validation": 7, "Test": 7}
        classes = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
        number = 24306
        lesions = []
        for part, count in parts.items():
            inputs = root / f"ISIC2018_Task3_{part}_Input"
            inputs.mkdir(parents=True)
            (inputs / "ATTRIBUTION.txt").write_text("images courtesy of ISIC\n")
            (inputs / "LICENSE.txt").write_text("CC-BY-NC\n")
            rows = []
            for i in range(count):
                image = f"ISIC_{number:07d}"
                number += 1
                write_image(inputs / f"{image}.jpg", seed=number)
                label = (i // 2) % len(classes) if part == "Training" else i % len(classes)
                rows.append([image] + ["1.0" if k == label else "0.0" for k in range(len(classes))])
                if part == "Training":
                    lesions.append([image, f"HAM_{i // 2:07d}", "histo"])
            truth = root / f"ISIC2018_Task3_{part}_GroundTruth"
            truth.mkdir()
            with open(truth / f"ISIC2018_Task3_{part}_GroundTruth.csv", "w", newline="") as handle:
                csv.writer(handle).writerows([["image", *classes], *rows])
        if groupings and lesions:
            with open(root / "ISIC2018_Task3_Training_LesionGroupings.csv", "w", newline="") as handle:
                csv.writer(handle).writerows([["image", "lesion_id", "diagnosis_confirm_type"], *lesions])
        return root

    @staticmethod
    def ham10000(root: Path, count: int = 14) -> Path:
        """HAM10000 as on Kaggle: metadata CSV, two image folders, and a lower-case duplicate of part 1."""
        dx = ["mel", "nv", "bcc", "akiec", "bkl", "df", "vasc"]
        rows = []
        for i in range(count):
            image = f"ISIC_{24306 + i:07d}"
            folder = "HAM10000_images_part_1" if i < count // 2 else "HAM10000_images_part_2"
            write_image(root / folder / f"{image}.jpg", seed=i)
            if i < count // 2:
                write_image(root / "ham10000_images_part_1" / f"{image}.jpg", seed=i)
            rows.append([f"HAM_{i // 2:07d}", image, dx[(i // 2) % len(dx)], "histo", "50.0", "male", "back"])
        with open(root / "HAM10000_metadata.csv", "w", newline="") as handle:
            csv.writer(handle).writerows(
                [["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"], *rows])
        (root / "hmnist_28_28_RGB.csv").write_text("pixel0000,label\n0,1\n")
        return root

    KVASIR = ["dyed-lifted-polyps", "dyed-resection-margins", "esophagitis", "normal-cecum", "normal-pylorus",
              "normal-z-line", "polyps", "ulcerative-colitis"]

    @staticmethod
    def kvasir(root: Path, per_class: int = 2, nested: bool = True) -> Path:
        base = root / "kvasir-dataset-v2" if nested else root
        for c, name in enumerate(Layouts.KVASIR):
            for i in range(per_class):
                write_image(base / name / f"{c:02d}{i:02d}a1b2-c3d4.jpg", seed=c * 10 + i)
        return root

    @staticmethod
    def covid(root: Path, layout: str = "current", per_class: int = 2) -> Path:
        """``current``: four classes with images/ and masks/; ``old``: three classes, images directly inside."""
        if layout == "current":
            base = root / "COVID-19_Radiography_Dataset"
            names = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
            for name in names:
                for i in range(1, per_class + 1):
                    write_image(base / name / "images" / f"{name}-{i}.png", mode="L", seed=i)
                    write_image(base / name / "masks" / f"{name}-{i}.png", mode="L", seed=50 + i)
                (base / f"{name}.metadata.xlsx").write_bytes(b"PK\x03\x04")
        else:
            base = root / "COVID-19 Radiography Database"
            for name in ["COVID-19", "NORMAL", "Viral Pneumonia"]:
                for i in range(1, per_class + 1):
                    write_image(base / name / f"{name} ({i}).png", mode="L", seed=i)
        (base / "README.md.txt").write_text("COVID-19 Radiography Database\n")
        return root

    @staticmethod
    def medmnist(root: Path, flag: str = "breastmnist", counts: tuple[int, int, int] = (8, 4, 4),
                 num_classes: int = 2, size: int = 28, rgb: bool = False, labels_2d: bool = True,
                 suffix: str | None = None) -> Path:
        rng = np.random.default_rng(0)
        arrays = {}
        for split, n in zip(("train", "val", "test"), counts, strict=True):
            shape = (n, size, size, 3) if rgb else (n, size, size)
            arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
            labels = (np.arange(n) % num_classes).astype(np.uint8)
            arrays[f"{split}_labels"] = labels[:, None] if labels_2d else labels
        root.mkdir(parents=True, exist_ok=True)
        name = f"{flag}.npz" if suffix is None else f"{flag}_{suffix}.npz"
        np.savez_compressed(root / name, **arrays)
        return root

    @staticmethod
    def folder(root: Path, classes: tuple[str, ...] = ("cat_b", "cat_a"), per_class: int = 3) -> Path:
        for c, name in enumerate(classes):
            for i in range(per_class):
                write_image(root / name / f"img{i}.png", seed=c * 10 + i)
        return root


@pytest.fixture
def layouts() -> type[Layouts]:
    return Layouts
