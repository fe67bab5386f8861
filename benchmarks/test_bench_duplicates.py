"""Duplicate detection throughput (images per second): hashing real-size images, beside a plain decode of them.

The images: 256 ultrasound-like PNGs of 512 x 384 (about BUSI's original size), read as a ``folder`` dataset.
``decode`` reads every file to RGB (what any pass over the data costs); ``hash, cold`` computes every signature
(decode, grey, 32 x 32 thumbnail) with an empty cache, and finds the groups; ``hash, cached`` does the same with
every signature already cached (a second run: the files are read and digested, never decoded). ``pair search``
times the comparison alone (hashes, nearest neighbours, aligned correlations, linkage) on 25,000 thumbnails, the
largest datasets duplicate detection runs on before a training.

Run: ``pytest benchmarks/test_bench_duplicates.py --benchmark``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from medens.data import find_duplicates, load_dataset
from medens.data.duplicates import detect

from .conftest import device_name, record, write_image_folder

NUM_IMAGES = 256


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_pngs")
    write_image_folder(root, NUM_IMAGES, ".png")
    return root


def _record(benchmark, case: str) -> float:
    rate = NUM_IMAGES / benchmark.stats.stats.median
    benchmark.group = "duplicate detection"
    benchmark.extra_info.update({"images_per_s": round(rate, 1), "images": NUM_IMAGES, "op": "duplicates",
                                 "case": "512x384 PNG", "backend": case,
                                 "device": device_name(torch.device("cpu")), "torch": torch.__version__})
    record("duplicates", "512x384 PNG", case, benchmark)
    return rate


@pytest.mark.benchmark
def test_plain_decode(benchmark, png_folder):
    dataset = load_dataset("folder", png_folder)
    benchmark.pedantic(lambda: [dataset.load_image(i) for i in range(len(dataset))], rounds=3, iterations=1)
    assert _record(benchmark, "decode") > 0


@pytest.mark.benchmark
def test_hash_cold(benchmark, png_folder, tmp_path):
    dataset = load_dataset("folder", png_folder)
    folders = (tmp_path / f"cache{i}" for i in itertools.count())
    found = benchmark.pedantic(lambda: find_duplicates(dataset, cache_dir=next(folders), progress=False),
                               rounds=3, iterations=1)
    assert found.groups == []  # the generated images are distinct
    assert _record(benchmark, "hash, cold") > 0


@pytest.mark.benchmark
def test_hash_cached(benchmark, png_folder, tmp_path):
    dataset = load_dataset("folder", png_folder)
    find_duplicates(dataset, cache_dir=tmp_path, progress=False)
    benchmark.pedantic(lambda: find_duplicates(dataset, cache_dir=tmp_path, progress=False), rounds=3,
                       iterations=1)
    assert _record(benchmark, "hash, cached") > 0


@pytest.mark.benchmark
def test_pair_search_at_25k(benchmark):
    from scipy.ndimage import gaussian_filter

    count = 25_000
    noise = np.random.default_rng(0).normal(0, 1, (count, 32, 32)).astype(np.float32)
    fields = gaussian_filter(noise, (0, 1.5, 1.5))
    thumbs = np.clip(128 + fields * 400, 0, 255).astype(np.uint8)  # distinct smooth images
    groups, _ = benchmark.pedantic(lambda: detect(thumbs), rounds=1, iterations=1)
    assert groups == []
    rate = count / benchmark.stats.stats.median
    benchmark.group = "duplicate detection"
    benchmark.extra_info.update({"images_per_s": round(rate, 1), "images": count, "op": "duplicates",
                                 "case": "25k thumbnails", "backend": "pair search",
                                 "device": device_name(torch.device("cpu")), "torch": torch.__version__})
    record("duplicates", "25k thumbnails", "pair search", benchmark)
