"""Atomic writes: output permissions, and the debris of interrupted writes removed by the next run."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from medens.io import OUTPUT_MODE, atomic_path, atomic_torch_save, remove_stale_temporaries
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
    (sub / ".roc.png.abcd_123.tmp").write_bytes(b"not looked at: only the run folder itself is")
    keep = [tmp_path / "checkpoint.pt.tmp", tmp_path / ".hidden", tmp_path / "notes.tmp", tmp_path / "config.yaml"]
    for k in keep:
        k.write_text("mine")
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".checkpoint.pt."))
    assert len(left) == 1
    removed = remove_stale_temporaries(tmp_path)
    assert [p.name for p in removed] == [left[0]]
    assert not any(p.name.startswith(".checkpoint.pt.") for p in tmp_path.iterdir())
    assert (sub / ".roc.png.abcd_123.tmp").exists()
    assert all(k.read_text() == "mine" for k in keep)


def test_removing_the_temporaries_of_one_file_leaves_the_others(tmp_path: Path) -> None:
    mine = tmp_path / ".pred.csv.a1b2c3d4.tmp"
    other = tmp_path / ".pred.csv.old.a1b2c3d4.tmp"  # the temporary of another file, "pred.csv.old"
    notes = tmp_path / ".notes.txt.a1b2c3d4.tmp"
    for p in (mine, other, notes):
        p.write_text("x")
    assert remove_stale_temporaries(tmp_path, target="pred.csv") == [mine]
    assert other.exists() and notes.exists()


def test_removing_temporaries_does_not_follow_links(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / ".x.pt.abcdefgh.tmp").write_text("someone else's")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(other, out / "link")
    os.symlink(other / ".x.pt.abcdefgh.tmp", out / ".y.pt.abcdefgh.tmp")
    assert remove_stale_temporaries(out) == []
    assert (other / ".x.pt.abcdefgh.tmp").exists()
    assert remove_stale_temporaries(tmp_path / "missing") == []


_WRITER = """
import sys, time
from pathlib import Path
from medens.io import atomic_path
with atomic_path(Path(sys.argv[1]) / "cache.u8") as tmp:
    tmp.write_bytes(b"x" * 1000)
    print("writing", flush=True)
    time.sleep(120)
"""


@pytest.mark.skipif(not hasattr(os, "fork") or os.name != "posix", reason="flock needs a POSIX system")
def test_a_live_write_is_left_alone_and_a_killed_one_removed(tmp_path: Path) -> None:
    import signal
    import subprocess

    from tests._installed import installed

    with subprocess.Popen(
        **installed("-c", _WRITER, str(tmp_path)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as writer:
        try:
            assert writer.stdout.readline().strip() == "writing", writer.stderr.read()
            (live,) = [p for p in tmp_path.iterdir() if p.name.startswith(".cache.u8.")]
            assert remove_stale_temporaries(tmp_path) == []  # another run or rank is still writing it
            assert live.exists()
            writer.send_signal(signal.SIGKILL)  # a real kill: no clean-up runs
            writer.wait(timeout=30)
            assert live.exists()
            assert remove_stale_temporaries(tmp_path) == [live]
            assert not live.exists()
        finally:
            writer.kill()
