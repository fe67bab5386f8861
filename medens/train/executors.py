"""Where a study's units run: in this process, several at once on this machine, or on a SLURM cluster.

A **unit** is one fold-seed pair: its pre-training variants, its members, its baseline and its ensembles, run by
:func:`medens.train.pipeline.run_variants` into ``<out>/fold-<k>/seed-<s>/`` (so the work the variants share is
done once, and a unit resumes as a pipeline does). :class:`UnitJob` runs one unit wherever it is called: it takes
the unit's lock (``unit.lock``, an ``flock``: a unit never runs twice at once, and a killed unit's lock goes with
its process), records its state in ``unit.json`` (running, done, stopped, failed with the error) and, on a SLURM
node, turns a stop into a requeue.

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
import fcntl
import json
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medens.errors import UsageError
from medens.layout import (
    ENSEMBLE_DIR,
    JOBS_DIR,
    METRICS_NAME,
    UNIT_JOB_NAME,
    UNIT_LOCK_NAME,
    UNIT_LOG_NAME,
    UNIT_STATE_NAME,
    study_run_folder,
)

__all__ = [
    "EXECUTORS",
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
# A unit's state on disk
# ---------------------------------------------------------------------------------------------------------------


def unit_done(out: str | os.PathLike, unit: Unit, variants: Sequence[Any]) -> bool:
    """True when every variant's ensemble of ``unit`` is finished (what ``study.json`` reads)."""
    root = unit.folder(out)
    return all((root / v.folder(ENSEMBLE_DIR) / METRICS_NAME).is_file() for v in variants)


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


def _locked(folder: Path) -> bool:
    if not (folder / UNIT_LOCK_NAME).is_file():
        return False
    with unit_lock(folder) as mine:
        return not mine


def _slurm_states(job_ids: Sequence[str]) -> dict[str, str]:
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
                slurm_states: Mapping[str, str] | None = None) -> tuple[str, dict[str, Any]]:
    """``(state, unit.json)``: one of :data:`STATES`.

    done: every ensemble is finished; running: its lock is held; queued: its SLURM job waits; failed: its last run
    failed (or its job ended without finishing it); stopped: stopped by a signal, resumable; else not started.
    """
    folder = unit.folder(out)
    record = read_state(folder)
    if unit_done(out, unit, variants):
        return "done", record
    if _locked(folder):
        return "running", record
    job = record.get("job_id")
    if record.get("executor") == "slurm" and job:
        states = slurm_states if slurm_states is not None else _slurm_states([job])
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
    states = _slurm_states(jobs)
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
    out = Path(options["out"])
    if spec.kind == "slurm":
        _run_slurm(options, units, variants, folds, spec)
    elif spec.workers == 1:
        for unit in units:
            if unit_done(out, unit, variants):
                continue
            UnitJob(dict(options), list(variants), unit, folds)()
    else:
        _run_local_workers(options, units, variants, folds, spec.workers)
    return [u for u in units if not unit_done(out, u, variants)]


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
                       workers: int) -> None:
    """Up to ``workers`` units at once, each a child process (``python -m medens.train.executors JOB.pkl``).

    The children run in sessions of their own, so a signal to this command's process group (Ctrl-C, ``timeout``)
    reaches them once, forwarded as SIGTERM: each saves a checkpoint of its step and stops.
    """
    from medens.engine.signals import GracefulStop
    from medens.engine.trainer import TrainingInterrupted

    out = Path(options["out"])
    gpus, shares = _shares(workers)
    pending = [u for u in units if not unit_done(out, u, variants)]
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
                if _locked(folder):
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


def _run_slurm(options: Mapping[str, Any], units: Sequence[Unit], variants: Sequence[Any], folds: int,
               spec: ExecutorSpec) -> None:
    """Submit one job per unit not done, running or queued; wait until no unit will run any more."""
    try:
        import submitit
    except ImportError:  # pragma: no cover - a dependency
        raise UsageError("executor: slurm needs submitit (pip install submitit)") from None
    out = Path(options["out"])
    executor = submitit.SlurmExecutor(folder=out / JOBS_DIR / "%j", max_num_timeout=1000)
    params = {k: v for k, v in spec.slurm.items() if v is not None and k != "additional_parameters"}
    params["gpus_per_node"] = params.get("gpus_per_node") or None
    params = {k: v for k, v in params.items() if v is not None}
    extra = {"requeue": True, **spec.slurm.get("additional_parameters", {})}
    executor.update_parameters(**params, additional_parameters=extra, stderr_to_stdout=True)
    records = {u: read_state(u.folder(out)) for u in units}
    states = _slurm_states([str(r["job_id"]) for r in records.values() if r.get("executor") == "slurm"
                            and r.get("job_id")])
    for unit in units:
        state, _ = unit_status(out, unit, variants, states)
        if state in ("done", "running", "queued"):
            logger.info("%s: %s, not submitted", unit, state)
            continue
        try:
            job = executor.submit(UnitJob(dict(options), list(variants), unit, folds))
        except (subprocess.CalledProcessError, FileNotFoundError, OSError) as err:
            raise UsageError(f"executor: sbatch could not submit {unit}: {err}") from None
        write_state(unit.folder(out), state="queued", executor="slurm", job_id=str(job.job_id),
                    log=str(job.paths.stdout), error=None)
        logger.info("%s: submitted as SLURM job %s (log %s)", unit, job.job_id, job.paths.stdout)
    _wait(out, units, variants)


def _wait(out: Path, units: Sequence[Unit], variants: Sequence[Any]) -> None:
    """Wait until every unit is done or will not run any more (failed, stopped); show the count done."""
    from tqdm.auto import tqdm

    with tqdm(total=len(units), desc="study units", unit="unit") as bar:
        while True:
            records = [read_state(u.folder(out)) for u in units]
            states = _slurm_states([str(r["job_id"]) for r in records if r.get("job_id")])
            now = [unit_status(out, u, variants, states)[0] for u in units]
            bar.n = now.count("done")
            bar.set_postfix_str(", ".join(f"{now.count(s)} {s}" for s in ("running", "queued") if now.count(s)))
            bar.refresh()
            if not any(s in ("running", "queued") for s in now):
                return
            time.sleep(POLL_SECONDS * 2)


def _main(argv: Sequence[str]) -> int:
    """``python -m medens.train.executors JOB.pkl``: run one pickled :class:`UnitJob` (a local worker)."""
    from medens.cli import run_command

    path = Path(argv[0])
    job: UnitJob = pickle.loads(path.read_bytes())
    return run_command(f"study unit ({job.unit})", lambda: 0 if job() in ("done", "running") else 1,
                       stopped_hint="Run the same study command again to continue.")


if __name__ == "__main__":  # pragma: no cover - a local worker process
    sys.exit(_main(sys.argv[1:]))
