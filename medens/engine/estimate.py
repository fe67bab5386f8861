"""How long a stage, and the pipeline around it, will take on this machine, said before the long loop runs.

:class:`StepTimer` times the first optimiser steps of a run (the very first one apart: it pays for warm-up, lazy
initialisation and the loader's workers starting) and, after :data:`TIMED_STEPS` of them, gives the time per step;
:func:`estimate_message` turns it into the line the trainer logs, e.g. "estimated 21 h 40 min on this machine (cpu)
for this stage ...". The stage's estimate is its remaining steps times the measured step; the pipeline's (or a study
unit's) adds the training stages still planned after this one (:func:`planned_stages`), taking an epoch of theirs to
cost what an epoch of this stage costs (the stages of one pipeline share images, architecture and size).
Validation and evaluation passes are not counted. On a CPU, an estimate over :data:`CPU_HINT_SECONDS` also says
that the ``paper`` preset is made for a GPU and that ``--preset small`` is sized for a CPU; the run goes on.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CPU_HINT_SECONDS",
    "TIMED_STEPS",
    "PlannedStage",
    "StepTimer",
    "estimate_message",
    "format_duration",
    "later_epochs",
    "planned_stages",
]

#: Optimiser steps timed (after the first) before the estimate is given.
TIMED_STEPS = 3
#: On a CPU, an estimate longer than this (seconds) adds the hint that ``--preset small`` is sized for a CPU.
CPU_HINT_SECONDS = 3600.0


def format_duration(seconds: float) -> str:
    """A duration as people say it: ``"45 s"``, ``"3 min 5 s"``, ``"21 h 40 min"``, ``"2 d 3 h"``."""
    if not math.isfinite(seconds):
        return "unknown"
    total = max(0, round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


@dataclass(frozen=True)
class PlannedStage:
    """A training stage a pipeline will run: its folder and its epochs."""

    folder: Path
    epochs: int


@dataclass(frozen=True)
class _Plan:
    stages: tuple[PlannedStage, ...]
    label: str


_PLAN: contextvars.ContextVar[_Plan | None] = contextvars.ContextVar("medens_planned_stages", default=None)


@contextlib.contextmanager
def planned_stages(stages: Sequence[PlannedStage], label: str = "the whole pipeline") -> Iterator[None]:
    """Within the block, a stage's estimate also covers the ``stages`` planned after it, called ``label``."""
    token = _PLAN.set(_Plan(tuple(stages), label))
    try:
        yield
    finally:
        _PLAN.reset(token)


def later_epochs(folder: str | Path) -> tuple[int, int, str] | None:
    """``(epochs of the planned stages after the one in folder, how many such stages, the plan's label)``.

    None when no plan is set or ``folder`` is not in it (a stage run on its own).
    """
    plan = _PLAN.get()
    if plan is None:
        return None
    folder = Path(folder).resolve()
    folders = [Path(stage.folder).resolve() for stage in plan.stages]
    if folder not in folders:
        return None
    after = plan.stages[folders.index(folder) + 1 :]
    return sum(stage.epochs for stage in after), len(after), plan.label


class StepTimer:
    """Times optimiser steps: the first is left out, the next ``timed`` give the seconds per step.

    Args:
        timed: steps to time after the first.
        clock: the clock (seconds), for tests.
    """

    def __init__(self, timed: int = TIMED_STEPS, clock: Callable[[], float] = time.perf_counter) -> None:
        self.timed = timed
        self._clock = clock
        self._start: float | None = None
        self._count = 0
        self.seconds_per_step: float | None = None
        self._last = clock()

    def step(self, steps_left: int) -> bool:
        """Record the end of one optimiser step; True once, when the estimate is first ready.

        The estimate is ready after ``timed`` steps past the first, or earlier when the run has no more steps to
        time (``steps_left`` is 0): then the steps timed so far, the first included when it is the only one.
        """
        now = self._clock()
        if self.seconds_per_step is not None:
            self._last = now
            return False
        self._count += 1
        if self._count == 1:
            first = now - self._last
            self._start = now
            if steps_left == 0:
                self.seconds_per_step = first
        elif self._count - 1 >= self.timed or steps_left == 0:
            self.seconds_per_step = (now - self._start) / (self._count - 1)
        self._last = now
        return self.seconds_per_step is not None


def estimate_message(
    seconds_per_step: float,
    steps_left: int,
    steps_per_epoch: int,
    device_type: str,
    later: tuple[int, int, str] | None = None,
) -> tuple[str, bool]:
    """The estimate line and whether it carries the CPU hint.

    Args:
        seconds_per_step: measured by :class:`StepTimer`.
        steps_left: optimiser steps this stage still has to run.
        steps_per_epoch: optimiser steps of one of its epochs.
        device_type: ``"cpu"``, ``"cuda"``, ...
        later: :func:`later_epochs`, or None.
    """
    stage = seconds_per_step * steps_left
    text = (f"estimated {format_duration(stage)} on this machine ({device_type}) for this stage's {steps_left} "
            f"remaining steps ({seconds_per_step:.3g} s each, validation not counted)")
    longest = stage
    if later is not None and later[1]:
        epochs, count, label = later
        total = stage + seconds_per_step * steps_per_epoch * epochs
        longest = total
        text += (f"; {format_duration(total)} for {label} ({count} more training "
                 f"stage{'s' if count > 1 else ''}, {epochs} epochs)")
    hint = device_type == "cpu" and longest > CPU_HINT_SECONDS
    if hint:
        text += (". No GPU is in use: the 'paper' preset is made for a GPU; '--preset small' is sized for a CPU "
                 "(this run goes on)")
    return text, hint
