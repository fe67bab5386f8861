"""The ensemble's map flags (``--gallery``, ``--no-maps``, ``--cam-layer``, ``--cam-method``) on ``pipeline`` and
``study``: declared once, read into one :class:`~medens.evaluate.ensemble.EnsembleOptions`, and what the report
holds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from medens.evaluate.ensemble import EnsembleOptions
from medens.train import ensemble as ensemble_stage
from medens.train import pipeline, study
from medens.train.units import Unit, unit_options

MAP_FLAGS = ["--gallery", "5", "--no-maps", "--cam-layer", "stages.3", "--cam-layer", "stages.2",
             "--cam-method", "gradxact"]
EXPECTED = EnsembleOptions(gallery=5, maps=False, cam_layer=("stages.3", "stages.2"), cam_method="gradxact",
                           method="weighted", calibrate=True, n_boot=30)


def parse(command: str, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="medens")
    module = {"pipeline": pipeline, "study": study, "ensemble": ensemble_stage}[command]
    module.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args([command, *argv])


def _help(command: str, capsys: pytest.CaptureFixture[str]) -> list[str]:
    with pytest.raises(SystemExit):
        parse(command, ["--help"])
    text = capsys.readouterr().out
    start = text.index("class-activation maps in the report:")
    return text[start:].split("\n\n")[0].splitlines()


def test_the_three_commands_share_the_map_flags_and_their_help(capsys: pytest.CaptureFixture[str]) -> None:
    shown = {command: _help(command, capsys) for command in ("ensemble", "pipeline", "study")}
    assert shown["pipeline"] == shown["ensemble"] == shown["study"]
    assert any("--no-maps" in line for line in shown["pipeline"])


@pytest.mark.parametrize("command", ["pipeline", "study"])
def test_pipeline_and_study_read_the_map_flags_into_the_ensemble_options(command: str, tmp_path: Path) -> None:
    argv = ["--out", str(tmp_path), *MAP_FLAGS, "--method", "weighted", "--calibrate", "--bootstrap", "30"]
    options = pipeline.options_from_args(parse(command, argv))
    assert ensemble_stage.options_from_flags(options) == EXPECTED
    if command == "study":  # forwarded to every run of the study
        unit = unit_options(options, Unit(fold=1, seed=0), folds=3)
        assert ensemble_stage.options_from_flags(unit) == EXPECTED
    # Without the flags: the defaults of the ensemble command, maps included.
    defaults = ensemble_stage.options_from_flags(pipeline.options_from_args(parse(command, ["--out", str(tmp_path)])))
    assert defaults == EnsembleOptions()
    flags = vars(parse("ensemble", ["--members", "a", "b", "--out", "o"]))
    assert ensemble_stage.options_from_flags(flags) == defaults


def test_bad_map_flags_are_usage_errors_naming_them(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, flag in ([["--gallery", "-1"], "--gallery"], [["--cam-method", "nope"], "--cam-method"]):
        with pytest.raises(SystemExit) as stopped:
            parse("pipeline", argv)
        assert stopped.value.code == 2 and flag in capsys.readouterr().err
    with pytest.raises(ValueError, match="gallery: expected an integer >= 0, received -1"):
        EnsembleOptions(gallery=-1)


def test_a_cam_layer_the_members_lack_is_refused_before_anything_trains(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from medens.cli import main
    from medens.layout import PRETRAIN_DIR

    out = tmp_path / "run"
    code = main(["pipeline", "--out", str(out), "--preset", "smoke", "--dataset-option", "num_images=36",
                 "--device", "cpu", "--cam-layer", "stages.9"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "--cam-layer" in err and "stages.9" in err and "stages.3" in err, err  # names what the model has
    assert not (out / PRETRAIN_DIR).exists()  # refused before the first stage, not after the training


@pytest.mark.slow
def test_pipeline_no_maps_then_gallery_0_changes_the_report(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """On the smoke preset: ``--no-maps`` writes no maps; the same run with ``--gallery 0`` redoes only the
    ensemble, now with the lesion scores but no gallery images; the same command again redoes nothing."""
    out = tmp_path / "run"
    argv = ["--out", str(out), "--preset", "smoke", "--dataset-option", "num_images=36", "--bootstrap", "20",
            "--device", "cpu"]
    ens = out / "ensemble"

    assert pipeline.main(parse("pipeline", [*argv, "--no-maps"])) == 0
    assert capsys.readouterr().out.count(" ran ") == 4
    results = json.loads((ens / "metrics.json").read_text())
    report = (ens / "report.md").read_text()
    assert "gallery" not in results and "lesion" not in results
    assert "## Gallery" not in report and "## Does it look at the lesion?" not in report
    assert not list(ens.glob("gallery-*.png"))

    assert pipeline.main(parse("pipeline", [*argv, "--gallery", "0"])) == 0
    status = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()
              if line.split()[:1] in (["pretrain"], ["finetune-imagenet"], ["finetune-mae"], ["ensemble"])}
    assert status == {"pretrain": "skipped", "finetune-imagenet": "skipped", "finetune-mae": "skipped",
                      "ensemble": "ran"}
    results = json.loads((ens / "metrics.json").read_text())
    assert results["gallery"]["max_errors"] == 0 and results["gallery"]["images"] == []
    assert results["lesion"]["n_images"] > 0  # the synthetic images ship lesion masks
    assert "## Does it look at the lesion?" in (ens / "report.md").read_text()
    assert not list(ens.glob("gallery-*.png"))

    assert pipeline.main(parse("pipeline", [*argv, "--gallery", "0"])) == 0
    assert capsys.readouterr().out.count(" skipped ") == 4
