"""Fine-tuning speed under OpenMP wait policies, alone and with a second run on the same cores.

Runs ``medens finetune`` (the installed CLI) for a few epochs under each setting, one run at a time and then two
at once, and prints the median images/s of each run's epochs after the first (from its ``log.csv``). ``--bare``
adds a bare timm training step on random data (no data loading) as the ceiling. Measured 2026-12-02 on a 2-core
machine, one run alone (BUSI, ``--preset small --image-size 96``): 92-98 images/s with ``OMP_WAIT_POLICY=PASSIVE``,
126-130 with ``ACTIVE``; the conditions are recorded in benchmarks/RESULTS.md.

    python benchmarks/wait_policy.py --out /tmp/wp --bare -- --dataset busi --data-root ~/data/BUSI \\
        --preset small --init scratch --image-size 96 --epochs 5

Everything after ``--`` is passed to ``medens finetune`` (add ``--cache-dir`` to keep decoding out of the timing).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

#: Environment settings compared: name -> variables (None removes the variable).
SETTINGS: dict[str, dict[str, str | None]] = {
    "PASSIVE (the CLI's default)": {"OMP_WAIT_POLICY": "PASSIVE"},
    "ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"},
    "libgomp default, GOMP_SPINCOUNT=10000": {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "10000"},
}
#: Settings also run two at a time.
PAIRED = ("PASSIVE (the CLI's default)", "libgomp default, GOMP_SPINCOUNT=10000")

def _env(variables: dict[str, str | None]) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in variables.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def bare_step_speed(size: int, batch: int = 32) -> float:
    """Images/s of a fine-tuning step alone: the CLI's model, plain AdamW, class-weighted loss, random data."""
    import torch

    from medens.models import create_classifier

    torch.manual_seed(0)
    model, _ = create_classifier("convnext_atto", 3, init="scratch")
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 3, (batch,))
    weight = torch.tensor([1.0, 2.0, 3.0])

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(images), labels, weight=weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):  # first-call allocations
        step()
    times = []
    for _ in range(20):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def _median_speed(run_dir: Path) -> float:
    from medens.layout import LOG_NAME

    with (run_dir / LOG_NAME).open(newline="") as f:
        speeds = [float(row["images_per_s"]) for row in csv.DictReader(f)]
    return statistics.median(speeds[1:] or speeds)


def _start(out: Path, name: str, variables: dict[str, str | None], finetune_args: list[str]) -> tuple:
    run_dir = out / name
    log = (out / f"{name}.log").open("w")
    argv = [sys.executable, "-m", "medens.train", "finetune", *finetune_args, "--no-progress", "--out", str(run_dir)]
    return subprocess.Popen(argv, env=_env(variables), stdout=log, stderr=subprocess.STDOUT), run_dir, log


def _finish(started: list[tuple]) -> list[float]:
    speeds = []
    for process, run_dir, log in started:
        if process.wait() != 0:
            raise SystemExit(f"medens finetune failed for {run_dir}: see {log.name}")
        log.close()
        speeds.append(_median_speed(run_dir))
    return speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs (must not exist)")
    parser.add_argument("--bare", action="store_true", help="also time a bare timm step (the ceiling)")
    parser.add_argument("--bare-size", type=int, default=96, help="input side of the bare step")
    parser.add_argument("--bare-only", action="store_true", help=argparse.SUPPRESS)  # the child that times it
    parser.add_argument("finetune_args", nargs=argparse.REMAINDER, help="-- then the arguments of medens finetune")
    args = parser.parse_args()
    if args.bare_only:
        print(bare_step_speed(args.bare_size))
        return
    finetune_args = [a for a in args.finetune_args if a != "--"]
    args.out.mkdir(parents=True, exist_ok=False)
    rows: list[tuple[str, str, str]] = []
    if args.bare:
        # In a child process: the wait policy is read once, when the OpenMP runtime starts.
        bare = subprocess.run([sys.executable, __file__, "--out", str(args.out), "--bare-only", "--bare-size",
                               str(args.bare_size)], capture_output=True, text=True, check=True,
                              env=_env(SETTINGS["ACTIVE"]))
        rows.append(("bare timm step, no data loading (ACTIVE)", f"{float(bare.stdout):.0f}", "-"))
    alone = {}
    for i, (name, variables) in enumerate(SETTINGS.items()):
        alone[name] = _finish([_start(args.out, f"alone-{i}", variables, finetune_args)])[0]
    together = {}
    for i, name in enumerate(PAIRED):
        started = [_start(args.out, f"pair-{i}-{k}", SETTINGS[name], finetune_args) for k in "ab"]
        together[name] = _finish(started)
    for name in SETTINGS:
        pair = " / ".join(f"{s:.0f}" for s in together[name]) if name in together else "-"
        rows.append((name, f"{alone[name]:.0f}", pair))
    print(f"images/s, median over epochs 2+ ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs)")
    print("| setting | one run | two runs at once (each) |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
