"""BUSI: masks are never images, root may be the dataset folder or its parent, bad input is explained."""

import logging
import shutil

import pytest

from medens.data import CorruptImageError, DatasetError, DatasetNotFoundError, load_dataset


@pytest.mark.parametrize("point_at", ["parent", "dataset_folder"])
def test_reads_images_and_never_masks(tmp_path, layouts, point_at):
    root = layouts.busi(tmp_path, per_class=3)
    ds = load_dataset("busi", root if point_at == "parent" else root / "Dataset_BUSI_with_GT")
    assert ds.classes == ["benign", "malignant", "normal"]
    assert len(ds) == 9
    assert not any("_mask" in i for i in ds.ids)
    for item_id, label in zip(ds.ids, ds.targets, strict=True):
        assert item_id.split("/")[0] == ds.classes[label]  # the label is the folder the file sits in
    image, label = ds[0]
    assert image.mode == "RGB" and image.size == (16, 12) and label == 0
    assert ds.official_splits is None and ds.groups is None


def test_missing_root_is_an_error_naming_it(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_dataset("busi", tmp_path / "nowhere")


def test_unrecognised_layout_says_what_was_expected_and_found(tmp_path, layouts):
    layouts.write_image(tmp_path / "benign" / "x.png")
    with pytest.raises(DatasetError, match=r"expected the folders \['benign', 'malignant', 'normal'\].*found benign/"):
        load_dataset("busi", tmp_path)


def test_class_folder_with_only_masks_is_an_error(tmp_path, layouts):
    root = layouts.busi(tmp_path)
    for path in (root / "Dataset_BUSI_with_GT" / "normal").glob("normal (?).png"):
        path.unlink()
    with pytest.raises(DatasetError, match=r"class 'normal' folder .*normal' holds no images.*_mask"):
        load_dataset("busi", root)


def test_corrupt_image_is_skipped_with_a_warning_and_counted(tmp_path, layouts, caplog):
    root = layouts.busi(tmp_path)
    bad = root / "Dataset_BUSI_with_GT" / "malignant" / "malignant (2).png"
    layouts.truncate(layouts.write_image(bad, (64, 64)), 0.5)
    with caplog.at_level(logging.WARNING):
        ds = load_dataset("busi", root)
    assert len(ds) == 8
    assert "malignant/malignant (2).png" not in ds.ids
    assert [s.path for s in ds.skipped] == [str(bad)]
    assert str(bad) in caplog.text


def test_strict_makes_a_corrupt_image_an_error(tmp_path, layouts):
    root = layouts.busi(tmp_path)
    bad = root / "Dataset_BUSI_with_GT" / "benign" / "benign (1).png"
    bad.write_bytes(b"")
    with pytest.raises(CorruptImageError, match=r"benign \(1\).png"):
        load_dataset("busi", root, strict=True)


def test_class_whose_every_image_is_corrupt_is_an_error(tmp_path, layouts):
    root = layouts.busi(tmp_path, per_class=1)
    (root / "Dataset_BUSI_with_GT" / "normal" / "normal (1).png").write_bytes(b"junk")
    with pytest.raises(DatasetError, match=r"every image of class \['normal'\]"):
        load_dataset("busi", root)


def test_upper_case_extension_and_junk_files(tmp_path, layouts):
    root = layouts.busi(tmp_path)
    base = root / "Dataset_BUSI_with_GT"
    shutil.copy(base / "benign" / "benign (1).png", base / "benign" / "benign (9).PNG")
    (base / "benign" / "._benign (1).png").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork
    (base / "benign" / "notes.txt").write_text("scan notes")
    ds = load_dataset("busi", root)
    assert "benign/benign (9).PNG" in ds.ids
    assert not ds.skipped
    assert sum(1 for t in ds.targets if t == 0) == 4
