"""Dispatcher of ``python -m medens.train`` (and of ``medens``): imports only the command that runs.

Each command lives in its own module exposing ``add_parser(subparsers)`` and ``main(args) -> int``
(:data:`medens.cli.COMMANDS`); a module that is missing gives a clear error instead of an ImportError from deep
inside another command. Flags without a command run the pipeline (``python -m medens.train --dataset busi ...``);
no arguments at all run the demo.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import medens.cli as cli  # before any command: it sets the OpenMP wait policy before torch is imported

__all__ = ["SUBCOMMANDS", "DEFAULT_COMMAND", "main", "build_parser"]

#: The commands of ``python -m medens.train``: every command of ``medens`` but ``data`` (``python -m medens.data``).
SUBCOMMANDS: dict[str, tuple[str, str]] = {name: entry for name, entry in cli.COMMANDS.items() if name != "data"}
DEFAULT_COMMAND = cli.DEFAULT_COMMAND
_HELP_FLAGS = ("-h", "--help")


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


def build_parser(
    command: str | None, prog: str = "python -m medens.train"
) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser | None]:
    """The top-level parser and ``command``'s parser (only that module is imported and its options added)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Entropy-guided self-supervised learning for medical image classification. "
        f"Without a command, runs '{DEFAULT_COMMAND}' (with no arguments: the demo).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = None
    for name, (_, text) in SUBCOMMANDS.items():
        if name == command:
            chosen = _load(name).add_parser(subparsers)
        else:
            subparsers.add_parser(name, help=text, add_help=False)
    if prog == "medens":  # the console script also runs 'medens data' (dispatched before this parser)
        subparsers.add_parser("data", help=cli.command_help("data"), add_help=False)
    return parser, chosen


def main(argv: Sequence[str] | None = None, prog: str = "python -m medens.train") -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the command, return its exit code.

    Returns:
        The command's code: 0; 2 for a usage error; 1 for another error; 130/143 when stopped by a signal.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    cli.set_prog(prog)
    if not argv or (argv[0].startswith("-") and argv[0] not in _HELP_FLAGS):
        argv = [DEFAULT_COMMAND, *argv]  # flags without a command: the pipeline
    command = argv[0] if argv[0] in SUBCOMMANDS else None
    try:
        parser, chosen = build_parser(command, prog)
        if chosen is not None:
            cli.apply_config_file(chosen, argv[1:])
    except MissingCommandError as err:
        sys.stderr.write(f"{prog}: error: {err}\n")
        return 2
    except cli.UsageError as err:
        sys.stderr.write(f"{prog} {command}: error: {err}\n")
        return 2
    args = parser.parse_args(argv)
    if command is None:  # --help was handled above; anything else is a usage error
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
