"""DataLoader throughput (images per second) on 0, 1 and 2 workers, decoding JPEGs every epoch vs the decode cache.

The dataset: 256 ultrasound-like JPEGs of 512 x 384 (about BUSI's size), read as a ``folder`` dataset and fed
through the eval transform at 224 (resize to 256, centre crop). The cache stores them at 256 x 256, so the
cached path skips JPEG decoding and the big resize. Each round is one full epoch over persistent workers.

Run: ``pytest benchmarks/test_bench_data.py --benchmark`` (add ``--benchmark-json=out.json`` for the table).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from medens.data import SplitDataset, build_transforms, cache_dataset, load_dataset

from .conftest import device_name, record, write_image_folder

NUM_IMAGES = 256
WORKERS = (0, 1, 2)
BATCH = 32


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_jpegs")
    write_image_folder(root, NUM_IMAGES, ".jpg", quality=90)
    return root


def _epoch_images_per_second(benchmark, dataset, workers: int, source: str):
    split = SplitDataset(dataset, list(range(len(dataset))), transform=build_transforms(224, train=False))
    loader = DataLoader(split, batch_size=BATCH, num_workers=workers, persistent_workers=workers > 0)

    def epoch() -> int:
        return sum(len(labels) for _, labels in loader)

    seen = benchmark.pedantic(epoch, rounds=3, warmup_rounds=1, iterations=1)
    assert seen == NUM_IMAGES
    rate = NUM_IMAGES / benchmark.stats.stats.median
    benchmark.group = f"dataloader {workers} workers"
    benchmark.extra_info.update({"images_per_s": round(rate, 1), "workers": workers, "images": NUM_IMAGES,
                                 "source": "512x384 JPEG", "transform": "eval 224", "op": "dataloader",
                                 "case": f"{workers} workers, 512x384 JPEG to 224 px", "backend": source,
                                 "device": device_name(torch.device("cpu")), "torch": torch.__version__})
    record("dataloader", f"{workers} workers, eval 224 px", source, benchmark)
    return rate


@pytest.mark.benchmark
@pytest.mark.parametrize("workers", WORKERS)
def test_dataloader_decoding_jpegs(benchmark, jpeg_folder, workers):
    rate = _epoch_images_per_second(benchmark, load_dataset("folder", jpeg_folder), workers, "decode")
    assert rate > 0


@pytest.mark.benchmark
@pytest.mark.parametrize("workers", WORKERS)
def test_dataloader_from_decode_cache(benchmark, jpeg_folder, tmp_path, workers):
    cached = cache_dataset(load_dataset("folder", jpeg_folder), tmp_path / "cache", size=256)
    rate = _epoch_images_per_second(benchmark, cached, workers, "cache")
    assert rate > 0
