"""Reliability of the training commands, as a user meets them through ``medens``: a split file cannot leak, a
run records only what it did, nothing hangs on a pipe, and every mistake is caught before the training it would
waste, with a message naming the flag or file (issue 28)."""

from __future__ import annotations

import datetime
import json
import os
import random
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from medens.cli import main
from tests._installed import installed
from tests.data.conftest import Layouts

#: Synthetic images and the smoke preset: every stage in seconds.
SMOKE = ["--dataset", "synthetic", "--dataset-option", "num_images=48", "--dataset-option", "image_size=64",
         "--preset", "smoke"]
FINETUNE = [*SMOKE, "--init", "scratch", "--no-progress"]


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """Exit code and stderr of ``medens ARGV`` (argparse's own usage errors included)."""
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err
    return code, err


def _trained_anything(out: Path) -> list[Path]:
    """The files a stage writes once it trains (none may exist after a refusal up front)."""
    names = {"checkpoint.pt", "encoder.safetensors", "model.safetensors", "log.csv"}
    return [p for p in out.rglob("*") if p.name in names] if out.exists() else []


# ------------------------------------------------------------------------------------------------ split files


def _folder_with_a_copy(root: Path, per_class: int = 8) -> Path:
    """A ``folder`` dataset of two classes at 64 px in which ``a/img0.png`` has a byte-identical copy ``a/dup.png``."""
    for c, name in enumerate(("a", "b")):
        for i in range(per_class):
            Layouts.write_image(root / name / f"img{i}.png", size=(64, 64), seed=10 * c + i)
    (root / "a" / "dup.png").write_bytes((root / "a" / "img0.png").read_bytes())
    return root


def _split_file(path: Path, train: list[str], val: list[str], test: list[str], **record) -> Path:
    base = {"format": "medens.splits/1", "dataset": "folder", "root": "/data/of/another/run", "num_items": 999,
            "classes": ["a", "b"], "method": "stratified", "seed": 5,
            "duplicates": {"threshold": 12, "num_pairs": 41, "groups": [["x.png", "y.png"]], "conflicts": []},
            "splits": {"train": train, "val": val, "test": test}}
    path.write_text(json.dumps({**base, **record}))
    return path


def _ids(cls: str, numbers) -> list[str]:
    return [f"{cls}/img{i}.png" for i in numbers]


def test_a_split_file_that_divides_a_duplicate_group_is_refused_before_training(tmp_path, capsys):
    root = _folder_with_a_copy(tmp_path / "data")
    leaky = _split_file(tmp_path / "leaky.json", _ids("a", range(0, 5)) + _ids("b", range(0, 5)),
                        _ids("a", [5, 6]) + _ids("b", [5, 6]), ["a/dup.png", "a/img7.png"] + _ids("b", [7]))
    out = tmp_path / "run"
    code, err = _run(["finetune", "--dataset", "folder", "--data-root", str(root), "--preset", "smoke",
                      "--init", "scratch", "--split-file", str(leaky), "--out", str(out)], capsys)
    assert code == 1
    assert str(leaky) in err and "'a/img0.png' (train)" in err and "'a/dup.png' (test)" in err
    assert "--dedupe off" in err and not _trained_anything(out)


def test_a_reused_split_file_records_this_runs_root_and_duplicates(tmp_path, capsys):
    root = _folder_with_a_copy(tmp_path / "data")
    clean = _split_file(tmp_path / "clean.json", ["a/dup.png"] + _ids("a", range(0, 5)) + _ids("b", range(0, 5)),
                        _ids("a", [5, 6]) + _ids("b", [5, 6]), _ids("a", [7]) + _ids("b", [7]))
    out = tmp_path / "run"
    code, err = _run(["pretrain", "--dataset", "folder", "--data-root", str(root), "--preset", "smoke",
                      "--no-progress", "--split-file", str(clean), "--out", str(out)], capsys)
    assert code == 0, err
    record = json.loads((out / "splits.json").read_text())
    assert record["root"] == str(root.resolve()) and record["num_items"] == 17
    assert record["duplicates"]["groups"] == [["a/dup.png", "a/img0.png"]]
    assert record["source"] == str(clean) and record["seed"] == 5  # how the split was made: from the file
    assert record["counts"]["train"] == {"a": 6, "b": 5}


def test_a_split_file_without_a_test_list_is_named(tmp_path, capsys):
    split = tmp_path / "no-test.json"
    data = _split_file(split, [], [], [])
    record = json.loads(data.read_text())
    ids = [f"synthetic/{i:06d}" for i in range(48)]
    record.update(dataset="synthetic", root=None, classes=["normal", "benign", "malignant"], num_items=48,
                  splits={"train": ids[:40], "val": ids[40:]}, duplicates=None)
    split.write_text(json.dumps(record))
    code, err = _run(["finetune", *FINETUNE, "--split-file", str(split), "--out", str(tmp_path / "run")], capsys)
    assert code == 1
    assert "'test'" in err and str(split) in err and "--test-fraction" not in err


