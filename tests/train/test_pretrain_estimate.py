"""Before the long loop, a stage says how long it will take; the paper preset on a CPU points to ``--preset small``."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

from medens.engine.estimate import CPU_HINT_SECONDS
from tests._installed import installed


def test_paper_preset_on_a_cpu_is_estimated_and_pointed_to_the_small_preset(tmp_path: Path) -> None:
    """The paper's 400 epochs on the CPU, with tiny images: stopped by SIGTERM as soon as the estimate is logged."""
    args = ["pretrain", "--preset", "paper", "--device", "cpu", "--dataset", "synthetic",
            "--dataset-option", "num_images=2000", "--dataset-option", "image_size=64", "--arch", "convnext_atto",
            "--image-size", "64", "--decoder-dim", "16", "--batch-size", "8", "--num-workers", "0",
            "--no-progress", "--dedupe", "off", "--mask-ratio", "0.5", "--out", str(tmp_path / "paper")]  # fmt: skip
    lines = []
    with subprocess.Popen(**installed("-m", "medens.train", *args, OMP_NUM_THREADS="1"), text=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True) as run:
        try:
            for line in run.stderr:
                lines.append(line)
                if "estimated" in line:
                    os.killpg(run.pid, signal.SIGTERM)
                    break
            err = "".join(lines) + run.stderr.read()
            run.wait(timeout=120)
        finally:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 143, err[-3000:]
    estimate = next(line for line in lines if "estimated" in line)
    assert "on this machine (cpu) for this stage's" in estimate
    steps, per_step = re.search(r"stage's (\d+) remaining steps \(([\d.e+-]+) s each", estimate).groups()
    assert int(steps) > 399 * 175  # the paper's 400 epochs of 175 steps, less the few just timed
    # Whatever this machine's speed: the hint exactly when the estimate passes the hour.
    assert ("'--preset small' is sized for a CPU" in estimate) == (int(steps) * float(per_step) > CPU_HINT_SECONDS)
    assert (tmp_path / "paper" / "train.log").read_text().count("estimated") == 1

