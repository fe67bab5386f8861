"""The tests, and users, run the installed build: checked child processes, the warning of a source tree without
``medens._C``, and ``pytest --benchmark``'s refusal to time the reference alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from tests._installed import CHECKOUT, installed

WARNING = "MissingCompiledCoreWarning"

#: Imports medens and a subpackage without ops, then looks for the compiled core every way medens does, twice.
USE_THE_OPS = """
import json, os, sys
import medens, medens.evaluate
print("-- imported --", file=sys.stderr, flush=True)
import torch
from medens.ops import available_backends, build_info, patch_entropy
images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
first = available_backends()
auto, reference = patch_entropy(images, 8), patch_entropy(images, 8, backend="reference")
build_info()
print(json.dumps({"cpp": first["cpp"], "close": torch.allclose(auto, reference, atol=1e-4),
                  "again": available_backends() == first, "medens": medens.__file__, "cwd": os.getcwd()}))
"""


def _editable() -> bool:
    """Whether medens is installed in editable mode (then the checkout's Python files are the installed ones)."""
    try:
        text = metadata.distribution("medens").read_text("direct_url.json") or "{}"
    except metadata.PackageNotFoundError:
        return False
    return bool(json.loads(text).get("dir_info", {}).get("editable"))


needs_a_plain_install = pytest.mark.skipif(
    _editable(), reason="medens is installed in editable mode: the checkout is the installed build")


def _source_tree(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python ARGS`` importing the checkout's source tree (PYTHONPATH), run from ``cwd``."""
    env = {**os.environ, "PYTHONPATH": str(CHECKOUT), "PYTHONWARNINGS": "always", "PYTEST_ADDOPTS": ""}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_a_child_runs_the_installed_build_which_does_not_warn() -> None:
    child = installed("-c", USE_THE_OPS, PYTHONPATH=str(CHECKOUT), PYTHONWARNINGS="always")
    result = subprocess.run(**child, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    ran = json.loads(result.stdout)
    assert ran["cpp"] and ran["close"] and ran["again"]
    assert not Path(ran["cwd"]).resolve().is_relative_to(CHECKOUT)
    assert _editable() or not Path(ran["medens"]).resolve().is_relative_to(CHECKOUT), ran["medens"]
    assert WARNING not in result.stderr and "medens._C" not in result.stderr, result.stderr


@needs_a_plain_install
def test_a_child_that_imports_the_source_tree_stops_before_its_target() -> None:
    child = installed("-c", "print('the target ran')")
    child["env"]["PYTHONPATH"] = str(CHECKOUT)  # what the helper takes away
    result = subprocess.run(**child, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "the target ran" not in result.stdout
    assert "medens was imported from the checkout" in result.stderr, result.stderr


def test_a_child_refuses_a_folder_inside_the_checkout() -> None:
    with pytest.raises(ValueError, match="cwd must be a folder outside the checkout"):
        installed("-c", "pass", cwd=CHECKOUT / "tests")


@needs_a_plain_install
def test_a_source_tree_warns_once_when_it_needs_the_core_and_still_runs_the_reference(tmp_path: Path) -> None:
    result = _source_tree("-c", USE_THE_OPS, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    ran = json.loads(result.stdout)
    assert not ran["cpp"] and ran["close"] and ran["again"]
    assert Path(ran["medens"]).resolve().is_relative_to(CHECKOUT)
    imported, used = result.stderr.split("-- imported --")
    assert WARNING not in imported  # `import medens` stays cheap and silent; the first op says it
    assert used.count(WARNING) == 1, result.stderr  # once although asked again, under PYTHONWARNINGS=always
    assert "medens._C, the compiled core of medens, is missing" in used
    assert f"`pip install .` in {CHECKOUT}" in used


# ---- pytest --benchmark -------------------------------------------------------------------------------------

#: One benchmark over the (device, backend) pairs of benchmarks/conftest.py.
BENCHMARK = """
import pytest

from .conftest import run

pytestmark = pytest.mark.benchmark


def test_rows(benchmark, device, backend):
    run(benchmark, lambda: None, op="nothing", case="a row", backend=backend, device=device, bytes_moved=0,
        rounds=1, warmup_rounds=0)
"""


@pytest.fixture
def bench_project(tmp_path: Path) -> Path:
    """A project with this checkout's two conftest files and one tiny benchmark."""
    project = tmp_path / "project"
    (project / "benchmarks").mkdir(parents=True)
    shutil.copy(CHECKOUT / "conftest.py", project / "conftest.py")
    shutil.copy(CHECKOUT / "benchmarks" / "conftest.py", project / "benchmarks" / "conftest.py")
    (project / "benchmarks" / "__init__.py").write_text("")
    (project / "benchmarks" / "test_bench_rows.py").write_text(BENCHMARK)
    (project / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider -p no:xdist\n")
    return project


def _rows(output: str) -> set[str]:
    """The backends of the benchmarks that passed, from ``-v`` output (``test_rows[cpu-cpp] PASSED``)."""
    return {line.split("[", 1)[1].split("]", 1)[0] for line in output.splitlines()
            if "test_rows[" in line and "PASSED" in line}


@pytest.mark.slow
@needs_a_plain_install
def test_benchmarks_refuse_a_medens_without_its_compiled_backend(bench_project: Path) -> None:
    result = _source_tree("-m", "pytest", "--benchmark", "-v", cwd=bench_project)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    assert "--benchmark times the compiled backends" in result.stderr
    assert "--benchmark-reference-only" in result.stderr and "pip install ." in result.stderr
    assert "test_rows" not in result.stdout


@pytest.mark.slow
@needs_a_plain_install
def test_benchmarks_of_the_reference_alone_run_without_the_compiled_backend(bench_project: Path) -> None:
    result = _source_tree("-m", "pytest", "--benchmark-reference-only", "-v", cwd=bench_project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {row.split("-")[1] for row in _rows(result.stdout)} == {"reference"}
    assert "medens: NO COMPILED CORE" in result.stdout  # the header
    assert "--benchmark-reference-only: the pure-PyTorch reference backend alone is timed" in result.stdout
    assert "--benchmark-reference-only: the reference backend alone was timed" in result.stdout  # the summary


@pytest.mark.slow
@pytest.mark.parametrize(("flag", "backends"), [("--benchmark", {"reference", "cpp"}),
                                                ("--benchmark-reference-only", {"reference"})])
def test_benchmarks_of_the_installed_build(bench_project: Path, flag: str, backends: set[str]) -> None:
    child = installed("-m", "pytest", flag, "-v", cwd=bench_project, PYTEST_ADDOPTS="")
    result = subprocess.run(**child, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {row for row in _rows(result.stdout) if row.startswith("cpu-")} == {f"cpu-{b}" for b in backends}
    assert "NO COMPILED CORE" not in result.stdout
