"""Kvasir v2: eight class folders, nested or directly under root."""

import pytest

from medens.data import DatasetError, load_dataset


@pytest.mark.parametrize("nested", [True, False])
def test_reads_eight_classes(tmp_path, layouts, nested):
    root = layouts.kvasir(tmp_path, per_class=2, nested=nested)
    ds = load_dataset("kvasir", root)
    assert ds.classes == layouts.KVASIR
    assert len(ds) == 16
    assert [ds.targets.count(c) for c in range(8)] == [2] * 8
    for item_id, label in zip(ds.ids, ds.targets, strict=True):
        assert item_id.startswith(ds.classes[label] + "/")


def test_missing_class_folder_is_named(tmp_path, layouts):
    root = layouts.kvasir(tmp_path)
    for path in (root / "kvasir-dataset-v2" / "polyps").iterdir():
        path.unlink()
    (root / "kvasir-dataset-v2" / "polyps").rmdir()
    with pytest.raises(DatasetError, match=r"missing \['polyps'\]"):
        load_dataset("kvasir", root)


def test_folder_without_kvasir_classes_is_an_error(tmp_path, layouts):
    layouts.folder(tmp_path)
    with pytest.raises(DatasetError, match="expected the eight Kvasir class folders"):
        load_dataset("kvasir", tmp_path)
