"""The ``medens`` command: one entry for every command, and the rule every command ends by.

``medens COMMAND ...`` is ``python -m medens.train COMMAND ...`` for the training commands and
``python -m medens.data ...`` for ``medens data``; ``medens`` alone, or with flags and no command, runs the pipeline
(with no flags: the demo). Each command's one-line help is written here, once.

:func:`run_command` runs a command's body and applies :mod:`medens.errors`: exit 2 for usage errors, 1 for other
user errors (one message on stderr, no traceback), 130/143 after SIGINT/SIGTERM, a traceback only for a bug.
:func:`apply_config_file` gives an argparse command ``--config YAML``: the file sets the flags' defaults, flags
given on the command line override it.
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
import contextlib  # noqa: E402
import functools  # noqa: E402
import importlib  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable, Mapping, Sequence  # noqa: E402
from typing import Any  # noqa: E402

from medens.errors import (  # noqa: E402
    EXIT_ERROR,
    EXIT_USAGE,
    UsageError,
    exit_code_of,
    interrupted_exit_code,
    user_error_message,
)

__all__ = [
    "COMMANDS",
    "TRAIN_COMMANDS",
    "DEFAULT_COMMAND",
    "MissingCommandError",
    "build_parser",
    "command_help",
    "command",
    "set_prog",
    "run_command",
    "apply_config_file",
    "config_file_exit_code",
    "cli_logging",
    "main",
]

logger = logging.getLogger("medens.cli")

#: name -> (module with ``add_parser(subparsers)`` and ``main(args)``, one-line help), in help order.
COMMANDS: dict[str, tuple[str, str]] = {
    "pipeline": (
        "medens.train.pipeline",
        "the whole method: pre-train, fine-tune from ImageNet and from MAE, ensemble (no arguments: the demo)",
    ),
    "study": (
        "medens.train.study",
        "cross-validate the whole method over folds and seeds, with pre-training ablations (--vary)",
    ),
    "pretrain": ("medens.train.pretrain", "entropy-guided masked-autoencoder pre-training of a ConvNeXt encoder"),
    "finetune": ("medens.train.finetune", "fine-tune a ConvNeXt classifier (init: imagenet, mae:PATH or scratch)"),
    "ensemble": (
        "medens.train.ensemble",
        "combine fine-tuned members into an ensemble and compare them on the test split",
    ),
    "predict": ("medens.train.predict", "class probabilities of the ensemble (or one member) for new images"),
    "data": (
        "medens.data.__main__",
        "look at a dataset before training on it: classes, splits, sizes, skipped files, near-duplicates",
    ),
}
#: What runs when no command is given.
DEFAULT_COMMAND = "pipeline"
#: The commands of ``python -m medens.train``: every command of ``medens`` but ``data`` (``python -m medens.data``).
TRAIN_COMMANDS: dict[str, tuple[str, str]] = {name: entry for name, entry in COMMANDS.items() if name != "data"}
#: How the training commands are run as a module.
TRAIN_PROG = "python -m medens.train"


#: How the training commands are called in messages: ``python -m medens.train`` or, from the script, ``medens``.
_prog = TRAIN_PROG


def command_help(name: str) -> str:
    """The one-line help of command ``name``."""
    return COMMANDS[name][1]


def set_prog(prog: str) -> None:
    """Name the training commands' program in their messages (the dispatcher calls it with how it was run)."""
    global _prog
    _prog = prog


def command(name: str, *, stopped_hint: str | None = None) -> Callable[[Callable[[Any], int | None]], Callable]:
    """Make a command's body ``body(args) -> exit code`` its ``main(args)``, run by :func:`run_command`.

    The body raises on failure; ``main`` returns the exit code the error rule gives (``stopped_hint``: what to
    tell the user after SIGINT/SIGTERM).
    """

    def wrap(body: Callable[[Any], int | None]) -> Callable[[Any], int]:
        @functools.wraps(body)
        def main(args: Any) -> int:
            return run_command(f"{_prog} {name}", lambda: body(args), stopped_hint=stopped_hint)

        return main

    return wrap