@pytest.mark.parametrize("kind", ["folder", "missing"])
def test_a_split_file_that_is_not_a_file_says_what_it_is(tmp_path, capsys, kind):
    path = tmp_path / "splits"
    if kind == "folder":
        path.mkdir()
    code, err = _run(["finetune", *FINETUNE, "--split-file", str(path), "--out", str(tmp_path / "run")], capsys)
    assert code == 1
    assert str(path) in err and ("which is a folder" if kind == "folder" else "which does not exist") in err


def test_an_empty_official_training_split_is_not_blamed_on_the_batch_size(tmp_path, capsys):
    root = Layouts.medmnist(tmp_path / "mnist", counts=(0, 6, 6))
    code, err = _run(["finetune", "--dataset", "medmnist:breastmnist", "--data-root", str(root), "--preset",
                      "smoke", "--image-size", "32", "--init", "scratch", "--out", str(tmp_path / "run")], capsys)
    assert code == 1
    assert "training" in err and "train" in err and "batch" not in err


# --------------------------------------------------------------------------------- caught before any training


@pytest.mark.parametrize("vary", ["mask_ratio=0.6,0.6", "mask_ratio=0.6,0.60", "masking=entropy,random,entropy",
                                  "norm_pix_loss=true,yes"])
def test_repeated_vary_values_are_refused(tmp_path, capsys, vary):
    out = tmp_path / "study"
    code, err = _run(["study", *SMOKE, "--folds", "2", "--seeds", "1", "--vary", vary, "--out", str(out)], capsys)
    assert code == 2 and "vary" in err and "distinct" in err
    assert not _trained_anything(out)


def test_more_folds_than_the_smallest_class_allows_are_refused_up_front(tmp_path, capsys):
    out = tmp_path / "study"
    code, err = _run(["study", *SMOKE, "--folds", "40", "--seeds", "1", "--out", str(out)], capsys)
    assert code == 2 and "folds" in err and "40" in err and "16" in err  # 48 images, three classes of 16
    assert not _trained_anything(out)


@pytest.mark.parametrize(("command", "extra", "named", "exit_code"), [
    ("study", ["--folds", "2", "--seeds", "1", "--vary", "mask_ratio=0.6,1.5"], "mask_ratio", 2),
    ("study", ["--folds", "2", "--seeds", "1", "--vary", "arch=convnext_atto,bogusnet"], "bogusnet", 2),
    ("pipeline", ["--set-finetune", "precise_bn=maybe"], "precise_bn", 2),
    ("pipeline", ["--set-pretrain", "masking=entopy"], "masking", 2),
    ("pipeline", ["--baseline", "vit_tiny_patch16_224"], "image_size", 2),
    ("pipeline", ["--dedupe-threshold", "999"], "dedupe_threshold", 2),
    ("pipeline", ["--set-finetune", "val_fraction=1.5"], "val_fraction", 2),
    ("pipeline", ["--pretrained-file", "absent.safetensors"], "pretrained_file", 1),  # a missing file: exit 1
])
def test_a_mistake_in_any_stage_or_variant_is_reported_before_the_first_stage(tmp_path, capsys, command, extra,
                                                                              named, exit_code):
    out = tmp_path / "out"
    code, err = _run([command, *SMOKE, *extra, "--out", str(out)], capsys)
    assert code == exit_code and named in err, err
    assert not _trained_anything(out)


# ------------------------------------------------------------------------------------------ what a run records


def test_precise_bn_without_batchnorm_is_recorded_as_not_applied(tmp_path, capsys):
    out = tmp_path / "ft"
    argv = ["finetune", *FINETUNE, "--norm", "layer", "--precise-bn", "--out", str(out)]
    code, err = _run(argv, capsys)
    assert code == 0, err
    assert "precise_bn" in err  # the warning
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["precise_bn"] is False and config["precise_bn_requested"] is True
    code, err = _run([*argv, "--resume"], capsys)  # the same command continues: what was asked is recorded
    assert code == 0, err


# --------------------------------------------------------------------------------------- files and checkpoints


def _weights_files(folder: Path) -> dict[str, Path]:
    folder.mkdir()
    good = folder / "good.safetensors"
    save_file({"w": torch.zeros(64, 64)}, str(good))
    data = good.read_bytes()
    files = {"empty": b"", "truncated": data[: len(data) - 100], "random": os.urandom(4096)}
    out = {}
    for name, content in files.items():
        out[name] = folder / f"{name}.safetensors"
        out[name].write_bytes(content)
    out["pth"] = folder / "garbage.pth"
    out["pth"].write_bytes(os.urandom(512))
    # Garbage that torch's weights-only unpickler answers with each of its errors: UnpicklingError, IndexError,
    # KeyError and UnicodeDecodeError (found by trying seeds).
    for seed in (0, 2, 20, 195):
        out[f"pth-seed{seed}"] = folder / f"garbage-{seed}.pth"
        out[f"pth-seed{seed}"].write_bytes(random.Random(seed).randbytes(512))
    return out


