"""MedMNIST .npz files: both label shapes, RGB, sizes, official splits; and the real files in ../shared."""

from pathlib import Path

import numpy as np
import pytest

from medens.data import DatasetError, DatasetNotFoundError, load_dataset, make_splits

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "medmnist"


@pytest.mark.parametrize("labels_2d", [True, False])
def test_official_splits_and_both_label_shapes(tmp_path, layouts, labels_2d):
    root = layouts.medmnist(tmp_path, "breastmnist", counts=(8, 4, 6), labels_2d=labels_2d)
    ds = load_dataset("medmnist:breastmnist", root)
    assert ds.classes == ["malignant", "normal, benign"]
    assert len(ds) == 18
    assert ds.official_splits == ["train"] * 8 + ["val"] * 4 + ["test"] * 6
    assert ds.ids[8] == "breastmnist/val/000000"
    with np.load(root / "breastmnist.npz") as npz:
        np.testing.assert_array_equal(np.asarray(ds[9][0])[..., 1], npz["val_images"][1])
        assert ds.targets[9] == int(npz["val_labels"].reshape(-1)[1])
    splits = make_splits(ds)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [8, 4, 6]


def test_rgb_flag_and_explicit_size(tmp_path, layouts):
    layouts.medmnist(tmp_path, "bloodmnist", num_classes=8, size=64, rgb=True, suffix="64")
    layouts.medmnist(tmp_path, "bloodmnist", num_classes=8, size=28, rgb=True)
    ds = load_dataset("medmnist:bloodmnist", tmp_path, size=64)
    image, _ = ds[0]
    assert image.size == (64, 64) and image.mode == "RGB"
    assert len(ds.classes) == 8 and ds.classes[0] == "basophil"
    assert load_dataset("medmnist:bloodmnist", tmp_path)[0][0].size == (28, 28)


def test_only_sized_file_present_is_found_without_size(tmp_path, layouts):
    layouts.medmnist(tmp_path, "pneumoniamnist", size=128, suffix="128")
    assert load_dataset("medmnist:pneumoniamnist", tmp_path)[0][0].size == (128, 128)


def test_missing_file_error_lists_what_is_there(tmp_path, layouts):
    layouts.medmnist(tmp_path, "breastmnist")
    with pytest.raises(DatasetNotFoundError, match=r"expected dermamnist.npz .* found .npz files \['breastmnist.npz'\]"):
        load_dataset("medmnist:dermamnist", tmp_path)


def test_multi_label_flag_is_refused_with_a_reason(tmp_path, layouts):
    layouts.medmnist(tmp_path, "chestmnist")
    with pytest.raises(DatasetError, match="multi-label"):
        load_dataset("medmnist:chestmnist", tmp_path)


def test_3d_volumes_are_refused(tmp_path):
    arrays = {f"{s}_images": np.zeros((2, 4, 4, 4, 4), np.uint8) for s in ("train", "val", "test")}
    arrays |= {f"{s}_labels": np.zeros((2, 1), np.uint8) for s in ("train", "val", "test")}
    np.savez(tmp_path / "organmnist3d.npz", **arrays)
    with pytest.raises(DatasetError, match=r"2D data.*\(2, 4, 4, 4, 4\)"):
        load_dataset("medmnist:organmnist3d", tmp_path)


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"real MedMNIST files not present at {SHARED}")
@pytest.mark.parametrize("flag, counts, classes", [
    ("breastmnist", (546, 78, 156), ["malignant", "normal, benign"]),
    ("pneumoniamnist", (3882, 524, 624), ["normal", "pneumonia"]),
])
def test_real_medmnist_files(flag, counts, classes):
    ds = load_dataset(f"medmnist:{flag}", SHARED)
    assert ds.classes == classes
    assert [ds.official_splits.count(s) for s in ("train", "val", "test")] == list(counts)
    assert set(ds.targets) == {0, 1}
    image, label = ds[len(ds) - 1]
    assert image.size == (28, 28) and image.mode == "RGB" and label in (0, 1)
    pixels = np.asarray(image)
    assert pixels.std() > 5  # a real ultrasound / X-ray, not a blank frame
    np.testing.assert_array_equal(pixels[..., 0], pixels[..., 2])
