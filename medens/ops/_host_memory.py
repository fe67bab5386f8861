"""Outputs of the CPU kernels, taken from the host cache of ``medens._C`` when they are large.

A new tensor of many megabytes from the system allocator is a fresh mapping, and writing it the first time costs
a page fault per page, in which the kernel zeroes the page: for a (64, 3, 224, 224) float32 output that is several
times the op itself. The extension keeps such blocks when their tensor dies and hands them out again, already
mapped, so a training loop that asks for the same sizes every step stops paying for it (the same idea as CUDA's
caching allocator). Small outputs come from ``torch.empty``.

The idle bytes kept are bounded: 1 GiB by default, ``MEDENS_HOST_CACHE_MB`` sets another limit (0 turns the
cache off), and :func:`empty_host_cache` frees the idle blocks. Tensors over a cached block behave as any other, except
that their storage cannot be resized in place (``resize_`` to a larger size raises), as with ``torch.from_numpy``.
"""

from __future__ import annotations

import functools
import math
import os

import torch
from torch import Tensor

from ._backends import extension

CACHED_MIN_BYTES = 1 << 20
LIMIT_ENVIRONMENT_VARIABLE = "MEDENS_HOST_CACHE_MB"
# DLPack (type code, bits) of the dtypes the kernels write.
DLPACK_DTYPES = {
    torch.bool: (6, 8),
    torch.uint8: (1, 8),
    torch.int32: (0, 32),
    torch.int64: (0, 64),
    torch.float16: (2, 16),
    torch.bfloat16: (4, 16),
    torch.float32: (2, 32),
    torch.float64: (2, 64),
}


@functools.cache
def _configured_extension():
    """The extension, with the cache limit from the environment applied once; None without it."""
    ext = extension()
    if ext is None:
        return None
    setting = os.environ.get(LIMIT_ENVIRONMENT_VARIABLE)
    if setting is not None:
        try:
            megabytes = float(setting)
        except ValueError:
            raise ValueError(
                f"{LIMIT_ENVIRONMENT_VARIABLE}: expected a number of megabytes (0 turns the host cache off), "
                f"got {setting!r}"
            ) from None
        if megabytes < 0:
            raise ValueError(f"{LIMIT_ENVIRONMENT_VARIABLE}: expected a number >= 0, got {setting!r}")
        ext.host_cache_set_limit(int(megabytes * (1 << 20)))
    return ext


@functools.cache
def _cache() -> object | None:
    """The extension when the host cache is on (built, and a limit above 0), else None."""
    ext = _configured_extension()
    return ext if ext is not None and ext.host_cache_info()["limit_bytes"] > 0 else None


def empty(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """An uninitialised contiguous CPU tensor; from the host cache when it holds 1 MiB or more."""
    cache = _cache() if math.prod(shape) * dtype.itemsize >= CACHED_MIN_BYTES and dtype in DLPACK_DTYPES else None
    if cache is None:
        return torch.empty(shape, dtype=dtype)
    code, bits = DLPACK_DTYPES[dtype]
    return torch.from_dlpack(cache.host_block(list(shape), code, bits))


def empty_host_cache() -> int:
    """Frees the idle blocks of the host cache; returns the bytes freed (0 without the extension)."""
    ext = extension()
    return 0 if ext is None else int(ext.host_cache_clear())


def host_cache_info() -> dict[str, int]:
    """The host cache's ``limit_bytes``, ``idle_bytes``, ``idle_blocks``, ``in_use_bytes``, ``hits`` and
    ``misses`` (all zero without the extension)."""
    ext = _configured_extension()
    if ext is None:
        keys = ("limit_bytes", "idle_bytes", "idle_blocks", "in_use_bytes", "hits", "misses")
        return dict.fromkeys(keys, 0)
    return {key: int(value) for key, value in ext.host_cache_info().items()}
