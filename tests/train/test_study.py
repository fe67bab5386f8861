"""``python -m medens.train study``: folds x seeds x variants end to end on the synthetic data, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medens.train.__main__ import main as train_main
from medens.train.study import parse_seeds, parse_variants

FOLDS, SEEDS = 3, 2
ARGV = ["study", "--preset", "smoke", "--folds", str(FOLDS), "--seeds", str(SEEDS), "--dataset-option",
        "num_images=36", "--bootstrap", "20", "--vary", "masking=random,entropy", "--baseline", "resnet10t"]


def test_seeds_and_variants_parse_and_refuse_by_name():
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("4,1") == [4, 1]
    with pytest.raises(ValueError, match="seeds: expected a count"):
        parse_seeds("x")
    with pytest.raises(ValueError, match="distinct"):
        parse_seeds("1,1")
    grid = parse_variants(["masking=random,entropy", "mask_ratio=0.6,0.75"])
    assert [v.name for v in grid] == ["masking=random,mask_ratio=0.6", "masking=random,mask_ratio=0.75",
                                      "masking=entropy,mask_ratio=0.6", "masking=entropy,mask_ratio=0.75"]
    assert grid[3].pretrain == {"masking": "entropy", "mask_ratio": 0.75}
    with pytest.raises(ValueError, match="'colour' is not a pre-training option"):
        parse_variants(["colour=red,blue"])
    with pytest.raises(ValueError, match="expected KEY=V1,V2"):
        parse_variants(["masking"])


def test_bad_study_options_exit_2_naming_them(tmp_path, capsys):
    assert train_main(["study", "--out", str(tmp_path), "--folds", "1"]) == 2
    assert "folds: expected at least 2 folds, received 1" in capsys.readouterr().err
    assert train_main(["study", "--out", str(tmp_path), "--vary", "colour=red"]) == 2
    assert "'colour' is not a pre-training option" in capsys.readouterr().err
    assert train_main(["study", "--out", str(tmp_path), "--baseline", "resnet1008"]) == 2
    assert "baseline: expected a timm architecture (e.g. 'resnet18'), received 'resnet1008'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing ran


@pytest.mark.slow
def test_study_end_to_end_then_resumed_after_a_kill(tmp_path: Path, capsys):
    out = tmp_path / "study"
    assert train_main([*ARGV, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "MAE member: masking=entropy - masking=random" in printed and f"report: {out / 'report.md'}" in printed
    record = json.loads((out / "study.json").read_text())

    # One entry per fold, seed, variant and model; the ImageNet member and the baseline once per fold and seed.
    runs = record["runs"]
    assert len(runs) == FOLDS * SEEDS * (1 + 2 * 2 + 1)
    for key in ("fold", "seed", "variant", "model", "accuracy", "balanced_accuracy", "macro_f1", "auroc_macro"):
        assert all(key in r for r in runs)
    assert sorted({(r["model"], r["variant"]) for r in runs}, key=str) == sorted(
        {("imagenet", None), ("mae", "masking=random"), ("mae", "masking=entropy"),
         ("ensemble", "masking=random"), ("ensemble", "masking=entropy"), ("baseline", None)}, key=str)
    assert {r["label"] for r in runs if r["model"] == "baseline"} == {"Baseline resnet10t: Scratch (random init)"}
    for fold in range(FOLDS):
        for seed in range(SEEDS):
            folders = {p.name for p in (out / f"fold-{fold}" / f"seed-{seed}").iterdir()}
            assert [f for f in folders if f.startswith("finetune-imagenet")] == ["finetune-imagenet"]
            assert [f for f in folders if f.startswith("finetune-baseline")] == ["finetune-baseline"]
            assert {"pretrain-masking-random", "pretrain-masking-entropy", "finetune-mae-masking-entropy",
                    "ensemble-masking-random"} <= folders

    # Every image in exactly one test fold per seed; the folds do not depend on the seed.
    folds_per_seed = []
    for seed in range(SEEDS):
        tests = []
        for fold in range(FOLDS):
            splits = json.loads((out / f"fold-{fold}" / f"seed-{seed}" / "pretrain-masking-random" / "splits.json")
                                .read_text())
            assert splits["folds"] == FOLDS and splits["fold"] == fold and splits["dedupe"] is True
            tests.append(splits["splits"]["test"])
            everything = splits["num_items"] - splits["num_excluded"]
        assert sorted(i for t in tests for i in t) == sorted(set(i for t in tests for i in t))
        assert len({i for t in tests for i in t}) == everything
        folds_per_seed.append(tests)
    assert all(tests == folds_per_seed[0] for tests in folds_per_seed)

    # The comparisons are of the recorded per-run values.
    comp = next(c for c in record["comparisons"]
                if c["name"] == "MAE member: masking=entropy - masking=random" and c["metric"] == "accuracy")
    by_run = {(r["fold"], r["seed"], r["variant"]): r["accuracy"] for r in runs if r["model"] == "mae"}
    expected = [by_run[(f, s, "masking=entropy")] - by_run[(f, s, "masking=random")]
                for f in range(FOLDS) for s in range(SEEDS)]
    assert comp["differences"] == pytest.approx(expected)
    assert comp["wins"] + comp["losses"] + comp["ties"] == FOLDS * SEEDS
    # Does the method beat the plain model: the ensemble of each variant against the one baseline of each run.
    comp = next(c for c in record["comparisons"]
                if c["name"] == "ensemble - plain baseline [masking=entropy]" and c["metric"] == "accuracy")
    ens = {(r["fold"], r["seed"]): r["accuracy"] for r in runs
           if r["model"] == "ensemble" and r["variant"] == "masking=entropy"}
    base = {(r["fold"], r["seed"]): r["accuracy"] for r in runs if r["model"] == "baseline"}
    assert comp["differences"] == pytest.approx([ens[k] - base[k] for k in sorted(ens)])
    for name in ("report.md", "study_runs.png", "study_differences.png"):
        assert (out / name).is_file()
    assert "Nadeau and Bengio" in (out / "report.md").read_text()
    # The two masking rules' encoders, probe by probe, paired by run.
    assert [c["name"] for c in record["probe_comparisons"]] == [
        f"{probe} probe of the encoder: masking=entropy - masking=random" for probe in ("linear", "knn")]
    assert all(len(c["differences"]) == FOLDS * SEEDS for c in record["probe_comparisons"])

    # Killed during the last run's entropy variant (its MAE member unfinished, no ensemble, no study.json):
    # the same command finishes that run and leaves every finished stage alone.
    last = out / f"fold-{FOLDS - 1}" / f"seed-{SEEDS - 1}"
    for name in ("metrics.json", "predictions.csv", "val_predictions.csv", "model.safetensors"):
        (last / "finetune-mae-masking-entropy" / name).unlink()
    for path in (last / "ensemble-masking-entropy").iterdir():
        path.unlink()
    (out / "study.json").unlink()
    untouched = {p: p.stat().st_mtime_ns for p in (out / "fold-0").rglob("*") if p.is_file() and p.suffix != ".log"}
    assert train_main([*ARGV, "--out", str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in untouched} == untouched
    again = json.loads((out / "study.json").read_text())
    assert len(again["runs"]) == len(runs)
    assert (last / "finetune-mae-masking-entropy" / "metrics.json").is_file()

    # The same study with other ensemble options: every run's ensembles are redone with them, and nothing else.
    trained = {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")}
    assert train_main([*ARGV, "--out", str(out), "--no-maps"]) == 0
    assert {p: p.stat().st_mtime_ns for p in trained} == trained
    for metrics in out.glob("fold-*/seed-*/ensemble-*/metrics.json"):
        assert "gallery" not in json.loads(metrics.read_text()), metrics  # evaluated again, without maps
    assert len(json.loads((out / "study.json").read_text())["runs"]) == len(runs)
