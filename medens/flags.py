"""One configuration key as a command-line flag: its help text, type, limits, and how it is added to a parser.

The ground floor of every command's options: :class:`Option` describes a key once, :func:`add_flag` turns it into
the same ``argparse`` flag wherever a command takes it, and :meth:`Option.check` applies its limits to a value
from any source (a flag, a YAML file, ``--set``). The tables of options live with what they configure
(:mod:`medens.data.options` for the data, :mod:`medens.train.options` for the training stages); this module imports
nothing of medens.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Option", "optional_int", "optional_float", "optional_str", "flag_name", "shown_default", "flag_help",
           "add_flag"]

#: How a flag's value says "none" (an optional option left unset).
_NONE_WORDS = ("none", "null", "")


def optional_int(text: str) -> int | None:
    """A flag's integer, or None for ``none``/``null``/empty."""
    return None if text.lower() in _NONE_WORDS else int(text)


def optional_float(text: str) -> float | None:
    """A flag's number, or None for ``none``/``null``/empty."""
    return None if text.lower() in _NONE_WORDS else float(text)


def optional_str(text: str) -> str | None:
    """A flag's text, or None for ``none``/``null``/empty."""
    return None if text.lower() in _NONE_WORDS else text


@dataclass(frozen=True)
class Option:
    """One configuration key as a command-line flag.

    Attributes:
        help: what it does (the default is appended by :func:`flag_help`).
        type: parser for the flag's value; ``bool`` makes a ``--flag/--no-flag`` pair.
        choices: allowed values.
        metavar: placeholder in ``--help``.
        flag: the flag, when not ``--`` + the key with dashes.
        minimum: the smallest value allowed (numbers), checked wherever the value comes from.
        above: ``minimum`` itself is not allowed (the value must be greater).
        maximum: the largest value allowed (numbers).
        below: ``maximum`` itself is not allowed (the value must be smaller).
        allowed: the values a YAML file or ``--set`` may give, when they are more than ``choices`` (a YAML ``off``
            is ``False``); without it ``choices`` is what they may give. Checked by :meth:`check`.
        repeated: the flag may be given several times, each a ``KEY=VALUE`` item (collected in a list).
    """

    help: str
    type: Callable[[str], Any] | type = str
    choices: tuple[Any, ...] | None = None
    metavar: str | None = None
    flag: str | None = None
    minimum: float | None = None
    above: bool = False
    maximum: float | None = None
    below: bool = False
    allowed: tuple[Any, ...] | None = None
    repeated: bool = False

    def check(self, key: str, value: Any) -> None:
        """Refuse a ``value`` of ``key`` outside the limits this option sets (the values allowed, a range).

        Raises:
            ValueError: naming ``key``, what was expected and the value received.
        """
        allowed = self.allowed if self.allowed is not None else self.choices
        if allowed is not None and value not in allowed:
            shown = " or ".join(str(v).lower() if isinstance(v, bool) else str(v) for v in allowed)
            raise ValueError(f"{key}: expected {shown}, received {value!r}")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return
        low, high = self.minimum, self.maximum
        too_low = low is not None and (value < low or (self.above and value == low))
        too_high = high is not None and (value > high or (self.below and value == high))
        if too_low or too_high:
            parts = []
            if low is not None:
                parts.append(f"{'greater than' if self.above else 'at least'} {low:g}")
            if high is not None:
                parts.append(f"{'below' if self.below else 'at most'} {high:g}")
            raise ValueError(f"{key}: expected a number {' and '.join(parts)}, received {value!r}")


def flag_name(key: str, option: Option) -> str:
    """The flag of ``key``: ``option.flag``, else ``--`` and the key with dashes (``split_seed`` -> ``--split-seed``)."""
    return option.flag or "--" + key.replace("_", "-")


def shown_default(default: Any) -> str:
    """A default as ``--help`` shows it: ``none`` for None or an empty mapping, lists joined by commas."""
    if default is None or default == {}:
        return "none"
    if isinstance(default, (list, tuple)):
        return ",".join(str(v) for v in default)
    return str(default)


def flag_help(option: Option, default: Any) -> str:
    """The help text of a flag: what it does, then its default."""
    return f"{option.help} (default: {shown_default(default)})"


def _metavar(option: Option) -> str | None:
    if option.metavar is not None or option.choices is not None:
        return option.metavar
    name = getattr(option.type, "__name__", "")
    return {int: "N", float: "X", str: "NAME"}.get(
        option.type, "X" if "float" in name else "N" if "int" in name else "VALUE"
    )


def add_flag(
    parser: argparse.ArgumentParser | Any, key: str, option: Option, default: Any, *,
    value: Any = argparse.SUPPRESS, required: bool = False,
) -> argparse.Action:
    """Add ``key``'s flag to ``parser`` (or an argument group), documented with ``default``.

    Args:
        parser: the parser or group.
        key: the configuration key, the flag's ``dest``.
        option: its description.
        default: the default its help shows.
        value: what the parsed namespace holds when the flag is not given (default: nothing, so that only what the
            user typed overrides a YAML file and the defaults).
        required: the flag must be given.

    Returns:
        The argparse action.
    """
    common: dict[str, Any] = {"dest": key, "help": flag_help(option, default), "default": value}
    if required:
        common["required"] = True
    if option.repeated:
        return parser.add_argument(flag_name(key, option), action="append", metavar=option.metavar, **common)
    if option.type is bool:
        return parser.add_argument(flag_name(key, option), action=argparse.BooleanOptionalAction, **common)
    return parser.add_argument(
        flag_name(key, option), type=option.type, choices=option.choices, metavar=_metavar(option), **common
    )
