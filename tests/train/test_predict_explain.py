"""``predict --explain``: one PNG of class-activation maps per readable image beside the CSV, the same
probabilities as without maps, nothing for unreadable images, never over an input."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medens.data import load_dataset
from medens.train import predict as predict_cli
from tests.train.helpers import DATASET_OPTIONS, make_member, run_cli, write_image_folder


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("members")
    return [make_member(root, "ft-imagenet", "imagenet", 0)[0], make_member(root, "ft-mae", "mae:/x", 1)[0]]


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _predict(members: list[Path], images: Path, out: Path, *extra: str) -> int:
    return run_cli(predict_cli, ["predict", "--members", *map(str, members), "--images", str(images),
                                 "--out", str(out), "--device", "cpu", *extra])


def test_explain_writes_one_png_per_readable_image_and_keeps_the_probabilities(
    members, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain, explained = tmp_path / "plain.csv", tmp_path / "out" / "pred.csv"
    assert _predict(members, folder, plain) == 0
    before = sorted(p.name for p in folder.iterdir())
    assert _predict(members, folder, explained, "--explain") == 0
    assert "class-activation maps" in capsys.readouterr().out
    rows, base = _rows(explained), _rows(plain)
    classes = load_dataset("synthetic", None, **DATASET_OPTIONS).classes
    assert list(rows[0]) == ["path", "prediction", *classes, "explanation"]
    for row, ref in zip(rows, base, strict=True):  # identical predictions with and without the maps
        assert {k: row[k] for k in ref} == ref
    by_name = {Path(r["path"]).name: r for r in rows}
    assert by_name["img1.png"]["explanation"] == "" and by_name["img1.png"]["prediction"] == ""
    pngs = sorted((tmp_path / "out" / "pred_explain").iterdir())
    assert [p.name for p in pngs] == ["0-img0.png", "1-img2.png"]
    for name in ("img0.png", "img2.png"):
        png = explained.parent / by_name[name]["explanation"]
        assert png.is_file()
        with Image.open(png) as picture:
            width, height = picture.size
            assert width > 3 * height  # the image, two members and the ensemble, side by side
            pixels = np.asarray(picture.convert("RGB"))
            assert pixels.std() > 10
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written among the inputs


def test_explain_with_a_named_class_layer_and_method(members, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    assert _predict(members[:1], folder / "img0.png", out, "--explain", "--cam-class", "malignant",
                    "--cam-layer", "stages.3", "--cam-method", "gradxact") == 0
    rows = _rows(out)
    assert len(rows) == 1 and (tmp_path / rows[0]["explanation"]).is_file()


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--cam-class", "tumour", "--cam-class: expected one of"),
    ("--cam-layer", "stages.9", "--cam-layer: expected module names"),
])
def test_explain_refuses_bad_cam_options(members, folder, tmp_path, capsys, flag, value, message) -> None:
    out = tmp_path / "p.csv"
    assert _predict(members, folder, out, "--explain", flag, value) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "p_explain").exists()


def test_explain_refuses_to_write_pngs_among_the_inputs(members, folder: Path, capsys) -> None:
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert _predict(members, folder, folder / "pred.csv", "--explain") == 2
    assert "out: expected a path outside the input folder" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_explain_with_tta_keeps_the_tta_probabilities_and_flip_averages_the_maps(
    members, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medens.evaluate import explain

    calls: list[bool] = []
    real = explain.class_activation_maps

    def recording(*args, **kwargs):
        calls.append(kwargs.get("tta", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(explain, "class_activation_maps", recording)
    image = folder / "img0.png"
    tta, tta_maps = tmp_path / "tta.csv", tmp_path / "tta-maps.csv"
    assert _predict(members, image, tta, "--tta") == 0
    assert _predict(members, image, tta_maps, "--tta", "--explain", "--cam-method", "gradcampp") == 0
    row = _rows(tta_maps)[0]
    assert {k: row[k] for k in _rows(tta)[0]} == _rows(tta)[0]  # the maps change no TTA probability
    assert (tmp_path / row["explanation"]).is_file()
    assert calls and all(calls)  # every member's map was taken the TTA way
