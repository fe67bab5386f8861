"""Atomic writes: output permissions, and the debris of interrupted writes removed by the next run."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from medens.engine.atomic import OUTPUT_MODE, atomic_path, atomic_torch_save, remove_stale_temporaries
from medens.models.weights import save_weights


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_safetensors_get_the_mode_of_every_other_output(tmp_path: Path) -> None:
    weights = save_weights(tmp_path / "model.safetensors", {"w": torch.ones(2)}, {"arch": "x"})
    checkpoint = atomic_torch_save({"a": 1}, tmp_path / "checkpoint.pt")
    assert _mode(weights) == _mode(checkpoint) == OUTPUT_MODE == 0o644


class _Killed(BaseException):
    """Stands for a kill: nothing after the write runs, not even the ``except`` clean-up of a normal error."""


def test_next_run_removes_temporaries_of_an_interrupted_write(tmp_path: Path, monkeypatch) -> None:
    # A real kill skips the clean-up in atomic_path; simulate it by making the unlink a no-op.
    monkeypatch.setattr(Path, "unlink", lambda self, missing_ok=False: None)
    with pytest.raises(_Killed), atomic_path(tmp_path / "checkpoint.pt") as tmp:
        tmp.write_bytes(b"x" * 1000)
        raise _Killed
    monkeypatch.undo()
    sub = tmp_path / "plots"
    sub.mkdir()
    (sub / ".roc.png.abcd_123.tmp").write_bytes(b"half")
    keep = [tmp_path / "checkpoint.pt.tmp", tmp_path / ".hidden", tmp_path / "notes.tmp", tmp_path / "config.yaml"]
    for k in keep:
        k.write_text("mine")
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".checkpoint.pt."))
    assert len(left) == 1
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted([left[0], ".roc.png.abcd_123.tmp"])
    assert not any(p.name.endswith(".tmp") and p.name.startswith(".") for p in tmp_path.rglob("*"))
    assert all(k.read_text() == "mine" for k in keep)


def test_removing_temporaries_does_not_enter_symlinked_folders(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / ".x.pt.abcdefgh.tmp").write_text("someone else's")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(other, out / "link")
    assert remove_stale_temporaries(out) == []
    assert (other / ".x.pt.abcdefgh.tmp").exists()
    assert remove_stale_temporaries(tmp_path / "missing") == []
