"""The ensemble report's gallery and lesion scores, from member folders with real (tiny) models on the synthetic
images (which have lesion masks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medens.evaluate.gallery import select_gallery
from medens.train import ensemble as ensemble_cli
from tests.train.helpers import make_member, run_cli


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("members")
    return [make_member(root, "ft-imagenet", "imagenet", 0)[0], make_member(root, "ft-mae", "mae:/x", 1)[0]]


def test_select_gallery_orders_errors_and_correct_ones() -> None:
    labels = np.array([0, 0, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4], [0.55, 0.45]])
    errors, right = select_gallery(labels, probs, max_errors=5, max_correct=2)
    assert errors == [1, 3]  # confidence 0.7 before 0.6
    assert right == [4, 2]  # least confident correct first
    assert select_gallery(labels, probs, max_errors=1, max_correct=0) == ([1], [])


def test_ensemble_report_has_gallery_and_lesion_scores(members, tmp_path: Path) -> None:
    out = tmp_path / "ens"
    argv = ["ensemble", "--members", *map(str, members), "--out", str(out), "--bootstrap", "50", "--no-plots",
            "--device", "cpu", "--gallery", "3"]
    assert run_cli(ensemble_cli, argv) == 0
    results = json.loads((out / "metrics.json").read_text())
    gallery = results["gallery"]
    assert gallery["errors"] == min(3, gallery["errors_total"]) and gallery["correct"] <= 4
    assert gallery["images"] and all((out / e["file"]).is_file() for e in gallery["images"])
    confidences = [e["confidence"] for e in gallery["images"] if e["kind"] == "error"]
    assert confidences == sorted(confidences, reverse=True)
    lesion = results["lesion"]
    assert lesion["n_images"] > 0
    assert set(lesion["models"]) == {m["name"] for m in results["members"]} | {"ensemble"}
    for scores in lesion["models"].values():
        low, high = scores["energy_inside_ci"]
        assert 0 <= low <= scores["energy_inside"] <= high <= 1
        assert 0 <= scores["pointing_game"] <= 1
    report = (out / "report.md").read_text()
    assert "## Does it look at the lesion?" in report and "## Gallery" in report
    assert all(f"]({e['file']})" in report for e in gallery["images"])


def test_ensemble_without_models_notes_the_missing_maps(members, tmp_path: Path) -> None:
    copies = []
    for directory in members:
        copy = tmp_path / directory.name
        copy.mkdir()
        for f in directory.iterdir():
            if f.name != "model.safetensors":
                (copy / f.name).write_bytes(f.read_bytes())
        copies.append(copy)
    out = tmp_path / "ens"
    argv = ["ensemble", "--members", *map(str, copies), "--out", str(out), "--bootstrap", "20", "--no-plots"]
    assert run_cli(ensemble_cli, argv) == 0
    results = json.loads((out / "metrics.json").read_text())
    assert results["gallery"] is None and "model.safetensors" in results["gallery_note"]
    assert "No gallery: the models or images could not be loaded" in (out / "report.md").read_text()


def test_no_maps_and_bad_layer(members, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "plain"
    base = ["ensemble", "--members", *map(str, members), "--bootstrap", "20", "--no-plots", "--device", "cpu"]
    assert run_cli(ensemble_cli, [*base, "--out", str(out), "--no-maps"]) == 0
    results = json.loads((out / "metrics.json").read_text())
    assert "gallery" not in results and not list(out.glob("gallery-*.png"))
    assert run_cli(ensemble_cli, [*base, "--out", str(tmp_path / "bad"), "--cam-layer", "nope"]) == 2
    assert "--cam-layer: expected module names" in capsys.readouterr().err
