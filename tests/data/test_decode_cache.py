"""The decode cache: same pixels as decoding, built once, rebuilt when files change, safe with workers."""

import logging
import os
import stat

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import medens.data.filedataset as filedataset
from medens.data import (
    CachedDataset,
    CorruptImageError,
    SplitDataset,
    build_transforms,
    cache_dataset,
    load_dataset,
    make_splits,
    read_image,
)
from medens.data.cache import resize_for_cache


def test_cache_returns_the_same_pixels_as_decoding(tmp_path, layouts):
    root = layouts.busi(tmp_path / "data")
    ds = load_dataset("busi", root)
    cached = cache_dataset(ds, tmp_path / "cache", size=(20, 24))
    assert len(cached) == len(ds) and cached.ids == ds.ids and cached.targets == ds.targets
    for i in range(len(ds)):
        expected = np.asarray(resize_for_cache(read_image(ds.paths[i]), (20, 24)))
        got = np.asarray(cached[i][0])
        assert got.shape == (20, 24, 3)
        np.testing.assert_array_equal(got, expected)


def test_second_open_reads_the_cache_without_decoding(tmp_path, layouts, monkeypatch):
    ds = load_dataset("folder", layouts.folder(tmp_path / "data"))
    first = cache_dataset(ds, tmp_path / "cache", size=16)
    before = np.asarray(first[2][0])

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded an image although the cache was valid")

    monkeypatch.setattr(filedataset, "read_image", no_decoding)
    second = cache_dataset(ds, tmp_path / "cache", size=16)
    assert second.data_path == first.data_path
    np.testing.assert_array_equal(np.asarray(second[2][0]), before)
    assert sorted(p.suffix for p in (tmp_path / "cache").iterdir()) == [".json", ".u8"]  # no temp files left


def test_cache_files_are_readable_by_others_like_every_result(tmp_path):
    cached = cache_dataset(load_dataset("synthetic", None, num_images=3, image_size=8), tmp_path, size=8)
    for path in (cached.data_path, cached.meta_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_changed_file_gives_a_new_cache(tmp_path, layouts):
    root = layouts.folder(tmp_path / "data")
    first = cache_dataset(load_dataset("folder", root), tmp_path / "cache", size=16)
    changed = root / "cat_a" / "img0.png"
    layouts.write_image(changed, seed=999)
    os.utime(changed, ns=(1, 1))
    second = cache_dataset(load_dataset("folder", root), tmp_path / "cache", size=16)
    assert second.data_path != first.data_path
    index = second.ids.index("cat_a/img0.png")
    np.testing.assert_array_equal(np.asarray(second[index][0]),
                                  np.asarray(resize_for_cache(read_image(changed), (16, 16))))


def test_image_failing_while_caching_is_dropped_and_listed(tmp_path, layouts, caplog):
    root = layouts.folder(tmp_path / "data")
    bad = layouts.truncate(layouts.big_jpeg(root / "cat_b" / "late.jpg"))
    ds = load_dataset("folder", root, verify="none")  # the cache's decoding pass finds it
    with caplog.at_level(logging.WARNING):
        cached = load_dataset("folder", root, verify="none", cache_dir=tmp_path / "cache", cache_size=8)
    assert isinstance(cached, CachedDataset)
    assert len(cached) == len(ds) - 1 and "cat_b/late.jpg" not in cached.ids
    assert [s.path for s in cached.skipped] == [str(bad)]
    assert str(bad) in caplog.text
    reopened = load_dataset("folder", root, verify="none", cache_dir=tmp_path / "cache", cache_size=8)
    assert reopened.ids == cached.ids and len(reopened.skipped) == 1  # remembered without decoding again


def test_strict_cache_build_raises_and_leaves_nothing_behind(tmp_path, layouts):
    root = layouts.folder(tmp_path / "data")
    layouts.truncate(layouts.big_jpeg(root / "cat_b" / "late.jpg"))
    ds = load_dataset("folder", root, verify="none", strict=True)
    with pytest.raises(CorruptImageError, match="late.jpg"):
        cache_dataset(ds, tmp_path / "cache", size=8)
    assert list((tmp_path / "cache").iterdir()) == []


def test_synthetic_data_can_be_cached(tmp_path):
    ds = load_dataset("synthetic", None, num_images=6, image_size=16)
    cached = cache_dataset(ds, tmp_path, size=16)
    for i in range(6):
        np.testing.assert_array_equal(np.asarray(cached[i][0]), np.asarray(ds[i][0]))


def test_cached_dataset_feeds_a_dataloader_with_two_workers(tmp_path, layouts):
    ds = load_dataset("busi", layouts.busi(tmp_path / "data", per_class=4), cache_dir=tmp_path / "cache",
                      cache_size=16)
    splits = make_splits(ds, seed=0)
    train = SplitDataset(ds, splits["train"], transform=build_transforms(12, train=True))
    loader = DataLoader(train, batch_size=4, num_workers=2, shuffle=True)
    batches = list(loader)
    assert sum(len(labels) for _, labels in batches) == len(splits["train"])
    images, labels = batches[0]
    assert images.dtype == torch.float32 and images.shape[1:] == (3, 12, 12) and labels.dtype == torch.int64


def test_debris_of_a_killed_cache_build_is_removed_by_the_next_open(tmp_path):
    from medens.data.duplicates import SIGNATURE_CACHE_FILE, SignatureCache

    decoded, signatures = tmp_path / "decoded", tmp_path / "signatures"
    debris = [decoded / ".synthetic-8x8-0123456789abcdef.u8.k1ll3d_x.tmp", signatures / f".{SIGNATURE_CACHE_FILE}.k1ll3d_y.tmp"]
    for path in debris:
        path.parent.mkdir()
        path.write_bytes(b"\0" * 4096)  # a build killed before its rename; nobody holds its lock
        (path.parent / "notes.txt").write_text("not ours")
    cache_dataset(load_dataset("synthetic", None, num_images=3, image_size=8), decoded, size=8)
    SignatureCache(signatures)
    assert not debris[0].exists() and not debris[1].exists()
    for folder in (decoded, signatures):
        assert (folder / "notes.txt").read_text() == "not ours"
        assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
