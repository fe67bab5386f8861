"""``medens data``: the contact sheet never overwrites the data, a damaged signature cache is rebuilt, and every
wrong option is a usage error (exit 2) named by its flag."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from medens.cli import main


@pytest.fixture(autouse=True)
def _outputs_in_tmp(tmp_path, monkeypatch):
    """``--duplicates`` writes its default PNGs into the working folder: a temporary one, never the checkout."""
    monkeypatch.chdir(tmp_path)


def _images(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _folder_with_copies(layouts, root: Path) -> Path:
    """A ``folder`` dataset (two classes of three) where ``cat_a/img0.png`` has a byte-identical copy."""
    layouts.folder(root, per_class=3)
    (root / "cat_a" / "copy.png").write_bytes((root / "cat_a" / "img0.png").read_bytes())
    return root


@pytest.mark.parametrize("target", [
    "cat_a/img1.png",        # an image of the dataset
    "cat_b/new-sheet.png",   # a new file in a class folder: it would be read as a cat_b image next time
    "notes.png",             # a file the dataset folder holds that medens did not write
])
def test_the_contact_sheet_never_overwrites_or_joins_the_data(tmp_path, layouts, capsys, target):
    root = _folder_with_copies(layouts, tmp_path / "data")
    layouts.write_image(root / "notes.png", seed=99)
    before = _images(root)
    sheet = root / target
    code = main(["data", "--dataset", "folder", "--data-root", str(root), "--duplicates", "--sheet", str(sheet)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "--sheet" in err and str(sheet) in err and "Traceback" not in err
    assert _images(root) == before  # nothing written, nothing replaced


def test_a_link_to_an_image_and_an_archive_are_inputs_too(tmp_path, layouts, capsys):
    root = _folder_with_copies(layouts, tmp_path / "data")
    link = tmp_path / "elsewhere.png"
    link.symlink_to(root / "cat_b" / "img2.png")
    before = _images(root)
    assert main(["data", "--dataset", "folder", "--data-root", str(root), "--duplicates", "--sheet", str(link)]) == 2
    assert _images(root) == before
    npz = layouts.medmnist(tmp_path / "mnist")
    data = (npz / "breastmnist.npz").read_bytes()
    assert main(["data", "--dataset", "medmnist:breastmnist", "--data-root", str(npz), "--duplicates",
                 "--sheet", str(npz / "breastmnist.npz")]) == 2
    assert (npz / "breastmnist.npz").read_bytes() == data
    capsys.readouterr()


def test_a_sheet_outside_the_images_is_written_and_rewritten(tmp_path, layouts, capsys):
    root = _folder_with_copies(layouts, tmp_path / "data")
    before = _images(root)
    sheet = root / "duplicates.png"  # beside the class folders: not read as an image
    for _ in range(2):  # the second run replaces the sheet the first one wrote
        assert main(["data", "--dataset", "folder", "--data-root", str(root), "--duplicates", "--sheet",
                     str(sheet), "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "1 groups holding 2 images" in capsys.readouterr().out
    with Image.open(sheet) as image:
        assert image.size[0] > 0 and "medens" in image.info.get("Software", "")
    assert {p: b for p, b in _images(root).items() if p != sheet} == before


@pytest.mark.parametrize("damage", ["truncate", "empty", "random"])
def test_a_damaged_signature_cache_is_rebuilt_with_a_warning(tmp_path, layouts, capsys, damage):
    root = _folder_with_copies(layouts, tmp_path / "data")
    cache = tmp_path / "cache"
    argv = ["data", "--dataset", "folder", "--data-root", str(root), "--duplicates", "--cache-dir", str(cache),
            "--sheet", str(tmp_path / "sheet.png")]
    assert main(argv) == 0
    file = cache / "image-signatures.npz"
    data = file.read_bytes()
    file.write_bytes({"truncate": data[: len(data) // 2], "empty": b"",
                      "random": os.urandom(len(data))}[damage])
    capsys.readouterr()
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "1 groups holding 2 images" in captured.out
    assert "Traceback" not in captured.err and str(file) in captured.err


@pytest.mark.parametrize(("argv", "named"), [
    (["--dataset", "synthetic", "--dataset-option", "image_size=abc"], "--dataset-option image_size"),
    (["--dataset", "synthetic", "--dataset-option", "num_images=many"], "--dataset-option num_images"),
    (["--dataset", "synthetic", "--dataset-option", "seed=-3"], "--dataset-option seed"),
    (["--dataset", "synthetic", "--dataset-option", "strict=maybe"], "--dataset-option strict"),
    (["--dataset", "medmnist:breastmnist", "--data-root", ".", "--dataset-option", "size=big"],
     "--dataset-option size"),
    (["--dataset", "folder", "--data-root", ".", "--dataset-option", "verify=twice"], "--dataset-option verify"),
    (["--dataset", "synthetic", "--duplicates", "--dedupe-threshold", "999"], "--dedupe-threshold"),
    (["--dataset", "synthetic", "--dedupe-threshold", "-1"], "--dedupe-threshold"),
    (["--dataset", "synthetic", "--split-seed", "-1"], "--split-seed"),
    (["--dataset", "folder", "--data-root", "data", "--duplicates", "--plot", "data/a/img0.png"], "--plot"),
    (["--dataset", "synthetic", "--dataset-option", "num_classes=9"], "--dataset-option num_classes"),
    (["--dataset", "busi"], "--data-root"),
])
def test_wrong_option_values_are_usage_errors_named_by_their_flag(tmp_path, layouts, capsys, argv, named):
    layouts.folder(tmp_path / "data", classes=("a", "b"))
    try:
        code = main(["data", *argv])
    except SystemExit as stop:  # argparse's own usage error
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err
    assert "argument '" not in err and "too many values to unpack" not in err


def test_a_split_file_keeps_the_duplicates_an_official_split_divides_with_a_warning(tmp_path, layouts, caplog):
    """The publisher's split is kept as shipped (so the pipeline's stages accept its splits.json); any other
    division of a duplicate group is a leak, refused."""
    import json

    import numpy as np

    from medens.data import DatasetError, load_dataset, make_splits

    root = layouts.medmnist(tmp_path / "mnist", counts=(8, 4, 4))
    file = root / "breastmnist.npz"
    with np.load(file) as npz:
        arrays = dict(npz)
    for (a, i), (b, j) in ((("train", 0), ("test", 0)), (("train", 2), ("train", 4))):  # across, and within train
        arrays[f"{b}_images"][j] = arrays[f"{a}_images"][i]
        arrays[f"{b}_labels"][j] = arrays[f"{a}_labels"][i]
    np.savez(file, **arrays)
    dataset = load_dataset("medmnist:breastmnist", root)
    cache = tmp_path / "cache"
    made = make_splits(dataset, out_dir=tmp_path / "a", hash_cache_dir=cache, progress=False)
    assert made["train"] and made["test"]
    reused = make_splits(dataset, out_dir=tmp_path / "b", split_file=tmp_path / "a" / "splits.json",
                         hash_cache_dir=cache, progress=False)
    assert reused == made and "official split divides stay divided" in caplog.text
    record = json.loads((tmp_path / "a" / "splits.json").read_text())
    train_items = [dataset.ids[i] for i, s in enumerate(dataset.official_splits) if s == "train"]
    record["splits"]["train"].remove(train_items[4])  # the copy of train item 2 moves to test: a leak
    record["splits"]["test"].append(train_items[4])
    (tmp_path / "leaky.json").write_text(json.dumps(record))
    with pytest.raises(DatasetError, match=r"divides 1 groups.*\(test\)"):
        make_splits(dataset, split_file=tmp_path / "leaky.json", hash_cache_dir=cache, progress=False)
