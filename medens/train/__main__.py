"""Dispatcher of ``python -m medens.train``: imports only the subcommand that runs.

Each subcommand lives in its own module exposing ``add_parser(subparsers)`` and ``main(args) -> int``; a module
that is missing gives a clear error instead of an ImportError from deep inside another command.
"""

from __future__ import annotations

import os

# OpenMP threads (torch's and medens._C's) spin while they wait by default. On a small machine shared with another
# busy process, a spinning team waits for a descheduled thread in every parallel region: a 2-thread CPU fine-tune
# measured 8-11 img/s with a spinning wait and 52-88 img/s with a passive one while another 2-thread run shared the
# 2 cores (benchmarks/RESULTS.md). The test suite sets the same (root conftest.py). It must be set before torch
# (and its OpenMP runtime) is imported; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import importlib  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Sequence

__all__ = ["SUBCOMMANDS", "main", "build_parser"]

#: name -> (module, one-line help). ``pipeline`` runs when no subcommand is given.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": (
        "medens.train.pretrain",
        "entropy-guided masked-autoencoder pre-training of a ConvNeXt encoder",
    ),
    "finetune": (
        "medens.train.finetune",
        "fine-tune a ConvNeXt classifier (init: imagenet, mae:PATH or scratch)",
    ),
    "ensemble": ("medens.train.ensemble", "combine fine-tuned members into an ensemble and compare them"),
    "predict": ("medens.train.predict", "predict with a fine-tuned model or an ensemble"),
    "pipeline": (
        "medens.train.pipeline",
        "the whole method: pre-train, fine-tune both members, ensemble (demo)",
    ),
    "study": (
        "medens.train.study",
        "cross-validate the whole method over folds and seeds, with pre-training ablations (--vary)",
    ),
}
DEFAULT_COMMAND = "pipeline"


class MissingCommandError(RuntimeError):
    """The module of a subcommand is not installed."""


def _load(name: str):
    module_name = SUBCOMMANDS[name][0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise  # a dependency of the module is missing: show the real error
        raise MissingCommandError(
            f"the '{name}' command is not available: module {module_name} is missing from this installation"
        ) from None


def build_parser(command: str | None) -> argparse.ArgumentParser:
    """The top-level parser; only ``command``'s module is imported and its full options added."""
    parser = argparse.ArgumentParser(
        prog="python -m medens.train",
        description="Entropy-guided self-supervised learning for medical image classification. "
        f"Without a command, runs '{DEFAULT_COMMAND}' with its defaults.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, text) in SUBCOMMANDS.items():
        if name == command:
            _load(name).add_parser(subparsers)
        else:
            subparsers.add_parser(name, help=text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the subcommand, return its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = [DEFAULT_COMMAND]
    command = argv[0] if argv[0] in SUBCOMMANDS else None
    try:
        parser = build_parser(command)
    except MissingCommandError as err:
        sys.stderr.write(f"python -m medens.train: error: {err}\n")
        return 2
    args = parser.parse_args(argv)
    if command is None:  # e.g. --help handled above; anything else is a usage error
        parser.print_help()
        return 2
    return run_command(args.func, args, command)


def run_command(func, args: argparse.Namespace, command: str) -> int:
    """Run a subcommand's ``main``; what escapes it is reported by the one error rule of every command.

    A user's or the environment's mistake (see :func:`medens.train.common.user_error_message`) ends with one
    message on stderr and exit code 1; anything else is a bug in medens: its traceback, a line saying so, exit 1.
    """
    try:
        return int(func(args) or 0)
    except Exception as err:
        from medens.train.common import user_error_message

        message = user_error_message(err)
        if message is None:
            traceback.print_exc()
            sys.stderr.write(
                f"python -m medens.train {command}: internal error: this is a bug in medens, not in your input or "
                f"files; please report it with the traceback above\n"
            )
            return 1
        sys.stderr.write(f"python -m medens.train {command}: error: {message}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
