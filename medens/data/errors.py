"""Exceptions raised by :mod:`medens.data`.

Every message says what was expected, what was found, and where, so that a user who pointed the tool at the
wrong folder can fix the path without reading the source.
"""

from __future__ import annotations

from medens.errors import UsageError, UserError


class DatasetError(UserError, ValueError):
    """A dataset cannot be read as asked: wrong layout, empty class, bad CSV row, bad option."""


class DatasetUsageError(DatasetError, UsageError):
    """A dataset asked for by a name or an option that does not exist (a usage error: exit code 2)."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset root (or a file the layout requires) does not exist."""


class CorruptImageError(DatasetError):
    """An image file exists but cannot be decoded (truncated, empty, not an image).

    Attributes:
        path: The file that failed.
        reason: A short human-readable reason, e.g. ``"truncated JPEG: image file is truncated"``.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot decode image {path}: {reason}")
        self.path = str(path)
        self.reason = reason
