"""``entropy_guided_mask`` in Triton: one program per row of patches.

Keys are float64 (``±log(score + 1e-6) / T - log(-log(noise))``, or ``±score`` for T = 0) mapped to int64 with
the same order (so every backend breaks ties, and orders even NaN keys, identically). A program sorts the keys of
its row (``tl.sort``) to find the (N - K)-th largest, t; it hides the patches with keys above t and, of those equal
to t, as many as are still needed in index order (ties to the lower index). Prefix sums over the hidden flags then
place every patch in ``ids_keep`` / ``ids_mask`` (ascending by construction) and ``ids_restore``. Rows longer than
``MAX_FUSED_ROW`` patches get their keys from the same Triton code and are then ranked with a stable
``torch.sort``.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import FP_OPTIONS, float64_bits, ieee_quiet, next_power_of_2, strides

MAX_FUSED_ROW = 4096
"""Longest row selected inside one program (its keys are sorted in registers)."""

LOWEST_KEY = tl.constexpr(-(2**63))
"""Key of the lanes past the end of a row: sorts after every key (a tie with a real key leaves t unchanged)."""


@triton.jit
def _ordered_keys(scores, noise, row, idx, valid, ss0, ss1, ns0, ns1, scale,
                  PLAIN: tl.constexpr, PREFER_HIGH: tl.constexpr, UNIFORM: tl.constexpr):
    """int64 keys with the order of the float64 masking keys of patches idx of a row."""
    s = tl.load(scores + row * ss0 + idx * ss1, mask=valid, other=0.0).to(tl.float64)
    if PLAIN:
        if PREFER_HIGH:
            key = s
        else:
            key = -s
    else:
        u = tl.load(noise + row * ns0 + idx * ns1, mask=valid, other=0.5).to(tl.float64)
        gumbel = -tl.log(-tl.log(u))
        if UNIFORM:
            key = gumbel
        else:
            key = scale * tl.log(s + 1e-6) + gumbel
    bits = (key + 0.0).to(tl.int64, bitcast=True)  # + 0.0: -0.0 and +0.0 get one key, as they compare equal
    return bits ^ ((bits >> 63) & 0x7FFFFFFFFFFFFFFF)  # negative floats: reverse the magnitude order


@triton.jit(do_not_specialize=["scale_bits"])
def _select_kernel(
    scores, noise, mask, ids_keep, ids_mask, ids_restore, n, keep, ss0, ss1, ns0, ns1, scale_bits,
    PLAIN: tl.constexpr, PREFER_HIGH: tl.constexpr, UNIFORM: tl.constexpr, BLOCK_N: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    scale = scale_bits.to(tl.int64).to(tl.float64, bitcast=True)
    i = tl.arange(0, BLOCK_N)
    valid_i = i < n
    key = _ordered_keys(scores, noise, row, i, valid_i, ss0, ss1, ns0, ns1, scale, PLAIN, PREFER_HIGH, UNIFORM)
    key = tl.where(valid_i, key, LOWEST_KEY)
    hidden = n - keep
    # t: the hidden-th largest key (lanes past n sort last, so it is a key of the row); nothing when hidden = 0
    descending = tl.sort(key, descending=True)
    t = tl.sum(tl.where(i == hidden - 1, descending, 0), axis=0)
    above = valid_i & (key > t)
    tied = (valid_i & (key == t)).to(tl.int32)
    tie_rank = tl.cumsum(tied, axis=0) - tied
    still_needed = hidden - tl.sum(above.to(tl.int32), axis=0)
    hide = (above | ((tied > 0) & (tie_rank < still_needed))) & (hidden > 0)
    flags = hide.to(tl.int32)
    hide_rank = tl.cumsum(flags, axis=0) - flags
    keep_rank = i - hide_rank
    tl.store(mask + row * n + i, flags.to(tl.uint8), mask=valid_i)
    # exactly `hidden` patches are hidden, so these stay in their rows; the bounds are belt and braces
    tl.store(ids_mask + row * hidden + hide_rank, i.to(tl.int64), mask=hide & (hide_rank < hidden))
    visible = valid_i & ~hide
    tl.store(ids_keep + row * keep + keep_rank, i.to(tl.int64), mask=visible & (keep_rank < keep))
    tl.store(ids_restore + row * n + i, tl.where(hide, keep + hide_rank, keep_rank).to(tl.int64), mask=valid_i)


@triton.jit(do_not_specialize=["scale_bits"])
def _keys_kernel(
    scores, noise, keys, n, ss0, ss1, ns0, ns1, scale_bits,
    PLAIN: tl.constexpr, PREFER_HIGH: tl.constexpr, UNIFORM: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    idx = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = idx < n
    scale = scale_bits.to(tl.int64).to(tl.float64, bitcast=True)
    key = _ordered_keys(scores, noise, row, idx, valid, ss0, ss1, ns0, ns1, scale, PLAIN, PREFER_HIGH, UNIFORM)
    tl.store(keys + row * n + idx, key, mask=valid)


def entropy_guided_mask(
    scores: torch.Tensor, noise: torch.Tensor | None, num_keep: int, temperature: float, prefer_high: bool,
    mask: torch.Tensor, ids_keep: torch.Tensor, ids_mask: torch.Tensor, ids_restore: torch.Tensor,
) -> None:
    """Select the patches to hide, writing mask (B, N) bool, ids_keep (B, K), ids_mask (B, N - K) and
    ids_restore (B, N) int64 (all contiguous). scores and noise (unless T = 0): (B, N) float32 or float64, any
    strides."""
    b, n = scores.shape
    device = scores.device
    plain = temperature == 0
    uniform = math.isinf(temperature)
    scale = 0.0 if plain or uniform else (1.0 if prefer_high else -1.0) / temperature
    source = scores if noise is None else noise
    constants = dict(PLAIN=plain, PREFER_HIGH=prefer_high, UNIFORM=uniform)
    if b == 0:
        return
    if n <= MAX_FUSED_ROW:
        block_n = max(16, next_power_of_2(n))
        with ieee_quiet(device):
            _select_kernel[(b,)](
                scores=scores, noise=source, mask=mask.view(torch.uint8), ids_keep=ids_keep, ids_mask=ids_mask,
                ids_restore=ids_restore, n=n, keep=num_keep, **strides(scores, "ss0", "ss1"),
                **strides(source, "ns0", "ns1"), scale_bits=float64_bits(scale), **constants, BLOCK_N=block_n,
                num_warps=8 if block_n >= 1024 else 4, **FP_OPTIONS,
            )
        return
    keys = torch.empty(b, n, dtype=torch.int64, device=device)
    block = 1024
    with ieee_quiet(device):
        _keys_kernel[(b, triton.cdiv(n, block))](
            scores=scores, noise=source, keys=keys, n=n, **strides(scores, "ss0", "ss1"),
            **strides(source, "ns0", "ns1"), scale_bits=float64_bits(scale), **constants, BLOCK=block,
            **FP_OPTIONS,
        )
    order = torch.sort(keys, dim=1, descending=True, stable=True).indices  # ties: lower index first
    hidden = n - num_keep
    ids_mask.copy_(order[:, :hidden].sort(dim=1).values)
    ids_keep.copy_(order[:, hidden:].sort(dim=1).values)
    mask.zero_().scatter_(1, ids_mask, True)
    ids_restore.scatter_(1, torch.cat([ids_keep, ids_mask], dim=1),
                         torch.arange(n, device=device).expand(b, n).contiguous())