def test_a_corrupt_pretrained_file_is_named_without_a_traceback(tmp_path, capsys):
    for name, path in _weights_files(tmp_path / "weights").items():
        out = tmp_path / f"run-{name}"
        code, err = _run(["finetune", *SMOKE, "--no-progress", "--init", "imagenet", "--pretrained-file", str(path),
                          "--out", str(out)], capsys)
        assert code == 1, (name, err)
        assert "pretrained_file" in err and str(path) in err, (name, err)
        assert not _trained_anything(out)


@pytest.mark.parametrize("content", ["foreign", "tensor", "unsafe"])
def test_another_programs_checkpoint_on_resume_is_a_clean_error(tmp_path, capsys, content):
    out = tmp_path / "run"
    out.mkdir()
    state = {"foreign": {"state_dict": {"w": torch.zeros(2)}, "epoch": 3}, "tensor": torch.zeros(3),
             "unsafe": {"when": datetime.date(2020, 1, 1)}}[content]
    torch.save(state, out / "checkpoint.pt")
    code, err = _run(["finetune", *FINETUNE, "--resume", "--out", str(out)], capsys)
    assert code == 1
    line = [row for row in err.splitlines() if "error:" in row]
    assert len(line) == 1 and str(out / "checkpoint.pt") in line[0], err
    assert "weights_only" not in err  # torch's advice to load the file unsafely is not passed on


# ---------------------------------------------------------------------------------------------- member folders


def _member(root: Path, name: str, init: str) -> Path:
    """A member folder with made-up predictions (the ensemble reads only those)."""
    import numpy as np

    from medens.evaluate.predictions import Predictions
    from tests.evaluate.helpers import write_member

    classes = ["benign", "malignant"]
    labels = [classes[i % 2] for i in range(8)]
    probs = np.tile([[0.7, 0.3], [0.2, 0.8]], (4, 1))
    preds = Predictions([f"x/{i}.png" for i in range(8)], labels, classes, probs)
    return write_member(root / name, {"dataset": "synthetic", "classes": classes, "init": init, "split_hash": "s",
                                      "arch": "convnext_atto"}, preds, preds)


def test_member_and_baseline_paths_are_described_by_what_they_are(tmp_path, capsys):
    a, b = _member(tmp_path, "a", "imagenet"), _member(tmp_path, "b", "mae:/x")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a run\n")
    code, err = _run(["ensemble", "--members", str(a), str(a_file), "--out", str(tmp_path / "e")], capsys)
    assert code == 2 and str(a_file) in err and "which is a file" in err and "does not exist" not in err
    code, err = _run(["ensemble", "--members", str(a), str(b), "--baseline", str(tmp_path / "absent"), "--out",
                      str(tmp_path / "e")], capsys)
    assert code == 2 and "baseline:" in err and "members:" not in err and "which does not exist" in err


# ----------------------------------------------------------------------------------- predict: pipes and links


def _member_for_predict(root: Path) -> Path:
    """A member folder with a random ConvNeXt-Atto for 32 px synthetic images (enough to predict with)."""
    from medens.data import load_dataset
    from medens.evaluate.predictions import Predictions
    from medens.models import create_classifier, save_weights
    from tests.evaluate.helpers import write_member

    torch.manual_seed(0)
    model, _ = create_classifier("convnext_atto", 3, init="scratch")
    ds = load_dataset("synthetic", None, num_images=6, image_size=32)
    config = {"dataset": "synthetic", "data_root": None, "dataset_options": {"num_images": 6, "image_size": 32},
              "classes": ds.classes, "arch": "convnext_atto", "image_size": 32, "init": "scratch", "split_hash": "x"}
    probs = torch.full((6, 3), 1 / 3).double().numpy()
    preds = Predictions(ds.ids, [ds.classes[t] for t in ds.targets], ds.classes, probs)
    directory = write_member(root / "member", config, preds, preds)
    save_weights(directory / "model.safetensors", model.state_dict(), {"arch": "convnext_atto"})
    return directory


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need a POSIX system")
def test_predict_skips_a_named_pipe_and_a_broken_link_instead_of_hanging(tmp_path):
    member = _member_for_predict(tmp_path)
    images = tmp_path / "images"
    Layouts.write_image(images / "real.png", size=(40, 40), seed=1)
    os.mkfifo(images / "pipe.png")
    (images / "gone.png").symlink_to(tmp_path / "deleted.png")
    out = tmp_path / "pred.csv"
    result = subprocess.run(**installed("-m", "medens", "predict", "--members", str(member), "--images", str(images),
                                        "--out", str(out)),
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    rows = {line.split(",")[0]: line for line in out.read_text().splitlines()[1:]}
    assert set(rows) == {str(images / n) for n in ("real.png", "pipe.png", "gone.png")}
    assert "named pipe" in result.stdout and "broken symbolic link" in result.stdout
    assert "disappeared" not in result.stdout
