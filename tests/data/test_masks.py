"""Lesion masks: BUSI's mask files (union of several, none means no score, normal images never scored) and the
synthetic generator's lesions and caliper marks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medens.data import DatasetError, load_dataset
from medens.data.masks import busi_mask_files, has_lesion_masks, lesion_mask, mask_view
from medens.data.transforms import build_transforms


def _mask(path: Path, box: tuple[int, int, int, int], size: tuple[int, int] = (16, 12)) -> None:
    pixels = np.zeros((size[1], size[0]), np.uint8)
    x0, y0, x1, y1 = box
    pixels[y0:y1, x0:x1] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _image(path: Path, size: tuple[int, int] = (16, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), 90, np.uint8)).save(path)


@pytest.fixture()
def busi(tmp_path: Path) -> Path:
    """A BUSI folder: an image with two masks, one with one, one with none, one with a mask of another size, and
    normal images with an empty mask."""
    base = tmp_path / "Dataset_BUSI_with_GT"
    _image(base / "benign" / "benign (1).png")
    _mask(base / "benign" / "benign (1)_mask.png", (0, 0, 4, 4))
    _mask(base / "benign" / "benign (1)_mask_1.png", (10, 6, 14, 10))
    _image(base / "benign" / "benign (11).png")  # a name that starts like another's: takes none of its masks
    _image(base / "malignant" / "malignant (1).png")
    _mask(base / "malignant" / "malignant (1)_mask.png", (4, 4, 8, 8))
    _image(base / "malignant" / "malignant (2).png")
    _mask(base / "malignant" / "malignant (2)_mask.png", (0, 0, 8, 6), size=(32, 24))  # resized to the image
    _image(base / "normal" / "normal (1).png")
    _mask(base / "normal" / "normal (1)_mask.png", (0, 0, 0, 0))
    return tmp_path


def _by_id(ds, item: str) -> int:
    return ds.ids.index(item)


def test_busi_masks_union_and_no_mask_is_no_score(busi: Path) -> None:
    ds = load_dataset("busi", busi)
    assert has_lesion_masks(ds)
    both = lesion_mask(ds, _by_id(ds, "benign/benign (1).png"))
    assert both is not None and both.shape == (12, 16) and both.dtype == bool
    assert both.sum() == 32 and both[0, 0] and both[7, 11] and not both[5, 5]
    assert lesion_mask(ds, _by_id(ds, "benign/benign (11).png")) is None
    one = lesion_mask(ds, _by_id(ds, "malignant/malignant (1).png"))
    assert one is not None and one.sum() == 16 and one[5, 5]
    resized = lesion_mask(ds, _by_id(ds, "malignant/malignant (2).png"))
    assert resized is not None and resized.shape == (12, 16) and resized.sum() == 4 * 3
    assert lesion_mask(ds, _by_id(ds, "normal/normal (1).png")) is None
    assert [p.name for p in busi_mask_files(busi / "Dataset_BUSI_with_GT" / "benign" / "benign (1).png")] == [
        "benign (1)_mask.png", "benign (1)_mask_1.png"]


def test_busi_masks_through_the_decode_cache(busi: Path, tmp_path: Path) -> None:
    ds = load_dataset("busi", busi, cache_dir=tmp_path / "cache", cache_size=8)
    assert lesion_mask(ds, _by_id(ds, "benign/benign (1).png")).sum() == 32


def test_datasets_without_masks_give_none(tmp_path: Path) -> None:
    for name in ("benign", "malignant"):
        _image(tmp_path / "folder" / name / "a.png")
    ds = load_dataset("folder", tmp_path / "folder")
    assert not has_lesion_masks(ds) and lesion_mask(ds, 0) is None


def test_synthetic_lesions_where_they_were_painted() -> None:
    ds = load_dataset("synthetic", None, num_images=12, image_size=48, num_classes=3)
    assert has_lesion_masks(ds)
    for i, label in enumerate(ds.targets):
        mask = lesion_mask(ds, i)
        if ds.classes[label] == "normal":
            assert mask is None
            continue
        assert mask is not None and mask.shape == (48, 48) and 0 < mask.mean() < 0.5
        pixels = np.asarray(ds[i][0].convert("L"), np.float64)
        assert pixels[mask].mean() < pixels[~mask].mean()  # lesions here are darker than the tissue


def test_synthetic_caliper_marks_one_class_and_changes_nothing_else() -> None:
    plain = load_dataset("synthetic", None, num_images=9, image_size=48)
    marked = load_dataset("synthetic", None, num_images=9, image_size=48, caliper="malignant")
    assert plain.fingerprint() != marked.fingerprint()
    for i, label in enumerate(marked.targets):
        a, b = np.asarray(plain[i][0]), np.asarray(marked[i][0])
        mark = marked.caliper_mask(i)
        if marked.classes[label] != "malignant":
            assert mark is None and np.array_equal(a, b)
            continue
        assert mark is not None and 4 <= mark.sum() < 0.05 * mark.size
        assert (b[mark] == 255).all() and np.array_equal(a[~mark], b[~mark])
        lesion = marked.lesion_mask(i)
        assert lesion is not None and not (lesion & mark).any()
    with pytest.raises(DatasetError, match="caliper"):
        load_dataset("synthetic", None, num_images=9, caliper="cyst")


def test_mask_view_follows_the_evaluation_crop() -> None:
    mask = np.zeros((40, 40), bool)
    mask[:10, :10] = True
    view = mask_view(mask, build_transforms(20, normalize=False, crop_pct=0.5, interpolation="nearest"))
    assert view.shape == (20, 20) and not view.any()  # the centre crop leaves the corner out
    full = mask_view(mask, build_transforms(20, normalize=False, crop_pct=1.0, interpolation="nearest"))
    assert full[:5, :5].all() and full.sum() == 25
