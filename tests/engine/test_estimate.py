"""The estimate a stage logs before its long loop: timing, wording, the plan around it, the CPU hint."""

from __future__ import annotations

from pathlib import Path

import pytest

from medens.engine.estimate import (
    CPU_HINT_SECONDS,
    PlannedStage,
    StepTimer,
    estimate_message,
    format_duration,
    later_epochs,
    planned_stages,
)


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0 s"), (45, "45 s"), (185, "3 min 5 s"),
                                               (78000, "21 h 40 min"), (183600, "2 d 3 h")])
def test_durations_read_as_people_say_them(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_the_first_step_is_left_out_of_the_timing() -> None:
    now = iter([0.0, 50.0, 52.0, 54.0, 56.0, 99.0]).__next__  # construction, then the end of each step
    timer = StepTimer(timed=3, clock=now)
    assert [timer.step(steps_left=100 - i) for i in range(1, 5)] == [False, False, False, True]
    assert timer.seconds_per_step == pytest.approx(2.0)
    assert timer.step(steps_left=95) is False  # said once


def test_a_short_run_is_estimated_from_what_it_has() -> None:
    timer = StepTimer(timed=3, clock=iter([0.0, 5.0]).__next__)
    assert timer.step(steps_left=0) and timer.seconds_per_step == 5.0


def test_a_long_cpu_estimate_names_the_small_preset_and_a_gpu_does_not() -> None:
    long_steps = int(CPU_HINT_SECONDS) + 1  # at a second each
    text, hint = estimate_message(1.0, long_steps, 10, "cpu")
    assert hint and "estimated 1 h 0 min on this machine (cpu)" in text
    assert "'--preset small' is sized for a CPU" in text and "'paper' preset is made for a GPU" in text
    assert estimate_message(1.0, long_steps, 10, "cuda") == (text.split(". No GPU")[0].replace("(cpu)", "(cuda)"),
                                                              False)
    assert not estimate_message(1.0, 100, 10, "cpu")[1]
    # Short on its own, but the stages planned after it make it long.
    text, hint = estimate_message(1.0, 100, 10, "cpu", later=(400, 2, "the whole pipeline"))
    assert hint and "1 h 8 min for the whole pipeline (2 more training stages, 400 epochs)" in text


def test_the_plan_gives_the_epochs_after_a_stage(tmp_path: Path) -> None:
    stages = [PlannedStage(tmp_path / "pretrain", 400), PlannedStage(tmp_path / "a", 100),
              PlannedStage(tmp_path / "b", 50)]
    assert later_epochs(tmp_path / "pretrain") is None  # no plan
    with planned_stages(stages, "this study unit"):
        assert later_epochs(tmp_path / "pretrain") == (150, 2, "this study unit")
        assert later_epochs(tmp_path / "b") == (0, 0, "this study unit")
        assert later_epochs(tmp_path / "elsewhere") is None
    assert later_epochs(tmp_path / "pretrain") is None

