"""``study --executor slurm``: one SLURM job per unit, submitted with submitit, followed until none will run.

submitit (as MAE's and ConvNeXt-V2's ``submitit_*.py`` do) writes the ``sbatch`` script, pickles the
:class:`~medens.train.units.UnitJob`, and runs it on the node; the command then waits for the units, which it
follows through their ``unit.json`` and ``squeue``. Running the same ``study`` command again submits only the
units that are not done, not running and not queued.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medens.errors import UsageError
from medens.layout import JOBS_DIR
from medens.train.units import POLL_SECONDS, Unit, UnitJob, read_state, slurm_states, unit_status, write_state

__all__ = ["run_slurm"]

logger = logging.getLogger(__name__)


def run_slurm(options: Mapping[str, Any], units: Sequence[Unit], variants: Sequence[Any], folds: int,
              slurm: Mapping[str, Any], ensemble: Any = None) -> None:
    """Submit one job per unit not done, running or queued; wait until no unit will run any more.

    Args:
        slurm: the jobs' parameters (:attr:`medens.train.executors.ExecutorSpec.slurm`).
        ensemble: the study's :class:`~medens.evaluate.ensemble.EnsembleOptions`; a unit whose ensembles were
            evaluated with others is submitted again (:func:`medens.train.units.unit_done`).
    """
    try:
        import submitit
    except ImportError:  # pragma: no cover - a dependency
        raise UsageError("executor: slurm needs submitit (pip install submitit)") from None
    out = Path(options["out"])
    executor = submitit.SlurmExecutor(folder=out / JOBS_DIR / "%j", max_num_timeout=1000)
    params = {k: v for k, v in slurm.items() if v is not None and k != "additional_parameters"}
    params["gpus_per_node"] = params.get("gpus_per_node") or None
    params = {k: v for k, v in params.items() if v is not None}
    extra = {"requeue": True, **slurm.get("additional_parameters", {})}
    executor.update_parameters(**params, additional_parameters=extra, stderr_to_stdout=True)
    records = {u: read_state(u.folder(out)) for u in units}
    states = slurm_states([str(r["job_id"]) for r in records.values() if r.get("executor") == "slurm"
                            and r.get("job_id")])
    for unit in units:
        state, _ = unit_status(out, unit, variants, states, ensemble)
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
    _wait(out, units, variants, ensemble)


def _wait(out: Path, units: Sequence[Unit], variants: Sequence[Any], ensemble: Any = None) -> None:
    """Wait until every unit is done or will not run any more (failed, stopped); show the count done."""
    from tqdm.auto import tqdm

    with tqdm(total=len(units), desc="study units", unit="unit") as bar:
        while True:
            records = [read_state(u.folder(out)) for u in units]
            states = slurm_states([str(r["job_id"]) for r in records if r.get("job_id")])
            now = [unit_status(out, u, variants, states, ensemble)[0] for u in units]
            bar.n = now.count("done")
            bar.set_postfix_str(", ".join(f"{now.count(s)} {s}" for s in ("running", "queued") if now.count(s)))
            bar.refresh()
            if not any(s in ("running", "queued") for s in now):
                return
            time.sleep(POLL_SECONDS * 2)
