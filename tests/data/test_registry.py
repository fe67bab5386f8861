"""load_dataset: names, options, errors."""

import pytest

from medens.data import DatasetError, LabeledDataset, list_datasets, load_dataset


def test_every_issue_dataset_is_registered():
    assert set(list_datasets()) == {"busi", "isic2018", "kvasir", "covid", "medmnist", "folder", "synthetic"}


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(DatasetError, match=r"unknown dataset 'busy'; expected one of \['busi'"):
        load_dataset("busy", "/tmp")


def test_unknown_option_lists_the_accepted_ones(tmp_path, layouts):
    with pytest.raises(DatasetError, match=r"unknown option\(s\) \['image_size'\].*accepts"):
        load_dataset("busi", layouts.busi(tmp_path), image_size=3)


def test_bad_verify_mode_is_named(tmp_path, layouts):
    with pytest.raises(DatasetError, match="verify"):
        load_dataset("busi", layouts.busi(tmp_path), verify="quick")


def test_synthetic_ignores_root_with_a_warning(caplog):
    ds = load_dataset("synthetic", "/some/path", num_images=3, image_size=8)
    assert isinstance(ds, LabeledDataset) and len(ds) == 3
    assert "ignored" in caplog.text


def test_medmnist_needs_a_flag(tmp_path):
    with pytest.raises(DatasetError, match="flag is required"):
        load_dataset("medmnist", tmp_path)
