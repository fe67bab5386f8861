"""``EnsembleOptions``: one frozen object for every evaluation option; scoring writes nothing, writing is apart."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError
from pathlib import Path

import numpy as np
import pytest

from medens.evaluate.calibration import softmax
from medens.evaluate.ensemble import EnsembleOptions, evaluate_ensemble, score_ensemble, write_ensemble
from medens.evaluate.members import load_member
from medens.evaluate.predictions import Predictions
from tests.evaluate.helpers import write_member

CLASSES = ["benign", "malignant", "normal"]


@pytest.fixture
def member_dirs(tmp_path: Path) -> list[Path]:
    """Two member folders with made-up, seeded predictions on 45 test and 15 validation images."""
    rng = np.random.default_rng(0)
    dirs = []
    for name, init in (("ft-in", "imagenet"), ("ft-mae", "mae:/p/enc.st")):
        split = {}
        for part, n in (("test", 45), ("val", 15)):
            labels = np.arange(n) % 3
            probs = softmax(rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[labels])
            split[part] = Predictions([f"{part}/{i:03d}.png" for i in range(n)], [CLASSES[i] for i in labels],
                                      CLASSES, probs)
        config = {"dataset": "synthetic", "classes": CLASSES, "init": init, "split_hash": "h", "arch": "convnext_atto"}
        dirs.append(write_member(tmp_path / name, config, split["test"], split["val"]))
    return dirs


def test_options_are_frozen_checked_and_normalised() -> None:
    options = EnsembleOptions(cam_layer=["stages.3"])
    assert options.cam_layer == ("stages.3",)
    assert EnsembleOptions(cam_layer="stages.2").cam_layer == ("stages.2",)
    assert EnsembleOptions(cam_layer=[]).cam_layer is None
    with pytest.raises(FrozenInstanceError):
        options.method = "weighted"  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"method: expected one of \['mean', .*\], received 'vote'"):
        EnsembleOptions(method="vote")
    with pytest.raises(ValueError, match=r"cam_method: expected one of .*, received 'lime'"):
        EnsembleOptions(cam_method="lime")
    with pytest.raises(ValueError, match="gallery: expected an integer >= 0, received True"):
        EnsembleOptions(gallery=True)
    assert not EnsembleOptions().needs_val
    assert EnsembleOptions(method="weighted").needs_val and EnsembleOptions(calibrate=True).needs_val


def test_recorded_in_compares_the_method_the_bootstrap_and_the_maps() -> None:
    record = {"method": "mean", "calibrate": False, "tta": False, "bootstrap": {"n_boot": 100},
              "gallery": {"max_errors": 12, "method": "gradcam", "layers": None}}
    options = EnsembleOptions(n_boot=100)
    assert options.recorded_in(record)
    for other in (EnsembleOptions(n_boot=50), EnsembleOptions(n_boot=100, calibrate=True),
                  EnsembleOptions(n_boot=100, gallery=0), EnsembleOptions(n_boot=100, cam_layer=["stages.3"]),
                  EnsembleOptions(n_boot=100, cam_method="gradxact"), EnsembleOptions(n_boot=100, maps=False)):
        assert not other.recorded_in(record), other
    no_maps = {k: v for k, v in record.items() if k != "gallery"}
    assert EnsembleOptions(n_boot=100, maps=False).recorded_in(no_maps)
    assert not options.recorded_in(no_maps)
    # Maps asked for that could not be made (no model on disk): the evaluation was done as asked.
    assert options.recorded_in({**record, "gallery": None, "gallery_note": "no model"})


def test_scoring_writes_nothing_and_writing_gives_what_evaluate_gives(member_dirs: list[Path], tmp_path: Path) -> None:
    members = [load_member(d) for d in member_dirs]
    options = EnsembleOptions(n_boot=30, plots=False)
    scores = score_ensemble(members, options)
    assert not (tmp_path / "written").exists()
    assert set(scores.probs) == {m.name for m in scores.members} | {"ensemble"}
    assert np.allclose(scores.probs["ensemble"], np.mean([scores.probs[m.name] for m in scores.members], axis=0))
    written = write_ensemble(scores, tmp_path / "written", plots=False)
    assert json.loads((tmp_path / "written" / "metrics.json").read_text()) == written
    # The same options by keyword, as the function took them before there was an options object.
    by_keyword = evaluate_ensemble(members, tmp_path / "keywords", n_boot=30, plots=False)
    by_object = evaluate_ensemble(members, tmp_path / "object", options)
    for results in (by_keyword, by_object):
        assert results["models"] == written["models"]
        assert results["bootstrap"] == written["bootstrap"] == {"n_boot": 30, "confidence": 0.95, "seed": 0,
                                                                "method": "percentile, paired"}
    assert (tmp_path / "object" / "predictions.csv").read_bytes() == (tmp_path / "written" / "predictions.csv"
                                                                      ).read_bytes()
    with pytest.raises(TypeError):
        evaluate_ensemble(members, tmp_path / "bad", n_bootstrap=30)
