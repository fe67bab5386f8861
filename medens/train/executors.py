"""Where a study's units run: in this process, several at once on this machine, or on a SLURM cluster.

A **unit** is one fold-seed pair: its pre-training variants, its members, its baseline and its ensembles, run by
:func:`medens.train.pipeline.run_variants` into ``<out>/fold-<k>/seed-<s>/`` (so the work the variants share is
done once, and a unit resumes as a pipeline does). :class:`~medens.train.units.UnitJob` runs one unit wherever it
is called, under the unit's lock, recording its state in ``unit.json`` (:mod:`medens.train.units`). This module
holds the executors' flags and runs the units here; :mod:`medens.train.slurm` submits them to SLURM.

- ``--executor local`` (the default) runs the units one after another in this process, as before.
- ``--executor local --workers N`` runs N units at once, each in its own process (``python -m
  medens.train.executors UNIT.pkl``, its output in ``unit.log``), pinned to one GPU through
  ``CUDA_VISIBLE_DEVICES`` when there are GPUs, otherwise to its share of this process's cores (CPU affinity and
  thread counts).
- ``--executor slurm`` submits one job per unit with **submitit** (as MAE's and ConvNeXt-V2's ``submitit_*.py``
  do): it writes the ``sbatch`` script, pickles the job, and runs it on the node; the command then waits for the
  units, which it follows through their ``unit.json`` and ``squeue``. A unit stopped by SIGTERM (preemption, the
  time limit, ``scancel --signal=TERM``) or by submitit's ``USR2`` warning before the time limit saves a checkpoint
  of its step and requeues its own job (``scontrol requeue``, as submitit's checkpoint handler does); the requeued
  job resumes from the checkpoint. ``checkpoint()`` gives submitit the same job back for its own requeues.

Why not submitit's ``LocalExecutor`` for the local workers: it is made to test cluster code on one machine. Its
controller process kills a task one second after SIGINT (too soon to save a checkpoint) and stops jobs at a
time-out; a plain child process per unit needs neither, and runs the very :class:`UnitJob` a SLURM node runs.
Running the same ``study`` command again submits only the units that are not done, not running and not queued.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medens.errors import UsageError
from medens.layout import UNIT_JOB_NAME, UNIT_LOG_NAME
from medens.train.units import (  # re-exported: the names a study and its tests use, as before
    POLL_SECONDS,
    STATES,
    Unit,
    UnitJob,
    UnitsNotDone,
    _usr2_stops_training,  # noqa: F401
    locked,
    read_state,
    status_table,
    unit_done,
    unit_status,
    write_state,
)

__all__ = [
    "EXECUTORS",
    "STATES",
    "Unit",
    "UnitsNotDone",
    "ExecutorSpec",
    "UnitJob",
    "add_executor_arguments",
    "pop_executor_spec",
    "unit_done",
    "unit_status",
    "status_table",
    "run_units",
]

logger = logging.getLogger(__name__)

EXECUTORS = ("local", "slurm")


@dataclass
class ExecutorSpec:
    """How to run a study's units (the ``study`` flags of :func:`add_executor_arguments`)."""

    kind: str = "local"
    workers: int = 1
    slurm: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------------------------------------------------

