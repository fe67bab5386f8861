"""Directory walks: symlink loops end, and no file is listed twice (each case under a time limit)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from medens.data import load_dataset
from medens.data.files import list_images

from .conftest import write_image

#: Seconds a walk may take: the old walk over two self-loops ran for minutes (exponential in the loop depth).
LIMIT_S = 20


def within_limit(fn: Callable[[], Any]) -> Any:
    """``fn()``, failing the test (instead of hanging it) when it takes longer than :data:`LIMIT_S`."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except BaseException as err:  # re-raised in the test's thread
            result["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(LIMIT_S)
    assert not thread.is_alive(), f"the walk did not end within {LIMIT_S} s"
    if "error" in result:
        raise result["error"]
    return result["value"]


@pytest.mark.parametrize("loops", [1, 2])
def test_self_loops_are_entered_once(tmp_path: Path, loops: int) -> None:
    a = tmp_path / "a"
    write_image(a / "x.png")
    write_image(a / "sub" / "y.png", seed=1)
    os.symlink(".", a / "self")
    if loops == 2:
        os.symlink(".", a / "sub" / "again")
        os.symlink("..", a / "sub" / "up")
    found = within_limit(lambda: list_images(a, recursive=True))
    assert found == [a / "sub" / "y.png", a / "x.png"]


def test_the_same_file_under_two_names_is_listed_once(tmp_path: Path) -> None:
    write_image(tmp_path / "c" / "b.png")
    os.symlink("b.png", tmp_path / "c" / "c_link.png")
    os.link(tmp_path / "c" / "b.png", tmp_path / "c" / "d_hard.png")
    os.symlink(tmp_path / "c", tmp_path / "z_dir_link")
    assert within_limit(lambda: list_images(tmp_path, recursive=True)) == [tmp_path / "c" / "b.png"]
    assert list_images(tmp_path / "c") == [tmp_path / "c" / "b.png"]


def test_a_folder_dataset_with_a_loop_has_each_image_once(tmp_path: Path) -> None:
    for cls in ("benign", "malignant"):
        for i in range(3):
            write_image(tmp_path / cls / f"{i}.png", seed=i)
        os.symlink(".", tmp_path / cls / "self")
    os.symlink("..", tmp_path / "benign" / "parent")
    ds = within_limit(lambda: load_dataset("folder", tmp_path))
    assert len(ds) == 6 and len(set(ds.ids)) == 6
