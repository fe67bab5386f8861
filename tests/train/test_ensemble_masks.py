"""Lesion masks given to an ensemble of members trained without them: ``ensemble --mask-dir`` and, in a pipeline or
study, ``--dataset-option mask_dir`` added after the members finished (masks play no part in training)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from medens.evaluate.ensemble import EnsembleOptions
from medens.layout import CONFIG_NAME, METRICS_NAME
from medens.train import ensemble as ensemble_cli
from medens.train import pipeline, stages
from tests.train.helpers import TINY_FINETUNE, TINY_PRETRAIN, make_member, run_cli
from tests.train.helpers import parse_pipeline as parse

CLASSES = ("lesion", "normal")


def _folder_dataset(root: Path, per_class: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for name in CLASSES:
        for i in range(per_class):
            path = root / name / f"img{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path)
    return root


def _masks(root: Path, stems: list[str]) -> Path:
    for stem in stems:
        mask = np.zeros((24, 24), np.uint8)
        mask[4:14, 4:14] = 255
        path = root / "lesion" / f"{stem}.png"  # mirrors the dataset's layout: matched by relative path
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(path)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """Two members trained on a ``folder`` dataset without lesion masks (test: every image, val: the same)."""
    root = tmp_path_factory.mktemp("masks")
    data = _folder_dataset(root / "data")
    every = list(range(2 * 4))
    members = [make_member(root, name, init, seed, dataset="folder", data_root=data, test=every, val=every)[0]
               for name, init, seed in (("ft-imagenet", "imagenet", 0), ("ft-mae", "mae:/x", 1))]
    return root, members


def _ensemble(members: list[Path], out: Path, *extra: str) -> int:
    return run_cli(ensemble_cli, ["ensemble", "--members", *map(str, members), "--out", str(out), "--bootstrap",
                                  "20", "--gallery", "0", "--device", "cpu", "--no-plots", *extra])


def test_mask_dir_scores_members_trained_without_masks(trained, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    root, members = trained
    assert "mask_dir" not in yaml.safe_load((members[0] / CONFIG_NAME).read_text())["dataset_options"]
    assert _ensemble(members, tmp_path / "plain") == 0
    plain = json.loads((tmp_path / "plain" / METRICS_NAME).read_text())
    assert plain["lesion"] is None and plain["mask_dir"] is None  # the dataset has no masks of its own
    masks = _masks(tmp_path / "m", ["img0", "img2", "img3"])
    assert _ensemble(members, tmp_path / "masked", "--mask-dir", str(masks)) == 0
    masked = json.loads((tmp_path / "masked" / METRICS_NAME).read_text())
    assert masked["mask_dir"] == str(masks)
    assert masked["lesion"]["n_images"] == 3 and {"ensemble"} < set(masked["lesion"]["models"])
    # the recorded masks are part of what a finished ensemble was evaluated with
    assert EnsembleOptions(n_boot=20, gallery=0, mask_dir=str(masks)).recorded_in(masked)
    monkeypatch.chdir(masks.parent)  # another spelling of the same folder is the same masks
    assert EnsembleOptions(n_boot=20, gallery=0, mask_dir=f"./{masks.name}/").recorded_in(masked)
    assert not EnsembleOptions(n_boot=20, gallery=0).recorded_in(masked)
    assert not EnsembleOptions(n_boot=20, gallery=0, mask_dir=str(masks)).recorded_in(plain)


def test_a_bad_mask_dir_is_refused_naming_the_flag(trained, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    _, members = trained
    assert _ensemble(members, tmp_path / "e", "--mask-dir", str(tmp_path / "nowhere")) == 2
    assert "--mask-dir: expected a folder of lesion masks, received" in capsys.readouterr().err
    assert _ensemble(members, tmp_path / "e", "--mask-dir", str(tmp_path), "--no-maps") == 2
    assert "--mask-dir: lesion masks are for the maps" in capsys.readouterr().err
    assert not (tmp_path / "e" / METRICS_NAME).exists()


def test_mask_dir_on_a_dataset_without_masks_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    members = [make_member(tmp_path, f"m{seed}", init, seed)[0] for seed, init in ((0, "imagenet"), (1, "mae:/x"))]
    assert _ensemble(members, tmp_path / "e", "--mask-dir", str(tmp_path)) == 2
    assert "unknown option(s) ['mask_dir']" in capsys.readouterr().err


def test_a_finished_stage_takes_new_lesion_masks_but_no_other_new_data_option(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    recorded = {"epochs": 5, "dataset": "folder", "dataset_options": {"verify": "header"}}
    (folder / CONFIG_NAME).write_text(yaml.safe_dump(recorded))
    with_masks = {"verify": "header", "mask_dir": str(tmp_path / "m")}
    assert stages._recorded_mismatches(folder, {"epochs": 5, "dataset_options": with_masks}) == []
    diffs = stages._recorded_mismatches(folder, {"epochs": 5, "dataset_options": {**with_masks, "verify": "full"}})
    assert diffs == ["dataset_options={'verify': 'header'} (requested {'verify': 'full'})"]
    # a run that recorded no data options at all is not refused for them, with or without masks
    (folder / CONFIG_NAME).write_text(yaml.safe_dump({"epochs": 5}))
    assert stages._recorded_mismatches(folder, {"epochs": 5, "dataset_options": with_masks}) == []


@pytest.mark.slow
def test_a_pipeline_rerun_with_lesion_masks_keeps_its_members_and_scores_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(stages, "preset_configs", lambda preset: (dict(TINY_PRETRAIN), dict(TINY_FINETUNE)))
    data = _folder_dataset(tmp_path / "data", per_class=12)
    argv = ["--dataset", "folder", "--data-root", str(data), "--out", str(tmp_path / "run"), "--bootstrap", "20",
            "--gallery", "0"]
    assert pipeline.main(parse(argv)) == 0
    capsys.readouterr()
    ensemble_dir = tmp_path / "run" / "ensemble"
    assert json.loads((ensemble_dir / METRICS_NAME).read_text())["lesion"] is None
    trained = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").glob("finetune-*/model.safetensors")}

    masks = _masks(tmp_path / "m", [f"img{i}" for i in range(12)])
    assert pipeline.main(parse([*argv, "--dataset-option", f"mask_dir={masks}"])) == 0
    printed = capsys.readouterr().out
    assert printed.count(" skipped ") == 3 and printed.count(" ran ") == 1  # only the ensemble is redone
    assert {p: p.stat().st_mtime_ns for p in trained} == trained
    results = json.loads((ensemble_dir / METRICS_NAME).read_text())
    test_lesions = sum(Path(p).parts[-2] == "lesion" for p in
                       (row.split(",")[0] for row in (ensemble_dir / "predictions.csv").read_text().splitlines()[1:]))
    assert results["mask_dir"] == str(masks) and results["lesion"]["n_images"] == test_lesions > 0
    # and a third run with the same masks has nothing left to do
    assert pipeline.main(parse([*argv, "--dataset-option", f"mask_dir={masks}"])) == 0
    assert capsys.readouterr().out.count(" skipped ") == 4
