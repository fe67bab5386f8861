"""Filesystem helpers shared by the dataset layouts: listing images, finding folders, atomic writes."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image

from medens.io import atomic_path

from .errors import DatasetNotFoundError, DatasetUsageError

_logger = logging.getLogger(__name__)

# Files that archive tools and operating systems leave beside real data.
_JUNK_NAMES = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini", ".DS_Store"})


def image_extensions() -> frozenset[str]:
    """Lower-case file extensions (with the dot) that Pillow can open, e.g. ``{".png", ".jpg", ...}``."""
    return frozenset(ext.lower() for ext in Image.registered_extensions())


def is_junk(path: Path) -> bool:
    """True for hidden files, macOS resource forks (``._x.png``) and archive leftovers (``__MACOSX``)."""
    return path.name.startswith(".") or path.name in _JUNK_NAMES


def list_images(folder: Path, *, recursive: bool = False) -> list[Path]:
    """List image files in ``folder``, sorted by path, skipping junk files and folders.

    A walk enters each real folder once and never climbs above ``folder``: a link to a folder already entered
    (``a/self -> .``, a sibling listed before) or to one that holds ``folder`` (``a/up -> ..``) is skipped with a
    warning, so loops end and no image is listed twice or under another class's folder. Two
    names of one file (symbolic or hard links) are listed once, under the first name in sorted order.

    Args:
        folder: Folder to list.
        recursive: Also list images in sub-folders (junk folders are not entered).

    Returns:
        Paths of files whose extension Pillow registers, sorted so that every run sees the same order.
    """
    extensions = image_extensions()
    found: list[Path] = []
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[tuple[int, int]] = set()

    def walk(directory: Path) -> None:
        st = directory.stat()
        seen_dirs.add((st.st_dev, st.st_ino))
        for entry in sorted(directory.iterdir()):
            if is_junk(entry):
                continue
            if entry.is_dir():
                if not recursive:
                    continue
                est = entry.stat()
                if (est.st_dev, est.st_ino) in seen_dirs or entry.resolve() in top.parents:
                    _logger.warning(
                        "%s: skipped, a link to a folder already listed or above %s (%s)", entry, folder,
                        entry.resolve(),
                    )
                    continue
                walk(entry)
            elif entry.suffix.lower() in extensions:
                try:
                    fst = entry.stat()
                except OSError:  # a broken link: listed, so that reading it reports the file by name
                    found.append(entry)
                    continue
                key = (fst.st_dev, fst.st_ino)
                if key not in seen_files:
                    seen_files.add(key)
                    found.append(entry)

    top = folder.resolve()
    walk(folder)
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
        raise DatasetUsageError(
            f"{dataset}: root (--data-root) is required: expected the folder the dataset was unpacked in, received none"
        )
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


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (temp file, synced to disk, then rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
