"""``study --executor local --workers N`` and ``--executor slurm``: units at once, killed units, status, requeue.

The SLURM test starts a one-node cluster of its own (munge and Debian's slurm-wlm, installed by ``.ci/run``; as
root); where it cannot start, the test is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from medens.train.__main__ import main as train_main
from tests._installed import installed

#: A 2-fold study at the smoke preset: two units, each a pre-training, two members and an ensemble.
ARGV = ["study", "--preset", "smoke", "--folds", "2", "--seeds", "1", "--dataset-option", "num_images=36",
        "--bootstrap", "20", "--pretrain-epochs", "4"]
UNITS = [(0, 0), (1, 0)]


def _state(out: Path, fold: int) -> dict:
    try:
        return json.loads((out / f"fold-{fold}" / "seed-0" / "unit.json").read_text())
    except (OSError, ValueError):
        return {}


def _study(*args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(**installed("-m", "medens.train", *ARGV, *args, OMP_NUM_THREADS="1", **env),
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _runs(out: Path) -> list[dict]:
    return sorted(json.loads((out / "study.json").read_text())["runs"], key=lambda r: (r["fold"], r["model"]))


@pytest.fixture(scope="module")
def sequential(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The study run as before: one unit after another, in one process (the reference of both executors)."""
    out = tmp_path_factory.mktemp("sequential") / "study"
    study = _study("--out", str(out))
    _, err = study.communicate(timeout=300)
    assert study.returncode == 0, err[-3000:]
    return out


@pytest.mark.slow
def test_two_local_workers_match_the_sequential_study_and_rerun_only_a_killed_unit(tmp_path: Path, capsys,
                                                                                  sequential: Path) -> None:
    parallel = tmp_path / "parallel"
    study = _study("--workers", "2", "--out", str(parallel))
    # Both units hold their lock at the same time, each in its own process.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and study.poll() is None:
        states = [_state(parallel, fold) for fold, _ in UNITS]
        if all(s.get("state") == "running" for s in states):
            break
        time.sleep(0.05)
    assert all(s.get("state") == "running" for s in states), states
    assert states[0]["pid"] != states[1]["pid"]
    # Kill fold 1's unit outright once its pre-training is under way.
    pretrain = parallel / "fold-1" / "seed-0" / "pretrain"
    while time.monotonic() < deadline and not (pretrain / "train.log").exists():
        time.sleep(0.05)
    os.kill(states[1]["pid"], signal.SIGKILL)
    _, err = study.communicate(timeout=240)
    assert study.returncode == 1, err[-3000:]
    assert "fold 1, seed 0" in err and "Traceback" not in err
    first = [json.loads((parallel / f"fold-{f}" / "seed-0" / "unit.json").read_text()) for f, _ in UNITS]
    assert first[0]["state"] == "done" and first[0]["started"] < first[1]["updated"]  # they overlapped
    assert not (parallel / "study.json").exists()

    assert train_main([*ARGV, "--out", str(parallel), "--status"]) == 0
    status = capsys.readouterr().out
    lines = {line.split()[0]: line for line in status.splitlines() if line.split()[1:2] == ["0"]}  # fold, seed 0
    assert lines["0"].split()[2] == "done"
    assert lines["1"].split()[2] == "failed" and "unit.log" in lines["1"] and "exit code -9" in lines["1"]

    # The finished unit alone, marked partial.
    assert train_main([*ARGV, "--out", str(parallel), "--partial"]) == 0
    assert "partial study: 1 units not finished" in capsys.readouterr().out
    record = json.loads((parallel / "study.json").read_text())
    assert record["partial"] is True and record["missing_units"] == [{"fold": 1, "seed": 0}]
    assert {r["fold"] for r in record["runs"]} == {0}

    # The same command again: fold 0 is left alone, fold 1 runs again.
    kept = {p: p.stat().st_mtime_ns for p in (parallel / "fold-0").rglob("*") if p.is_file()}
    study = _study("--workers", "2", "--out", str(parallel))
    _, err = study.communicate(timeout=240)
    assert study.returncode == 0, err[-3000:]
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert _state(parallel, 1)["state"] == "done"
    assert "partial" not in json.loads((parallel / "study.json").read_text())

    # The same runs, with the same metrics, as the units run one after another in one process.
    assert _runs(parallel) == _runs(sequential)


def test_executor_flags_are_checked_before_anything_runs(tmp_path: Path, capsys) -> None:
    assert train_main(["study", "--out", str(tmp_path), "--workers", "0"]) == 2
    assert "workers: expected at least 1 unit at once, received 0" in capsys.readouterr().err
    assert train_main(["study", "--out", str(tmp_path), "--executor", "slurm", "--workers", "2"]) == 2
    assert "workers: only for --executor local" in capsys.readouterr().err
    assert train_main(["study", "--out", str(tmp_path), "--executor", "slurm", "--slurm-extra", "x"]) == 2
    assert "slurm-extra: expected KEY=VALUE, received 'x'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_submitits_warning_signal_stops_a_training_stage_like_sigterm() -> None:
    from medens.engine.signals import GracefulStop
    from medens.train.executors import _usr2_stops_training

    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda *a: calls.append("outside"))
    try:
        with _usr2_stops_training():
            os.kill(os.getpid(), signal.SIGUSR2)  # no stage is training: the handler before (submitit's) runs
            assert calls == ["outside"]
            with GracefulStop() as stop:
                os.kill(os.getpid(), signal.SIGUSR2)
                assert stop.requested and stop.signal_name == "SIGTERM"
            assert calls == ["outside"]
    finally:
        signal.signal(signal.SIGUSR2, previous)


