"""ISIC 2018 Task 3 (one-hot CSVs, official splits, lesion groups) and the HAM10000 layout."""

import csv
import logging

import pytest

from medens.data import DatasetError, load_dataset, make_splits

CLASSES = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]


def _truth(root, part):
    return root / f"ISIC2018_Task3_{part}_GroundTruth" / f"ISIC2018_Task3_{part}_GroundTruth.csv"


def test_official_splits_labels_and_groups(tmp_path, layouts):
    root = layouts.isic2018(tmp_path, {"Training": 14, "Validation": 7, "Test": 7})
    ds = load_dataset("isic2018", root)
    assert ds.classes == CLASSES
    assert len(ds) == 28
    assert ds.official_splits.count("train") == 14
    assert ds.official_splits.count("val") == 7 and ds.official_splits.count("test") == 7
    with open(_truth(root, "Validation")) as handle:
        rows = list(csv.DictReader(handle))
    by_id = dict(zip(ds.ids, ds.targets, strict=True))
    for row in rows:
        expected = next(i for i, c in enumerate(CLASSES) if row[c] == "1.0")
        assert by_id[f"ISIC2018_Task3_Validation_Input/{row['image']}.jpg"] == expected
    groups = ds.groups
    assert groups[0] == groups[1] == "HAM_0000000"  # training images come in lesions of two
    assert all(g is None for g, s in zip(groups, ds.official_splits, strict=True) if s != "train")
    splits = make_splits(ds)
    assert len(splits["train"]) == 14 and len(splits["val"]) == 7 and len(splits["test"]) == 7


def test_only_training_part_is_split_by_lesion(tmp_path, layouts):
    root = layouts.isic2018(tmp_path, {"Training": 40})
    ds = load_dataset("isic2018", root)
    splits = make_splits(ds, seed=3, val_fraction=0.2, test_fraction=0.3)
    lesion_split = {}
    for name, indices in splits.items():
        for i in indices:
            assert lesion_split.setdefault(ds.groups[i], name) == name  # no lesion in two splits
    assert all(splits.values())


def test_training_and_test_only_carves_val_from_training(tmp_path, layouts):
    ds = load_dataset("isic2018", layouts.isic2018(tmp_path, {"Training": 40, "Test": 7}))
    splits = make_splits(ds, val_fraction=0.1, test_fraction=0.2)
    assert [ds.official_splits[i] for i in splits["test"]] == ["test"] * 7
    assert {ds.official_splits[i] for i in splits["val"]} == {"train"}
    assert 3 <= len(splits["val"]) <= 8  # 1/8 of the 40 training images, in whole lesions


def test_a_ground_truth_row_given_twice_names_the_file_line_and_image(tmp_path, layouts):
    root = layouts.isic2018(tmp_path, {"Training": 6})
    truth = _truth(root, "Training")
    lines = truth.read_text().splitlines()
    truth.write_text("\n".join([*lines, lines[2]]) + "\n")  # the second image's row again, as the last line
    image = lines[2].split(",")[0]
    with pytest.raises(DatasetError, match=rf"GroundTruth.csv' line {len(lines) + 1}: image '{image}' is listed twice"):
        load_dataset("isic2018", root)


def test_csv_row_without_its_image_is_an_error_naming_csv_line_and_image(tmp_path, layouts):
    root = layouts.isic2018(tmp_path, {"Training": 6})
    (root / "ISIC2018_Task3_Training_Input" / "ISIC_0024308.jpg").unlink()
    with pytest.raises(DatasetError, match=r"GroundTruth.csv' line 4 names image 'ISIC_0024308'.*holds no"):
        load_dataset("isic2018", root)


def test_image_without_csv_row_is_left_out_and_listed(tmp_path, layouts, caplog):
    root = layouts.isic2018(tmp_path, {"Training": 6})
    extra = layouts.write_image(root / "ISIC2018_Task3_Training_Input" / "ISIC_9999999.jpg")
    with caplog.at_level(logging.WARNING):
        ds = load_dataset("isic2018", root)
    assert len(ds) == 6
    assert [(s.path, s.reason) for s in ds.skipped] == [
        (str(extra), "no row in ISIC2018_Task3_Training_GroundTruth.csv")]
    assert "ISIC_9999999" in caplog.text


