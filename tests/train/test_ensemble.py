"""``python -m medens.train ensemble`` on member folders written by hand."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from medens.evaluate.calibration import softmax
from medens.evaluate.predictions import Predictions, read_predictions
from medens.train import ensemble as ensemble_cli
from tests.evaluate.helpers import write_member

CLASSES = ["benign", "malignant", "normal"]


def _split(rng: np.random.Generator, n: int, skill: float, prefix: str, classes: list[str]) -> Predictions:
    labels = np.arange(n) % len(classes)
    logits = rng.normal(size=(n, len(classes))) + skill * np.eye(len(classes))[labels]
    return Predictions(
        [f"{prefix}/{i}.png" for i in range(n)], [classes[i] for i in labels], classes, softmax(logits)
    )


def member(
    root: Path, name: str, init: str, seed: int, split_hash: str = "s1", classes: list[str] = CLASSES
) -> Path:
    rng = np.random.default_rng(seed)
    config = {
        "dataset": "synthetic",
        "classes": classes,
        "init": init,
        "split_hash": split_hash,
        "arch": "convnext_atto",
    }
    return write_member(
        root / name, config, _split(rng, 45, 1.8, "test", classes), _split(rng, 24, 1.8, "val", classes)
    )


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="medens.train")
    ensemble_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_ensemble_prints_table_and_writes_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = member(tmp_path, "finetune-imagenet", "imagenet", 0)
    b = member(tmp_path, "finetune-mae", "mae:/x/encoder.safetensors", 1)
    out = tmp_path / "ens"
    assert run_cli(["ensemble", "--members", str(a), str(b), "--out", str(out), "--bootstrap", "50"]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[0].split()[:3] == ["Model", "Acc", "[95%"]
    assert [line.split("  ")[0] for line in lines[2:5]] == ["ImageNet-init", "MAE-init", "Ensemble (mean)"]
    assert f"report: {out / 'report.md'}" in printed
    results = json.loads((out / "metrics.json").read_text())
    acc = results["models"]["ensemble"]["metrics"]["accuracy"]
    assert f"{acc:.3f} [" in lines[4]
    ens = read_predictions(a / "predictions.csv").probs + read_predictions(b / "predictions.csv").probs
    written = np.loadtxt(out / "predictions.csv", delimiter=",", skiprows=1, usecols=range(8, 11))
    np.testing.assert_allclose(written, ens / 2, rtol=0, atol=1e-15)
    assert ensemble_cli.is_complete(out, [a, b])
    assert not ensemble_cli.is_complete(out, [b, a])
    assert not ensemble_cli.is_complete(tmp_path / "nowhere")
    # A member retrained after the evaluation makes it stale.
    member(tmp_path, "finetune-mae", "mae:/x/encoder.safetensors", 2)
    assert not ensemble_cli.is_complete(out, [a, b])


def test_baseline_folder_is_a_row_of_its_own_and_goes_stale_when_retrained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = member(tmp_path, "finetune-imagenet", "imagenet", 0)
    b = member(tmp_path, "finetune-mae", "mae:/x/encoder.safetensors", 1)
    base = member(tmp_path, "finetune-baseline", "scratch", 3)
    out = tmp_path / "ens"
    argv = ["ensemble", "--members", str(a), str(b), "--out", str(out), "--bootstrap", "50", "--no-plots"]
    assert run_cli([*argv, "--baseline", str(base)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0] for line in lines[2:6]] == [
        "ImageNet-init", "MAE-init", "Ensemble (mean)", "Baseline convnext_atto: Scratch (random init)"]
    assert ensemble_cli.is_complete(out, [a, b], base)
    member(tmp_path, "finetune-baseline", "scratch", 4)
    assert not ensemble_cli.is_complete(out, [a, b], base)
    assert run_cli([*argv, "--baseline", str(out)]) == 2  # the output over an input
    assert "out:" in capsys.readouterr().err


def test_weighted_calibrated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = member(tmp_path, "a", "imagenet", 0)
    b = member(tmp_path, "b", "scratch", 1)
    argv = [
        "ensemble",
        "--members",
        str(a),
        str(b),
        "--out",
        str(tmp_path / "e"),
        "--method",
        "weighted",
        "--calibrate",
        "--bootstrap",
        "20",
        "--no-plots",
    ]
    assert run_cli(argv) == 0
    assert "Ensemble (weighted, T-scaled)" in capsys.readouterr().out
    results = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert sum(m["weight"] for m in results["members"]) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split_hash": "other"}, "expected members trained on the same split"),
        ({"classes": ["benign", "malignant", "cyst"]}, "expected the same classes in every member"),
    ],
)
def test_incompatible_members_are_refused_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture, kwargs: dict, message: str
) -> None:
    a = member(tmp_path, "a", "imagenet", 0)
    b = member(tmp_path, "b", "mae:x", 1, **kwargs)
    code = run_cli(["ensemble", "--members", str(a), str(b), "--out", str(tmp_path / "e")])
    assert code == 1  # the members' files disagree: a user error, not a usage error
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "e" / "metrics.json").exists()


def test_missing_member_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a = member(tmp_path, "a", "imagenet", 0)
    argv = ["ensemble", "--members", str(a), str(tmp_path / "nope"), "--out", str(tmp_path / "e")]
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert f"members: expected fine-tuning run folders, received {tmp_path / 'nope'}, which does not exist" in err
    # A folder that exists but is no run is a bad input, named with what it lacks.
    (tmp_path / "empty").mkdir()
    assert run_cli(["ensemble", "--members", str(a), str(tmp_path / "empty"), "--out", str(tmp_path / "e")]) == 1
    assert "expected config.yaml in member folder" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["member", "inside_member"])
def test_out_over_a_member_is_refused_and_the_member_is_unchanged(
    tmp_path: Path, capsys: pytest.CaptureFixture, where: str
) -> None:
    a = member(tmp_path, "a", "imagenet", 0)
    b = member(tmp_path, "b", "mae:x", 1)
    before = {p.name: p.read_bytes() for p in a.iterdir() if p.is_file()}
    out = a if where == "member" else a / "ens"
    assert run_cli(["ensemble", "--members", str(a), str(b), "--out", str(out), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert "out: expected a path outside the input folder" in err and str(a) in err
    assert "Traceback" not in err
    assert {p.name: p.read_bytes() for p in a.iterdir() if p.is_file()} == before
    assert not (a / "ens").exists()


def test_member_probabilities_outside_0_1_are_refused_by_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    a = member(tmp_path, "a", "imagenet", 0)
    b = member(tmp_path, "b", "mae:x", 1)
    lines = (b / "predictions.csv").read_text().splitlines()
    fields = lines[3].split(",")
    fields[2], fields[3] = "1.7", "-0.7"
    lines[3] = ",".join(fields)
    (b / "predictions.csv").write_text("\n".join(lines) + "\n")
    code = run_cli(["ensemble", "--members", str(a), str(b), "--out", str(tmp_path / "e"), "--no-plots"])
    assert code == 1
    err = capsys.readouterr().err
    assert f"{b / 'predictions.csv'}:4: expected probabilities in [0, 1], received 1.7" in err
    assert "Traceback" not in err
    assert not (tmp_path / "e" / "metrics.json").exists()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--bootstrap", "-5", "argument --bootstrap: expected an integer >= 1, received -5"),
        ("--confidence", "1.5", "argument --confidence: expected a number in (0, 1), received 1.5"),
        ("--ece-bins", "0", "argument --ece-bins: expected an integer >= 1, received 0"),
    ],
)
def test_bad_values_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, message: str
) -> None:
    a = member(tmp_path, "a", "imagenet", 0)
    b = member(tmp_path, "b", "mae:x", 1)
    with pytest.raises(SystemExit) as info:
        run_cli(["ensemble", "--members", str(a), str(b), "--out", str(tmp_path / "e"), flag, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "e").exists()


def test_test_images_a_member_could_not_read_are_listed_in_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    a = member(tmp_path, "a", "imagenet", 0)
    b = member(tmp_path, "b", "mae:x", 1)
    record = {"skipped": {"val": [], "test": [{"path": "/data/test/broken.png", "reason": "truncated PNG"}]}}
    (a / "metrics.json").write_text(json.dumps(record))
    out = tmp_path / "e"
    assert run_cli(["ensemble", "--members", str(a), str(b), "--out", str(out), "--no-plots", "--bootstrap", "20"]) == 0
    results = json.loads((out / "metrics.json").read_text())
    assert results["skipped_test"] == ["/data/test/broken.png"]
    report = (out / "report.md").read_text()
    assert "## Test images left out" in report and "`/data/test/broken.png`" in report
    assert "1 test image(s) could not be decoded" in capsys.readouterr().out  # and in the summary printed
    # members without the record: nothing listed, no section
    (a / "metrics.json").unlink()
    out2 = tmp_path / "e2"
    assert run_cli(["ensemble", "--members", str(a), str(b), "--out", str(out2), "--no-plots", "--bootstrap", "20"]) == 0
    assert json.loads((out2 / "metrics.json").read_text())["skipped_test"] == []
    assert "left out" not in (out2 / "report.md").read_text()
    assert "could not be decoded" not in capsys.readouterr().out


def test_rows_without_probabilities_in_members_are_listed_and_kept_out_of_the_metrics(tmp_path: Path) -> None:
    a = member(tmp_path, "a", "imagenet", 0)
    b = member(tmp_path, "b", "mae:x", 1)
    out = tmp_path / "e"
    assert run_cli(["ensemble", "--members", str(a), str(b), "--out", str(out), "--no-plots", "--bootstrap", "20"]) == 0
    before = json.loads((out / "metrics.json").read_text())["models"]
    for folder in (a, b):  # both members list the same unreadable test image, as fine-tuning writes it
        with (folder / "predictions.csv").open("a") as f:
            f.write(f"test/broken.png,{CLASSES[1]},,,\n")
    out2 = tmp_path / "e2"
    assert run_cli(["ensemble", "--members", str(a), str(b), "--out", str(out2), "--no-plots", "--bootstrap", "20"]) == 0
    results = json.loads((out2 / "metrics.json").read_text())
    assert results["skipped_test"] == ["test/broken.png"]
    assert results["models"] == before  # in no metric
    last = (out2 / "predictions.csv").read_text().splitlines()[-1]
    assert last == f"test/broken.png,{CLASSES[1]}" + "," * (3 * len(CLASSES))  # 2 members + the ensemble
    assert "`test/broken.png`" in (out2 / "report.md").read_text()
