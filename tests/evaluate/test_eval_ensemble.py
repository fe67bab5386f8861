"""The ensemble evaluation on hand-written member folders: numbers, files and report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medens.evaluate.calibration import softmax
from medens.evaluate.ensemble import evaluate_ensemble
from medens.evaluate.members import load_member
from medens.evaluate.metrics import classification_report
from medens.evaluate.predictions import Predictions
from tests.evaluate.helpers import write_member

CLASSES = ["benign", "malignant", "normal"]


def member_predictions(
    rng: np.random.Generator, labels: np.ndarray, skill: float, prefix: str
) -> Predictions:
    logits = rng.normal(size=(labels.size, 3)) + skill * np.eye(3)[labels]
    return Predictions(
        [f"{prefix}/{i:03d}.png" for i in range(labels.size)],
        [CLASSES[i] for i in labels],
        CLASSES,
        softmax(logits),
    )


@pytest.fixture
def member_dirs(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    test_labels = np.arange(60) % 3
    val_labels = np.arange(30) % 3
    dirs = []
    for name, init, skill in [
        ("ft-in", "imagenet-unavailable-random-init", 1.5),
        ("ft-mae", "mae:/p/enc.st", 2.0),
    ]:
        config = {
            "dataset": "synthetic",
            "classes": CLASSES,
            "init": init,
            "split_hash": "h1",
            "arch": "convnext_atto",
        }
        dirs.append(
            write_member(
                tmp_path / name,
                config,
                member_predictions(rng, test_labels, skill, "test"),
                member_predictions(rng, val_labels, skill, "val"),
            )
        )
    return dirs


def read_columns(path: Path) -> dict[str, list[str]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {key: [r[key] for r in rows] for key in rows[0]}


def test_mean_ensemble_outputs(member_dirs: list[Path], tmp_path: Path) -> None:
    members = [load_member(d) for d in member_dirs]
    out = tmp_path / "ens"
    results = evaluate_ensemble(members, out, n_boot=60)
    for name in [
        "metrics.json",
        "predictions.csv",
        "report.md",
        "confusion_matrices.png",
        "roc_curves.png",
        "reliability.png",
    ]:
        assert (out / name).is_file(), name
    assert json.loads((out / "metrics.json").read_text()) == results

    cols = read_columns(out / "predictions.csv")
    names = ["random-init-imagenet-unavailable", "mae-init"]
    for c in CLASSES:
        member_cols = np.array([[float(v) for v in cols[f"{n}:{c}"]] for n in names])
        ens = np.array([float(v) for v in cols[f"ensemble:{c}"]])
        np.testing.assert_array_equal(ens, member_cols.mean(axis=0))  # exact: values round-trip through CSV
    assert cols["label"][:3] == CLASSES

    labels = members[0].test.labels
    ens_probs = np.mean([m.test.probs for m in members], axis=0)
    expected = classification_report(ens_probs, labels, CLASSES)
    got = results["models"]["ensemble"]["metrics"]
    for key in ["accuracy", "balanced_accuracy", "macro_f1", "auroc_macro", "ece"]:
        assert got[key] == pytest.approx(expected[key], abs=1e-12)
        low, high = results["models"]["ensemble"]["ci"][key]
        assert low <= got[key] <= high
    assert set(results["ensemble_vs_members"]) == set(names)
    assert results["members"][0]["label"] == "Random-init (ImageNet weights unavailable)"

    for png in out.glob("*.png"):
        with Image.open(png) as im:
            assert im.format == "PNG" and im.width > 300 and im.height > 300


def test_report_shows_every_model_and_plot(member_dirs: list[Path], tmp_path: Path) -> None:
    results = evaluate_ensemble([load_member(d) for d in member_dirs], tmp_path / "ens", n_boot=30)
    report = (tmp_path / "ens" / "report.md").read_text()
    for model in results["models"].values():
        assert f"| {model['label']} |" in report
    assert "Ensemble (mean)" in report
    for png in ["confusion_matrices.png", "roc_curves.png", "reliability.png"]:
        assert f"]({png})" in report
    acc = results["models"]["ensemble"]["metrics"]["accuracy"]
    assert f"{acc:.3f} [" in report
    assert "McNemar" in report


def test_baseline_is_scored_beside_the_ensemble_never_in_it(member_dirs: list[Path], tmp_path: Path) -> None:
    from medens.train.ensemble import is_complete

    rng = np.random.default_rng(1)
    config = {"dataset": "synthetic", "classes": CLASSES, "init": "scratch", "split_hash": "h1", "arch": "resnet18"}
    base_dir = write_member(tmp_path / "ft-base", config, member_predictions(rng, np.arange(60) % 3, 3.0, "test"),
                            member_predictions(rng, np.arange(30) % 3, 3.0, "val"))
    members = [load_member(d) for d in member_dirs]
    out = tmp_path / "ens"
    results = evaluate_ensemble(members, out, n_boot=40, baseline=load_member(base_dir))

    cols = read_columns(out / "predictions.csv")
    for c in CLASSES:  # the ensemble is still the mean of the two members alone
        member_cols = np.array([[float(v) for v in cols[f"{n}:{c}"]] for n in ("random-init-imagenet-unavailable",
                                                                                "mae-init")])
        np.testing.assert_array_equal(np.array([float(v) for v in cols[f"ensemble:{c}"]]), member_cols.mean(axis=0))
        assert len(cols[f"baseline:{c}"]) == 60
    base = results["models"]["baseline"]
    assert base["label"] == "Baseline resnet18: Scratch (random init)" and results["baseline"]["arch"] == "resnet18"
    assert [m["name"] for m in results["members"]] == ["random-init-imagenet-unavailable", "mae-init"]
    expected = classification_report(load_member(base_dir).test.probs, members[0].test.labels, CLASSES)
    assert base["metrics"]["accuracy"] == pytest.approx(expected["accuracy"])
    versus = results["ensemble_vs_baseline"]
    assert versus["difference"]["accuracy"] == pytest.approx(
        results["models"]["ensemble"]["metrics"]["accuracy"] - expected["accuracy"])
    low, high = versus["difference_ci"]["accuracy"]
    assert low <= versus["difference"]["accuracy"] <= high
    report = (out / "report.md").read_text()
    assert "| Baseline resnet18: Scratch (random init) |" in report and "not part of it" in report

    assert is_complete(out, member_dirs, base_dir)
    assert not is_complete(out, member_dirs)  # evaluated with a baseline: not the evaluation asked for
    assert not is_complete(out, member_dirs, member_dirs[0])
    plain = evaluate_ensemble(members, tmp_path / "plain", n_boot=40, plots=False)
    assert plain["baseline"] is None and "baseline" not in plain["models"]
    assert not is_complete(tmp_path / "plain", member_dirs, base_dir)

    # A member trained from random weights like the baseline keeps its own name: the baseline is named apart.
    scratch = write_member(tmp_path / "ft-scratch", {**config, "arch": "convnext_atto"},
                           member_predictions(rng, np.arange(60) % 3, 1.0, "test"))
    both = evaluate_ensemble([load_member(scratch), members[1]], tmp_path / "both", n_boot=20, plots=False,
                             baseline=load_member(base_dir))
    assert [m["name"] for m in both["members"]] == ["scratch-init", "mae-init"]
    assert set(both["models"]) == {"scratch-init", "mae-init", "ensemble", "baseline"}


def test_calibrated_weighted_ensemble(member_dirs: list[Path], tmp_path: Path) -> None:
    members = [load_member(d) for d in member_dirs]
    results = evaluate_ensemble(
        members, tmp_path / "ens", method="weighted", calibrate=True, n_boot=20, plots=False
    )
    temps = [m["temperature"] for m in results["members"]]
    weights = [m["weight"] for m in results["members"]]
    assert all(t is not None and t > 0 for t in temps)
    assert sum(weights) == pytest.approx(1.0)
    assert results["models"]["ensemble"]["label"] == "Ensemble (weighted, T-scaled)"
    # Temperature scaling never changes a member's predicted class.
    for m in members:
        assert results["models"][m.name]["metrics"]["accuracy"] == pytest.approx(
            classification_report(m.test.probs, m.test.labels, CLASSES)["accuracy"]
        )
    assert not (tmp_path / "ens" / "roc_curves.png").exists()


def test_unknown_method_is_refused(member_dirs: list[Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="method: expected one of"):
        evaluate_ensemble([load_member(d) for d in member_dirs], tmp_path / "ens", method="vote")
