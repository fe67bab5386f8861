"""Graceful stop on SIGTERM / SIGINT: finish the current optimiser step, save a checkpoint, then exit.

Inside :class:`GracefulStop` the first SIGTERM or SIGINT only sets :attr:`GracefulStop.requested`; the training
loop polls it after every optimiser step. A second signal stops at once: a second SIGINT (Ctrl-C twice) with
KeyboardInterrupt, a second SIGTERM with the default action (the process ends by that signal, exit 143).
Outside the main thread, where Python cannot install handlers, nothing is installed.

SLURM at a time limit, ``timeout``, container runtimes and Ctrl-C signal the whole process group, DataLoader workers
included. A worker killed by that signal would make the loader raise in the middle of the stop, so every loader
medens builds starts its workers with :func:`ignore_stop_signals`: the main process alone decides how to stop, and
the loader ends its workers itself (they also exit when the main process is gone).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Any

__all__ = ["GracefulStop", "STOP_SIGNALS", "ignore_stop_signals"]

_logger = logging.getLogger(__name__)

#: The signals that ask a run to stop and save (those a process group receives from SLURM, timeout, Ctrl-C).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A DataLoader ``worker_init_fn``: the worker leaves SIGTERM and SIGINT sent to its group to its main process.

    SIGINT is ignored. SIGTERM is still obeyed from the main process itself (the loader and ``multiprocessing``
    end a worker that does not stop with ``terminate()``, which is a SIGTERM): a thread of the worker waits for it
    with the signal blocked, and ends the worker when its main process sent it, ignoring it otherwise.
    """
    del worker_id
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):  # pragma: no cover - not Linux: ignore it (no terminate() then)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started later inherit the mask
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # (a forked worker inherits the main process's handler)

    def wait() -> None:
        while True:
            info = signal.sigwaitinfo({signal.SIGTERM})
            if info.si_pid == parent:  # terminate() by the main process: end as SIGTERM ends a process
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
                os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait, name="medens-sigterm", daemon=True).start()


class GracefulStop:
    """Context manager that turns SIGTERM/SIGINT into a stop request.

    Attributes:
        requested: True once a signal arrived.
        signal_name: the name of that signal (``"SIGTERM"``), or None.
    """

    SIGNALS = STOP_SIGNALS

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:
            return  # a forked loader worker before its worker_init_fn ran: the main process decides
        if self.requested:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)  # a second SIGTERM: end now, by that signal
            os.kill(os.getpid(), signum)
            return
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        _logger.warning(
            "%s received: stopping after this step and saving a checkpoint (a second signal aborts at once)",
            self.signal_name,
        )

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
