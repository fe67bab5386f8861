"""``study``: a run's models are paired with an ensemble's members by the init each member recorded, never by the
members' order, and a member that is missing is left out, never reported under another member's name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medens.layout import ENSEMBLE_DIR, METRICS_NAME, PREDICTIONS_NAME, study_run_folder
from medens.models.classifier import INIT_RANDOM_FALLBACK
from medens.train.stages import DEFAULT_VARIANT
from medens.train.study import collect_runs, model_names

CLASSES = ["a", "b"]
#: Each model's accuracy in the fake ensemble: distinct, so a model reported under another's name is seen.
ACCURACY = {"in": 0.25, "mae": 0.75, "ensemble": 0.5}
MEMBERS = {
    "in": {"name": "in", "label": "ImageNet", "init": "imagenet", "init_kind": "imagenet"},
    "mae": {"name": "mae", "label": "MAE", "init": "mae:/runs/pretrain/encoder.safetensors", "init_kind": "mae"},
}


def _ensemble(out: Path, members: list[dict]) -> None:
    """A finished unit (fold 0, seed 0) whose ensemble scored ``members`` (and the ensemble), in that order."""
    folder = study_run_folder(out, 0, 0) / ENSEMBLE_DIR
    folder.mkdir(parents=True)
    names = [m["name"] for m in members] + ["ensemble"]
    models = {n: {"label": n.upper(), "metrics": {"accuracy": ACCURACY[n]}} for n in names}
    record = {"classes": CLASSES, "n_test": 2, "members": members, "models": models, "baseline": None}
    (folder / METRICS_NAME).write_text(json.dumps(record), encoding="utf-8")
    probs = {"in": (0.9, 0.1), "mae": (0.2, 0.8), "ensemble": (0.55, 0.45)}
    header = ["path", "label", *(f"{n}:{c}" for n in names for c in CLASSES)]
    rows = [[f"img{i}", CLASSES[i], *(str(p) for n in names for p in probs[n])] for i in range(2)]
    (folder / PREDICTIONS_NAME).write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n", encoding="utf-8")


def _by_model(out: Path) -> tuple[dict[str, dict], dict]:
    runs, pooled = collect_runs(out, 1, [0], [DEFAULT_VARIANT])
    by_model = {r["model"]: r for r in runs}
    assert len(by_model) == len(runs)
    return by_model, pooled


@pytest.mark.parametrize("order", [("in", "mae"), ("mae", "in")])
def test_members_are_paired_by_their_init_whatever_their_order(tmp_path, order):
    _ensemble(tmp_path, [MEMBERS[k] for k in order])
    runs, pooled = _by_model(tmp_path)
    assert runs["imagenet"]["accuracy"] == ACCURACY["in"] and runs["imagenet"]["label"] == "IN"
    assert runs["mae"]["accuracy"] == ACCURACY["mae"] and runs["mae"]["label"] == "MAE"
    assert runs["ensemble"]["accuracy"] == ACCURACY["ensemble"]
    assert pooled[(0, None, "imagenet")][2][0, 0] == pytest.approx(0.9)  # the ImageNet member's own columns
    assert pooled[(0, DEFAULT_VARIANT.name, "mae")][2][0, 0] == pytest.approx(0.2)


def test_a_missing_member_is_left_out_not_reported_under_another_name(tmp_path):
    _ensemble(tmp_path, [MEMBERS["mae"]])
    runs, _ = _by_model(tmp_path)
    assert set(runs) == {"mae", "ensemble"}
    assert runs["mae"]["accuracy"] == ACCURACY["mae"]


def test_the_random_weight_fallback_stands_for_the_imagenet_member():
    fallback = {**MEMBERS["in"], "init": INIT_RANDOM_FALLBACK, "init_kind": INIT_RANDOM_FALLBACK}
    assert model_names({"members": [MEMBERS["mae"], fallback]})["imagenet"] == "in"


def test_two_members_of_one_kind_are_refused_by_name():
    twin = {**MEMBERS["mae"], "name": "mae2"}
    with pytest.raises(ValueError, match="'mae2'.*besides 'mae'"):
        model_names({"members": [MEMBERS["mae"], twin]})
