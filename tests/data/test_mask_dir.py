"""Lesion masks released apart from the images (``--dataset-option mask_dir=PATH``): Kvasir-SEG's masks for Kvasir,
ISIC 2018 Task 1's for Task 3, a mask folder mirroring a ``folder`` dataset, and BUSI's masks replaced; matched by
image id, several masks united, JPEG masks thresholded, coverage logged, no mask (or a normal image) no score."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from medens.data import DatasetError, DatasetNotFoundError, load_dataset
from medens.data.errors import DatasetUsageError
from medens.data.masks import has_lesion_masks, lesion_mask, mask_image_id

SIZE = (16, 12)  # (width, height) of the layouts' images


def _box(box: tuple[int, int, int, int], size: tuple[int, int] = SIZE) -> np.ndarray:
    pixels = np.zeros((size[1], size[0]), bool)
    x0, y0, x1, y1 = box
    pixels[y0:y1, x0:x1] = True
    return pixels


def _write_mask(path: Path, box: tuple[int, int, int, int], size: tuple[int, int] = SIZE, **save: object) -> np.ndarray:
    """A white box on black at ``path`` (format from the suffix); returns the box as ``bool (H, W)``."""
    mask = _box(box, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path, **save)
    return mask


def _index(ds, stem: str) -> int:
    return next(i for i, item in enumerate(ds.ids) if Path(item).stem == stem)


def test_mask_ids_follow_each_release_naming() -> None:
    assert mask_image_id("ISIC_0000001_segmentation.png") == "ISIC_0000001"
    assert mask_image_id("benign (1)_mask_1.png") == "benign (1)"
    assert mask_image_id("masks/cju0qkwl35piu0993l0dewei2.jpg") == "cju0qkwl35piu0993l0dewei2"
    assert mask_image_id("_mask.png") == "_mask"


def test_kvasir_with_kvasir_seg_masks(tmp_path: Path, layouts, caplog: pytest.LogCaptureFixture) -> None:
    root = layouts.kvasir(tmp_path / "kvasir", per_class=2)
    polyps = sorted((root / "kvasir-dataset-v2" / "polyps").iterdir())
    cecum = sorted((root / "kvasir-dataset-v2" / "normal-cecum").iterdir())
    seg = tmp_path / "Kvasir-SEG"
    box = (3, 2, 11, 9)  # not aligned to JPEG's 8 x 8 blocks: the edges ring
    truth = _write_mask(seg / "masks" / f"{polyps[0].stem}.jpg", box, quality=75)
    _write_mask(seg / "masks" / f"{cecum[0].stem}.jpg", box, quality=75)  # a normal image: never scored
    _write_mask(seg / "masks" / "cju0qkwl35piu0993l0dewei2.jpg", box, quality=75)  # a Kvasir-SEG-only image
    for stem in (polyps[0].stem, polyps[1].stem, "cju0qkwl35piu0993l0dewei2"):  # Kvasir-SEG's images: not masks
        layouts.write_image(seg / "images" / f"{stem}.jpg", seed=1)
    raw = np.asarray(Image.open(seg / "masks" / f"{polyps[0].stem}.jpg").convert("L"))
    assert ((raw > 0) & (raw < 128)).any()  # the JPEG's ringing, which is not lesion
    with caplog.at_level(logging.INFO, logger="medens.data.masks"):
        ds = load_dataset("kvasir", root, mask_dir=seg)
    assert "2 of 16 images have a mask (12.5%); 1 mask ids name no image" in caplog.text
    assert has_lesion_masks(ds)
    mask = lesion_mask(ds, _index(ds, polyps[0].stem))
    assert mask is not None and mask.shape == (12, 16) and np.array_equal(mask, truth)
    assert lesion_mask(ds, _index(ds, polyps[1].stem)) is None  # an image of Kvasir-SEG without a mask
    assert lesion_mask(ds, _index(ds, cecum[0].stem)) is None  # normal-cecum shows no lesion
    plain = load_dataset("kvasir", root)
    assert not has_lesion_masks(plain) and lesion_mask(plain, _index(plain, polyps[0].stem)) is None
    assert load_dataset("kvasir", root, mask_dir=seg / "masks").mask_files.files == ds.mask_files.files


def test_isic2018_with_task1_masks_for_the_images_both_tasks_share(tmp_path: Path, layouts,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    root = layouts.isic2018(tmp_path / "task3", {"Training": 6, "Validation": 3})
    task1 = tmp_path / "task1"
    train = _write_mask(task1 / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_0024306_segmentation.png", (0, 0, 5, 5))
    val = _write_mask(task1 / "ISIC2018_Task1_Validation_GroundTruth" / "ISIC_0024313_segmentation.png",
                      (8, 4, 16, 12))
    _write_mask(task1 / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_0000000_segmentation.png", (0, 0, 5, 5))
    for stem in ("ISIC_0024306", "ISIC_0024307", "ISIC_0000000"):  # the inputs beside: images, not masks
        layouts.write_image(task1 / "ISIC2018_Task1-2_Training_Input" / f"{stem}.jpg", seed=2)
    (task1 / "ISIC2018_Task1_Training_GroundTruth" / "LICENSE.txt").write_text("CC-BY-NC\n")
    with caplog.at_level(logging.INFO, logger="medens.data.masks"):
        ds = load_dataset("isic2018", root, mask_dir=task1)
    assert "2 of 9 images have a mask" in caplog.text and "1 mask ids name no image" in caplog.text
    assert ds.mask_files.unmatched == ["ISIC_0000000"]
    assert np.array_equal(lesion_mask(ds, _index(ds, "ISIC_0024306")), train)
    assert np.array_equal(lesion_mask(ds, _index(ds, "ISIC_0024313")), val)
    assert lesion_mask(ds, _index(ds, "ISIC_0024307")) is None  # no Task 1 mask: no score, not a zero
    scored = [i for i in range(len(ds)) if lesion_mask(ds, i) is not None]
    assert len(scored) == 2


def test_folder_masks_by_relative_path_are_united_and_stems_that_name_two_images_match_none(
        tmp_path: Path, layouts, caplog: pytest.LogCaptureFixture) -> None:
    root = layouts.folder(tmp_path / "data")  # cat_a/img{0,1,2}.png, cat_b/img{0,1,2}.png: stems repeat
    mirror = tmp_path / "mirror"
    first = _write_mask(mirror / "cat_a" / "img0_mask.png", (0, 0, 4, 4))
    second = _write_mask(mirror / "cat_a" / "img0_mask_1.png", (10, 6, 14, 10))
    ds = load_dataset("folder", root, mask_dir=mirror)
    united = lesion_mask(ds, ds.ids.index("cat_a/img0.png"))
    assert united is not None and np.array_equal(united, first | second)
    assert lesion_mask(ds, ds.ids.index("cat_b/img0.png")) is None
    flat = tmp_path / "flat"
    _write_mask(flat / "img1_mask.png", (0, 0, 4, 4))  # img1 of which class? No image gets it.
    _write_mask(flat / "img0_segmentation.png", (0, 0, 4, 4))
    with caplog.at_level(logging.WARNING, logger="medens.data.masks"):
        ds = load_dataset("folder", root, mask_dir=flat)
    assert not ds.mask_files.files and ds.mask_files.ambiguous == ["img0", "img1"]
    assert "0 of 6 images have a mask" in caplog.text and "name several images by stem" in caplog.text
    assert all(lesion_mask(ds, i) is None for i in range(len(ds)))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medens.data.masks"):
        ds = load_dataset("folder", root, mask_dir=root / "cat_a")  # the images themselves, by mistake
    assert not ds.mask_files.files and "0 of 6 images have a mask" in caplog.text


def test_busi_mask_dir_replaces_the_masks_beside_the_images(tmp_path: Path, layouts) -> None:
    root = layouts.busi(tmp_path / "busi", per_class=2)
    other = tmp_path / "corrected"
    fixed = _write_mask(other / "benign (2)_mask.png", (2, 2, 6, 6))
    ds = load_dataset("busi", root, mask_dir=other)
    assert np.array_equal(lesion_mask(ds, ds.ids.index("benign/benign (2).png")), fixed)
    assert lesion_mask(ds, ds.ids.index("benign/benign (1).png")) is None  # its own masks are not read
    assert lesion_mask(load_dataset("busi", root), 0) is not None


def test_mask_dir_through_the_decode_cache(tmp_path: Path, layouts) -> None:
    root = layouts.folder(tmp_path / "data")
    mask = _write_mask(tmp_path / "m" / "cat_b" / "img2.png", (1, 1, 9, 9))
    ds = load_dataset("folder", root, mask_dir=tmp_path / "m", cache_dir=tmp_path / "cache", cache_size=8)
    assert has_lesion_masks(ds) and np.array_equal(lesion_mask(ds, ds.ids.index("cat_b/img2.png")), mask)


def test_bad_mask_dir_is_named(tmp_path: Path, layouts) -> None:
    root = layouts.folder(tmp_path / "data")
    with pytest.raises(DatasetNotFoundError, match=r"--dataset-option mask_dir: expected a folder of lesion masks"):
        load_dataset("folder", root, mask_dir=tmp_path / "nowhere")
    with pytest.raises(DatasetUsageError, match=r"--dataset-option mask_dir: expected a folder of lesion masks, "
                                                r"received 3"):
        load_dataset("folder", root, mask_dir=3)
    with pytest.raises(DatasetError, match=r"unknown option\(s\) \['mask_dir'\]"):
        load_dataset("synthetic", None, num_images=6, mask_dir=tmp_path)


def test_mask_dir_feeds_the_lesion_scores_of_the_report(tmp_path: Path, layouts) -> None:
    from medens.data import build_transforms
    from medens.evaluate.gallery import explain_test_split
    from tests.evaluate.test_cam_methods import GapNet

    root = layouts.folder(tmp_path / "data", classes=("lesion", "normal"), per_class=3)
    for stem in ("img0", "img1"):
        _write_mask(tmp_path / "m" / "lesion" / f"{stem}.png", (2, 2, 8, 8))
    _write_mask(tmp_path / "m" / "normal" / "img0.png", (2, 2, 8, 8))  # a normal image: never scored
    ds = load_dataset("folder", root, mask_dir=tmp_path / "m")
    transform = build_transforms(16, train=False, crop_pct=1.0)
    member = SimpleNamespace(member=SimpleNamespace(name="a", config={"image_size": 16, "crop_pct": 1.0}),
                             model=GapNet().eval(), transform=transform, device="cpu")
    labels = np.array(ds.targets)
    probs = np.tile([[0.6, 0.4]], (len(ds), 1))
    out = explain_test_split([member], ds, ds.ids, labels, ds.classes, {"a": probs, "ensemble": probs},
                             tmp_path / "report", max_errors=0, max_correct=0, n_boot=50, tta=True)
    lesion = out["lesion"]
    assert lesion["n_images"] == 2 and set(lesion["models"]) == {"a", "ensemble"} and lesion["tta"] is True
    assert lesion["models"]["a"]["n_images"] == 2 and 0 <= lesion["models"]["a"]["energy_inside"] <= 1


def test_kvasir_pointed_at_kvasir_seg_says_to_give_it_as_mask_dir(tmp_path: Path, layouts) -> None:
    seg = tmp_path / "Kvasir-SEG"
    layouts.write_image(seg / "images" / "cju0qkwl35piu0993l0dewei2.jpg")
    _write_mask(seg / "masks" / "cju0qkwl35piu0993l0dewei2.jpg", (0, 0, 4, 4))
    for root in (seg, tmp_path):
        with pytest.raises(DatasetError, match=r"looks like Kvasir-SEG .* --dataset-option mask_dir="):
            load_dataset("kvasir", root)
