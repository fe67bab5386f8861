"""Argument checks shared by the public ops.

Every check runs before any kernel and raises a ValueError or TypeError naming the argument, what was expected
and what was received. Checks that must read tensor values (index ranges, non-negative scores) are skipped while
``torch.compile`` traces; the kernels stay in bounds on their own.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

IMAGE_DTYPES = (torch.uint8, torch.float16, torch.bfloat16, torch.float32)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MIN_BINS, MAX_BINS = 2, 4096


def _names(dtypes: Sequence[torch.dtype]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def eager() -> bool:
    """True unless torch.compile is tracing (value checks would break the graph)."""
    return not torch.compiler.is_compiling()


def check_tensor(name: str, value: object, *, ndim: int, dtypes: Sequence[torch.dtype]) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.device.type == "meta" and eager():
        # A meta tensor has a shape but no values: the value checks and the kernels cannot read it.
        raise ValueError(f"{name} must be a tensor with values (on the CPU or a GPU), got a tensor on the meta device")
    if value.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(value.shape)}")
    if value.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype {_names(dtypes)}; got {str(value.dtype).replace('torch.', '')}")
    return value


def check_int(name: str, value: object, *, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        expected = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {expected}, got {value}")
    return value


def check_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    return float(value)


def check_images(name: str, images: object, patch_size: object, *, dtypes: Sequence[torch.dtype],
                 channels: Sequence[int] | None = (1, 3)) -> tuple[Tensor, int]:
    """(B, C, H, W) with allowed dtype and channel count, H and W multiples of patch_size >= 1."""
    images = check_tensor(name, images, ndim=4, dtypes=dtypes)
    p = check_int("patch_size", patch_size, low=1)
    _, c, h, w = images.shape
    if channels is not None and c not in channels:
        raise ValueError(f"{name} must have C in {set(channels)} channels, got C = {c} (shape {tuple(images.shape)})")
    if h % p or w % p:
        raise ValueError(
            f"{name} height and width must be multiples of patch_size = {p}, got H = {h}, W = {w}"
        )
    return images, p


def check_same_device(**tensors: Tensor | None) -> None:
    present = {k: v for k, v in tensors.items() if v is not None}
    devices = {k: v.device for k, v in present.items()}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{k} on {d}" for k, d in devices.items())
        first = next(iter(devices))
        raise ValueError(f"{first}: expected every tensor on {devices[first]} (one device), received {listing}")


def check_shape(name: str, value: Tensor, expected: tuple[int, ...], what: str) -> None:
    if tuple(value.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)} ({what}), got {tuple(value.shape)}")


def check_value_range(value_range: object) -> tuple[float, float]:
    if not isinstance(value_range, Sequence) or isinstance(value_range, str) or len(value_range) != 2:
        raise TypeError(f"value_range must be a pair (lo, hi), got {value_range!r}")
    lo, hi = (check_float("value_range", v) for v in value_range)
    if not (math.isfinite(lo) and math.isfinite(hi)) or not lo < hi:
        raise ValueError(f"value_range must be finite with lo < hi, got ({lo}, {hi})")
    return lo, hi


def check_indices(name: str, ids: Tensor, upper: int) -> bool:
    """Values of ids in [0, upper) (eager mode only). Returns whether they were checked."""
    if not eager():
        return False
    if ids.numel():
        lo, hi = (int(v) for v in torch.aminmax(ids.detach()))
        if lo < 0 or hi >= upper:
            raise ValueError(f"{name} must hold patch indices in [0, {upper}), got values in [{lo}, {hi}]")
    return True
