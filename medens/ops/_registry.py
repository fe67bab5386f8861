"""Where backends register their kernels: one table from (op, backend) to a callable.

Each compiled backend lives in its own module, imported the first time one of its kernels is asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

_KERNELS: dict[tuple[str, str], Callable] = {}
_BACKEND_MODULES = {"cpp": "medens.ops._cpp", "cuda": "medens.ops._cuda", "triton": "medens.ops._triton"}


def register_kernel(op: str, backend: str) -> Callable[[Callable], Callable]:
    """Decorator: ``fn`` implements ``op`` on ``backend``."""

    def decorate(fn: Callable) -> Callable:
        _KERNELS[(op, backend)] = fn
        return fn

    return decorate


def kernel(op: str, backend: str) -> Callable:
    """The kernel of ``op`` on ``backend``, importing that backend's module on first use."""
    found = _KERNELS.get((op, backend))
    if found is None and backend in _BACKEND_MODULES:
        importlib.import_module(_BACKEND_MODULES[backend])
        found = _KERNELS.get((op, backend))
    if found is None:
        raise RuntimeError(f"medens: no {backend} kernel is registered for {op}")
    return found
