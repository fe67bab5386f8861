"""``python -m medens.train [COMMAND] ...``: the training commands, run by the one dispatcher, :func:`medens.cli.main`.

Each command lives in its own module exposing ``add_parser(subparsers)`` and ``main(args) -> int``
(:data:`medens.cli.COMMANDS`); only the command that runs is imported. Flags without a command run the pipeline
(``python -m medens.train --dataset busi ...``); no arguments at all run the demo.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import medens.cli as cli  # before any command: it sets the OpenMP wait policy before torch is imported
from medens.cli import DEFAULT_COMMAND, MissingCommandError, build_parser

__all__ = ["SUBCOMMANDS", "DEFAULT_COMMAND", "MissingCommandError", "main", "build_parser"]

#: The commands of ``python -m medens.train`` (:data:`medens.cli.TRAIN_COMMANDS`).
SUBCOMMANDS = cli.TRAIN_COMMANDS


def main(argv: Sequence[str] | None = None, prog: str = cli.TRAIN_PROG) -> int:
    """Run ``argv`` (default: ``sys.argv[1:]``) as :func:`medens.cli.main` does under ``prog``; the exit code.

    Returns:
        The command's code: 0; 2 for a usage error; 1 for another error; 130/143 when stopped by a signal.
    """
    return cli.main(argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
