"""Stop signals: the first asks for a stop, a second aborts; loader workers leave them to the main process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from medens.engine.loader import ResumableDistributedSampler, build_loader
from medens.engine.signals import GracefulStop, ignore_stop_signals


def test_a_second_sigint_aborts_at_once() -> None:
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_a_second_sigterm_ends_the_process_by_that_signal() -> None:
    code = (
        "import os, signal, time\n"
        "from medens.engine.signals import GracefulStop, ignore_stop_signals\n"
        "with GracefulStop() as stop:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    assert stop.requested\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(30)\n"
        "print('not aborted')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == -signal.SIGTERM, result.stderr
    assert "not aborted" not in result.stdout


class _Noise(torch.utils.data.Dataset):
    """Each item is a draw from the process's torch generator: what a random augmentation sees."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([float(index), float(torch.rand(()))])


def test_worker_randomness_follows_the_sample_not_the_worker() -> None:
    loader = build_loader(_Noise(), 4, seed=3, num_workers=2)
    full = torch.cat(list(loader))
    resumed = build_loader(_Noise(), 4, seed=3, num_workers=2)
    assert isinstance(resumed.sampler, ResumableDistributedSampler)
    resumed.sampler.skip(8)  # a run resumed after two batches
    assert torch.equal(torch.cat(list(resumed)), full[8:])


def _loader_worker(ready) -> None:
    ignore_stop_signals(0)
    ready.set()
    time.sleep(60)


def test_workers_leave_group_signals_to_the_main_process_but_obey_its_terminate() -> None:
    import multiprocessing

    class Handler(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, index: int) -> tuple[int, int]:
            blocked = signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, set())
            return int(signal.getsignal(signal.SIGINT) == signal.SIG_IGN), int(blocked)

    assert [tuple(int(x) for x in b) for b in build_loader(Handler(), 1, shuffle=False, num_workers=1)] == [
        (1, 1), (1, 1)]
    context = multiprocessing.get_context("fork")  # as a DataLoader starts its workers on Linux
    ready = context.Event()
    worker = context.Process(target=_loader_worker, args=(ready,), daemon=True)
    worker.start()
    try:
        assert ready.wait(timeout=30)
        subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)  # as a group signal: from elsewhere
        worker.join(timeout=1)
        assert worker.is_alive()
        worker.terminate()  # what the loader and multiprocessing do to a worker that does not stop
        worker.join(timeout=30)
        assert worker.exitcode == -signal.SIGTERM
    finally:
        if worker.is_alive():
            worker.kill()



def test_default_worker_count_follows_the_cores_this_process_may_use() -> None:
    from medens.engine.loader import MAX_DEFAULT_WORKERS, default_num_workers, resolve_num_workers

    cores = os.sched_getaffinity(0)
    assert default_num_workers() == min(MAX_DEFAULT_WORKERS, len(cores))
    try:
        os.sched_setaffinity(0, {min(cores)})
        assert default_num_workers() == resolve_num_workers(None) == 1
    finally:
        os.sched_setaffinity(0, cores)
    assert resolve_num_workers(7) == 7  # an explicit count is kept
    with pytest.raises(ValueError, match="num_workers: expected 0 or more"):
        resolve_num_workers(-1)