# ---- SLURM -----------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cannot_start(reason: str) -> None:
    pytest.skip(f"no one-node SLURM cluster: {reason}")


@pytest.fixture(scope="module")
def slurm_cluster() -> Iterator[dict[str, str]]:
    """A one-node SLURM cluster (munged, slurmctld, slurmd) in a temporary folder; the environment to reach it."""
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel")
               if shutil.which(b) is None]
    if missing:
        _cannot_start(f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge; .ci/run does)")
    if os.geteuid() != 0:
        _cannot_start("the daemons need root")
    root = Path(tempfile.mkdtemp(prefix="medens-slurm-"))
    for sub in ("state", "spool", "munge"):
        (root / sub).mkdir()
    os.chmod(root / "munge", 0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o400)
    host = socket.gethostname().split(".")[0]
    sock = root / "munge" / "munge.socket"
    conf = root / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=medens-test", f"SlurmctldHost={host}", f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}", "AuthType=auth/munge", f"AuthInfo=socket={sock}", "CredType=cred/munge",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core", f"StateSaveLocation={root / 'state'}", f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}", f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}", f"SlurmdLogFile={root / 'slurmd.log'}", "SlurmUser=root",
        "SlurmdUser=root", "ReturnToService=2", "JobRequeue=1", "MpiDefault=none", "KillWait=10",
        "AccountingStorageType=accounting_storage/none", "JobAcctGatherType=jobacct_gather/none",
        "SchedulerType=sched/builtin", "MinJobAge=300",
        f"NodeName={host} CPUs={os.cpu_count()} State=UNKNOWN",
        f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP", ""]))
    env = {"SLURM_CONF": str(conf)}
    daemons: list[subprocess.Popen] = []
    try:
        munged = subprocess.run(["munged", f"--key-file={key}", f"--socket={sock}", "--force",
                                 f"--pid-file={root / 'munge' / 'munged.pid'}",
                                 f"--log-file={root / 'munge' / 'munged.log'}",
                                 f"--seed-file={root / 'munge' / 'munged.seed'}"],
                                capture_output=True, text=True, timeout=30)
        if munged.returncode != 0:
            _cannot_start(f"munged: {munged.stderr.strip()[-300:]}")
        full_env = {**os.environ, **env}
        for daemon in (["slurmctld", "-D", "-i"], ["slurmd", "-D", "-N", host]):
            daemons.append(subprocess.Popen([*daemon, "-f", str(conf)], env=full_env, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, start_new_session=True))
        deadline = time.monotonic() + 30
        state = ""
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=full_env, capture_output=True,
                                   text=True).stdout.strip()
            if state in ("idle", "mixed", "allocated"):
                break
            time.sleep(0.5)
        else:
            logs = "".join((root / f).read_text()[-400:] for f in ("slurmctld.log", "slurmd.log")
                           if (root / f).exists())
            _cannot_start(f"the node did not come up (state {state!r}): {logs}")
        yield env
    finally:
        for daemon in daemons:
            daemon.terminate()
        for daemon in daemons:
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()
        pid = root / "munge" / "munged.pid"
        if pid.exists():
            try:
                os.kill(int(pid.read_text().strip()), signal.SIGTERM)
            except (OSError, ValueError):
                pass
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_slurm_study_with_a_unit_stopped_by_scancel_and_requeued(tmp_path: Path, slurm_cluster,
                                                                  sequential: Path) -> None:
    out = tmp_path / "study"
    study = _study("--executor", "slurm", "--slurm-cpus-per-run", "1", "--slurm-gpus-per-run", "0",
                   "--slurm-time", "30", "--out", str(out), **slurm_cluster)
    # Once fold 0's pre-training has finished an epoch (and has more to go), SIGTERM its job as a cluster would.
    pretrain = out / "fold-0" / "seed-0" / "pretrain"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and study.poll() is None:
        if (pretrain / "log.csv").exists() and _state(out, 0).get("state") == "running":
            break
        time.sleep(0.05)
    job = _state(out, 0).get("job_id")
    assert job and study.poll() is None, study.stderr.read()[-3000:] if study.poll() is not None else job
    env = {**os.environ, **slurm_cluster}
    subprocess.run(["scancel", "--signal=TERM", job], env=env, check=True, timeout=30)
    # SLURM holds a requeued job back for a while before it may start again; let it start at once.
    while time.monotonic() < deadline and study.poll() is None and _state(out, 0).get("requeues") != 1:
        time.sleep(0.1)
    pending = ""
    while time.monotonic() < deadline and study.poll() is None and pending != "PENDING":
        pending = subprocess.run(["squeue", "-h", "-o", "%T", "-j", job], env=env, capture_output=True,
                                 text=True).stdout.strip()
        time.sleep(0.1)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env, timeout=30)
    _, err = study.communicate(timeout=300)
    assert study.returncode == 0, err[-3000:]

    record = json.loads((out / "study.json").read_text())
    assert sorted((r["fold"], r["seed"]) for r in record["runs"] if r["model"] == "ensemble") == UNITS
    first = _state(out, 0)
    assert first["state"] == "done" and first["job_id"] == job and first.get("requeues") == 1
    log = (pretrain / "train.log").read_text()
    assert "SIGTERM received" in log and "resuming" in log  # stopped at a step, then continued from it
    assert _state(out, 1)["state"] == "done"
    # A unit stopped and requeued ends where an uninterrupted one does.
    assert _runs(out) == _runs(sequential)
