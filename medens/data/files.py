"""Filesystem helpers shared by the dataset layouts: listing images, finding folders, atomic writes."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image

from .errors import DatasetError, DatasetNotFoundError

# Files that archive tools and operating systems leave beside real data.
_JUNK_NAMES = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini", ".DS_Store"})


def image_extensions() -> frozenset[str]:
    """Lower-case file extensions (with the dot) that Pillow can open, e.g. ``{".png", ".jpg", ...}``."""
    return frozenset(ext.lower() for ext in Image.registered_extensions())


def is_junk(path: Path) -> bool:
    """True for hidden files, macOS resource forks (``._x.png``) and archive leftovers (``__MACOSX``)."""
    return path.name.startswith(".") or path.name in _JUNK_NAMES


def list_images(folder: Path, *, recursive: bool = False, exclude_dirs: Iterable[str] = ()) -> list[Path]:
    """List image files in ``folder``, sorted by path, skipping junk files and folders.

    Args:
        folder: Folder to list.
        recursive: Also list images in sub-folders (junk folders and ``exclude_dirs`` are not entered).
        exclude_dirs: Sub-folder names never entered (compared case-insensitively), e.g. ``("masks",)``.

    Returns:
        Paths of files whose extension Pillow registers, sorted so that every run sees the same order.
    """
    extensions = image_extensions()
    excluded = {name.lower() for name in exclude_dirs}
    found: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if is_junk(entry):
            continue
        if entry.is_dir():
            if recursive and entry.name.lower() not in excluded:
                found.extend(list_images(entry, recursive=True, exclude_dirs=exclude_dirs))
        elif entry.suffix.lower() in extensions:
            found.append(entry)
    return sorted(found)


def subfolders(folder: Path) -> list[Path]:
    """Non-junk sub-folders of ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not is_junk(p))


def require_root(root: str | os.PathLike[str] | None, dataset: str) -> Path:
    """Check that ``root`` is an existing folder and return it as a resolved :class:`Path`.

    Raises:
        DatasetNotFoundError: ``root`` is None, missing, or a file.
    """
    if root is None:
        raise DatasetNotFoundError(f"{dataset}: argument 'root' is required (expected a folder path), got None")
    path = Path(root).expanduser()
    if not path.exists():
        raise DatasetNotFoundError(f"{dataset}: root folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise DatasetNotFoundError(f"{dataset}: root {str(path)!r} is a file, expected a folder")
    return path.resolve()


def find_child_dir(root: Path, names: Iterable[str]) -> Path | None:
    """Return the sub-folder of ``root`` whose name matches one of ``names`` (case-insensitively), if any."""
    wanted = {n.lower() for n in names}
    for child in subfolders(root):
        if child.name.lower() in wanted:
            return child
    return None


def describe_folder(folder: Path, limit: int = 8) -> str:
    """A short listing of what a folder holds, for error messages: ``'a/, b/, x.txt, ... (12 entries)'``."""
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        return f"<unreadable: {exc}>"
    if not entries:
        return "nothing (empty folder)"
    names = [e.name + ("/" if e.is_dir() else "") for e in entries[:limit]]
    more = f", ... ({len(entries)} entries)" if len(entries) > limit else ""
    return ", ".join(names) + more


def require_nonempty(images: list[Path], folder: Path, dataset: str, what: str) -> None:
    """Raise if a class folder holds no images, naming the folder and what it does hold."""
    if not images:
        raise DatasetError(
            f"{dataset}: {what} folder {str(folder)!r} holds no images "
            f"(expected image files such as .png/.jpg); found {describe_folder(folder)}"
        )


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o644)  # mkstemp makes the file owner-only
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (temp file, then rename)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode("utf-8"))
