"""``medens.io``, the ground floor: one converter to plain values for YAML and JSON, and no import of medens."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import medens.io
from medens.engine import load_yaml, write_config
from medens.io import json_text, plain


def test_the_ground_floor_imports_nothing_of_medens() -> None:
    tree = ast.parse(Path(medens.io.__file__).read_text(encoding="utf-8"))
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    imported += [node.module or "." for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert [name for name in imported if name.startswith(("medens", "."))] == []


def test_plain_turns_containers_paths_and_scalars_into_plain_values() -> None:
    value = {
        1: (np.float32(0.5), np.int64(3), np.bool_(True)),
        "path": Path("runs") / "a",
        "tensor": torch.tensor(2.5),
        "array": np.array([[1, 2], [3, 4]]),
        "nested": [{"t": (1, 2)}],
        "none": None,
    }
    got = plain(value)
    assert got == {"1": [0.5, 3, True], "path": str(Path("runs/a")), "tensor": 2.5, "array": [[1, 2], [3, 4]],
                   "nested": [{"t": [1, 2]}], "none": None}
    assert [type(v) for v in got["1"]] == [float, int, bool]
    assert type(plain(np.float64(1.25))) is float
    assert value["nested"] == [{"t": (1, 2)}]  # the input is left as it was


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, np.float32("nan"), np.float64("inf")])
def test_non_finite_numbers_are_null_in_json_and_kept_for_yaml(bad: float) -> None:
    assert plain({"x": [bad]}, finite=True) == {"x": [None]}
    assert json.loads(json_text({"x": bad, "y": 1.5})) == {"x": None, "y": 1.5}
    assert json_text({"y": 1}).endswith("}\n")
    kept = plain(bad)
    assert isinstance(kept, float) and not math.isfinite(kept)


def test_write_config_round_trips_tuples_paths_and_numpy(tmp_path: Path) -> None:
    config = {"betas": (0.9, 0.95), "out": tmp_path / "run", "lr": np.float64(1e-3), "epochs": np.int32(5)}
    write_config(tmp_path / "config.yaml", config)
    assert load_yaml(tmp_path / "config.yaml") == {"betas": [0.9, 0.95], "out": str(tmp_path / "run"),
                                                   "lr": 1e-3, "epochs": 5}
    assert "!!" not in (tmp_path / "config.yaml").read_text()  # safe YAML, no Python tags
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["betas"] == [0.9, 0.95]
