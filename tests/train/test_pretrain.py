"""``python -m medens.train pretrain`` as a user runs it: outputs, learning, bad options, help, stop and resume."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from medens.data import load_dataset
from medens.models import read_metadata
from medens.train.__main__ import main
from medens.train.pretrain import default_config, is_complete, run_pretrain
from tests._installed import installed

#: A pre-training run small enough for a CPU test (48 synthetic 64x64 images, ConvNeXt-Atto).
TINY = [
    "--dataset", "synthetic", "--dataset-option", "num_images=48", "--dataset-option", "image_size=64",
    "--arch", "convnext_atto", "--image-size", "64", "--decoder-dim", "32", "--batch-size", "8",
    "--num-workers", "0", "--no-progress", "--mask-ratio", "0.5",
]  # fmt: skip


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines()))


@pytest.mark.slow
def test_pretrain_writes_every_artefact(tmp_path: Path) -> None:
    out = tmp_path / "mae"
    assert main(["pretrain", *TINY, "--epochs", "2", "--out", str(out)]) == 0
    assert is_complete(out)
    for name in (
        "encoder.safetensors",
        "config.yaml",
        "log.csv",
        "checkpoint.pt",
        "reconstructions.png",
        "loss_curve.png",
        "probe.json",
        "splits.json",
    ):
        assert (out / name).is_file(), name

    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["arch"] == "convnext_atto" and config["image_size"] == 64 and config["epochs"] == 2
    assert config["dataset"] == "synthetic" and len(config["split_hash"]) == 64
    assert config["run"]["world_size"] == 1 and config["run"]["effective_batch_size"] == 8
    assert [r["epoch"] for r in _rows(out / "log.csv")] == ["1", "2"]
    # The masking grid (the small preset's 16 px patches at stride 16: 4 x 4 at 64 px) is recorded everywhere.
    assert config["mask_grid"] == [4, 4] == read_metadata(out / "encoder.safetensors")["mask_grid"]
    assert config["encoder"]["output_stride"] == read_metadata(out / "encoder.safetensors")["output_stride"] == 16
    first_line = (out / "train.log").read_text().splitlines()[0]
    assert "pretrain: starting into" in first_line and "masking grid 4 x 4: 16 px patches" in first_line
    probe = json.loads((out / "probe.json").read_text())
    assert probe["mask_grid"] == [4, 4] and probe["num_images"] > 0
    for who in ("encoder", "random_init"):
        for kind in ("linear", "knn"):
            assert set(probe[who][kind]) == {"accuracy", "balanced_accuracy"}
            assert all(0.0 <= v <= 1.0 for v in probe[who][kind].values())
    last = _rows(out / "log.csv")[-1]  # the last epoch's probe is in log.csv too
    assert float(last["probe_linear_bacc"]) == pytest.approx(probe["encoder"]["linear"]["balanced_accuracy"], abs=1e-4)

    with Image.open(out / "reconstructions.png") as png:
        assert png.format == "PNG" and png.width > 4 * 100 and png.height > 4 * 100

    # The encoder loads into a timm classifier with only the head missing: a BatchNorm ConvNeXt, as the preset
    # (small, the default on the generated images) and the encoder's metadata say.
    assert config["norm"] == read_metadata(out / "encoder.safetensors")["norm"] == "batch"
    classifier = timm.create_model(
        "convnext_atto", num_classes=5, conv_mlp=True, norm_layer=torch.nn.BatchNorm2d, output_stride=16
    )
    missing, unexpected = classifier.load_state_dict(
        load_file(str(out / "encoder.safetensors")), strict=False
    )
    assert unexpected == [] and missing and all(k.startswith("head.") for k in missing)

    # The resolved config repeats the run.
    again = tmp_path / "again"
    argv = ["pretrain", "--config", str(out / "config.yaml"), "--out", str(again)]
    assert main(argv) == 0
    for key, value in load_file(str(out / "encoder.safetensors")).items():
        assert torch.equal(value, load_file(str(again / "encoder.safetensors"))[key]), key

    # A finished run can be extended: --resume takes its config.yaml, flags override it.
    assert main(["pretrain", "--resume", "--epochs", "3", "--out", str(out)]) == 0
    assert [r["epoch"] for r in _rows(out / "log.csv")] == ["1", "2", "3"]
    assert yaml.safe_load((out / "config.yaml").read_text())["epochs"] == 3 and is_complete(out)


def test_loss_falls_on_the_synthetic_dataset(tmp_path: Path) -> None:
    run_pretrain(
        {
            "out": tmp_path,
            "dataset": "synthetic",
            "dataset_options": {"num_images": 40, "image_size": 64},
            "arch": "convnext_atto",
            "image_size": 64,
            "decoder_dim": 64,
            "mask_ratio": 0.5,
            "epochs": 8,  # 8 epochs x 4 steps
            "warmup_epochs": 1,
            "batch_size": 8,
            "lr": 2e-3,
            "num_workers": 0,
            "progress": False,
            "num_reconstructions": 1,
        }
    )
    losses = [float(r["train_loss"]) for r in _rows(tmp_path / "log.csv")]
    assert len(losses) == 8
    assert sum(losses[-2:]) / 2 < 0.95 * losses[0], losses


def _probe_gain(out: Path, lr: float) -> dict[str, float]:
    """Pre-train 10 epochs on 200 synthetic images (4 x 4 grid of 16 px patches at 64 px) and read the probe."""
    run_pretrain(
        {
            "out": out,
            "dataset": "synthetic",
            "dataset_options": {"num_images": 200, "image_size": 64},
            "arch": "convnext_atto",
            "norm": "batch",
            "image_size": 64,
            "patch_size": 16,
            "output_stride": 16,
            "decoder_dim": 64,
            "mask_ratio": 0.6,
            "epochs": 10,
            "warmup_epochs": 1,
            "batch_size": 16,
            "lr": lr,
            "seed": 0,
            "num_workers": 0,
            "progress": False,
            "num_reconstructions": 1,
        }
    )
    gain = json.loads((out / "probe.json").read_text())["gain"]
    return {kind: gain[kind]["balanced_accuracy"] for kind in ("linear", "knn")}


@pytest.mark.slow
def test_pretraining_lifts_the_linear_probe_above_the_weights_it_started_from(tmp_path: Path) -> None:
    # Measured with this recipe (benchmarks/RESULTS.md): linear-probe gains 0.136, 0.082, 0.106 and 0.163 for seeds
    # 0-3, and 0.088 for seed 4 after 6 epochs; the k-NN gain swung between -0.07 and +0.08, too noisy to assert.
    learned = _probe_gain(tmp_path / "learned", lr=2e-3)
    assert learned["linear"] >= 0.05, learned
    # A pre-training that learns nothing (a learning rate of 1e-9) leaves the encoder where it started: its probe
    # is the random-init probe exactly, so the gain above is the pre-training's and not the probe's.
    frozen = _probe_gain(tmp_path / "frozen", lr=1e-9)
    assert frozen["linear"] == pytest.approx(0.0, abs=1e-9) and frozen["knn"] == pytest.approx(0.0, abs=1e-9), frozen


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--mask-ratio", "1.2"], "mask_ratio: expected a number strictly between 0 and 1"),
        (["--image-size", "100"], "image_size: expected a positive multiple of the patch size 16"),
        (["--arch", "convnext_tinny"], "arch: expected a timm ConvNeXt architecture"),
        (["--arch", "resnet50"], "arch: expected a timm ConvNeXt architecture"),
        (["--set", "epoch=3"], "unknown option 'epoch'"),
        (["--set", "epochs=ten"], "epochs: expected an integer, received 'ten'"),
    ],
)
def test_bad_options_fail_at_start_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture, flags: list[str], message: str
) -> None:
    out = tmp_path / "never"
    start = time.perf_counter()
    assert main(["pretrain", *TINY, *flags, "--out", str(out)]) == 2  # a usage error
    assert time.perf_counter() - start < 10
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()  # nothing was started


def test_refuses_to_overwrite_a_run_without_resume(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    assert main(["pretrain", *TINY, "--out", str(tmp_path)]) == 2
    assert "already holds a pretrain run; pass --resume" in capsys.readouterr().err


def test_resume_refuses_options_that_would_make_the_record_false(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    assert main(["pretrain", *TINY, "--epochs", "2", "--dataset-option", "num_images=16", "--out", str(out)]) == 0
    recorded = (out / "config.yaml").read_bytes()
    capsys.readouterr()
    for flags, message in [
        (["--epochs", "1"], "epochs: expected at least the 2 epochs recorded in"),
        (["--mask-ratio", "0.75"], "mask_ratio: expected the value recorded in"),
        (["--dataset-option", "num_images=20"], "dataset_options: expected the value recorded in"),
        (["--arch", "convnext_femto"], "arch: expected the value recorded in"),  # not a wall of size mismatches
    ]:
        assert main(["pretrain", "--resume", *flags, "--out", str(out)]) == 2, flags
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
        assert (out / "config.yaml").read_bytes() == recorded
    # Options of where and how it runs may change, and the recorded ones may be repeated.
    assert main(["pretrain", "--resume", "--num-workers", "0", "--mask-ratio", "0.5", "--out", str(out)]) == 0


def test_image_size_beyond_the_machine_is_refused_with_the_estimate(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medens.train.session as session

    monkeypatch.setattr(session, "device_memory_bytes", lambda device: 64 * 2**30)
    argv = ["pretrain", *TINY, "--image-size", "32000", "--out", str(tmp_path / "run")]
    assert main(argv) == 2  # a value no machine of this size can train with: a usage error
    err = capsys.readouterr().err
    assert "image_size: expected a size whose batch fits on cpu (64.0 GiB), received 32000" in err
    assert "a batch of 8 needs at least 167.8 GiB" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
    # The estimate is a lower bound: the sizes people train with pass on a small machine.
    for size, batch in [(224, 256), (512, 64), (1024, 16)]:
        session.check_fits_in_memory({"image_size": size, "batch_size": batch}, torch.device("cpu"))


def test_help_explains_every_option(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["pretrain", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--dataset",
        "--data-root",
        "--out",
        "--arch",
        "--image-size",
        "--patch-size",
        "--mask-ratio",
        "--mask-temperature",
        "--mask-prefer",
        "--masking",
        "--epochs",
        "--batch-size",
        "--lr",
        "--config",
        "--resume",
        "--amp",
        "--accum-steps",
        "--clip-grad",
        "--ema-decay",
        "--compile",
    ):
        assert flag in text, flag
    # every option's help line states its default
    assert text.count("(default:") >= len([k for k in default_config() if k != "dataset_options"])


def test_print_config_resolves_yaml_then_flags(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "c.yaml").write_text("epochs: 7\nmask_ratio: 0.75\nlr: 1e-3\n")
    argv = [
        "pretrain",
        "--config",
        str(tmp_path / "c.yaml"),
        "--mask-ratio",
        "0.5",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*argv, "--print-config"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert (config["epochs"], config["mask_ratio"], config["lr"]) == (7, 0.5, 1e-3)
    # No --dataset: the generated demo images, with the CPU-sized preset under the YAML and the flags.
    assert (config["dataset"], config["preset"], config["arch"]) == ("synthetic", "small", "convnext_atto")
    assert main([*argv, "--preset", "paper", "--print-config"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert (config["preset"], config["arch"], config["epochs"]) == ("paper", default_config()["arch"], 7)
    assert main([*argv, "--dataset", "busi", "--data-root", str(tmp_path), "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["preset"] == "paper"  # a real dataset: the paper's settings


def test_packaged_presets_resolve() -> None:
    from medens.train import finetune, pretrain
    from medens.train.configuration import resolve_config
    from medens.train.presets import PRESET_NAMES, STAGES, list_presets, load_config_file, load_preset

    presets = list_presets()
    assert {"pretrain_paper", "finetune_paper", "pretrain_cpu_demo", "finetune_cpu_demo"} <= set(presets)
    assert {f"{stage}_{name}" for stage in STAGES for name in PRESET_NAMES} <= set(presets)
    for name in presets:
        stage = pretrain if name.startswith("pretrain") else finetune
        resolve_config(stage.default_config(), {**load_config_file(name), "out": "x"})
    # The paper's settings are the defaults (read from the paper presets): ConvNeXt-Tiny at 224 px.
    for module, arch, epochs in ((pretrain, "convnext_tiny", 400), (finetune, "convnext_tiny.fb_in1k", 100)):
        defaults = module.default_config()
        assert (defaults["arch"], defaults["image_size"], defaults["epochs"]) == (arch, 224, epochs)
    # A preset file may start from another: the CPU demo is the smoke preset on generated images.
    demo = load_config_file("pretrain_cpu_demo")
    assert demo == {**load_preset("smoke", "pretrain"), "dataset": "synthetic",
                    "dataset_options": {"num_images": 96, "image_size": 64}}


def test_every_preset_but_smoke_masks_a_grid_of_at_least_6_by_6() -> None:
    from medens.train.presets import PRESET_NAMES, load_preset
    from medens.train.pretrain import build_model

    for name in PRESET_NAMES:
        config = {**default_config(), **load_preset(name, "pretrain")}
        grid = build_model(config).mask_grid
        if name != "smoke":
            assert min(grid) >= 6, (name, grid)
        if name == "paper":
            assert grid == (7, 7)


def test_probe_is_skipped_with_a_reason_where_the_probe_images_have_one_class(tmp_path: Path) -> None:
    first = tmp_path / "first"
    assert main(["pretrain", *TINY, "--preset", "smoke", "--out", str(first)]) == 0
    record = json.loads((first / "splits.json").read_text())
    dataset_classes = record["classes"]
    dataset = load_dataset("synthetic", None, num_images=48, image_size=64)
    by_id = dict(zip(dataset.ids, dataset.targets, strict=True))
    moved = [i for name in ("train", "val") for i in record["splits"][name] if by_id[i] != 0]
    for name in ("train", "val"):
        record["splits"][name] = [i for i in record["splits"][name] if by_id[i] == 0]
    record["splits"]["test"] += moved
    split_file = tmp_path / "one-class.json"
    split_file.write_text(json.dumps(record))
    out = tmp_path / "second"
    assert main(["pretrain", *TINY, "--preset", "smoke", "--split-file", str(split_file), "--out", str(out)]) == 0
    assert not (out / "probe.json").exists() and dataset_classes[0] == "normal"
    assert "probe skipped: the probe images carry 1 class(es)" in (out / "train.log").read_text()


def _cli(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        **installed("-m", "medens.train", *args, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive"), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


@pytest.mark.slow
def test_sigterm_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    args = [*TINY, "--epochs", "4", "--deterministic", "--dataset-option", "num_images=64"]
    full = _cli(["pretrain", *args, "--out", str(tmp_path / "full")])

    stopped = _cli(["pretrain", *args, "--out", str(tmp_path / "split")])
    checkpoint = tmp_path / "split" / "checkpoint.pt"
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and stopped.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    stopped.send_signal(signal.SIGTERM)  # somewhere in epoch 2 (or later)
    _, err = stopped.communicate(timeout=240)
    assert stopped.returncode == 143, err[-2000:]
    assert "SIGTERM" in err and "--resume" in err
    assert not is_complete(tmp_path / "split")

    resumed = _cli(["pretrain", "--resume", "--out", str(tmp_path / "split")])
    _, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err[-2000:]
    _, err = full.communicate(timeout=240)
    assert full.returncode == 0, err[-2000:]

    a = load_file(str(tmp_path / "full" / "encoder.safetensors"))
    b = load_file(str(tmp_path / "split" / "encoder.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [r["train_loss"] for r in _rows(tmp_path / "split" / "log.csv")] == [
        r["train_loss"] for r in _rows(tmp_path / "full" / "log.csv")
    ]


@pytest.mark.slow
def test_two_process_torchrun_pretraining(tmp_path: Path) -> None:
    args = ["pretrain", *TINY, "--epochs", "2", "--device", "cpu", "--out", str(tmp_path)]
    child = installed("-m", "medens.train", *args, nproc=2, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive")
    result = subprocess.run(**child, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert is_complete(tmp_path)
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert config["run"]["world_size"] == 2 and config["run"]["effective_batch_size"] == 16
    assert [r["epoch"] for r in _rows(tmp_path / "log.csv")] == ["1", "2"]


# ---- the dispatcher of python -m medens.train -----------------------------------------------------------------


def test_no_arguments_runs_the_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    calls = []
    fake = types.ModuleType("medens.train.pipeline")

    def add_parser(subparsers):
        parser = subparsers.add_parser("pipeline")
        parser.add_argument("--epochs", type=int, default=1)
        parser.set_defaults(func=lambda args: calls.append(args.epochs) or 0)
        return parser

    fake.add_parser, fake.main = add_parser, lambda args: 0
    monkeypatch.setitem(sys.modules, "medens.train.pipeline", fake)
    assert main([]) == 0
    assert calls == [1]


def test_a_missing_subcommand_module_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from medens.train import __main__ as dispatcher

    monkeypatch.setitem(dispatcher.SUBCOMMANDS, "later", ("medens.train.not_written_yet", "a future command"))
    assert main(["later", "--flag"]) == 2
    assert "the 'later' command is not available: module medens.train.not_written_yet is missing" in (
        capsys.readouterr().err
    )


def test_top_level_help_lists_the_commands(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for command in ("pretrain", "finetune", "ensemble", "predict", "pipeline"):
        assert command in text


def test_resume_accepts_the_requested_or_recorded_init_and_repeated_values(tmp_path: Path) -> None:
    from medens.train.configuration import refuse_changes_on_resume

    saved = {"init": "imagenet-unavailable-random-init", "init_requested": "imagenet", "betas": [0.9, 0.999],
             "epochs": 4, "seed": 0}
    path = tmp_path / "config.yaml"
    for ok in ({"init": "imagenet"}, {"init": "imagenet-unavailable-random-init"}, {"betas": (0.9, 0.999)},
               {"epochs": 9}, {"device": "cpu"}, {"unknown_here": 1}):
        refuse_changes_on_resume(saved, ok, path)
    with pytest.raises(ValueError, match=r"init: expected the value recorded in .*config.yaml"):
        refuse_changes_on_resume(saved, {"init": "scratch"}, path)
    with pytest.raises(ValueError, match="seed: expected the value recorded in .* received 1"):
        refuse_changes_on_resume(saved, {"seed": 1}, path)
