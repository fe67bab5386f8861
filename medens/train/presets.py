"""The packaged presets and the demo: named sets of stage options, written once, as YAML in ``medens/configs``.

A preset ``P`` is the pair ``pretrain_P.yaml`` / ``finetune_P.yaml``:

- ``paper``: the paper's settings (ConvNeXt-Tiny, 224 px, paper-scale schedules); they are also the defaults.
- ``small``: sized for a CPU (ConvNeXt-Atto, 96 px, a 6 x 6 masking grid; the demo fine-tunes its members at 64 px).
- ``smoke``: every stage in seconds on a CPU, for trying commands and for tests, never for results.

Every command loads them the same way (timm's pattern: the preset sets defaults, ``--config`` YAML and flags
override it): ``pretrain --preset small``, ``finetune --preset small``, ``pipeline --preset small`` and ``study
--preset small``. Without ``--preset`` a command on the generated ``synthetic`` images (the demo data, and the
dataset when none is named) uses ``small``; on a real dataset, ``paper``.

A YAML file may start from another with ``base: NAME`` (a preset file name or a path).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from medens.data.options import DEFAULT_DATASET
from medens.engine.config import load_yaml
from medens.errors import UsageError

__all__ = [
    "PRESET_DIR",
    "list_presets",
    "resolve_config_path",
    "PRESET_NAMES",
    "STAGES",
    "DEMO_DATASET",
    "DEMO_OUT",
    "DEMO_DATASET_OPTIONS",
    "DEMO_OVERRIDES",
    "default_preset",
    "load_config_file",
    "load_preset",
]

#: The presets, each a pair of packaged YAML files.
PRESET_NAMES = ("paper", "small", "smoke")
STAGES = ("pretrain", "finetune")

#: The demo of ``python -m medens.train`` without arguments, and the data of a stage run without ``--dataset``.
DEMO_DATASET = DEFAULT_DATASET
DEMO_OUT = "runs/demo"
#: Synthetic images for the demo, at the small preset's resolution; fewer than BUSI's 780 so the demo stays
#: within 10 minutes on 2 CPU cores (benchmarks/RESULTS.md).
DEMO_DATASET_OPTIONS: dict[str, Any] = {"num_images": 500, "image_size": 96}
#: What the demo changes in the ``small`` preset, by stage, to stay within 10 minutes on 2 CPU cores: pre-training
#: keeps the preset's 96 px and 6 x 6 masking grid but runs far fewer epochs (a demonstration of the method's
#: stages, not a pre-training that has finished learning), and the members fine-tune at 64 px.
DEMO_OVERRIDES: dict[str, dict[str, Any]] = {"pretrain": {"epochs": 12, "warmup_epochs": 2.0},
                                             "finetune": {"image_size": 64}}

_BASE_KEY = "base"

#: Where the packaged YAML presets live (``medens/configs``).
PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"


def list_presets() -> list[str]:
    """Names of the packaged preset files (file names without ``.yaml``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str | os.PathLike) -> Path:
    """A YAML path as given, or a packaged preset file's name (``pretrain_paper``) resolved in ``medens/configs``.

    Raises:
        FileNotFoundError: when neither exists; the message lists the presets.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    raise FileNotFoundError(
        f"config: expected a YAML file or a preset name ({', '.join(list_presets()) or 'none packaged'}), "
        f"received {str(name_or_path)!r}"
    )


def default_preset(dataset: str | None) -> str:
    """``small`` for the generated demo images (or no dataset), ``paper`` for a real dataset."""
    return "small" if dataset in (None, DEMO_DATASET) else "paper"


def load_config_file(name_or_path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML file of options (a path or a packaged preset file name), with its ``base`` chain applied.

    Raises:
        FileNotFoundError: no such file or preset (the message lists the presets).
        ValueError: not a YAML mapping, or a ``base`` chain that loops.
    """
    path = resolve_config_path(name_or_path).resolve()
    if path in _seen:
        raise ValueError(f"config: {path} is its own base ({' -> '.join(str(p) for p in (*_seen, path))})")
    values = load_yaml(path)
    base = values.pop(_BASE_KEY, None)
    if base is None:
        return values
    return {**load_config_file(base, (*_seen, path)), **values}


def load_preset(preset: str, stage: str) -> dict[str, Any]:
    """The options preset ``preset`` sets for ``stage`` (``pretrain`` or ``finetune``).

    Raises:
        UsageError: an unknown preset or stage.
    """
    if preset not in PRESET_NAMES:
        raise UsageError(f"preset: expected one of {list(PRESET_NAMES)}, received {preset!r}")
    if stage not in STAGES:
        raise UsageError(f"stage: expected one of {list(STAGES)}, received {stage!r}")
    return load_config_file(f"{stage}_{preset}")
