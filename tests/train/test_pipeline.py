"""``python -m medens.train pipeline``: stage configuration, the demo defaults, and a tiny end-to-end run that resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from medens.train import ensemble as ensemble_stage
from medens.train import pipeline, stages
from medens.train.options import EXECUTION_KEYS
from tests.train.helpers import TINY_FINETUNE, TINY_PRETRAIN
from tests.train.helpers import parse_pipeline as parse


def test_no_arguments_means_the_demo() -> None:
    options = pipeline.options_from_args(parse([]))
    assert (options["dataset"], options["out"], options["preset"]) == ("synthetic", "runs/demo", "small")
    configs = stages.stage_configs(options)
    for stage in ("pretrain", "imagenet", "mae"):
        assert configs[stage]["dataset_options"] == stages.DEMO_DATASET_OPTIONS
        assert configs[stage]["arch"] == "convnext_atto"
        assert "cache_dir" not in configs[stage]  # generated images need no decode cache
    # Pre-training at the images' own size, on the small preset's masking grid; the members at 64 px.
    pretrain = configs["pretrain"]
    assert pretrain["image_size"] == stages.DEMO_DATASET_OPTIONS["image_size"] == 96
    assert pretrain["image_size"] // (pretrain["patch_size"] or pretrain["output_stride"]) >= 6
    assert pretrain["epochs"] == stages.DEMO_OVERRIDES["pretrain"]["epochs"]
    assert configs["imagenet"]["image_size"] == configs["mae"]["image_size"] == 64
    # A flag still wins over the demo's own settings.
    flagged = stages.stage_configs(pipeline.options_from_args(parse(["--image-size", "32", "--pretrain-epochs", "3"])))
    assert flagged["imagenet"]["image_size"] == flagged["pretrain"]["image_size"] == 32
    assert flagged["pretrain"]["epochs"] == 3


def test_small_preset_on_a_real_dataset_and_on_the_demo_images_at_another_size() -> None:
    real = stages.stage_configs(pipeline.options_from_args(parse(["--dataset", "busi", "--data-root", "/d",
                                                                  "--out", "o", "--preset", "small"])))
    assert {real[s]["image_size"] for s in ("pretrain", "imagenet", "mae")} == {96}
    sized = stages.stage_configs(pipeline.options_from_args(parse(["--dataset-option", "image_size=32",
                                                                   "--image-size", "32"])))
    assert sized["pretrain"]["image_size"] == 32  # a flag still wins
    paper = stages.stage_configs(pipeline.options_from_args(parse(["--preset", "paper"])))
    assert paper["pretrain"]["image_size"] == 224  # another preset on the demo images keeps its own size


def test_real_dataset_needs_out_and_defaults_to_paper(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="out: expected --out DIR for dataset 'busi'"):
        pipeline.options_from_args(parse(["--dataset", "busi"]))
    options = pipeline.options_from_args(
        parse(["--dataset", "busi", "--data-root", "/d", "--out", str(tmp_path)])
    )
    configs = stages.stage_configs(options)
    assert options["preset"] == "paper"
    assert configs["pretrain"]["arch"] == "convnext_tiny" and configs["pretrain"]["image_size"] == 224
    assert configs["imagenet"]["arch"] == "convnext_tiny.fb_in1k"
    assert configs["mae"]["cache_dir"] == str(tmp_path / "cache")
    assert (
        configs["pretrain"]["epochs"]
        == yaml.safe_load(
            (Path(pipeline.__file__).parent.parent / "configs" / "pretrain_paper.yaml").read_text()
        )["epochs"]
    )


def test_stage_options_override_the_preset(tmp_path: Path) -> None:
    argv = [
        "--out",
        str(tmp_path),
        "--arch",
        "convnext_femto",
        "--image-size",
        "96",
        "--pretrain-epochs",
        "3",
        "--finetune-epochs",
        "2",
        "--set-finetune",
        "label_smoothing=0.2",
        "--set-pretrain",
        "mask_ratio=0.5",
        "--dataset-option",
        "num_images=40",
        "--require-imagenet",
        "--pretrained-file",
        "/w/model.safetensors",
    ]
    configs = stages.stage_configs(pipeline.options_from_args(parse(argv)))
    pre, imnet, mae = configs["pretrain"], configs["imagenet"], configs["mae"]
    assert pre["arch"] == imnet["arch"] == mae["arch"] == "convnext_femto"
    assert pre["image_size"] == mae["image_size"] == 96
    assert (pre["epochs"], imnet["epochs"], mae["epochs"]) == (3, 2, 2)
    assert pre["warmup_epochs"] <= 2 and mae["warmup_epochs"] <= 1  # warm-up shortened to fit
    assert pre["mask_ratio"] == 0.5 and mae["label_smoothing"] == 0.2  # the preset has 0
    assert pre["dataset_options"] == {"num_images": 40}
    # Both members use the split pre-training wrote, and the MAE member its encoder.
    assert imnet["split_file"] == mae["split_file"] == str(tmp_path / "pretrain" / "splits.json")
    assert mae["init"] == f"mae:{tmp_path / 'pretrain' / 'encoder.safetensors'}"
    assert imnet["init"] == "imagenet" and imnet["allow_random_imagenet_fallback"] is False
    assert imnet["pretrained_file"] == "/w/model.safetensors"
    assert [Path(c["out"]).name for c in configs.values()] == [
        "pretrain",
        "finetune-imagenet",
        "finetune-mae",
    ]


def test_norm_reaches_every_stage_and_the_mae_member_follows_its_encoder(tmp_path: Path) -> None:
    configs = stages.stage_configs(pipeline.options_from_args(parse(["--out", str(tmp_path), "--norm", "batch"])))
    assert {name: c["norm"] for name, c in configs.items()} == {"pretrain": "batch", "imagenet": "batch", "mae": "batch"}
    options = pipeline.options_from_args(parse(["--out", str(tmp_path), "--norm", "layer"]))
    varied = stages.stage_configs(options, stages.Variant("norm=batch", {"norm": "batch"}))
    assert (varied["pretrain"]["norm"], varied["mae"]["norm"], varied["imagenet"]["norm"]) == ("batch",) * 2 + ("layer",)
    fine_only = stages.stage_configs(pipeline.options_from_args(parse(
        ["--out", str(tmp_path), "--set-pretrain", "norm=layer", "--set-finetune", "norm=batch"])))
    assert (fine_only["imagenet"]["norm"], fine_only["mae"]["norm"]) == ("batch", "layer")  # the encoder's
    with pytest.raises(SystemExit):
        parse(["--out", str(tmp_path), "--norm", "group"])


def test_unknown_preset_is_named() -> None:
    with pytest.raises(ValueError, match=r"preset: expected one of \['paper', 'small', 'smoke'\], received 'huge'"):
        stages.preset_configs("huge")


def test_finished_stage_with_other_options_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "finetune-mae"
    folder.mkdir()
    (folder / "config.yaml").write_text(
        yaml.safe_dump({"epochs": 5, "arch": "convnext_atto", "device": "cuda"})
    )
    assert (
        stages._recorded_mismatches(folder, {"epochs": 5, "arch": "convnext_atto", "device": "cpu"}) == []
    )
    diffs = stages._recorded_mismatches(folder, {"epochs": 7, "arch": "convnext_atto"})
    assert diffs == ["epochs=5 (requested 7)"]


def test_a_stage_recorded_before_the_norm_option_had_layer_norm(tmp_path: Path) -> None:
    folder = tmp_path / "pretrain"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump({"epochs": 5, "arch": "convnext_atto"}))
    assert stages._recorded_mismatches(folder, {"epochs": 5, "norm": "layer"}) == []
    assert stages._recorded_mismatches(folder, {"epochs": 5, "norm": "batch"}) == ["norm='layer' (requested 'batch')"]


def test_a_finished_stage_is_reused_whatever_it_ran_with(tmp_path: Path) -> None:
    """Every execution key (where and how a run executes) may differ from what a finished stage recorded."""
    folder = tmp_path / "finetune-imagenet"
    folder.mkdir()
    recorded = {key: f"recorded-{key}" for key in EXECUTION_KEYS}
    (folder / "config.yaml").write_text(yaml.safe_dump({**recorded, "epochs": 5}))
    requested = {key: f"requested-{key}" for key in EXECUTION_KEYS}
    assert stages._recorded_mismatches(folder, {**requested, "epochs": 5}) == []


def test_run_stage_skips_resumes_or_starts(tmp_path: Path) -> None:
    calls: list[dict] = []

    def run(config: dict) -> Path:
        calls.append(config)
        return Path(config["out"])

    folder = tmp_path / "stage"
    config = {"out": str(folder), "epochs": 5}
    started = stages.run_stage("finetune-mae", config, run, lambda p: False)
    assert (started.status, calls[-1]["resume"]) == ("ran", False)

    folder.mkdir()
    (folder / "checkpoint.pt").write_bytes(b"")
    (folder / "config.yaml").write_text(yaml.safe_dump({"epochs": 5}))
    resumed = stages.run_stage("finetune-mae", config, run, lambda p: False)
    assert (resumed.status, calls[-1]["resume"]) == ("resumed", True)
    with pytest.raises(ValueError, match="holds an unfinished finetune-mae run with other options: epochs=5"):
        stages.run_stage("finetune-mae", {**config, "epochs": 7}, run, lambda p: False)

    skipped = stages.run_stage("finetune-mae", config, run, lambda p: True)
    assert skipped.status == "skipped" and len(calls) == 2




@pytest.mark.slow
def test_default_run_end_to_end_then_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m medens.train`` without arguments, shrunk to seconds, then rerun and resumed."""
    from medens.train.__main__ import main as train_main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(stages, "preset_configs", lambda preset: (dict(TINY_PRETRAIN), dict(TINY_FINETUNE)))
    monkeypatch.setattr(stages, "DEMO_DATASET_OPTIONS", {"num_images": 48, "image_size": 64})
    monkeypatch.setattr(ensemble_stage, "DEFAULT_N_BOOT", 50)

    assert train_main([]) == 0
    printed = capsys.readouterr().out
    root = tmp_path / "runs" / "demo"
    stage_dirs = ["pretrain", "finetune-imagenet", "finetune-mae", "ensemble"]
    for stage in stage_dirs:
        assert f"{stage} " in printed
    assert printed.count(" ran ") == 4
    # The table: both members and the ensemble, the ImageNet member labelled as what it is (no weights offline).
    for label in ["Random-init (ImageNet weights unavailable)", "MAE-init", "Ensemble (mean)"]:
        assert label in printed
    assert "ImageNet-init " not in printed
    assert f"report: {Path('runs/demo/ensemble/report.md')}" in printed
    results = json.loads((root / "ensemble" / "metrics.json").read_text())
    assert [m["init_kind"] for m in results["members"]] == ["imagenet-unavailable-random-init", "mae"]
    hashes = {yaml.safe_load((root / s / "config.yaml").read_text())["split_hash"] for s in stage_dirs[:3]}
    # Every training stage said how long it and the stages after it would take, before its loop ran.
    for stage, later in zip(stage_dirs[:3], ["; ", "; ", " (cpu) "], strict=True):
        estimate = next(line for line in (root / stage / "train.log").read_text().splitlines() if "estimated" in line)
        assert "on this machine (cpu) for this stage's" in estimate
        assert ("for the whole pipeline" in estimate) == (later == "; "), estimate
    assert len(hashes) == 1  # every stage on one split
    for name in [
        "report.md",
        "predictions.csv",
        "confusion_matrices.png",
        "roc_curves.png",
        "reliability.png",
    ]:
        assert (root / "ensemble" / name).is_file()

    # Run again: nothing is redone.
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and p.suffix != ".log"}
    assert train_main([]) == 0
    assert capsys.readouterr().out.count(" skipped ") == 4
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # A pipeline killed during the MAE fine-tuning (checkpoint written, final outputs not yet): rerunning resumes
    # that stage and redoes the ensemble, and leaves the finished stage_dirs alone.
    for name in ["metrics.json", "predictions.csv", "val_predictions.csv"]:
        (root / "finetune-mae" / name).unlink()
    for path in (root / "ensemble").iterdir():
        path.unlink()
    keep = {p: p.stat().st_mtime_ns for p in (root / "finetune-imagenet").iterdir()}
    assert train_main([]) == 0
    printed = capsys.readouterr().out
    status = {
        line.split()[0]: line.split()[1]
        for line in printed.splitlines()
        if line.split()[:1] in [[s] for s in stage_dirs]
    }
    assert status == {
        "pretrain": "skipped",
        "finetune-imagenet": "skipped",
        "finetune-mae": "resumed",
        "ensemble": "ran",
    }
    assert {p: p.stat().st_mtime_ns for p in (root / "finetune-imagenet").iterdir()} == keep
    assert (root / "finetune-mae" / "metrics.json").is_file()


@pytest.mark.slow
def test_changed_options_on_a_finished_stage_fail_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(stages, "preset_configs", lambda preset: (dict(TINY_PRETRAIN), dict(TINY_FINETUNE)))
    out = tmp_path / "run"
    argv = ["--out", str(out), "--dataset-option", "num_images=30", "--bootstrap", "20"]
    assert pipeline.main(parse(argv)) == 0
    capsys.readouterr()
    assert pipeline.main(parse([*argv, "--pretrain-epochs", "2"])) == 1
    assert "holds a finished pretrain run with other options: epochs=1 (requested 2)" in capsys.readouterr().err
