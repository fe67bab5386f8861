"""COVID-19 Radiography Database: both releases; masks ignored; absent classes left out with a warning."""

import logging

import pytest

from medens.data import DatasetError, load_dataset


def test_current_release_reads_images_and_ignores_masks(tmp_path, layouts):
    ds = load_dataset("covid", layouts.covid(tmp_path, "current", per_class=2))
    assert ds.classes == ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
    assert len(ds) == 8
    assert all("/images/" in i and "/masks/" not in i for i in ds.ids)
    image, _ = ds[0]
    assert image.mode == "RGB"  # grayscale X-rays become 3-channel


def test_older_release_with_images_directly_in_class_folders(tmp_path, layouts, caplog):
    root = layouts.covid(tmp_path, "old", per_class=2)
    with caplog.at_level(logging.WARNING):
        ds = load_dataset("covid", root / "COVID-19 Radiography Database")
    assert ds.classes == ["COVID", "Normal", "Viral Pneumonia"]
    assert "Lung_Opacity" in caplog.text and "left out" in caplog.text
    assert sorted({i.split("/")[0] for i in ds.ids}) == ["COVID-19", "NORMAL", "Viral Pneumonia"]
    for item_id, label in zip(ds.ids, ds.targets, strict=True):
        folder = item_id.split("/")[0]
        assert ds.classes[label] == {"COVID-19": "COVID", "NORMAL": "Normal"}.get(folder, folder)


def test_empty_class_folder_is_an_error(tmp_path, layouts):
    root = layouts.covid(tmp_path, "current")
    for path in (root / "COVID-19_Radiography_Dataset" / "Normal" / "images").iterdir():
        path.unlink()
    with pytest.raises(DatasetError, match="class 'Normal' folder .* holds no images"):
        load_dataset("covid", root)


def test_no_class_folder_at_all_is_an_error(tmp_path, layouts):
    layouts.folder(tmp_path)
    with pytest.raises(DatasetError, match=r"expected class folders among \['COVID'"):
        load_dataset("covid", tmp_path)
