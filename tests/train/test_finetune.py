"""``python -m medens.train finetune``: the output contract, the three inits, the offline message."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file, save_file

from medens.engine import recompute_batchnorm_statistics
from medens.inference import load_model
from medens.models import ENCODER_FORMAT, INIT_RANDOM_FALLBACK, MaskedConvNeXt, save_weights
from medens.train.__main__ import main
from medens.train.finetune import default_config, is_complete
from tests._installed import installed

#: A fine-tuning run small enough for a CPU test (72 synthetic 64x64 images, ConvNeXt-Atto, 2 epochs).
TINY = [
    "--dataset", "synthetic", "--dataset-option", "num_images=72", "--dataset-option", "image_size=64",
    "--arch", "convnext_atto", "--image-size", "64", "--batch-size", "8", "--epochs", "2",
    "--num-workers", "0", "--no-progress", "--lr", "1e-3", "--warmup-epochs", "0",
]  # fmt: skip
CLASSES = ["normal", "benign", "malignant"]


def _encoder(path: Path, arch: str = "convnext_atto") -> Path:
    mae = MaskedConvNeXt(arch, image_size=64, decoder_dim=32)
    return save_weights(path, mae.encoder_state_dict(), {"format": ENCODER_FORMAT, **mae.encoder_config()})


def _read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines()))


def test_mae_init_writes_the_member_contract(tmp_path: Path) -> None:
    encoder = _encoder(tmp_path / "encoder.safetensors")
    out = tmp_path / "ft"
    assert main(["finetune", *TINY, "--init", f"mae:{encoder}", "--out", str(out)]) == 0
    assert is_complete(out)

    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["dataset"] == "synthetic" and config["data_root"] is None
    assert config["classes"] == CLASSES and config["arch"] == "convnext_atto" and config["image_size"] == 64
    assert config["init"] == f"mae:{encoder}"
    assert len(config["split_hash"]) == 64
    splits = json.loads((out / "splits.json").read_text())
    assert set(splits["splits"]) == {"train", "val", "test"}

    for name, split in (("predictions.csv", "test"), ("val_predictions.csv", "val")):
        rows = _read_csv(out / name)
        assert list(rows[0]) == ["path", "label", *CLASSES]
        assert [r["path"] for r in rows] == splits["splits"][split]
        assert {r["label"] for r in rows} <= set(CLASSES)
        for r in rows:
            assert sum(float(r[c]) for c in CLASSES) == pytest.approx(1.0)

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["select_metric"] == "macro_f1" and metrics["best_epoch"] in (1, 2)
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0 and set(metrics["test"]["per_class"]) == set(CLASSES)
    log = _read_csv(out / "log.csv")
    assert [r["epoch"] for r in log] == ["1", "2"] and "val_macro_f1" in log[0]

    # The best epoch's weights are what model.safetensors holds, and they reproduce predictions.csv.
    model, loaded_config = load_model(out)
    assert loaded_config["classes"] == CLASSES and model.head.fc.out_features == 3
    from medens.data import SplitDataset, build_transforms, load_dataset

    dataset = load_dataset("synthetic", None, num_images=72, image_size=64)
    position = {item: i for i, item in enumerate(dataset.ids)}
    rows = _read_csv(out / "predictions.csv")
    run = loaded_config["run"]
    transform = build_transforms(64, train=False, mean=run["mean"], std=run["std"], crop_pct=0.875)
    test_set = SplitDataset(dataset, [position[r["path"]] for r in rows], transform=transform)
    images = torch.stack([test_set[i][0] for i in range(len(test_set))])
    with torch.no_grad():
        probs = model(images).double().softmax(-1)
    written = torch.tensor([[float(r[c]) for c in CLASSES] for r in rows], dtype=torch.float64)
    torch.testing.assert_close(probs, written, rtol=0, atol=1e-5)

    # The evaluate helper reads the folder as an ensemble member.
    from medens.evaluate.members import load_member

    member = load_member(out)
    assert member.name == "mae-init" and member.split_hash == config["split_hash"] and member.val is not None


def test_mae_encoder_of_another_arch_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    encoder = _encoder(tmp_path / "encoder.safetensors", "convnext_femto")
    assert main(["finetune", *TINY, "--init", f"mae:{encoder}", "--out", str(tmp_path / "ft")]) == 1
    err = capsys.readouterr().err
    assert "pre-trained as 'convnext_femto' but the model is 'convnext_atto'" in err
    assert "Traceback" not in err


def test_pretrained_file_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(3)
    published = {k: v.contiguous() for k, v in timm.create_model("convnext_atto").state_dict().items()}
    save_file(published, str(tmp_path / "model.safetensors"))
    out = tmp_path / "ft"
    argv = ["finetune", *TINY, "--init", "imagenet", "--pretrained-file", str(tmp_path / "model.safetensors")]
    # A learning rate of 1e-30 leaves the weights where they were loaded (within float32 rounding).
    assert main([*argv, "--epochs", "1", "--lr", "1e-30", "--out", str(out)]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["init"] == "imagenet"
    trained = load_file(str(out / "model.safetensors"))
    for key, value in published.items():
        if key.startswith("head.fc."):
            assert trained[key].shape[0] == 3  # a fresh 3-class head, not the file's 1000-class one
        else:
            torch.testing.assert_close(trained[key], value, rtol=0, atol=1e-20, msg=key)


def test_incomplete_pretrained_file_is_refused_unless_allow_partial(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    published = {k: v.contiguous() for k, v in timm.create_model("convnext_atto").state_dict().items()}
    save_file({k: v for k, v in published.items() if not k.startswith("stages.3.")}, str(tmp_path / "w.safetensors"))
    argv = ["finetune", *TINY, "--epochs", "1", "--init", "imagenet", "--pretrained-file", str(tmp_path / "w.safetensors")]
    assert main([*argv, "--out", str(tmp_path / "ft")]) == 1
    err = capsys.readouterr().err
    assert "w.safetensors, received a file without" in err and "stages.3." in err and "--allow-partial" in err
    assert "Traceback" not in err
    assert not (tmp_path / "ft" / "model.safetensors").exists()
    assert main([*argv, "--allow-partial", "--out", str(tmp_path / "ft2")]) == 0
    config = yaml.safe_load((tmp_path / "ft2" / "config.yaml").read_text())
    assert config["allow_partial"] is True and config["init"] == "imagenet"


def test_unreadable_test_image_is_left_out_of_the_metrics_and_listed(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for split, n in (("train", 6), ("val", 3), ("test", 3)):
        for cls in ("a", "b"):
            for i in range(n):
                path = root / split / cls / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    bad = root / "test" / "b" / "1.png"
    bad.write_bytes(bad.read_bytes()[:200])  # header intact, pixels cut: fails only when decoded
    out = tmp_path / "ft"
    argv = [
        "finetune", "--dataset", "folder", "--data-root", str(root), "--dataset-option", "verify=none",
        "--arch", "convnext_atto", "--image-size", "32", "--batch-size", "4", "--epochs", "1", "--num-workers", "0",
        "--no-progress", "--init", "scratch", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_test"] == 5 and metrics["skipped"]["val"] == []
    assert [Path(s["path"]) for s in metrics["skipped"]["test"]] == [bad]
    rows = _read_csv(out / "predictions.csv")
    unreadable = rows.pop()  # listed last, with its label and no probabilities
    assert unreadable == {"path": "test/b/1.png", "label": "b", "a": "", "b": ""}
    assert len(rows) == 5 and not any(r["path"].endswith("b/1.png") for r in rows)
    assert len({tuple(r[c] for c in ("a", "b")) for r in rows}) == 5  # no row copied from a neighbour


def test_offline_imagenet_says_how_to_supply_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture, offline: Path
) -> None:
    assert main(["finetune", *TINY, "--init", "imagenet", "--out", str(tmp_path / "ft")]) == 1
    err = capsys.readouterr().err
    assert "ImageNet weights for 'convnext_atto.d2_in1k' are not available here" in err
    assert "--pretrained-file" in err and "--allow-random-imagenet-fallback" in err
    assert "Traceback" not in err and "huggingface_hub" not in err


def test_offline_fallback_is_recorded(tmp_path: Path, offline: Path) -> None:
    out = tmp_path / "ft"
    argv = ["finetune", *TINY, "--epochs", "1", "--init", "imagenet", "--allow-random-imagenet-fallback"]
    assert main([*argv, "--out", str(out)]) == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["init"] == INIT_RANDOM_FALLBACK and config["init_requested"] == "imagenet"
    from medens.evaluate.members import load_member

    assert load_member(out).name == "random-init-imagenet-unavailable"


def test_options_for_imbalance_mixup_ema_and_resume(tmp_path: Path) -> None:
    """Balanced sampler, Mixup/CutMix, EMA and layer decay run together; a finished run resumes to the same end."""
    out = tmp_path / "ft"
    argv = ["finetune", *TINY, "--init", "scratch", "--imbalance", "balanced_sampler", "--mixup", "0.2",
            "--cutmix", "1.0", "--ema-decay", "0.9", "--layer-decay", "0.7", "--clip-grad", "1.0"]  # fmt: skip
    assert main([*argv, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    before = load_file(str(out / "model.safetensors"))
    # --resume on a finished run redoes only its final outputs, from the same weights.
    assert main(["finetune", "--resume", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text()) == metrics
    after = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bad_finetune_options(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["finetune", *TINY, "--init", "imagenet1k", "--out", str(tmp_path / "a")]) == 2
    assert "init: expected 'imagenet', 'scratch' or 'mae:PATH'" in capsys.readouterr().err
    assert main(["finetune", *TINY, "--init", "scratch", "--mixup", "0.2", "--batch-size", "7",
                 "--out", str(tmp_path / "b")]) == 2  # fmt: skip
    assert "Mixup/CutMix need an even batch size" in capsys.readouterr().err


def test_help_and_defaults(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = capsys.readouterr().out
    for flag in ("--init", "--pretrained-file", "--allow-random-imagenet-fallback", "--layer-decay",
                 "--label-smoothing", "--drop-path", "--mixup", "--cutmix", "--ema-decay", "--imbalance",
                 "--select-metric", "--resume", "--config"):  # fmt: skip
        assert flag in text, flag
    defaults = default_config()
    assert defaults["init"] == "imagenet" and defaults["select_metric"] == "macro_f1"
    defaults["epochs"] = 1
    assert default_config()["epochs"] != 1  # callers get a copy


def test_each_option_is_documented_once() -> None:
    """One table documents every option, complete at import: importing the stages adds and changes nothing."""
    import subprocess

    code = (
        "from medens.train import options as o; before = dict(o.OPTIONS); "
        "import medens.train.pretrain, medens.train.finetune; "
        "assert o.OPTIONS == before and all(o.OPTIONS[k] is v for k, v in before.items()); "
        "keys = set(o.PRETRAIN_DEFAULTS) | set(o.FINETUNE_DEFAULTS); "
        "assert set(o.OPTIONS) == keys, set(o.OPTIONS) ^ keys; "
        "flags = set(o.PRETRAIN_CLI_KEYS) | set(o.FINETUNE_CLI_KEYS); "
        "assert flags <= keys and set(o.PRETRAIN_CLI_KEYS) <= set(o.PRETRAIN_DEFAULTS)"
    )
    result = subprocess.run(**installed("-c", code), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_two_process_torchrun_finetuning(tmp_path: Path) -> None:
    import subprocess

    args = ["finetune", *TINY, "--init", "scratch", "--device", "cpu", "--out", str(tmp_path)]
    child = installed("-m", "medens.train", *args, nproc=2, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive")
    result = subprocess.run(**child, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert is_complete(tmp_path)
    splits = json.loads((tmp_path / "splits.json").read_text())["splits"]
    # Every test and validation image is predicted exactly once, although each rank predicted half of them.
    assert [r["path"] for r in _read_csv(tmp_path / "predictions.csv")] == splits["test"]
    assert [r["path"] for r in _read_csv(tmp_path / "val_predictions.csv")] == splits["val"]
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["run"]["world_size"] == 2


def test_layer_decay_applies_to_pretrained_inits_only(tmp_path: Path) -> None:
    # Layer-wise decay is for pre-trained weights; on random weights it only starved the stem of lr.
    encoder = _encoder(tmp_path / "encoder.safetensors")
    applied = {}
    for name, init in (("scratch", "scratch"), ("mae", f"mae:{encoder}")):
        out = tmp_path / name
        args = ["finetune", *TINY, "--epochs", "1", "--init", init, "--layer-decay", "0.8", "--out", str(out)]
        assert main(args) == 0
        config = yaml.safe_load((out / "config.yaml").read_text())
        assert config["layer_decay"] == 0.8  # the option as given is recorded unchanged
        applied[name] = config["run"]["layer_decay_applied"]
    assert applied == {"scratch": 1.0, "mae": 0.8}


def test_batch_norm_run_is_recorded_and_reloads(tmp_path: Path) -> None:
    out = tmp_path / "ft"
    assert main(["finetune", *TINY, "--init", "scratch", "--norm", "batch", "--out", str(out)]) == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["norm"] == config["run"]["norm_applied"] == "batch"
    model, _ = load_model(out)  # rebuilt with BatchNorm: the saved state dict loads strictly
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    assert set(model.state_dict()) == set(load_file(str(out / "model.safetensors")))


def test_a_run_from_a_batch_norm_encoder_resumes_without_it(tmp_path: Path) -> None:
    """The encoder's norm is taken over and recorded, so --resume rebuilds the model even once the encoder is gone."""
    mae = MaskedConvNeXt("convnext_atto", image_size=64, decoder_dim=32, norm="batch")
    encoder = save_weights(tmp_path / "encoder.safetensors", mae.encoder_state_dict(),
                           {"format": ENCODER_FORMAT, **mae.encoder_config()})
    out = tmp_path / "ft"
    assert main(["finetune", *TINY, "--norm", "layer", "--init", f"mae:{encoder}", "--out", str(out)]) == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert (config["norm"], config["run"]["norm_applied"]) == ("layer", "batch")
    metrics = json.loads((out / "metrics.json").read_text())
    encoder.unlink()
    assert main(["finetune", "--resume", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text()) == metrics


@pytest.mark.slow
def test_precise_bn_saves_statistics_of_the_training_split(tmp_path: Path) -> None:
    from medens.data import SplitDataset, build_transforms
    from medens.train.session import open_dataset

    def saved_and_recomputed(out: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        config = yaml.safe_load((out / "config.yaml").read_text())
        train = json.loads((out / "splits.json").read_text())["splits"]["train"]
        dataset = open_dataset(config)
        position = {item: i for i, item in enumerate(dataset.ids)}
        tf = build_transforms(64, train=False, mean=config["run"]["mean"], std=config["run"]["std"])
        model, _ = load_model(out)
        saved = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
        recompute_batchnorm_statistics(model, SplitDataset(dataset, [position[i] for i in train], tf), batch_size=16)
        return saved, {k: v for k, v in model.state_dict().items() if "running" in k}

    runs = {}
    for flag in ("--precise-bn", "--no-precise-bn"):
        out = tmp_path / flag
        args = ["finetune", *TINY, "--epochs", "1", "--init", "scratch", "--norm", "batch", flag, "--out", str(out)]
        assert main(args) == 0
        assert yaml.safe_load((out / "config.yaml").read_text())["precise_bn"] == (flag == "--precise-bn")
        runs[flag] = saved_and_recomputed(out)
    saved, recomputed = runs["--precise-bn"]
    assert saved.keys() == recomputed.keys() and saved
    for key in saved:
        torch.testing.assert_close(saved[key], recomputed[key], rtol=1e-4, atol=1e-5, msg=key)
    saved, recomputed = runs["--no-precise-bn"]  # without it, the kept statistics are those of the last batches
    assert any(not torch.allclose(saved[k], recomputed[k], rtol=1e-4, atol=1e-5) for k in saved)


def test_a_run_recorded_before_the_norm_option_resumes_with_layer_norm(tmp_path: Path) -> None:
    """Such a run recorded neither ``norm`` nor ``run.norm_applied``; it was a LayerNorm ConvNeXt, whatever --norm says."""
    out = tmp_path / "ft"
    assert main(["finetune", *TINY, "--init", "scratch", "--norm", "layer", "--out", str(out)]) == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    del config["norm"], config["run"]["norm_applied"]
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    metrics = json.loads((out / "metrics.json").read_text())
    assert main(["finetune", "--resume", "--norm", "batch", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text()) == metrics
