"""Graceful stop on SIGTERM / SIGINT: finish the current optimiser step, save a checkpoint, then exit.

Inside :class:`GracefulStop` the first SIGTERM or SIGINT only sets :attr:`GracefulStop.requested`; the training
loop polls it after every optimiser step. A second SIGINT (Ctrl-C twice) stops at once with KeyboardInterrupt.
Outside the main thread, where Python cannot install handlers, nothing is installed.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

__all__ = ["GracefulStop"]

_logger = logging.getLogger(__name__)


class GracefulStop:
    """Context manager that turns SIGTERM/SIGINT into a stop request.

    Attributes:
        requested: True once a signal arrived.
        signal_name: the name of that signal (``"SIGTERM"``), or None.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        _logger.warning(
            "%s received: stopping after this step and saving a checkpoint (Ctrl-C again to abort)",
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
