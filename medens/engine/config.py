"""Run configuration: defaults, then a YAML file, then the command line; the resolved result is written out.

A configuration is a flat ``dict`` of plain values (numbers, strings, booleans, lists, None), so it survives YAML,
``torch.load(weights_only=True)`` and a hand edit. Each stage (pre-training, fine-tuning) owns its defaults; a
YAML file and ``key=value`` overrides are merged over
them, and a key the stage does not know is an error that names it and suggests the closest known key.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from medens.errors import describe_path
from medens.io import atomic_write_text, plain

__all__ = [
    "load_yaml",
    "yaml_value",
    "merge_config",
    "parse_overrides",
    "write_config",
]


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2 floats: ``1e-3`` is a number (PyYAML's YAML 1.1 reads it as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def yaml_value(text: str) -> Any:
    """Parse one YAML value (``1e-3`` -> 0.001, ``true`` -> True, ``[1, 2]`` -> list)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping from a file (a packaged preset's file by name: :func:`medens.train.presets.load_config_file`).

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when the file is not a YAML mapping.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"config: expected a YAML file, received {str(path)!r}, {describe_path(path)}")
    try:
        data = yaml_value(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"config: {path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(
            f"config: expected a YAML mapping of option: value in {path}, received {type(data).__name__}"
        )
    return data


def merge_config(
    defaults: Mapping[str, Any],
    *overrides: Mapping[str, Any] | None,
    source: Iterable[str] | None = None,
    ignore: Iterable[str] = (),
) -> dict[str, Any]:
    """Merge override mappings over ``defaults`` (later ones win); unknown keys are errors.

    Args:
        defaults: every known key with its default value.
        overrides: mappings to apply in order; ``None`` entries are skipped.
        source: a label per override for error messages (e.g. the YAML path, ``"command line"``).
        ignore: keys that may appear in an override but are dropped (e.g. bookkeeping written by a previous run).

    Returns:
        A new flat dict.

    Raises:
        ValueError: for a key not in ``defaults``, naming the closest known keys.
    """
    out = dict(defaults)
    labels = list(source or [])
    ignore = set(ignore)
    for i, override in enumerate(overrides):
        if not override:
            continue
        for key, value in override.items():
            if key in ignore:
                continue
            if key not in defaults:
                where = f" (in {labels[i]})" if i < len(labels) else ""
                close = difflib.get_close_matches(str(key), list(defaults), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ValueError(f"config: unknown option {key!r}{where}{hint}")
            out[key] = value
    return out


def parse_overrides(items: Iterable[str], option: str = "--set") -> dict[str, Any]:
    """Parse ``key=value`` strings (``--set`` on the command line); values are read as YAML (``1e-3``, ``true``).

    Args:
        items: the ``KEY=VALUE`` strings.
        option: the flag they came from, for the message.

    Raises:
        ValueError: for an item without ``=``, naming ``option``.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{option}: expected KEY=VALUE, received {item!r}")
        out[key.strip().replace("-", "_")] = yaml_value(value) if value.strip() else None
    return out


def write_config(path: str | os.PathLike, config: Mapping[str, Any]) -> Path:
    """Write ``config`` as YAML, atomically, keys in the given order."""
    text = yaml.safe_dump(plain(dict(config)), sort_keys=False, default_flow_style=None, width=110)
    return atomic_write_text(path, text)