_SPEC_KEYS = ("executor", "workers", "status", "partial", "slurm_partition", "slurm_time", "slurm_gpus_per_run",
              "slurm_cpus_per_run", "slurm_account", "slurm_qos", "slurm_extra")


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``study`` flags of where units run, ``--status`` and ``--partial``."""
    ex = parser.add_argument_group("where the units (fold-seed pairs) run")
    ex.add_argument("--executor", choices=EXECUTORS, default="local",
                    help="local: on this machine (default); slurm: one SLURM job per unit, through submitit")
    ex.add_argument("--workers", type=int, default=1, metavar="N",
                    help="local: units at once, each on its own GPU or its share of the cores (default 1: one "
                         "after another in this process)")
    ex.add_argument("--status", action="store_true",
                    help="print each unit's state (done, running, queued, failed, stopped, not started) and exit")
    ex.add_argument("--partial", action="store_true",
                    help="write study.json and report.md from the finished units alone, marked partial, and exit")
    sl = parser.add_argument_group("slurm (with --executor slurm)")
    sl.add_argument("--slurm-partition", metavar="NAME", help="partition of every job")
    sl.add_argument("--slurm-time", type=int, default=24 * 60, metavar="MIN",
                    help="time limit of a job in minutes (default 1440); a unit at the limit checkpoints and is "
                         "requeued")
    sl.add_argument("--slurm-gpus-per-run", type=int, default=1, metavar="N", help="GPUs of a job (default 1)")
    sl.add_argument("--slurm-cpus-per-run", type=int, default=8, metavar="N", help="CPUs of a job (default 8)")
    sl.add_argument("--slurm-account", metavar="NAME", help="account to charge")
    sl.add_argument("--slurm-qos", metavar="NAME", help="quality of service")
    sl.add_argument("--slurm-extra", action="append", metavar="KEY=VALUE",
                    help="any other sbatch parameter, repeatable (e.g. constraint=a100, mem=64G, exclusive=true)")


def pop_executor_spec(options: dict[str, Any]) -> tuple[ExecutorSpec, bool, bool]:
    """Take the executor flags out of the study's options: ``(spec, --status, --partial)``.

    Raises:
        UsageError: ``--workers`` below 1, a SLURM count below 0, an ill-formed ``--slurm-extra``, or
            ``--workers`` with the slurm executor.
    """
    values = {key: options.pop(key, None) for key in _SPEC_KEYS}
    kind = values["executor"] or "local"
    workers = 1 if values["workers"] is None else int(values["workers"])
    if workers < 1:
        raise UsageError(f"workers: expected at least 1 unit at once, received {workers}")
    if kind == "slurm" and workers != 1:
        raise UsageError(f"workers: only for --executor local (SLURM runs every unit as its own job), "
                         f"received --workers {workers} with --executor slurm")
    slurm: dict[str, Any] = {}
    if kind == "slurm":
        for key in ("slurm_time", "slurm_gpus_per_run", "slurm_cpus_per_run"):
            if values[key] is not None and int(values[key]) < (1 if key == "slurm_time" else 0):
                raise UsageError(f"{key.replace('_', '-')}: expected a positive count, received {values[key]}")
        extra: dict[str, Any] = {}
        for item in values["slurm_extra"] or []:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise UsageError(f"slurm-extra: expected KEY=VALUE, received {item!r}")
            extra[key.strip().replace("-", "_")] = True if value.strip().lower() == "true" else value.strip()
        slurm = {"partition": values["slurm_partition"], "time": values["slurm_time"] or 24 * 60,
                 "gpus_per_node": values["slurm_gpus_per_run"] if values["slurm_gpus_per_run"] is not None else 1,
                 "cpus_per_task": values["slurm_cpus_per_run"] or 8, "account": values["slurm_account"],
                 "qos": values["slurm_qos"], "additional_parameters": extra}
    return ExecutorSpec(kind, workers, slurm), bool(values["status"]), bool(values["partial"])


# ---------------------------------------------------------------------------------------------------------------
# Running many
# ---------------------------------------------------------------------------------------------------------------


def run_units(options: Mapping[str, Any], units: Sequence[Unit], variants: Sequence[Any], folds: int,
              spec: ExecutorSpec) -> list[Unit]:
    """Run every unit not done (and not running or queued elsewhere) with ``spec``; returns those still not done.

    Raises:
        medens.engine.TrainingInterrupted: a unit run in this process was stopped.
        UsageError: the slurm executor without submitit or ``sbatch``.
    """
    from medens.train.ensemble import options_from_flags

    out = Path(options["out"])
    ensemble = options_from_flags(options)  # a unit evaluated with other ensemble options is redone (its ensembles)
    if spec.kind == "slurm":
        from medens.train.slurm import run_slurm

        run_slurm(options, units, variants, folds, spec.slurm, ensemble)
    elif spec.workers == 1:
        for unit in units:
            if unit_done(out, unit, variants, ensemble):
                continue
            UnitJob(dict(options), list(variants), unit, folds)()
    else:
        _run_local_workers(options, units, variants, folds, spec.workers, ensemble)
    return [u for u in units if not unit_done(out, u, variants, ensemble)]


def _shares(workers: int) -> tuple[list[str | None], list[list[int] | None]]:
    """Each worker slot's GPU (``CUDA_VISIBLE_DEVICES``) and cores."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus:
        if workers > gpus:
            logger.warning("workers: %d units at once share %d GPUs", workers, gpus)
        return [str(i % gpus) for i in range(workers)], [None] * workers
    cores = sorted(os.sched_getaffinity(0))
    if workers > len(cores):
        logger.warning("workers: %d units at once share %d cores", workers, len(cores))
    per = max(1, len(cores) // workers)
    shares = [cores[(i * per) % len(cores):][:per] or cores[:per] for i in range(workers)]
    return [None] * workers, shares


def _run_local_workers(options: Mapping[str, Any], units: Sequence[Unit], variants: Sequence[Any], folds: int,
                       workers: int, ensemble: Any = None) -> None:
    """Up to ``workers`` units at once, each a child process (``python -m medens.train.executors JOB.pkl``).

    The children run in sessions of their own, so a signal to this command's process group (Ctrl-C, ``timeout``)
    reaches them once, forwarded as SIGTERM: each saves a checkpoint of its step and stops.
    """
    from medens.engine.signals import GracefulStop
    from medens.engine.trainer import TrainingInterrupted

    out = Path(options["out"])
    gpus, shares = _shares(workers)
    pending = [u for u in units if not unit_done(out, u, variants, ensemble)]
    running: dict[int, tuple[Unit, subprocess.Popen, Any]] = {}
    failed: list[str] = []
    forwarded = False
    with GracefulStop() as stop:
        while (pending and not stop.requested) or running:
            for slot in range(workers):
                if slot in running or not pending or stop.requested:
                    continue
                unit = pending.pop(0)
                folder = unit.folder(out)
                if locked(folder):
                    logger.warning("%s: already running in another process; not started twice", unit)
                    continue
                folder.mkdir(parents=True, exist_ok=True)
                log = folder / UNIT_LOG_NAME
                job = UnitJob(dict(options), list(variants), unit, folds, cpus=shares[slot], log=str(log))
                (folder / UNIT_JOB_NAME).write_bytes(pickle.dumps(job))
                env = {**os.environ}
                if gpus[slot] is not None:
                    env["CUDA_VISIBLE_DEVICES"] = gpus[slot]
                if shares[slot] is not None:
                    env["OMP_NUM_THREADS"] = str(len(shares[slot]))
                handle = open(log, "a")  # noqa: SIM115 - closed when the unit ends
                child = subprocess.Popen([sys.executable, "-m", "medens.train.executors",
                                          str(folder / UNIT_JOB_NAME)], stdout=handle,
                                         stderr=subprocess.STDOUT, env=env, start_new_session=True)
                logger.info("%s: started (pid %d, %s), log %s", unit, child.pid,
                            f"GPU {gpus[slot]}" if gpus[slot] is not None else f"cores {shares[slot]}", log)
                running[slot] = (unit, child, handle)
            time.sleep(POLL_SECONDS / 4)
            if stop.requested and not forwarded:
                forwarded = True  # once: a second signal would abort the units without their checkpoints
                for _, child, _ in running.values():
                    with contextlib.suppress(OSError):
                        child.send_signal(signal.SIGTERM)  # the units checkpoint their step and stop
            for slot, (unit, child, handle) in list(running.items()):
                if child.poll() is None:
                    continue
                handle.close()
                del running[slot]
                state, record = unit_status(out, unit, variants)
                if state == "done":
                    logger.info("%s: done", unit)
                elif not stop.requested:
                    if read_state(unit.folder(out)).get("state") == "running":  # killed before it could say so
                        write_state(unit.folder(out), state="failed",
                                    error=f"its process ended with exit code {child.returncode}")
                    failed.append(f"{unit} ({record.get('error') or f'exit code {child.returncode}'}; "
                                  f"log {unit.folder(out) / UNIT_LOG_NAME})")
        if stop.requested:
            raise TrainingInterrupted(out, stop.signal_name or "SIGTERM")
    if failed:
        raise UnitsNotDone("units failed: " + "; ".join(failed) + "; see study --status")


def _main(argv: Sequence[str]) -> int:
    """``python -m medens.train.executors JOB.pkl``: run one pickled :class:`UnitJob` (a local worker)."""
    from medens.cli import run_command

    path = Path(argv[0])
    job: UnitJob = pickle.loads(path.read_bytes())
    return run_command(f"study unit ({job.unit})", lambda: 0 if job() in ("done", "running") else 1,
                       stopped_hint="Run the same study command again to continue.")


if __name__ == "__main__":  # pragma: no cover - a local worker process
    sys.exit(_main(sys.argv[1:]))
