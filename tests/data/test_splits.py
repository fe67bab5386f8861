"""Splits: reproducible, disjoint, stratified, grouped, k-fold; written to splits.json and read back."""

import json
import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medens.data import DatasetError, load_dataset, load_splits, make_splits
from medens.data.partition import kfold_partition, stratified_partition


def _synthetic(n=100, classes=3, seed=0):
    return load_dataset("synthetic", None, num_images=n, image_size=8, num_classes=classes, seed=seed)


def _assert_partition(splits, n):
    everything = [i for part in splits.values() for i in part]
    assert sorted(everything) == list(range(n))  # disjoint and complete


def test_same_seed_same_split_other_seed_other_split():
    ds = _synthetic()
    assert make_splits(ds, seed=1) == make_splits(ds, seed=1)
    assert make_splits(ds, seed=1)["test"] != make_splits(ds, seed=2)["test"]


def test_default_split_is_stratified_70_10_20():
    ds = _synthetic(n=300)
    splits = make_splits(ds)
    _assert_partition(splits, 300)
    for name, share in (("train", 0.7), ("val", 0.1), ("test", 0.2)):
        counts = np.bincount([ds.targets[i] for i in splits[name]], minlength=3)
        assert counts.tolist() == [round(100 * share)] * 3


@settings(max_examples=40, deadline=None)
@given(labels=st.lists(st.integers(0, 4), min_size=1, max_size=60),
       val=st.floats(0, 0.4), test=st.floats(0, 0.4), seed=st.integers(0, 2**16))
def test_stratified_partition_properties(labels, val, test, seed):
    parts = stratified_partition(labels, {"train": 1 - val - test, "val": val, "test": test},
                                 np.random.default_rng(seed))
    _assert_partition(parts, len(labels))
    for name, share in (("val", val), ("test", test)):
        assert abs(len(parts[name]) - share * len(labels)) <= 1  # overall sizes are the rounded fractions
        for c in set(labels):  # and each class is split in proportion, up to rounding
            n_c = labels.count(c)
            in_part = sum(1 for i in parts[name] if labels[i] == c)
            assert abs(in_part - share * n_c) < 1 + 1e-9 or n_c * share < 1


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(1, 4), min_size=2, max_size=30), seed=st.integers(0, 2**16))
def test_groups_never_straddle_parts(sizes, seed):
    groups = [f"g{g}" for g, size in enumerate(sizes) for _ in range(size)]
    labels = [g % 2 for g, size in enumerate(sizes) for _ in range(size)]
    parts = stratified_partition(labels, {"train": 0.6, "val": 0.2, "test": 0.2}, np.random.default_rng(seed),
                                 groups)
    _assert_partition(parts, len(labels))
    owner = {}
    for name, items in parts.items():
        for i in items:
            assert owner.setdefault(groups[i], name) == name


def test_kfold_folds_partition_the_data_and_test_folds_cover_it():
    ds = _synthetic(n=50)
    tests = []
    for fold in range(5):
        splits = make_splits(ds, folds=5, fold=fold, seed=3)
        _assert_partition(splits, 50)
        assert len(splits["test"]) == 10
        tests += splits["test"]
    assert sorted(tests) == list(range(50))


def test_kfold_partition_balances_classes_and_keeps_groups():
    labels = [i % 2 for i in range(40)]
    groups = [str(i // 2) for i in range(40)]
    folds = kfold_partition(labels, 4, np.random.default_rng(0), [None] * 40)
    assert [sum(labels[i] for i in f) for f in folds] == [5, 5, 5, 5]
    grouped = kfold_partition([(i // 2) % 2 for i in range(40)], 4, np.random.default_rng(0), groups)
    for fold in grouped:
        assert all(groups[i] in {groups[j] for j in fold} for i in fold)
        assert len(fold) == 10


def test_split_file_repeats_a_run_exactly(tmp_path):
    ds = _synthetic()
    first = make_splits(ds, seed=7, out_dir=tmp_path / "run1")
    record = json.loads((tmp_path / "run1" / "splits.json").read_text())
    assert record["seed"] == 7 and record["method"] == "stratified" and record["classes"] == ds.classes
    assert record["splits"]["test"][0].startswith("synthetic/")
    again = make_splits(ds, seed=99, split_file=tmp_path / "run1" / "splits.json", out_dir=tmp_path / "run2")
    assert again == first
    assert json.loads((tmp_path / "run2" / "splits.json").read_text())["splits"] == record["splits"]


def test_split_file_for_other_classes_is_refused(tmp_path):
    make_splits(_synthetic(classes=3), out_dir=tmp_path)
    with pytest.raises(DatasetError, match="made for classes"):
        make_splits(_synthetic(classes=4), split_file=tmp_path / "splits.json")


def test_split_file_naming_unknown_items_is_refused(tmp_path):
    make_splits(_synthetic(n=100), out_dir=tmp_path)
    with pytest.raises(DatasetError, match="not in dataset"):
        load_splits(tmp_path / "splits.json", _synthetic(n=50))


def test_split_file_drops_items_that_became_unreadable(tmp_path, layouts, caplog):
    root = layouts.busi(tmp_path / "data", per_class=4)
    first = load_dataset("busi", root)
    make_splits(first, out_dir=tmp_path / "run")
    layouts.truncate(layouts.write_image(root / "Dataset_BUSI_with_GT" / "normal" / "normal (2).png", (64, 64)))
    second = load_dataset("busi", root)
    with caplog.at_level(logging.WARNING):
        splits = load_splits(tmp_path / "run" / "splits.json", second)
    _assert_partition(splits, 11)
    assert "dropped" in caplog.text


@pytest.mark.parametrize("options, match", [
    ({"val_fraction": -0.1}, "val_fraction"), ({"test_fraction": 1.0}, "test_fraction"),
    ({"val_fraction": 0.5, "test_fraction": 0.5}, "below 1"), ({"folds": 1, "fold": 0}, "folds"),
    ({"folds": 3, "fold": 3}, "fold"), ({"fold": 0}, "needs 'folds'"),
])
def test_bad_arguments_are_named(options, match):
    with pytest.raises(DatasetError, match=match):
        make_splits(_synthetic(), **options)


def test_official_test_with_kfold_keeps_test_and_rotates_val(tmp_path, layouts):
    ds = load_dataset("medmnist:breastmnist", layouts.medmnist(tmp_path, counts=(12, 3, 5)))
    vals = []
    for fold in range(3):
        splits = make_splits(ds, folds=3, fold=fold)
        assert splits["test"] == list(range(15, 20))
        _assert_partition(splits, 20)
        vals += splits["val"]
    assert sorted(vals) == list(range(15))


def test_use_official_false_ignores_official_splits(tmp_path, layouts):
    ds = load_dataset("medmnist:breastmnist", layouts.medmnist(tmp_path, counts=(40, 10, 10)))
    splits = make_splits(ds, use_official=False, test_fraction=0.5, val_fraction=0.1)
    assert len(splits["test"]) == 30