def cli_logging() -> contextlib.AbstractContextManager:
    """Log ``medens`` INFO messages to stderr for a command's duration, unless the caller set up logging already."""
    from medens.engine import logging_to

    return contextlib.nullcontext() if logging.getLogger("medens").handlers else logging_to(None)


def run_command(prog: str, body: Callable[[], int | None], *, stopped_hint: str | None = None) -> int:
    """Run a command's ``body`` and turn what escapes it into a message and an exit code.

    Args:
        prog: the command as the user typed it (``python -m medens.train pretrain``), for the messages.
        body: the command; returns its exit code (None: 0).
        stopped_hint: what to tell the user after SIGINT/SIGTERM (default: the run's own "--resume" advice).

    Returns:
        The body's code; 2 for a usage error, 1 for another user or environment error (one line on stderr,
        no traceback) and for a bug (its traceback and a line saying so); 130/143 after SIGINT/SIGTERM.
    """
    with cli_logging():
        try:
            return int(body() or 0)
        except Exception as err:
            from medens.engine import TrainingInterrupted

            if isinstance(err, TrainingInterrupted):
                logger.warning("%s", f"{prog}: stopped ({err.reason}); checkpoint saved at {err.checkpoint}. "
                               f"{stopped_hint}" if stopped_hint else f"{prog}: {err}")
                return interrupted_exit_code(err.reason)
            message = user_error_message(err)
            if message is None:
                traceback.print_exc()
                sys.stderr.write(
                    f"{prog}: internal error: this is a bug in medens, not in your input or files; "
                    f"please report it with the traceback above\n"
                )
                return EXIT_ERROR
            hint = f" (see {prog} --help)" if isinstance(err, UsageError) else ""
            sys.stderr.write(f"{prog}: error: {message}{hint}\n")
            return exit_code_of(err)


# ---------------------------------------------------------------------------------------------------------------
# --config for the commands whose options are plain flags
# ---------------------------------------------------------------------------------------------------------------


#: Attribute marking a parser whose ``--config`` :func:`apply_config_file` applies (the training stages read
#: theirs themselves, as option keys).
_TAKES_CONFIG_FILE = "_medens_config_file"


