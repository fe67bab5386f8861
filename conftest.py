"""Root pytest configuration, seen by tests/ and benchmarks/.

- ``--benchmark`` collects the timed benchmarks under benchmarks/ (plain ``pytest`` skips them and times nothing).
- Every test starts from the same random seed.
- OpenMP threads wait passively (see below).
- Without a CUDA device, Triton kernels run in the interpreter (``TRITON_INTERPRET=1``) on CPU tensors; this must
  be set before Triton is first imported, hence here.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

BENCHMARK_DIR = Path(__file__).parent / "benchmarks"

# OpenMP threads (torch's and medens._C's) otherwise spin while waiting; on a 2-core machine shared with other
# processes, a spinning team makes each parallel region wait for a descheduled thread (steps 10-40x slower).
# Must be set before torch (and its OpenMP runtime) is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


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
