"""Checks a command makes before any work: values in range, and that what it will write is none of what it reads."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from pathlib import Path

from medens.errors import UsageError


class OverwritesInputError(UsageError):
    """An output path that is one of the command's inputs, or lies inside an input folder."""


def _real(path: str | os.PathLike[str]) -> Path:
    return Path(path).expanduser().resolve()


def refuse_output_over_inputs(
    option: str,
    out: str | os.PathLike[str],
    folders: Iterable[str | os.PathLike[str]] = (),
    files: Iterable[str | os.PathLike[str]] = (),
) -> None:
    """Refuse an output that would replace an input.

    Args:
        option: the output's option, for the message (e.g. ``"--out"``).
        out: the output file or folder.
        folders: input folders (member folders): ``out`` may be neither one of them nor inside one.
        files: input files (images): ``out`` may not be one of them.

    Raises:
        OverwritesInputError: naming ``option``, the output and the input it would overwrite.
    """
    target = _real(out)
    for folder in folders:
        real = _real(folder)
        if target == real or real in target.parents:
            raise OverwritesInputError(
                f"{option}: expected a path outside the input folder {folder}, received {out} "
                f"(writing there would overwrite that input); choose another {option}"
            )
    for file in files:
        if target == _real(file):
            raise OverwritesInputError(
                f"{option}: expected a path that is not one of the inputs, received {out}, "
                f"which is the input {file}; choose another {option}"
            )


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a bad value is a usage error, exit 2, naming the option)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, received {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, received {value}")
    return value


def open_unit_interval(text: str) -> float:
    """argparse type: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), received {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), received {value}")
    return value
