"""A study's unit (one fold-seed pair): its state on disk, its lock, and :class:`UnitJob`, which runs it anywhere.

:class:`UnitJob` runs one unit wherever it is called (in the study's process, a local worker process or a SLURM
node): it takes the unit's lock (``unit.lock``, an ``flock``: a unit never runs twice at once, and a killed unit's
lock goes with its process), records its state in ``unit.json`` (running, done, stopped, failed with the error)
and, on a SLURM node, turns a stop into a requeue. :func:`unit_status` reads that state back (asking ``squeue``
about a SLURM job) for ``study --status`` and for the executors of :mod:`medens.train.executors`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medens.layout import ENSEMBLE_DIR, METRICS_NAME, UNIT_LOCK_NAME, UNIT_STATE_NAME, study_run_folder

__all__ = [
    "STATES",
    "Unit",
    "UnitsNotDone",
    "UnitJob",
    "unit_done",
    "read_state",
    "write_state",
    "unit_lock",
    "unit_status",
    "status_table",
    "unit_options",
    "locked",
    "slurm_states",
]

logger = logging.getLogger(__name__)

#: Unit states, as ``study --status`` prints them.
STATES = ("done", "running", "queued", "failed", "stopped", "not started")
#: Seconds between two looks at the units while waiting for them.
POLL_SECONDS = 1.0
#: SLURM job states in which a job will still run (or runs).
_SLURM_ALIVE = frozenset({"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
                          "REQUEUE_FED", "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING"})


class UnitsNotDone(ValueError):
    """Some units failed or are not done, so the study cannot be summarised (``study --status`` says which)."""


@dataclass(frozen=True, order=True)
class Unit:
    """One fold-seed pair of a study."""

    fold: int
    seed: int

    def folder(self, out: str | os.PathLike) -> Path:
        return study_run_folder(out, self.fold, self.seed)

    def __str__(self) -> str:
        return f"fold {self.fold}, seed {self.seed}"


# ---------------------------------------------------------------------------------------------------------------
# A unit's state on disk
# ---------------------------------------------------------------------------------------------------------------


def unit_done(out: str | os.PathLike, unit: Unit, variants: Sequence[Any], ensemble: Any = None) -> bool:
    """True when every variant's ensemble of ``unit`` is finished (what ``study.json`` reads).

    With ``ensemble`` (:class:`~medens.evaluate.ensemble.EnsembleOptions`), each must also have been evaluated with
    those options (:meth:`~medens.evaluate.ensemble.EnsembleOptions.recorded_in`): a study run again with, say,
    ``--tta`` or new lesion masks redoes its ensembles (and only them) instead of reporting the old ones.
    """
    root = unit.folder(out)
    for variant in variants:
        path = root / variant.folder(ENSEMBLE_DIR) / METRICS_NAME
        if not path.is_file():
            return False
        if ensemble is not None:
            try:
                recorded = json.loads(path.read_text("utf-8"))
            except (OSError, ValueError):
                return False
            if not ensemble.recorded_in(recorded):
                return False
    return True


def read_state(folder: Path) -> dict[str, Any]:
    """The unit's ``unit.json`` (empty when it has none or it cannot be read)."""
    try:
        return json.loads((folder / UNIT_STATE_NAME).read_text("utf-8"))
    except (OSError, ValueError):
        return {}


def write_state(folder: Path, **fields: Any) -> None:
    """Update the unit's ``unit.json`` with ``fields`` (atomically)."""
    from medens.io import atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    state = {**read_state(folder), **fields, "updated": time.time()}
    atomic_write_text(folder / UNIT_STATE_NAME, json.dumps(state, indent=1) + "\n")


