"""Two CPU processes under ``torchrun`` (gloo): identical weights, agreed skips, no hang on an exception."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from tests._installed import installed

WORKER = Path(__file__).with_name("ddp_worker.py")


def _torchrun(out: Path, mode: str, timeout: float = 240) -> subprocess.CompletedProcess:
    child = installed(str(WORKER), str(out), mode, nproc=2, tests=True, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive")
    return subprocess.run(**child, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_ranks_hold_identical_weights_and_skip_together(tmp_path: Path) -> None:
    result = _torchrun(tmp_path, "poison-rank1")
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for key, value in rank0["weights"].items():
        assert torch.equal(value, rank1["weights"][key]), key
        assert torch.isfinite(value).all(), key
    # Only rank 1 saw NaN pixels in its first batch, yet both ranks skipped that step (and agree on the
    # losses, which are reduced across ranks). Epoch 2 reshuffles the NaN images into other steps.
    assert rank0["history"][0]["skipped_steps"] == 1
    timing = {"images_per_s", "epoch_seconds"}
    for row0, row1 in zip(rank0["history"], rank1["history"], strict=True):
        assert {k: v for k, v in row0.items() if k not in timing} == {
            k: v for k, v in row1.items() if k not in timing
        }
    # One writer: one checkpoint and one log, no temporary files.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "log.csv", "rank0.pt", "rank1.pt"]


@pytest.mark.slow
def test_an_exception_on_one_rank_ends_the_run(tmp_path: Path) -> None:
    result = _torchrun(tmp_path, "raise-rank1", timeout=180)
    assert result.returncode != 0
    assert "rank 1 fails on purpose" in result.stderr
    assert not (tmp_path / "rank0.pt").exists()


@pytest.mark.slow
def test_two_nodes_meet_over_the_loopback(tmp_path: Path) -> None:
    """``torchrun --nnodes 2``: two launchers, one process each, as two SLURM nodes would run them (gloo)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    child = installed(str(WORKER), str(tmp_path), "two-nodes", tests=True, OMP_NUM_THREADS="1",
                      OMP_WAIT_POLICY="passive")
    python, *target = child["args"]
    nodes = [
        subprocess.Popen([python, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                          "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", str(port),
                          *target], cwd=child["cwd"], env=child["env"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)
    ]
    for node in nodes:
        _, err = node.communicate(timeout=240)
        assert node.returncode == 0, err[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for key, value in rank0["weights"].items():
        assert torch.equal(value, rank1["weights"][key]), key
    assert [row["step"] for row in rank0["history"]] == [row["step"] for row in rank1["history"]]
