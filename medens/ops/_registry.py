"""Where backends register their kernels: one table from (op, backend) to a callable."""

from __future__ import annotations

from collections.abc import Callable

_KERNELS: dict[tuple[str, str], Callable] = {}


def register_kernel(op: str, backend: str) -> Callable[[Callable], Callable]:
    """Decorator: ``fn`` implements ``op`` on ``backend``."""

    def decorate(fn: Callable) -> Callable:
        _KERNELS[(op, backend)] = fn
        return fn

    return decorate


def kernel(op: str, backend: str) -> Callable:
    try:
        return _KERNELS[(op, backend)]
    except KeyError:
        raise RuntimeError(f"medens: no {backend} kernel is registered for {op}") from None
