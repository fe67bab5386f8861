"""A dataset of image files on disk, checked when it is opened so that corrupt files never reach training."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from .base import LabeledDataset, Skipped
from .errors import CorruptImageError, DatasetError, DatasetUsageError
from .files import describe_folder, list_images
from .imageio import HIGH_BIT_DEPTH_MODES, HighBitDepth, ImageInfo, probe_image, read_image

logger = logging.getLogger(__name__)

VERIFY_MODES: tuple[str, ...] = ("header", "full", "none")
# Threads that read headers while opening a dataset; reading is mostly waiting on the disk.
_PROBE_THREADS = 4


@dataclass(frozen=True)
class Sample:
    """One labelled image file as a layout reader found it.

    Attributes:
        path: The image file.
        label: Index into the dataset's classes.
        split: Official split (``"train"``, ``"val"``, ``"test"``) or None.
        group: Group id (e.g. a lesion) whose images must share a split, or None.
    """

    path: Path
    label: int
    split: str | None = None
    group: str | None = None


def class_folder_samples(
    dataset: str,
    classes: Sequence[str],
    folders: Mapping[str, Path],
    *,
    list_files: Callable[[Path], list[Path]] = list_images,
    split: str | None = None,
) -> list[Sample]:
    """The images of one folder per class, as samples in label order (the layouts with class folders).

    Args:
        dataset: Registry name, for error messages.
        classes: Class names in label order; a sample's label is its class's position here.
        folders: Class name -> its folder. A class without an entry contributes no samples (e.g. a split
            folder that lacks that class).
        list_files: Lists the images of one class folder (default :func:`list_images`, not recursive).
        split: Official split of every sample, or None.

    Raises:
        DatasetError: A class folder holds no images.
    """
    samples: list[Sample] = []
    for label, name in enumerate(classes):
        folder = folders.get(name)
        if folder is None:
            continue
        images = list_files(folder)
        if not images:
            raise DatasetError(
                f"{dataset}: class {name!r} folder {str(folder)!r} holds no images "
                f"(expected image files such as .png/.jpg); found {describe_folder(folder)}"
            )
        samples.extend(Sample(path, label, split) for path in images)
    return samples


def item_id(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> str:
    """The id of a file's item: its path relative to the dataset's root, with ``/`` separators."""
    return Path(os.path.relpath(path, root)).as_posix()


class ImageDataset(LabeledDataset):
    """Labelled image files, with corrupt files found and set aside when the dataset is opened.

    Args:
        name: Registry name of the dataset (e.g. ``"busi"``).
        root: The dataset's folder; item ids are paths relative to it.
        classes: Class names, in label order.
        samples: The files a layout reader found.
        strict: Raise :class:`CorruptImageError` on the first corrupt file instead of skipping it.
        verify: How files are checked when opened: ``"header"`` (default; reads each header and decodes
            only JPEG/PNG files whose end marker is missing), ``"full"`` (decodes every file), or ``"none"``.
        high_bit_depth: How 16-bit images become 8-bit, see :func:`medens.data.imageio.to_rgb8`.
        skipped: Files the layout reader already left out (e.g. images without a label), kept for the summary.

    Raises:
        CorruptImageError: ``strict`` and a file cannot be read.
        DatasetError: Bad ``verify``/``high_bit_depth``, or every image of a class was corrupt.
    """

    def __init__(
        self,
        name: str,
        root: str | os.PathLike[str],
        classes: list[str],
        samples: list[Sample],
        *,
        strict: bool = False,
        verify: str = "header",
        high_bit_depth: HighBitDepth = "full",
        skipped: list[Skipped] | None = None,
    ) -> None:
        if verify not in VERIFY_MODES:
            raise DatasetUsageError(f"{name}: option 'verify' (--verify) must be one of {VERIFY_MODES}, got {verify!r}")
        if high_bit_depth not in HIGH_BIT_DEPTH_MODES:
            raise DatasetUsageError(
                f"{name}: option 'high_bit_depth' (--dataset-option high_bit_depth=...) must be one of "
                f"{HIGH_BIT_DEPTH_MODES}, got {high_bit_depth!r}"
            )
        self.name = name
        self.root = str(Path(root))
        self.classes = list(classes)
        self.strict = strict
        self.verify = verify
        self.high_bit_depth = high_bit_depth
        self.skipped = list(skipped or [])
        #: Lesion masks released apart from the images (the ``mask_dir`` option), set by ``load_dataset``.
        self.mask_files: Any = None
        kept, infos = self._check_files(samples)
        self._paths = [str(s.path) for s in kept]
        self._sizes: list[tuple[int, int] | None] = [(i.width, i.height) if i else None for i in infos]
        ids = [item_id(s.path, self.root) for s in kept]
        self._init_items([s.label for s in kept], ids, [s.split for s in kept], [s.group for s in kept])
        self._require_every_class(samples)

    def _check_files(self, samples: list[Sample]) -> tuple[list[Sample], list[ImageInfo | None]]:
        """Probe every file (per :attr:`verify`); skip or raise on corrupt ones."""
        if self.verify == "none":
            return list(samples), [None] * len(samples)
        full = self.verify == "full"

        def probe(sample: Sample) -> ImageInfo | CorruptImageError:
            try:
                return probe_image(sample.path, full=full)
            except CorruptImageError as exc:
                return exc

        kept: list[Sample] = []
        infos: list[ImageInfo | None] = []
        with ThreadPoolExecutor(_PROBE_THREADS) as pool:
            results = pool.map(probe, samples)
            progress = tqdm(results, total=len(samples), desc=f"checking {self.name} images",
                            unit="img", leave=False, disable=len(samples) < 2000 or None)
            for sample, result in zip(samples, progress, strict=True):
                if isinstance(result, CorruptImageError):
                    if self.strict:
                        pool.shutdown(wait=False, cancel_futures=True)  # do not probe the rest first
                        raise result
                    logger.warning("%s: skipping corrupt image %s (%s)", self.name, result.path, result.reason)
                    self.skipped.append(Skipped(result.path, result.reason))
                    continue
                kept.append(sample)
                infos.append(result)
        return kept, infos

    def _require_every_class(self, samples: list[Sample]) -> None:
        present = set(self.targets)
        lost = [self.classes[s.label] for s in samples if s.label not in present]
        if lost:
            raise DatasetError(
                f"{self.name}: every image of class {sorted(set(lost))} was corrupt or unreadable "
                f"(see the warnings above); expected at least one readable image per class in {self.root!r}"
            )

    @property
    def paths(self) -> list[str]:
        """Absolute path of each item's file."""
        return list(self._paths)

    def load_image(self, index: int) -> Image.Image:
        """Decode item ``index`` to 8-bit RGB. Raises :class:`CorruptImageError` if the file is bad."""
        return read_image(self._paths[index], self.high_bit_depth)

    def image_size(self, index: int) -> tuple[int, int] | None:
        """(width, height) read from the file header when the dataset was opened (None if ``verify="none"``)."""
        return self._sizes[index]

    def fingerprint(self) -> dict[str, Any]:
        """Dataset name, options that change pixels, and every file's path, size and mtime."""
        files = []
        for path in self._paths:
            stat = os.stat(path)
            files.append([path, stat.st_size, stat.st_mtime_ns])
        return {"dataset": self.name, "high_bit_depth": self.high_bit_depth, "files": files}
