"""The decode cache: every image decoded and resized once, then served from a uint8 memory-mapped file.

Decoding JPEGs and PNGs is the slowest part of feeding a GPU from a medical dataset. :class:`CachedDataset`
decodes each image of a dataset once, resizes it to ``size`` (stretching, like the eval transform), and
stores all of them in one file of shape ``(N, height, width, 3)``, uint8, that later epochs (and later runs,
and every DataLoader worker) read through :class:`numpy.memmap`.

Files in ``cache_dir``: ``<dataset>-<H>x<W>-<key>.u8`` (the pixels) and ``.json`` beside it (shape, the images
that failed to decode, and the key). The key hashes the dataset's fingerprint (name, every file's path, size
in bytes and mtime, or a generator's parameters), the item ids, and the cache size: changing, adding or
touching a file makes a new cache. Both files are written to a temporary name and renamed into place, so an
interrupted build never leaves a cache that looks complete. The disk needed is ``N * H * W * 3`` bytes
(2 GB for 10,000 images at 256 x 256).

Images that fail to decode while the cache is built are left out of the :class:`CachedDataset` (with a
warning naming the file, and listed in :attr:`~CachedDataset.skipped`), or raise if the dataset is ``strict``;
so make splits on the cached dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from medens.io import atomic_path, remove_stale_temporaries

from .base import LabeledDataset, Skipped
from .errors import CorruptImageError, DatasetError
from .files import atomic_write_json

logger = logging.getLogger(__name__)

CACHE_FORMAT = "medens.decode-cache/1"
RESAMPLE = Image.Resampling.BILINEAR


def resize_for_cache(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize an RGB image to ``(height, width)`` exactly as the cache stores it (bilinear, antialiased)."""
    height, width = size
    if image.size == (width, height):
        return image
    return image.resize((width, height), RESAMPLE)


def _size_pair(size: int | tuple[int, int]) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    if len(pair) != 2 or min(pair) < 1:
        raise DatasetError(f"argument 'size' (cache size) must be a positive int or (height, width), got {size!r}")
    return pair  # type: ignore[return-value]


def cache_key(dataset: LabeledDataset, size: tuple[int, int]) -> str:
    """Hex digest identifying the pixels a cache of ``dataset`` at ``size`` holds."""
    record = {"format": CACHE_FORMAT, "size": list(size), "resample": RESAMPLE.name,
              "fingerprint": dataset.fingerprint(), "ids": dataset.ids}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode("utf-8")).hexdigest()


