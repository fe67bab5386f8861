"""Generic image folders: sorted class folders, any Pillow format, optional train/val/test folders."""

import pytest

from medens.data import DatasetError, load_dataset


def test_classes_sorted_and_every_pillow_format_read(tmp_path, layouts):
    root = layouts.folder(tmp_path, classes=("zebra", "ant"), per_class=1)
    for ext in ("bmp", "tif", "gif", "webp", "jpeg"):
        layouts.write_image(root / "ant" / "deeper" / f"x.{ext}")
    (root / "ant" / "labels.csv").write_text("a,b\n")
    (root / "stray.png").write_bytes(b"not in a class folder")
    ds = load_dataset("folder", root)
    assert ds.classes == ["ant", "zebra"]
    assert ds.targets.count(0) == 6 and ds.targets.count(1) == 1
    assert "ant/deeper/x.webp" in ds.ids
    assert all(ds[i][0].mode == "RGB" for i in range(len(ds)))


def test_split_folders_become_official_splits(tmp_path, layouts):
    layouts.folder(tmp_path / "train", per_class=3)
    layouts.folder(tmp_path / "valid", per_class=1)
    layouts.folder(tmp_path / "test", per_class=2)
    ds = load_dataset("folder", tmp_path)
    assert ds.classes == ["cat_a", "cat_b"]
    assert [ds.official_splits.count(s) for s in ("train", "val", "test")] == [6, 2, 4]
    assert all(i.split("/")[0] in ("train", "valid", "test") for i in ds.ids)


def test_val_or_test_folder_may_lack_a_class_but_labels_stay_global(tmp_path, layouts):
    layouts.folder(tmp_path / "train", classes=("ant", "bee", "cat"), per_class=2)
    layouts.folder(tmp_path / "val", classes=("bee", "cat"), per_class=1)
    ds = load_dataset("folder", tmp_path)
    assert ds.classes == ["ant", "bee", "cat"]
    val = [(item, ds.targets[i]) for i, item in enumerate(ds.ids) if ds.official_splits[i] == "val"]
    assert val == [("val/bee/img0.png", 1), ("val/cat/img0.png", 2)]


def test_one_folder_is_not_a_classification_dataset(tmp_path, layouts):
    layouts.folder(tmp_path / "data")
    with pytest.raises(DatasetError, match="at least two.*found 1 sub-folder.*data/.*point root at that folder"):
        load_dataset("folder", tmp_path)


def test_empty_class_folder_is_an_error(tmp_path, layouts):
    root = layouts.folder(tmp_path)
    (root / "cat_c").mkdir()
    (root / "cat_c" / "readme.txt").write_text("todo")
    with pytest.raises(DatasetError, match=r"class 'cat_c' folder .*cat_c' holds no images.*found readme.txt"):
        load_dataset("folder", root)
