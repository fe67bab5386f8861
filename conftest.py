"""Root pytest configuration, seen by tests/ and benchmarks/.

- ``--benchmark`` collects the timed benchmarks under benchmarks/ (plain ``pytest`` skips them and times nothing).
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
from pathlib import Path

import pytest

BENCHMARK_DIR = Path(__file__).parent / "benchmarks"


def _benchmarking() -> bool:
    return "--benchmark" in sys.argv[1:] + os.environ.get("PYTEST_ADDOPTS", "").split()


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
        help="run the timed benchmarks under benchmarks/ (skipped otherwise)",
    )


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if config.getoption("--benchmark"):
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
