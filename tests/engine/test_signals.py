"""Stop signals: the first asks for a stop, a second aborts; loader workers leave them to the main process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

from medens.engine.loader import ResumableDistributedSampler, build_loader
from medens.engine.signals import GracefulStop


def test_a_second_sigint_aborts_at_once() -> None:
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_a_second_sigterm_ends_the_process_by_that_signal() -> None:
    code = (
        "import os, signal, time\n"
        "from medens.engine.signals import GracefulStop\n"
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


def test_workers_ignore_stop_signals() -> None:
    class Handler(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, index: int) -> int:
            return int(signal.getsignal(signal.SIGTERM) == signal.SIG_IGN and
                       signal.getsignal(signal.SIGINT) == signal.SIG_IGN)

    loader = build_loader(Handler(), 1, shuffle=False, num_workers=1)
    assert [int(b) for b in loader] == [1, 1]


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
