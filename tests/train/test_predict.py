"""``python -m medens.train predict`` and the ensemble's ``--tta`` on member folders with real (tiny) models."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medens import inference
from medens.data import SplitDataset, build_transforms, load_dataset
from medens.evaluate.members import load_member
from medens.train import ensemble as ensemble_cli
from medens.train import predict as predict_cli
from tests.train.helpers import (
    DATASET_OPTIONS,
    SIZE,
    TEST,
    make_member,
    model_probs,
    run_cli,
    write_image_folder,
)


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, torch.nn.Module]]:
    root = tmp_path_factory.mktemp("members")
    return [make_member(root, "ft-imagenet", "imagenet", 0), make_member(root, "ft-mae", "mae:/x", 1)]


def test_member_model_reproduces_stored_predictions(members) -> None:
    member = load_member(members[0][0])
    mm = inference.load_member_model(member, "cpu")
    ds = load_dataset("synthetic", None, **DATASET_OPTIONS)
    probs = inference.member_probs(mm, SplitDataset(ds, TEST, mm.transform))
    np.testing.assert_allclose(probs, member.test.probs, rtol=1e-5, atol=1e-6)


def test_tta_averages_image_and_mirror(members) -> None:
    directory, model = members[1]
    member = inference.with_tta_predictions(load_member(directory), val=True, device="cpu")
    ds = load_dataset("synthetic", None, **DATASET_OPTIONS)
    split = SplitDataset(ds, TEST, build_transforms(SIZE, train=False))
    batch = torch.stack([split[i][0] for i in range(len(split))])
    expected = (model_probs(model, batch) + model_probs(model, batch.flip(3))) / 2
    np.testing.assert_allclose(member.test.probs, expected, rtol=1e-5, atol=1e-6)
    assert member.val is not None and not np.allclose(member.val.probs, load_member(directory).val.probs)


def test_ensemble_cli_with_tta(members, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dirs = [str(d) for d, _ in members]
    out = tmp_path / "ens"
    argv = [
        "ensemble",
        "--members",
        *dirs,
        "--out",
        str(out),
        "--tta",
        "--calibrate",
        "--bootstrap",
        "20",
        "--no-plots",
        "--device",
        "cpu",
    ]
    assert run_cli(ensemble_cli, argv) == 0
    assert "Ensemble (mean, T-scaled, TTA)" in capsys.readouterr().out
    results = json.loads((out / "metrics.json").read_text())
    assert results["tta"] is True and results["members"][0]["label"] == "ImageNet-init (T-scaled, TTA)"
    assert results["gallery"]["tta"] is True and results["lesion"]["tta"] is True  # maps flip-averaged too


def test_predict_folder_is_mean_of_members(
    members, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = load_dataset("synthetic", None, **DATASET_OPTIONS)
    folder = tmp_path / "new" / "sub"
    folder.mkdir(parents=True)
    for i in range(3):
        ds[i][0].save(folder / f"img{i}.png")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "pred.csv"
    argv = [
        "predict",
        "--members",
        *[str(d) for d, _ in members],
        "--images",
        str(tmp_path / "new"),
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    assert run_cli(predict_cli, argv) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split() == ["Image", "Prediction", "Probability"]
    assert "3 images" in printed
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["path"]).name for r in rows] == ["img0.png", "img1.png", "img2.png"]
    transform = build_transforms(SIZE, train=False)
    from medens.data import read_image

    batch = torch.stack([transform(read_image(folder / f"img{i}.png")) for i in range(3)])
    expected = np.mean([model_probs(model, batch) for _, model in members], axis=0)
    got = np.array([[float(r[c]) for c in ds.classes] for r in rows])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert [r["prediction"] for r in rows] == [ds.classes[i] for i in expected.argmax(1)]


def test_predict_refuses_missing_images(members, tmp_path: Path) -> None:
    argv = [
        "predict",
        "--members",
        str(members[0][0]),
        "--images",
        str(tmp_path / "none"),
        "--out",
        str(tmp_path / "p.csv"),
    ]
    assert run_cli(predict_cli, argv) == 1
    assert not (tmp_path / "p.csv").exists()


def test_predict_names_a_missing_member_folder_as_ensemble_does(
    members, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "img.png"
    load_dataset("synthetic", None, **DATASET_OPTIONS)[0][0].save(images)
    argv = ["predict", "--members", str(members[0][0]), str(tmp_path / "nope"), "--images", str(images),
            "--out", str(tmp_path / "p.csv")]
    assert run_cli(predict_cli, argv) == 2  # a usage error, as in ensemble
    err = capsys.readouterr().err
    assert f"received {tmp_path / 'nope'}, which does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("where", ["member_file", "image", "inside_member"])
def test_predict_refuses_out_over_an_input(members, tmp_path: Path, capsys: pytest.CaptureFixture, where: str) -> None:
    ds = load_dataset("synthetic", None, **DATASET_OPTIONS)
    folder = tmp_path / "imgs"
    folder.mkdir()
    ds[0][0].save(folder / "a.png")
    member_dir = members[0][0]
    out = {
        "member_file": member_dir / "predictions.csv",
        "image": folder / "a.png",
        "inside_member": member_dir / "new" / "p.csv",
    }[where]
    watched = [member_dir / "predictions.csv", folder / "a.png"]
    before = [p.read_bytes() for p in watched]
    argv = ["predict", "--members", str(member_dir), "--images", str(folder), "--out", str(out), "--device", "cpu"]
    assert run_cli(predict_cli, argv) == 2  # --out over an input: a usage error
    err = capsys.readouterr().err
    assert "out: expected a path" in err and "Traceback" not in err
    assert [p.read_bytes() for p in watched] == before
    assert not (member_dir / "new").exists()


def test_predict_writes_every_readable_image_and_lists_the_unreadable(
    members, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = load_dataset("synthetic", None, **DATASET_OPTIONS)
    folder = write_image_folder(tmp_path)  # img1.png cannot be decoded; notes.txt is not an image
    out = tmp_path / "pred.csv"
    debris = tmp_path / ".pred.csv.k1ll3d_x.tmp"  # left by a predict killed while writing
    debris.write_text("half a csv")
    argv = ["predict", "--members", *[str(d) for d, _ in members], "--images", str(folder), "--out", str(out),
            "--device", "cpu"]
    assert run_cli(predict_cli, argv) == 0
    assert not debris.exists()
    printed = capsys.readouterr().out
    assert "2 images" in printed and "1 skipped (cannot be decoded; their rows in the CSV are empty)" in printed
    assert str(folder / "img1.png") in printed
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["path"]).name for r in rows] == ["img0.png", "img2.png", "img1.png"]
    unreadable = rows.pop()  # listed last, with nothing predicted
    assert unreadable["prediction"] == "" and all(unreadable[c] == "" for c in ds.classes)
    # the readable images get their own probabilities, not a neighbour's
    transform = build_transforms(SIZE, train=False)
    from medens.data import read_image

    batch = torch.stack([transform(read_image(folder / n)) for n in ("img0.png", "img2.png")])
    expected = np.mean([model_probs(model, batch) for _, model in members], axis=0)
    got = np.array([[float(r[c]) for c in ds.classes] for r in rows])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
