"""A signal to the whole process group (SLURM, ``timeout``, Ctrl-C), loader workers included, stops a run cleanly.

The run is started in its own session and the signal goes to the group (``os.killpg``), as SLURM and a terminal
send it: every loader worker receives it too. The run must end as if only its main process had been signalled: a
checkpoint of the step, one line saying how to resume, 143 (SIGTERM) or 130 (SIGINT), no traceback; and ``--resume``
must reach the very weights of an uninterrupted run, augmentation drawn in the workers included.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medens.engine import load_checkpoint
from medens.train.pretrain import is_complete
from tests._installed import installed

#: Pre-training with two loader workers and augmentation (random crops and flips drawn in the workers).
ARGS = [
    "pretrain", "--dataset", "synthetic", "--dataset-option", "num_images=96", "--dataset-option", "image_size=64",
    "--arch", "convnext_atto", "--image-size", "64", "--decoder-dim", "16", "--batch-size", "4",
    "--num-workers", "2", "--no-progress", "--mask-ratio", "0.5", "--epochs", "3", "--deterministic",
]  # fmt: skip


def _start(out: Path, *extra: str) -> subprocess.Popen:
    child = installed("-m", "medens.train", *ARGS, *extra, "--out", str(out), OMP_NUM_THREADS="1",
                      OMP_WAIT_POLICY="passive")
    return subprocess.Popen(**child, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def _finish(process: subprocess.Popen) -> str:
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    return err


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("full") / "run"
    _finish(_start(out))
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_group_signal_with_workers_stops_cleanly_and_resumes_exactly(
    tmp_path: Path, uninterrupted: Path, sig: signal.Signals, code: int
) -> None:
    out = tmp_path / "run"
    run = _start(out)
    checkpoint = out / "checkpoint.pt"
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run.poll() is None, "the run ended before it could be signalled"
    os.killpg(run.pid, sig)  # the main process and both loader workers, somewhere in epoch 2 (or later)
    _, err = run.communicate(timeout=240)

    assert run.returncode == code, err[-3000:]
    assert "Traceback" not in err and "internal error" not in err, err[-3000:]
    assert f"{sig.name} received" in err
    assert len([line for line in err.splitlines() if "--resume" in line]) == 1, err[-3000:]
    state = load_checkpoint(checkpoint)
    per_epoch = int(next(csv.DictReader((uninterrupted / "log.csv").read_text().splitlines()))["step"])
    assert state["step"] >= per_epoch  # the stop saved its own step, at or after the first epoch's end
    assert not is_complete(out)

    resumed = subprocess.run(**installed("-m", "medens.train", "pretrain", "--resume", "--out", str(out),
                                         OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive"),
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_file(str(uninterrupted / "encoder.safetensors"))
    b = load_file(str(out / "encoder.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    losses = [[row["train_loss"] for row in csv.DictReader((folder / "log.csv").read_text().splitlines())]
              for folder in (uninterrupted, out)]
    assert losses[0] == losses[1]
