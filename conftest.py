"""Root pytest configuration, seen by tests/ and benchmarks/.

- The header says which medens is under test and whether its compiled core (``medens._C``) loaded.
- ``--benchmark`` collects the timed benchmarks under benchmarks/ (plain ``pytest`` skips them and times nothing).
  It refuses to run when the imported medens has no compiled backend (the benchmarks would time the reference
  alone, e.g. under ``python -m pytest`` in the checkout), unless ``--benchmark-reference-only`` asks for the
  pure-PyTorch reference rows only.
- Every test starts from the same random seed.
- OpenMP threads wait passively in tests, and as OpenMP does by default in benchmarks (see below).
- Without a CUDA device, Triton kernels run in the interpreter (``TRITON_INTERPRET=1``) on CPU tensors; this must
  be set before Triton is first imported, hence here.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import warnings
from pathlib import Path

import pytest

BENCHMARK_DIR = Path(__file__).parent / "benchmarks"


def _benchmarking() -> bool:
    args = sys.argv[1:] + os.environ.get("PYTEST_ADDOPTS", "").split()
    return "--benchmark" in args or "--benchmark-reference-only" in args


# Tests: OpenMP threads (torch's and medens._C's) otherwise spin while waiting; on a 2-core machine shared with
# other processes, a spinning team makes each parallel region wait for a descheduled thread (steps 10-40x slower).
# Benchmarks keep OpenMP's default (spin briefly, then sleep), which is what users run with: a passive wait costs
# every parallel region two thread wake-ups, measured at 0.1-0.2 ms per call on the 2-core VM, 15-20% of a
# sub-millisecond op. Must be set before torch (and its OpenMP runtime) is imported.
if not _benchmarking():
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# The image-signature cache of duplicate detection goes to a folder of this test session, never the user's cache.
os.environ.setdefault("MEDENS_CACHE_DIR", tempfile.mkdtemp(prefix="medens-test-cache-"))


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return torch.cuda.is_available()


if not _cuda_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--benchmark",
        action="store_true",
        default=False,
        help="run the timed benchmarks under benchmarks/ (skipped otherwise); needs the compiled medens._C",
    )
    parser.addoption(
        "--benchmark-reference-only",
        action="store_true",
        default=False,
        help="run the benchmarks (as --benchmark) timing only the pure-PyTorch reference backend, "
        "also when medens has no compiled backend",
    )


def _benchmark_mode(config: pytest.Config) -> str | None:
    """``"all"`` (``--benchmark``), ``"reference"`` (``--benchmark-reference-only``) or None (no benchmarks)."""
    if config.getoption("--benchmark-reference-only"):
        return "reference"
    return "all" if config.getoption("--benchmark") else None


_UNDER_TEST = pytest.StashKey[dict]()


def pytest_configure(config: pytest.Config) -> None:
    """Finds which medens is under test; refuses ``--benchmark`` without its compiled backend."""
    import medens
    import medens.ops
    from medens.ops._backends import MissingCompiledCoreWarning

    # Said here, in the header, rather than as a warning in whichever test first asks for a backend (where the
    # suite's filterwarnings would turn it into that one test's error). Asked once: medens caches the answer.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MissingCompiledCoreWarning)
        backends = medens.ops.available_backends()
    missing = [str(w.message) for w in caught if issubclass(w.category, MissingCompiledCoreWarning)]
    compiled = [name for name, ok in backends.items() if ok and name != "reference"]
    package = Path(medens.__file__).parent
    reason = None
    if not backends["cpp"]:
        reason = missing[0] if missing else (f"medens._C in {package} failed to load "
                                             f"({medens.ops.build_info()['extension_error']}); reinstall medens "
                                             "with `pip install .`.")
    config.stash[_UNDER_TEST] = {"path": package, "version": medens.__version__, "compiled": compiled, "reason": reason}
    if _benchmark_mode(config) == "all" and reason:
        raise pytest.UsageError(
            "--benchmark times the compiled backends against the reference, and the medens imported here has "
            f"none: {reason} Or pass --benchmark-reference-only to time the pure-PyTorch reference rows alone."
        )


def pytest_report_header(config: pytest.Config) -> list[str]:
    found = config.stash[_UNDER_TEST]
    compiled = ", ".join(found["compiled"]) or "none"
    lines = [f"medens {found['version']}: {found['path']} (backends beside the reference: {compiled})"]
    if found["reason"]:
        lines.append(f"medens: NO COMPILED CORE, only the reference ops are tested: {found['reason']}")
    if _benchmark_mode(config) == "reference":
        lines.append("benchmarks: --benchmark-reference-only: the pure-PyTorch reference backend alone is timed")
    return lines


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if _benchmark_mode(config):
        return None
    try:
        collection_path.relative_to(BENCHMARK_DIR)
    except ValueError:
        return None
    return True


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
