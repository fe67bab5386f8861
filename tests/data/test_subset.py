"""SplitDataset: (tensor, label) items for a DataLoader; a late decoding failure never stops the run."""

import logging

import pytest
import torch

from medens.data import CorruptImageError, DatasetError, SplitDataset, build_transforms, load_dataset


def test_items_are_float_tensors_and_int_labels_with_names():
    ds = load_dataset("synthetic", None, num_images=12, image_size=20)
    part = SplitDataset(ds, [3, 5, 7], transform=build_transforms(16, normalize=False))
    image, label = part[1]
    assert image.dtype == torch.float32 and tuple(image.shape) == (3, 16, 16)
    assert isinstance(label, int) and label == ds.targets[5]
    assert part.ids == ["synthetic/000003", "synthetic/000005", "synthetic/000007"]
    assert part.targets == [ds.targets[i] for i in (3, 5, 7)] and part.classes == ds.classes
    assert len(part) == 3
    with pytest.raises(IndexError):
        part[3]


def test_indices_outside_the_dataset_are_refused():
    ds = load_dataset("synthetic", None, num_images=4, image_size=8)
    with pytest.raises(DatasetError, match="indices"):
        SplitDataset(ds, [0, 4])


def test_file_corrupt_at_read_time_is_replaced_by_the_next_and_logged(tmp_path, layouts, caplog):
    root = layouts.folder(tmp_path)
    bad = layouts.truncate(layouts.big_jpeg(root / "cat_a" / "img1b.jpg"))
    ds = load_dataset("folder", root, verify="none")
    position = ds.ids.index("cat_a/img1b.jpg")
    part = SplitDataset(ds, list(range(len(ds))))
    with caplog.at_level(logging.ERROR):
        image, label = part[position]
    assert image.size == (16, 12) and label == ds.targets[position + 1]
    assert str(bad) in caplog.text


def test_strict_dataset_raises_on_a_corrupt_file_at_read_time(tmp_path, layouts):
    root = layouts.folder(tmp_path)
    layouts.truncate(layouts.big_jpeg(root / "cat_a" / "img1b.jpg"))
    ds = load_dataset("folder", root, verify="none", strict=True)
    with pytest.raises(CorruptImageError, match="img1b.jpg"):
        SplitDataset(ds, [ds.ids.index("cat_a/img1b.jpg")])[0]


def test_evaluation_split_never_substitutes_and_lists_what_it_leaves_out(tmp_path, layouts, caplog):
    root = layouts.folder(tmp_path)
    bad = layouts.truncate(layouts.big_jpeg(root / "cat_a" / "img1b.jpg"))
    ds = load_dataset("folder", root, verify="none")
    position = ds.ids.index("cat_a/img1b.jpg")
    everything = list(range(len(ds)))
    with pytest.raises(CorruptImageError, match="img1b.jpg"):
        SplitDataset(ds, everything, substitute=False)[position]
    with caplog.at_level(logging.WARNING):
        part, skipped = SplitDataset(ds, everything, substitute=False).without_unreadable()
    assert [s.path for s in skipped] == [str(bad)] and "left out of the evaluation" in caplog.text
    assert part.ids == [i for i in ds.ids if i != "cat_a/img1b.jpg"]
    assert part.targets == [t for j, t in enumerate(ds.targets) if j != position]
    assert part.substitute is False and len(part[0]) == 2
    # training keeps its rule: the split as a whole is unchanged
    assert SplitDataset(ds, everything).substitute is True