def config_file_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--config YAML`` (applied by :func:`apply_config_file` before the flags are parsed)."""
    setattr(parser, _TAKES_CONFIG_FILE, True)
    parser.add_argument(
        "--config",
        metavar="YAML",
        help="YAML file of this command's options (keys: its flags without the leading dashes, with '-' or '_' "
        "between words); flags given here override it",
    )


def _config_path(argv: Sequence[str]) -> str | None:
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--config")
    known, _ = probe.parse_known_args(list(argv))
    return known.config


def apply_config_file(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """Make the options of ``--config YAML`` in ``argv`` the defaults of ``parser`` (flags still override them).

    A key is a flag's name, with dashes or underscores (``ece-bins`` or ``ece_bins``); a required flag that the
    file sets is no longer required.

    Raises:
        UsageError: the file is not a YAML mapping, a key is no option of the command, or a value is not one of
            the option's choices.
    """
    path = _config_path(argv)
    if not path or not getattr(parser, _TAKES_CONFIG_FILE, False):
        return
    from medens.engine.config import load_yaml

    try:
        values: Mapping[str, Any] = load_yaml(path)
    except ValueError as err:
        raise UsageError(str(err)) from None
    # A key is a flag's dest or the name of one of its flags (an old spelling too: ``seed`` for --split-seed).
    given = [a for a in parser._actions if a.dest not in ("help", "config", argparse.SUPPRESS)]
    actions: dict[str, argparse.Action] = {}
    for action in given:
        actions.setdefault(action.dest, action)
    for action in given:
        for flag in action.option_strings:
            actions.setdefault(flag.lstrip("-").replace("-", "_"), action)
    for key, value in values.items():
        action = actions.get(str(key).replace("-", "_"))
        if action is None:
            raise UsageError(f"config: {path}: expected one of the options {sorted(actions)}, received {key!r}")
        dest = action.dest
        action = actions[dest]  # the flag itself, not an old spelling of it
        if isinstance(value, str) and callable(action.type):
            try:
                value = action.type(value)
            except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
                raise UsageError(f"{key}: in {path}: {err}") from None
        if action.choices is not None and value not in action.choices:
            raise UsageError(
                f"{key}: in {path}: expected one of {list(action.choices)}, received {value!r}"
            )
        repeated = action.nargs in ("+", "*") or isinstance(action, argparse._AppendAction)
        if repeated and not isinstance(value, list):
            value = [value]
        action.required = False
        parser.set_defaults(**{dest: value})


def config_file_exit_code(prog: str, parser: argparse.ArgumentParser, argv: Sequence[str]) -> int | None:
    """:func:`apply_config_file`, its failure said on stderr: None when it applied, else the exit code.

    2 for a usage error (a key that is no option, a value of the wrong kind), 1 for a file that cannot be read
    (the error rule of :mod:`medens.errors`: one message, no traceback).
    """
    try:
        apply_config_file(parser, argv)
    except Exception as err:
        message = user_error_message(err)
        if message is None:
            raise
        sys.stderr.write(f"{prog}: error: {message}\n")
        return exit_code_of(err)
    return None


# ---------------------------------------------------------------------------------------------------------------
# The console script
# ---------------------------------------------------------------------------------------------------------------


_HELP_FLAGS = ("-h", "--help")


class MissingCommandError(UsageError):
    """The module of a command is not installed."""


def _load(name: str):
    module_name = (TRAIN_COMMANDS.get(name) or COMMANDS[name])[0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise  # a dependency of the module is missing: show the real error
        raise MissingCommandError(
            f"the '{name}' command is not available: module {module_name} is missing from this installation"
        ) from None


def build_parser(
    command: str | None, prog: str = TRAIN_PROG
) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser | None]:
    """The top-level parser and ``command``'s parser (only that module is imported and its options added)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Entropy-guided self-supervised learning for medical image classification. "
        f"Without a command, runs '{DEFAULT_COMMAND}' (with no arguments: the demo).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = None
    for name, (_, text) in TRAIN_COMMANDS.items():
        if name == command:
            chosen = _load(name).add_parser(subparsers)
        else:
            subparsers.add_parser(name, help=text, add_help=False)
    if prog == "medens":  # the console script also runs 'medens data' (dispatched before this parser)
        subparsers.add_parser("data", help=command_help("data"), add_help=False)
    return parser, chosen


def main(argv: Sequence[str] | None = None, prog: str = "medens") -> int:
    """``medens [COMMAND] ...`` (and, with ``prog="python -m medens.train"``, the training commands alone).

    The one dispatcher: it imports only the command that runs; flags without a command run the pipeline, no
    arguments at all the demo; ``data`` (``medens`` only) runs ``python -m medens.data``'s command.

    Returns:
        The command's code: 0; 2 for a usage error; 1 for another error; 130/143 when stopped by a signal.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if prog == "medens" and argv and argv[0] == "data":
        return _load("data").main(argv[1:], prog="medens data")
    set_prog(prog)
    if not argv or (argv[0].startswith("-") and argv[0] not in _HELP_FLAGS):
        argv = [DEFAULT_COMMAND, *argv]  # flags without a command: the pipeline
    command = argv[0] if argv[0] in TRAIN_COMMANDS else None
    try:
        parser, chosen = build_parser(command, prog)
    except MissingCommandError as err:
        sys.stderr.write(f"{prog}: error: {err}\n")
        return EXIT_USAGE
    if chosen is not None:
        code = config_file_exit_code(f"{prog} {command}", chosen, argv[1:])
        if code is not None:
            return code
    args = parser.parse_args(argv)
    if command is None:  # --help was handled above; anything else is a usage error
        parser.print_help()
        return EXIT_USAGE
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
