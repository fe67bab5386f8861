"""The one error rule of every medens command: which failures are a user's, and the exit codes.

- **User errors** (:class:`UserError`, the base of every error the library raises for a user to act on, and
  ``ValueError``/``FileNotFoundError``): the rule below needs nothing but this module to recognise them.
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
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "UserError",
    "UsageError",
    "OverwritesInputError",
    "refuse_output_over_inputs",
    "describe_path",
    "EXIT_ERROR",
    "EXIT_USAGE",
    "USER_ERRNOS",
    "USER_ERRORS",
    "user_errors",
    "user_error_message",
    "exit_code_of",
    "interrupted_exit_code",
]

EXIT_ERROR = 1
EXIT_USAGE = 2


class UserError(Exception):
    """A failure the user can act on from its message alone: a bad input, file or dataset (exit 1).

    The library's user-facing errors derive from it (beside the built-in class they are: a ``DatasetError`` is also
    a ``ValueError``), so a command tells them from a bug without importing the modules that raise them.
    """


class UsageError(UserError, ValueError):
    """The command line is wrong: an unknown option, a bad value, a missing or conflicting option (exit 2)."""


class OverwritesInputError(UsageError):
    """An output path that is one of the command's inputs, or lies inside an input folder."""


def _real(path: str | os.PathLike[str]) -> Path:
    return Path(path).expanduser().resolve()


def _same_inode(st: os.stat_result, path: str | os.PathLike[str]) -> bool:
    try:
        other = os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (other.st_dev, other.st_ino)


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
        files: input files (images): ``out`` may not be one of them, nor another name (a hard link) of one.

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
    existing = os.stat(target) if target.is_file() else None
    for file in files:
        if target == _real(file) or (existing is not None and _same_inode(existing, file)):
            raise OverwritesInputError(
                f"{option}: expected a path that is not one of the inputs, received {out}, "
                f"which is the input {file}; choose another {option}"
            )


def describe_path(path: str | os.PathLike[str]) -> str:
    """What stands at ``path``, for a message: ``"which does not exist"``, ``"which is a file"``, ``"which is a
    folder"``, ``"a broken symbolic link to X"``, ``"which is a named pipe (FIFO)"``, ...

    Lets a message say why a path was refused instead of calling every wrong kind of path missing.
    """
    import stat

    path = Path(path).expanduser()
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            return f"a broken symbolic link to {os.readlink(path)}, which does not exist"
        return "which does not exist"
    except OSError as err:
        return f"which cannot be read ({err.strerror or err})"
    if stat.S_ISDIR(mode):
        return "which is a folder"
    if stat.S_ISREG(mode):
        return "which is a file"
    if stat.S_ISFIFO(mode):
        return "which is a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "which is a socket"
    return "which is a device, not a regular file"


#: Exceptions a user can act on from the message alone (plus ``OSError`` of :data:`USER_ERRNOS`).
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, ValueError, FileNotFoundError)


def user_errors() -> tuple[type[BaseException], ...]:
    """:data:`USER_ERRORS`: :class:`UserError` (the library's own: datasets, weights, a diverged loss) and the
    built-in errors of bad values and missing files."""
    return USER_ERRORS


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

    One place decides: :data:`USER_ERRORS` (bad values, files, datasets, weights), and ``OSError`` whose number is
    in :data:`USER_ERRNOS` (said with the file it concerns and what to do).
    """
    if isinstance(err, OSError) and not isinstance(err, USER_ERRORS):
        if err.errno not in USER_ERRNOS:
            return None
        names = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
        text = err.strerror or str(err)
        hint = _ERRNO_HINTS.get(err.errno)
        return f"{names + ': ' if names and names not in text else ''}{text}" + (f"; {hint}" if hint else "")
    if isinstance(err, USER_ERRORS):
        return str(err)
    return None


def exit_code_of(err: BaseException) -> int:
    """:data:`EXIT_USAGE` for a :class:`UsageError`, :data:`EXIT_ERROR` for every other failure."""
    return EXIT_USAGE if isinstance(err, UsageError) else EXIT_ERROR


def interrupted_exit_code(reason: str) -> int:
    """The shell's convention for a run stopped by a signal: 128 + SIGTERM (15) or SIGINT (2)."""
    return 143 if reason == "SIGTERM" else 130
