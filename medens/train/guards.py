"""Checks a command makes before any work: values in range, and that what it will write is none of what it reads."""

from __future__ import annotations

import argparse

from medens.errors import OverwritesInputError, refuse_output_over_inputs

__all__ = ["OverwritesInputError", "refuse_output_over_inputs", "positive_int", "non_negative_int",
           "open_unit_interval"]


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, received {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, received {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a bad value is a usage error, exit 2, naming the option)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (a bad value is a usage error, exit 2, naming the option)."""
    return _int_at_least(text, 0)


def open_unit_interval(text: str) -> float:
    """argparse type: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), received {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), received {value}")
    return value
