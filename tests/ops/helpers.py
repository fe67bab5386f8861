"""Shared helpers for the op tests: random inputs of every supported dtype and the backends to compare."""

from __future__ import annotations

import torch

from medens.ops import available_backends

IMAGE_DTYPES = (torch.uint8, torch.float16, torch.bfloat16, torch.float32)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# The CPU backends that are compared with the reference here (Triton/CUDA have their own test files).
CPU_BACKENDS = [name for name in ("cpp",) if available_backends()[name]]


def random_images(shape: tuple[int, ...], dtype: torch.dtype, *, generator: torch.Generator | None = None,
                  layout: str = "contiguous") -> torch.Tensor:
    """Random images in the dtype's default value range, in one of several memory layouts.

    layout: "contiguous", "channels_last", or "strided" (every other column of a twice-as-wide tensor,
    so no dimension has unit stride).
    """
    b, c, h, w = shape
    full_w = 2 * w if layout == "strided" else w
    if dtype == torch.uint8:
        x = torch.randint(0, 256, (b, c, h, full_w), dtype=torch.uint8, generator=generator)
    else:
        x = torch.rand(b, c, h, full_w, generator=generator).to(dtype)
    if layout == "strided":
        x = x[..., ::2]
    elif layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    assert x.shape == shape
    return x


def smooth_images(shape: tuple[int, ...], dtype: torch.dtype, *, levels: int = 12,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Images with few distinct grey levels and large flat areas (histograms with repeated bins), like scans."""
    b, c, h, w = shape
    coarse = torch.randint(0, levels, (b, 1, max(h // 4, 1), max(w // 4, 1)), generator=generator).float() / levels
    x = torch.nn.functional.interpolate(coarse, size=(h, w), mode="nearest").expand(b, c, h, w).contiguous()
    return (x * 255).round().to(torch.uint8) if dtype == torch.uint8 else x.to(dtype)
