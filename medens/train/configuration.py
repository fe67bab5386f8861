"""A stage's configuration: its defaults, then the run's saved ``config.yaml`` (on resume), then what was asked.

Order of precedence: stage defaults < the run's saved ``config.yaml`` (with ``resume``) < the overrides (a
preset, ``--config`` YAML, flags and ``--set``, already merged by the command line). A value of the wrong type, an
unknown key and a change that would make a resumed run's record false are refused by name, as
:class:`~medens.errors.UsageError`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from medens.engine.config import load_yaml, merge_config
from medens.engine.optim import scaled_lr
from medens.errors import UsageError
from medens.io import plain
from medens.layout import CONFIG_NAME, recorded_stage
from medens.train.options import BOOKKEEPING_KEYS, OPTIONS, RESUME_MUTABLE_KEYS
from medens.train.presets import load_preset

__all__ = ["resolve_config", "refuse_changes_on_resume", "check_types", "effective_lr", "option_checks"]


def resolve_config(
    defaults: Mapping[str, Any], overrides: Mapping[str, Any], stage: str | None = None
) -> dict[str, Any]:
    """Defaults < ``preset`` < saved ``config.yaml`` (when ``resume`` and it exists) < ``overrides``; types checked.

    ``overrides`` must hold ``out``. Bookkeeping keys written by an earlier run are dropped. The preset is
    ``overrides["preset"]``, else the one the resumed run recorded; it applies when ``stage`` is given.

    Raises:
        UsageError: unknown keys, wrong types, no ``out``, or (on resume) a change to what the run trained with.
    """
    try:
        return _resolve(defaults, overrides, stage)
    except UsageError:
        raise
    except ValueError as err:
        raise UsageError(str(err)) from None


def _resolve(defaults: Mapping[str, Any], overrides: Mapping[str, Any], stage: str | None) -> dict[str, Any]:
    full = {**defaults, "out": None, "resume": False}
    if not overrides.get("out"):
        raise ValueError("out: expected an output folder (--out DIR), received none")
    saved: dict[str, Any] = {}
    saved_path = Path(overrides["out"]) / CONFIG_NAME
    if overrides.get("resume") and saved_path.is_file():
        other = recorded_stage(saved_path.parent)
        if stage and other not in (None, stage):
            raise UsageError(
                f"out: {saved_path.parent} holds a {other} run, not a {stage} run, so --resume cannot continue "
                f"it as {stage}; choose another --out"
            )
        saved = load_yaml(saved_path)
        refuse_changes_on_resume(saved, overrides, saved_path)
    preset = overrides.get("preset") or saved.get("preset")
    base = full
    if preset and stage:
        base = merge_config(full, load_preset(str(preset), stage), source=[f"preset {preset}"])
    config = merge_config(
        base, saved, overrides, source=[str(saved_path), "options"], ignore=BOOKKEEPING_KEYS
    )
    config["out"] = str(Path(config["out"]).expanduser())
    if isinstance(config.get("betas"), tuple):
        config["betas"] = list(config["betas"])
    check_types(config, full)
    return config


def refuse_changes_on_resume(saved: Mapping[str, Any], overrides: Mapping[str, Any], saved_path: Path) -> None:
    """Refuse options that would make a resumed run's ``config.yaml`` describe a run that was not trained.

    A resumed run keeps the recorded configuration; only :data:`RESUME_MUTABLE_KEYS` may differ, and ``epochs`` may
    extend the run but not shrink it below what was recorded (those epochs may have been trained already).

    Raises:
        ValueError: naming the key, the recorded value and the value received.
    """
    for key, value in overrides.items():
        if key not in saved or key in BOOKKEEPING_KEYS:
            continue
        recorded = saved[key]
        if key in ("init", "precise_bn") and value in (saved.get(f"{key}_requested"), recorded):
            continue  # what was asked, or what the run recorded it did (a run's own config.yaml given as --config)
        if key == "epochs":
            if isinstance(value, int) and isinstance(recorded, int) and value < recorded:
                raise ValueError(
                    f"epochs: expected at least the {recorded} epochs recorded in {saved_path} when resuming "
                    f"(they may be trained already), received {value}; use another --out for a shorter run"
                )
            continue
        if key in RESUME_MUTABLE_KEYS or plain(value) == plain(recorded):
            continue
        raise ValueError(
            f"{key}: expected the value recorded in {saved_path} ({recorded!r}) when resuming, received {value!r}; "
            f"a resumed run keeps its configuration (drop the option, or use another --out for a new run)"
        )


def check_types(config: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
    """Every value has its default's type (ints where an int is expected, numbers for floats, ...) and lies within
    the limits its option sets (``minimum``, ``allowed`` or ``choices``). An option whose flag reads a float takes
    any number, whether its default is written ``5`` or ``5.0``.

    Raises:
        ValueError: naming the key, the expected type and the value received.
    """
    for key, default in defaults.items():
        value = config.get(key)
        if value is None:
            continue
        if default is None:  # an optional option: any type its flag gives, within its limits
            _check_range(key, value)
            continue
        option = OPTIONS.get(key)
        if isinstance(default, bool):
            ok = isinstance(value, bool)
            want = "true or false"
        elif isinstance(default, int) and not (option is not None and option.type is float):
            ok = isinstance(value, int) and not isinstance(value, bool)
            want = "an integer"
        elif isinstance(default, (int, float)):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            want = "a number"
        elif isinstance(default, dict):
            ok = isinstance(value, dict)
            want = "a mapping"
        elif isinstance(default, list):
            ok = isinstance(value, (list, tuple))
            want = "a list"
        else:
            ok = True
            want = ""
        if not ok:
            raise ValueError(f"{key}: expected {want}, received {value!r} ({type(value).__name__})")
        _check_range(key, value)


def _check_range(key: str, value: Any) -> None:
    """The limits :data:`~medens.train.options.OPTIONS` sets on ``key`` (:meth:`medens.flags.Option.check`)."""
    option = OPTIONS.get(key)
    if option is not None:
        option.check(key, value)


def effective_lr(config: Mapping[str, Any], world_size: int) -> tuple[float, int]:
    """``(lr, effective batch)``: ``lr`` when set, else ``blr * batch_size * accum_steps * world_size / 256``."""
    effective = int(config["batch_size"]) * int(config["accum_steps"]) * world_size
    if config.get("lr") is not None:
        return float(config["lr"]), effective
    return scaled_lr(float(config["blr"]), effective), effective


@contextlib.contextmanager
def option_checks() -> Iterator[None]:
    """Within the block, a ``ValueError`` is a bad option value: re-raised as a :class:`UsageError` (exit 2).

    For the checks a stage makes on its resolved options before any work (geometry, ranges, names).
    """
    try:
        yield
    except UsageError:
        raise
    except ValueError as err:
        raise UsageError(str(err)) from None
