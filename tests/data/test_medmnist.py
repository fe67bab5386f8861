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


def _npz(path: Path, images: dict, labels: dict) -> Path:
    np.savez(path, **{f"{s}_images": images[s] for s in images}, **{f"{s}_labels": labels[s] for s in labels})
    return path


SPLITS = ("train", "val", "test")


def test_float_images_in_0_1_are_scaled_not_blackened(tmp_path):
    rng = np.random.default_rng(0)
    pixels = {s: rng.integers(0, 256, (4, 8, 8), dtype=np.uint8) for s in SPLITS}
    labels = {s: np.array([0, 1, 0, 1]) for s in SPLITS}
    _npz(tmp_path / "breastmnist.npz", {s: (pixels[s] / 255.0).astype(np.float32) for s in SPLITS}, labels)
    ds = load_dataset("medmnist:breastmnist", tmp_path)
    np.testing.assert_array_equal(np.asarray(ds[0][0])[..., 0], pixels["train"][0])
    # floats already in [0, 255] are rounded, not scaled again
    _npz(tmp_path / "pneumoniamnist.npz", {s: pixels[s].astype(np.float64) for s in SPLITS}, labels)
    np.testing.assert_array_equal(
        np.asarray(load_dataset("medmnist:pneumoniamnist", tmp_path)[5][0])[..., 0], pixels["val"][1]
    )


@pytest.mark.parametrize(
    ("images", "labels", "match"),
    [
        (np.zeros((4, 8, 8), np.uint8), np.array([0.5, 1.5, 0.0, 1.0]), r"train_labels: expected integer class labels, received 0.5"),
        (np.zeros((4, 8, 8), np.uint8), np.array([-1, 0, 1, 0]), r"train_labels: expected labels >= 0"),
        (np.full((4, 8, 8), 300.0), np.array([0, 1, 0, 1]), r"train_images: expected pixel values in \[0, 255\]"),
        (np.full((4, 8, 8), np.nan), np.array([0, 1, 0, 1]), r"train_images: expected finite pixel values"),
    ],
    ids=["float-labels", "negative-labels", "pixels-over-255", "nan-pixels"],
)
def test_bad_values_are_refused_naming_the_file(tmp_path, images, labels, match):
    good_images, good_labels = np.zeros((4, 8, 8), np.uint8), np.array([0, 1, 0, 1])
    _npz(tmp_path / "breastmnist.npz", {"train": images, "val": good_images, "test": good_images},
         {"train": labels, "val": good_labels, "test": good_labels})
    with pytest.raises(DatasetError, match=match) as info:
        load_dataset("medmnist:breastmnist", tmp_path)
    assert "breastmnist.npz" in str(info.value)


def test_a_class_without_images_warns(tmp_path, caplog):
    images = {s: np.zeros((3, 8, 8), np.uint8) for s in SPLITS}
    _npz(tmp_path / "pneumoniamnist.npz", images, {s: np.zeros(3, np.int64) for s in SPLITS})
    with caplog.at_level("WARNING", logger="medens"):
        ds = load_dataset("medmnist:pneumoniamnist", tmp_path)
    assert ds.classes == ["normal", "pneumonia"]
    assert "has no image of class 'pneumonia' in any split" in caplog.text


@pytest.mark.parametrize("content", ["text", "truncated", "empty", "npy", "pickled"])
def test_unreadable_npz_is_refused_naming_the_file(tmp_path, content):
    path = tmp_path / "breastmnist.npz"
    if content == "text":
        path.write_text("not an archive\n")
    elif content == "truncated":
        _npz(path, {s: np.zeros((4, 8, 8), np.uint8) for s in SPLITS}, {s: np.zeros(4, np.int64) for s in SPLITS})
        path.write_bytes(path.read_bytes()[:300])
    elif content == "empty":
        path.write_bytes(b"")
    elif content == "npy":
        with path.open("wb") as f:
            np.save(f, np.zeros(3))
    else:
        np.savez(path, **{f"{s}_{k}": np.array([{"a": 1}], dtype=object) for s in SPLITS for k in ("images", "labels")})
    with pytest.raises(DatasetError, match=r"breastmnist\.npz'?: expected .*(npz archive|\(N, H, W\))"):
        load_dataset("medmnist:breastmnist", tmp_path)
