"""The ground floor: what every layer of medens uses to write files. It imports nothing from the rest of medens.

- Atomic writes: write a temporary file next to the target, flush it to disk, then rename over the target. A
  reader (or a run resumed after a crash) sees either the old file or the new one, never half of one.
- :func:`plain`: any result or configuration as plain Python values, for YAML and (strict) JSON.
- :func:`text_table` and :func:`markdown_table`: tables as aligned text for the terminal, GitHub markdown for reports.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:  # POSIX advisory locks: a temporary file is locked while its writer lives
    import fcntl
except ImportError:  # pragma: no cover - Windows has no fcntl
    fcntl = None

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_torch_save",
    "remove_stale_temporaries",
    "plain",
    "json_text",
    "text_table",
    "markdown_table",
]

_logger = logging.getLogger(__name__)

#: The mode of every output file (what ``open`` gives under the usual umask 022).
OUTPUT_MODE = 0o644
#: Names of :func:`atomic_path`'s temporary files: ``.{target}.{mkstemp's 8 characters}.tmp``.
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success it replaces ``path``, on error it is removed.

    The temporary file is locked (``flock``) until the write ends, so that :func:`remove_stale_temporaries` in
    another process (a second run or rank on the same cache folder) tells a live write from a dead one.

    Args:
        path: the final destination.
        fsync: flush the file to disk before the rename (for checkpoints that must survive a power cut).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp_path = Path(tmp)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)  # a new file: nobody else holds it
        try:
            yield tmp_path
            # mkstemp makes the file owner-only, and a writer that re-creates the file makes its own choice; set
            # the mode after writing, so that every output is shared alike.
            os.chmod(tmp_path, OUTPUT_MODE)
            if fsync:
                with open(tmp_path, "rb+") as f:
                    os.fsync(f.fileno())
            os.replace(tmp_path, path)
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            raise
    finally:
        os.close(fd)  # releases the lock, after the rename or the removal


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path, fsync=False) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


#: Free bytes under which a failed write is reported as a full disk.
_LOW_SPACE = 64 << 20


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` atomically, synced to disk.

    Raises:
        OSError: ``ENOSPC`` naming ``path`` when the write failed on a (nearly) full disk; torch itself only says
            "unexpected pos" or "file write failed". The previous file at ``path`` is left as it was.
    """
    try:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
    except RuntimeError as err:
        folder = Path(path).parent
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            raise err from None
        if free >= _LOW_SPACE:
            raise
        raise OSError(
            errno.ENOSPC,
            f"no space left to write {path} ({free >> 20} MiB free in {folder})",
            str(path),
        ) from None
    return Path(path)


def remove_stale_temporaries(folder: str | os.PathLike, target: str | None = None) -> list[Path]:
    """Delete the temporary files that interrupted :func:`atomic_path` writes left in ``folder``.

    A write killed before its rename leaves ``.{name}.XXXXXXXX.tmp`` behind (up to a whole checkpoint or decode
    cache); the next run on the same folder calls this before it writes anything. A temporary file whose writer
    still runs (its ``flock`` is held: another run or rank sharing a cache folder) is left alone. Only ``folder``
    itself is looked at, not its sub-folders, and with ``target`` only the temporaries of that one file name.

    Returns:
        The files removed (logged at INFO).
    """
    removed: list[Path] = []
    root = Path(folder)
    if not root.is_dir():
        return removed
    for file in sorted(root.iterdir()):
        name = file.name
        if not _TEMPORARY.match(name) or (target is not None and not name.startswith(f".{target}.")):
            continue
        if target is not None and len(name) != len(target) + 14:  # "." + target + "." + 8 + ".tmp"
            continue
        if not file.is_symlink() and file.is_file() and _remove_if_abandoned(file):
            removed.append(file)
    for file in removed:
        _logger.info("removed %s, left by an interrupted write", file)
    return removed


def _remove_if_abandoned(file: Path) -> bool:
    """Unlink ``file`` unless a live :func:`atomic_path` write holds its lock; True when it was removed."""
    try:
        fd = os.open(file, os.O_RDONLY)
    except FileNotFoundError:  # finished or removed by its writer meanwhile
        return False
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # its writer is alive
        file.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------------------------
# Plain values for YAML and JSON
# ---------------------------------------------------------------------------------------------------------------


def plain(value: Any, *, finite: bool = False) -> Any:
    """``value`` as plain Python values, recursively, for ``yaml.safe_dump`` and ``json.dumps``.

    Mappings become dicts with ``str`` keys, tuples and lists become lists, arrays become (nested) lists, paths
    and ``str`` subclasses (e.g. torch's ``TorchVersion``) become ``str``, numpy and torch scalars become Python
    numbers. Everything else is returned as it is.

    Args:
        value: what to convert.
        finite: also turn NaN and infinities into ``None`` (strict JSON has no NaN).

    Returns:
        The converted value (a new container; ``value`` itself is not modified).
    """
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v, finite=finite) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, finite=finite) for v in value]
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim > 0:
        return plain(value.tolist(), finite=finite)
    if not isinstance(value, (bool, int, float)) and callable(getattr(value, "item", None)):
        value = value.item()  # numpy / torch scalars
    if finite and isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, float):
        return float(value)  # a float subclass (np.float64) as a Python float
    return value


def json_text(value: Any, indent: int = 2) -> str:
    """``value`` as strict JSON (NaN and infinities as ``null``, see :func:`plain`), ending in a newline."""
    return json.dumps(plain(value, finite=True), indent=indent) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# Tables as text
# ---------------------------------------------------------------------------------------------------------------


def _check(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    for i, row in enumerate(rows):
        if len(row) != len(headers):
            raise ValueError(
                f"rows[{i}]: expected {len(headers)} cells to match headers, received {len(row)}"
            )


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """Columns padded to a common width.

    Args:
        headers: column titles.
        rows: cells as text, one sequence per row.
        align: one letter per column, ``l`` or ``r``; default: first column left, the rest right.

    Returns:
        The table, lines joined by newlines (no trailing newline).
    """
    _check(headers, rows)
    align = align or "l" + "r" * (len(headers) - 1)
    if len(align) != len(headers) or set(align) - {"l", "r"}:
        raise ValueError(f"align: expected {len(headers)} letters from 'l'/'r', received {align!r}")
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            str(c).ljust(w) if a == "l" else str(c).rjust(w)
            for c, w, a in zip(cells, widths, align, strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table (``|`` in cells escaped); first column left-, others right-aligned."""
    _check(headers, rows)

    def cell(c: str) -> str:
        return str(c).replace("|", "\\|")

    align = ["---"] + ["--:"] * (len(headers) - 1)
    out = ["| " + " | ".join(cell(h) for h in headers) + " |", "| " + " | ".join(align) + " |"]
    out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(out)