@contextlib.contextmanager
def unit_lock(folder: Path) -> Iterator[bool]:
    """Hold the unit's lock for the block; yields False (and holds nothing) when another process holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / UNIT_LOCK_NAME, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def locked(folder: Path) -> bool:
    if not (folder / UNIT_LOCK_NAME).is_file():
        return False
    with unit_lock(folder) as mine:
        return not mine


def slurm_states(job_ids: Sequence[str]) -> dict[str, str]:
    """``{job id: state}`` of the jobs SLURM still knows (``squeue``); empty when squeue is not there."""
    if not job_ids:
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(job_ids)], capture_output=True,
                             text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return dict(line.split()[:2] for line in out.splitlines() if len(line.split()) >= 2)


def unit_status(out: str | os.PathLike, unit: Unit, variants: Sequence[Any],
                slurm_states: Mapping[str, str] | None = None, ensemble: Any = None) -> tuple[str, dict[str, Any]]:
    """``(state, unit.json)``: one of :data:`STATES`.

    done: every ensemble is finished (with the ``ensemble`` options, when given: :func:`unit_done`); running: its
    lock is held; queued: its SLURM job waits; failed: its last run
    failed (or its job ended without finishing it); stopped: stopped by a signal, resumable; else not started.
    """
    folder = unit.folder(out)
    record = read_state(folder)
    if unit_done(out, unit, variants, ensemble):
        return "done", record
    if locked(folder):
        return "running", record
    job = record.get("job_id")
    if record.get("executor") == "slurm" and job:
        states = slurm_states if slurm_states is not None else slurm_states([job])
        alive = states.get(str(job))
        if alive in _SLURM_ALIVE:
            return ("running" if alive == "RUNNING" else "queued"), record
        if record.get("state") in ("queued", "running", "requeued"):
            return "failed", {**record, "error": record.get("error") or f"SLURM job {job} ended without finishing "
                              "the unit"}
    state = record.get("state")
    if state == "failed":
        return "failed", record
    if state in ("running", "stopped", "requeued"):  # its process is gone: killed, or stopped by a signal
        return ("failed" if state == "running" else "stopped"), (
            {**record, "error": record.get("error") or "its process ended without finishing the unit"}
            if state == "running" else record)
    return "not started", record


def status_table(out: str | os.PathLike, units: Sequence[Unit], variants: Sequence[Any]) -> str:
    """``study --status``: each unit's state, and a failing unit's log and last error line."""
    from medens.io import text_table

    records = [read_state(u.folder(out)) for u in units]
    jobs = [str(r["job_id"]) for r in records if r.get("executor") == "slurm" and r.get("job_id")]
    states = slurm_states(jobs)
    rows, counts = [], dict.fromkeys(STATES, 0)
    for unit in units:
        state, record = unit_status(out, unit, variants, states)
        counts[state] += 1
        detail = ""
        if record.get("job_id"):
            detail = f"job {record['job_id']}"
        if state in ("failed", "stopped"):
            detail = "; ".join(x for x in (detail, f"log {record.get('log') or '-'}",
                                           f"error: {record.get('error') or '-'}") if x)
        rows.append([str(unit.fold), str(unit.seed), state, detail])
    table = text_table(["Fold", "Seed", "State", "Detail"], rows, align="rrll")
    return table + "\n" + ", ".join(f"{n} {s}" for s, n in counts.items() if n)


# ---------------------------------------------------------------------------------------------------------------
# Running one unit
# ---------------------------------------------------------------------------------------------------------------


def unit_options(options: Mapping[str, Any], unit: Unit, folds: int) -> dict[str, Any]:
    """The pipeline options of ``unit``: its folder, fold and seed."""
    return {**options, "out": str(unit.folder(options["out"])), "folds": int(folds), "fold": unit.fold,
            "seed": int(unit.seed)}


@contextlib.contextmanager
def _usr2_stops_training() -> Iterator[None]:
    """SIGUSR2 (submitit's warning before the time limit) stops a training stage as SIGTERM does."""
    from medens.engine.signals import GracefulStop

    if not hasattr(signal, "SIGUSR2"):  # pragma: no cover - not POSIX
        yield
        return
    previous = signal.getsignal(signal.SIGUSR2)

    def forward(signum: int, frame: Any) -> None:
        if isinstance(getattr(signal.getsignal(signal.SIGTERM), "__self__", None), GracefulStop):
            os.kill(os.getpid(), signal.SIGTERM)  # a stage is training: checkpoint the step, then requeue
        elif callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGUSR2, forward)
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR2, previous)


def _slurm_job_id() -> str | None:
    """The SLURM job this process runs in (through submitit), or None."""
    if "SLURM_JOB_ID" not in os.environ:
        return None
    try:
        import submitit

        return str(submitit.JobEnvironment().job_id)
    except (ImportError, RuntimeError):
        return os.environ["SLURM_JOB_ID"]


@dataclass
class UnitJob:
    """One unit, as a picklable callable (for submitit and for a local worker process).

    Args:
        options: the pipeline options of the study (``out`` is the study's folder).
        variants: the pre-training variants.
        unit: the fold-seed pair.
        folds: K of the K-fold.
        cpus: the cores to run on (a local worker's share), or None.
        log: where this unit's output goes (recorded for ``--status``), or None.
    """

    options: dict[str, Any]
    variants: list[Any]
    unit: Unit
    folds: int
    cpus: list[int] | None = None
    log: str | None = None

    def __call__(self) -> str:
        """Run the unit; ``"done"``, or ``"running"`` when another process holds it.

        Raises:
            medens.engine.TrainingInterrupted: stopped by a signal (on a SLURM node: after requeueing the job).
            Exception: whatever the pipeline raised (recorded in ``unit.json`` first).
        """
        from medens.engine import TrainingInterrupted
        from medens.train.pipeline import run_variants

        self._pin()
        folder = self.unit.folder(self.options["out"])
        job = _slurm_job_id()
        with unit_lock(folder) as mine:
            if not mine:
                logger.warning("%s: already running in another process; not started twice", self.unit)
                return "running"
            log = self.log
            write_state(folder, state="running", pid=os.getpid(), host=socket.gethostname(), started=time.time(),
                        error=None, **({"job_id": job, "executor": "slurm"} if job else {}),
                        **({"log": log} if log else {}))
            try:
                with _usr2_stops_training():
                    run_variants(unit_options(self.options, self.unit, self.folds), self.variants)
            except TrainingInterrupted as err:
                write_state(folder, state="stopped", error=str(err), finished=time.time())
                if job is not None:
                    self._requeue(folder, job)
                raise
            except BaseException as err:
                last = (str(err).strip().splitlines() or [""])[-1]
                write_state(folder, state="failed", error=f"{type(err).__name__}: {last}", finished=time.time())
                raise
            write_state(folder, state="done", finished=time.time())
        return "done"

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's requeue protocol: the same job again (it resumes from its stages' checkpoints)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)

    def _pin(self) -> None:
        if not self.cpus:
            return
        import torch

        os.sched_setaffinity(0, self.cpus)
        torch.set_num_threads(len(self.cpus))

    @staticmethod
    def _requeue(folder: Path, job: str) -> None:
        logger.warning("requeueing SLURM job %s: it continues from the checkpoint", job)
        write_state(folder, state="requeued", requeues=int(read_state(folder).get("requeues") or 0) + 1)
        subprocess.run(["scontrol", "requeue", job], check=True, timeout=60)