class CachedDataset(LabeledDataset):
    """A dataset whose images are served, pre-decoded and resized, from a memory-mapped uint8 file.

    The cache is built on first use (a pass over every image, in threads, with a progress bar) and reused
    while the dataset's files are unchanged. Items are ``(RGB PIL image of size (width, height), label)``,
    the same interface as the wrapped dataset, minus images that failed to decode.

    Args:
        dataset: The dataset to cache (any :class:`LabeledDataset`).
        cache_dir: Folder for the cache files (created if missing).
        size: Stored image size, int or ``(height, width)``; pick the eval transform's resize size
            (e.g. 256 for 224 crops) so no detail the model sees is lost.
        num_workers: Decoding threads while building (Pillow decodes with the GIL released).

    Raises:
        CorruptImageError: The dataset is ``strict`` and an image fails to decode.
    """

    def __init__(self, dataset: LabeledDataset, cache_dir: str | os.PathLike[str], size: int | tuple[int, int] = 256,
                 *, num_workers: int | None = None) -> None:
        self.base = dataset
        self.name = dataset.name
        self.root = dataset.root
        self.classes = list(dataset.classes)
        self.strict = dataset.strict
        self.size = _size_pair(size)
        self.num_workers = max(1, num_workers or min(4, os.cpu_count() or 1))
        self.key = cache_key(dataset, self.size)
        stem = f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', self.name)}-{self.size[0]}x{self.size[1]}-{self.key[:16]}"
        self.directory = Path(cache_dir)
        self.data_path = self.directory / f"{stem}.u8"
        self.meta_path = self.directory / f"{stem}.json"
        remove_stale_temporaries(self.directory)  # of builds killed midway; a live build's file is locked
        failures = self._open_or_build()
        failed = {index for index, _ in failures}
        self._rows = [i for i in range(len(dataset)) if i not in failed]
        base_paths = dataset.paths
        self.skipped = list(dataset.skipped) + [Skipped(base_paths[i], reason) for i, reason in failures]
        base_splits, base_groups = dataset.official_splits, dataset.groups
        self._init_items(
            [dataset.targets[i] for i in self._rows],
            [dataset.ids[i] for i in self._rows],
            [base_splits[i] for i in self._rows] if base_splits else None,
            [base_groups[i] for i in self._rows] if base_groups else None,
        )
        self._array: np.memmap | None = None

    # ----------------------------------------------------------------- build / open
    def _shape(self) -> tuple[int, int, int, int]:
        return (len(self.base), self.size[0], self.size[1], 3)

    def _open_or_build(self) -> list[tuple[int, str]]:
        meta = self._read_meta()
        if meta is not None:
            logger.info("%s: using decode cache %s", self.name, self.data_path)
            return [(int(i), str(r)) for i, r in meta["failures"]]
        return self._build()

    def _read_meta(self) -> dict[str, Any] | None:
        try:
            meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        expected_bytes = int(np.prod(self._shape()))
        if (meta.get("key") != self.key or meta.get("shape") != list(self._shape())
                or not self.data_path.is_file() or self.data_path.stat().st_size != expected_bytes):
            return None
        return meta

    def _build(self) -> list[tuple[int, str]]:
        # No fsync: flushing the memory map already writes the pixels to disk.
        with atomic_path(self.data_path, fsync=False) as tmp:
            array = np.memmap(tmp, np.uint8, "w+", shape=self._shape())
            failures = self._fill(array)
            array.flush()
            del array  # unmap before the rename
        atomic_write_json(self.meta_path, {"format": CACHE_FORMAT, "dataset": self.name, "key": self.key,
                                           "shape": list(self._shape()), "failures": failures})
        logger.info("%s: wrote decode cache %s (%d images, %d failed)", self.name, self.data_path,
                    len(self.base) - len(failures), len(failures))
        return failures

    def _fill(self, array: np.memmap) -> list[tuple[int, str]]:
        """Decode, resize and store every image in threads; return ``(index, reason)`` of the failures."""

        def decode(index: int) -> CorruptImageError | None:
            try:
                image = resize_for_cache(self.base.load_image(index), self.size)
            except CorruptImageError as exc:
                return exc
            array[index] = np.asarray(image, dtype=np.uint8)
            return None

        failures: list[tuple[int, str]] = []
        with ThreadPoolExecutor(self.num_workers) as pool:
            results = pool.map(decode, range(len(self.base)))
            progress = tqdm(results, total=len(self.base), desc=f"caching {self.name}", unit="img", leave=False,
                            disable=len(self.base) < 200 or None)
            for index, error in enumerate(progress):
                if error is None:
                    continue
                if self.strict:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise error
                logger.warning("%s: skipping corrupt image %s (%s)", self.name, error.path, error.reason)
                failures.append((index, error.reason))
        return failures

    # ----------------------------------------------------------------- items
    def _pixels(self) -> np.memmap:
        if self._array is None:
            self._array = np.memmap(self.data_path, np.uint8, "r", shape=self._shape())
        return self._array

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_array"] = None  # each DataLoader worker maps the file itself
        return state

    def pixels(self, index: int) -> np.ndarray:
        """Item ``index`` as a uint8 array ``(height, width, 3)`` (a copy, safe to modify)."""
        return np.array(self._pixels()[self._rows[index]])

    def load_image(self, index: int) -> Image.Image:
        """Item ``index`` as an RGB image of the cache size, read from the memory map (no decoding)."""
        return Image.fromarray(self._pixels()[self._rows[index]])  # Pillow copies the pixels

    def image_size(self, index: int) -> tuple[int, int] | None:
        """(width, height) of the original image (the cached copy is :attr:`size`)."""
        return self.base.image_size(self._rows[index])

    @property
    def paths(self) -> list[str]:
        base_paths = self.base.paths
        return [base_paths[i] for i in self._rows]

    def fingerprint(self) -> dict[str, Any]:
        return {"cached": self.base.fingerprint(), "size": list(self.size)}


def cache_dataset(dataset: LabeledDataset, cache_dir: str | os.PathLike[str], size: int | tuple[int, int] = 256,
                  *, num_workers: int | None = None) -> CachedDataset:
    """Wrap ``dataset`` in a decode cache in ``cache_dir`` (built now if missing); see :class:`CachedDataset`."""
    return CachedDataset(dataset, cache_dir, size, num_workers=num_workers)
