"""The one error rule of every medens command: which failures are a user's, and the exit codes.

- **Usage errors** (:class:`UsageError`, and argparse's own): the command line is wrong: an unknown or ill-formed
  option, a value out of range, a missing or conflicting option. Exit code :data:`EXIT_USAGE` (2).
- **Other user and environment errors**: a bad or missing file, a dataset that cannot be read, members that
  cannot be combined, no space, no permission (``OSError`` with a number in :data:`USER_ERRNOS`). Exit code
  :data:`EXIT_ERROR` (1).
- Anything else is a bug in medens: its traceback, a line saying so, exit code 1.

Every case but the last ends with one message on stderr naming the file or option, what was wrong and what to do,
without a traceback. :func:`medens.cli.run_command` applies the rule; readers and stages raise with context.
"""

from __future__ import annotations

import errno

__all__ = [
    "UsageError",
    "EXIT_OK",
    "EXIT_ERROR",
    "EXIT_USAGE",
    "USER_ERRNOS",
    "user_errors",
    "user_error_message",
    "exit_code_of",
    "interrupted_exit_code",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


class UsageError(ValueError):
    """The command line is wrong: an unknown option, a bad value, a missing or conflicting option (exit 2)."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions a user can act on from the message alone (plus ``OSError`` of :data:`USER_ERRNOS`).

    Imported here rather than at module level, so that ``--help`` does not load the models.
    """
    from medens.data import DatasetError
    from medens.engine import NonFiniteLossError
    from medens.models import PretrainedWeightsUnavailable

    return (ValueError, FileNotFoundError, DatasetError, PretrainedWeightsUnavailable, NonFiniteLossError)


#: ``OSError`` numbers that are the environment's or the user's doing (a path, a permission, the disk), not a bug.
USER_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.EEXIST,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ENOENT,
        errno.ENAMETOOLONG,
        errno.ELOOP,
    }
)
_ERRNO_HINTS = {
    errno.ENOSPC: "free some space (the last checkpoint is intact; --resume continues)",
    errno.EDQUOT: "free some space or raise the quota",
    errno.EACCES: "check the permissions, or choose another path",
    errno.EPERM: "check the permissions, or choose another path",
    errno.EROFS: "the file system is read-only: choose a writable --out/--cache-dir",
    errno.EEXIST: "a file is in the way: remove it or choose another path",
    errno.ENOTDIR: "a file stands where a folder is needed: choose another path",
    errno.EISDIR: "a folder stands where a file is needed: choose another path",
}


def user_error_message(err: BaseException) -> str | None:
    """The message to print for a user's or the environment's mistake, or None for what must be a bug.

    One place decides: :func:`user_errors` (bad values, files, datasets, weights), and ``OSError`` whose number is
    in :data:`USER_ERRNOS` (said with the file it concerns and what to do).
    """
    if isinstance(err, OSError) and not isinstance(err, user_errors()):
        if err.errno not in USER_ERRNOS:
            return None
        names = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
        text = err.strerror or str(err)
        hint = _ERRNO_HINTS.get(err.errno)
        return f"{names + ': ' if names and names not in text else ''}{text}" + (f"; {hint}" if hint else "")
    if isinstance(err, user_errors()):
        return str(err)
    return None


def exit_code_of(err: BaseException) -> int:
    """:data:`EXIT_USAGE` for a :class:`UsageError`, :data:`EXIT_ERROR` for every other failure."""
    return EXIT_USAGE if isinstance(err, UsageError) else EXIT_ERROR


def interrupted_exit_code(reason: str) -> int:
    """The shell's convention for a run stopped by a signal: 128 + SIGTERM (15) or SIGINT (2)."""
    return 143 if reason == "SIGTERM" else 130