def test_row_that_is_not_one_hot_is_an_error(tmp_path, layouts):
    root = layouts.isic2018(tmp_path, {"Training": 4})
    path = _truth(root, "Training")
    lines = path.read_text().splitlines()
    assert lines[2] == "ISIC_0024307,1.0,0.0,0.0,0.0,0.0,0.0,0.0"
    lines[2] = "ISIC_0024307,1.0,1.0,0.0,0.0,0.0,0.0,0.0"  # MEL and NV
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match="line 3: expected exactly one 1"):
        load_dataset("isic2018", root)


def test_csv_that_is_not_utf8_is_an_error_naming_the_file(tmp_path, layouts):
    root = layouts.isic2018(tmp_path, {"Training": 4})
    path = _truth(root, "Training")
    path.write_bytes(path.read_bytes().replace(b"ISIC_0024307", b"ISIC_00243\xe97", 1))  # a Latin-1 e-acute
    with pytest.raises(DatasetError, match=r"GroundTruth.csv': expected UTF-8 text, received a byte that is not "
                                           r"\(0xe9 at offset \d+\)"):
        load_dataset("isic2018", root)


def test_csv_missing_a_class_column_is_an_error(tmp_path, layouts):
    root = layouts.isic2018(tmp_path, {"Training": 2})
    _truth(root, "Training").write_text("image,MEL,NV\nISIC_0024306,1.0,0.0\n")
    with pytest.raises(DatasetError, match=r"missing \['BCC', 'AKIEC', 'BKL', 'DF', 'VASC'\]"):
        load_dataset("isic2018", root)


def test_ham10000_layout_with_duplicate_kaggle_folders(tmp_path, layouts):
    root = layouts.ham10000(tmp_path, count=14)
    ds = load_dataset("isic2018", root)
    assert ds.classes == CLASSES
    assert len(ds) == 14 and not ds.skipped
    assert ds.targets[:4] == [0, 0, 1, 1]  # dx mel, mel, nv, nv
    assert ds.groups[:4] == ["HAM_0000000", "HAM_0000000", "HAM_0000001", "HAM_0000001"]
    assert ds.official_splits is None


def test_ham10000_unknown_diagnosis_is_an_error(tmp_path, layouts):
    root = layouts.ham10000(tmp_path, count=2)
    meta = root / "HAM10000_metadata.csv"
    meta.write_text(meta.read_text().replace(",mel,", ",melanoma,", 1))
    with pytest.raises(DatasetError, match="line 2: expected dx among .* got 'melanoma'"):
        load_dataset("isic2018", root)


def test_isic2018_is_preferred_when_both_layouts_are_present(tmp_path, layouts):
    layouts.ham10000(tmp_path / "ham", count=4)
    layouts.isic2018(tmp_path / "isic", {"Training": 4, "Test": 2})
    assert load_dataset("isic2018", tmp_path).official_splits is not None
    assert load_dataset("isic2018", tmp_path, layout="ham10000").official_splits is None


def test_folder_without_either_layout_is_an_error(tmp_path, layouts):
    layouts.folder(tmp_path)
    with pytest.raises(DatasetError, match="expected ISIC2018_Task3_.*HAM10000_metadata.csv"):
        load_dataset("isic2018", tmp_path)


def test_truncated_jpeg_is_skipped_when_opening_and_counted(tmp_path, layouts, caplog):
    root = layouts.isic2018(tmp_path, {"Training": 6})
    bad = root / "ISIC2018_Task3_Training_Input" / "ISIC_0024307.jpg"
    layouts.truncate(layouts.big_jpeg(bad))
    with caplog.at_level(logging.WARNING):
        ds = load_dataset("isic2018", root)
    assert len(ds) == 5 and "ISIC2018_Task3_Training_Input/ISIC_0024307.jpg" not in ds.ids
    assert [s.path for s in ds.skipped] == [str(bad)] and "truncated" in ds.skipped[0].reason
    assert str(bad) in caplog.text
