"""``patch_entropy`` in Triton: one program per patch.

A program loads its p x p patch in tiles of rows (each channel once), computes grey levels and bins exactly as
``csrc/include/medens/patch_math.h`` does (float32, ``(0.299 R + 0.587 G) + 0.114 B``, IEEE division or, for a
power-of-two range, the exact reciprocal; no FMA),
counts them with ``tl.histogram``, and sums ``count * (log2 n - log2 count)`` over the bins in float64.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import FP_OPTIONS, float64_bits, ieee_quiet, next_power_of_2, strides

TILE_ELEMENTS = 4096
"""Pixels a program loads at once (rows of a patch, padded to powers of two)."""


@triton.jit(do_not_specialize=["log2_n_bits"])
def _patch_entropy_kernel(
    images, out, num_patches, patches_per_row, stride_b, stride_c, stride_h, stride_w, lo, range_width, inv_width,
    bins_f, log2_n_bits,
    PATCH: tl.constexpr, CHANNELS: tl.constexpr, BLOCK_W: tl.constexpr, ROWS: tl.constexpr,
    NUM_BINS: tl.constexpr, POW2: tl.constexpr,
):
    item = tl.program_id(0).to(tl.int64)
    b = item // num_patches
    m = item - b * num_patches
    pi = m // patches_per_row
    pj = m - pi * patches_per_row
    origin = images + b * stride_b + pi * PATCH * stride_h + pj * PATCH * stride_w
    lo = tl.cast(lo, tl.float32)
    width = tl.cast(range_width, tl.float32)
    top = tl.cast(bins_f, tl.float32)
    cols = tl.arange(0, BLOCK_W)
    counts = tl.zeros([NUM_BINS], dtype=tl.int32)
    for r0 in range(0, PATCH, ROWS):
        rows = r0 + tl.arange(0, ROWS)
        valid = (rows[:, None] < PATCH) & (cols[None, :] < PATCH)
        offsets = rows[:, None] * stride_h + cols[None, :] * stride_w
        if CHANNELS == 1:
            grey = tl.load(origin + offsets, mask=valid).to(tl.float32)
        else:
            red = 0.299 * tl.load(origin + offsets, mask=valid).to(tl.float32)
            green = 0.587 * tl.load(origin + stride_c + offsets, mask=valid).to(tl.float32)
            blue = 0.114 * tl.load(origin + 2 * stride_c + offsets, mask=valid).to(tl.float32)
            grey = (red + green) + blue
        if POW2:  # multiplying by the exact reciprocal of a power of two is the division, and cheaper
            x = ((grey - lo) * tl.cast(inv_width, tl.float32)) * top
        else:
            x = tl.div_rn(grey - lo, width) * top
        x = tl.where(x >= 1.0, x, 0.0)  # negatives, NaN and [0, 1) all land in bin 0
        x = tl.where(x < top, x, top - 1.0)  # at or past the top: last bin
        # Lanes outside the patch count in bin 0 and are taken back out below: compiled tl.histogram with a mask
        # miscounted on an H200 (Triton 3.6, p = 24: 1024 lanes, 4 warps), the interpreter did not.
        bins = tl.reshape(tl.where(valid, x.to(tl.int32), 0), [ROWS * BLOCK_W])
        counts += tl.histogram(bins, NUM_BINS)
        outside = ROWS * BLOCK_W - tl.sum(valid.to(tl.int32))
        counts -= tl.where(tl.arange(0, NUM_BINS) == 0, outside, 0)
    log2_n = log2_n_bits.to(tl.int64).to(tl.float64, bitcast=True)
    c = counts.to(tl.float64)
    terms = tl.where(c > 0.0, c * (log2_n - tl.log2(tl.maximum(c, 1.0))), 0.0)
    h = tl.sum(terms, axis=0) / (PATCH * PATCH)
    tl.store(out + item, tl.maximum(h, 0.0).to(tl.float32))


def _is_power_of_two(width: float) -> bool:
    """As is_power_of_two in patch_math.h: a power of two whose reciprocal is a normal float32."""
    mantissa, exponent = math.frexp(width)
    return mantissa == 0.5 and -125 <= exponent - 1 <= 125


def patch_entropy(images: torch.Tensor, patch_size: int, bins: int, lo: float, range_width: float,
                  out: torch.Tensor) -> None:
    """Entropies (bits) of (B, C, H, W) images, C in {1, 3}, any strides, written to ``out``: (B, N) float32
    contiguous."""
    b, c, h, w = images.shape
    p = patch_size
    num_patches = (h // p) * (w // p)
    if out.numel() == 0:
        return
    pow2 = _is_power_of_two(range_width)
    block_w = next_power_of_2(p)
    rows = min(block_w, max(1, TILE_ELEMENTS // block_w))
    with ieee_quiet(images.device):
        _patch_entropy_kernel[(b * num_patches,)](
            images=images, out=out, num_patches=num_patches, patches_per_row=w // p,
            **strides(images, "stride_b", "stride_c", "stride_h", "stride_w"), lo=lo, range_width=range_width,
            inv_width=1.0 / range_width if pow2 else 0.0, bins_f=float(bins),
            log2_n_bits=float64_bits(math.log2(p * p)), PATCH=p, CHANNELS=c, BLOCK_W=block_w, ROWS=rows,
            NUM_BINS=next_power_of_2(bins), POW2=pow2, num_warps=4 if rows * block_w >= 1024 else 2, **FP_OPTIONS,
        )
