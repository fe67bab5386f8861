"""``gather_patches`` (forward and backward) and ``apply_patch_mask`` in Triton.

A patch is flattened in MAE's patchify order: element ``(py * p + px) * C + c`` holds ``image[b, c, py, px]`` of
the patch. The gather programs work on one output patch each, as tiles of whole patch rows (``p * C`` values in
output order, read across the C channel planes); a patch that fits one tile (the common case) is read once and
normalised in registers, a larger one is read once per pass. Statistics are float64 and rounded exactly like
the CPU and CUDA kernels (``(v - mean) * inv_std`` in float64, then to float32, then to the image dtype).
The backward adds its gradient with atomics, so repeated ids accumulate. Out-of-range ids never touch memory out
of bounds: the output row is NaN (forward) or nothing is added (backward), and ``index_error[0]`` is set to 1.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import FP_OPTIONS, float64_bits, ieee_quiet, next_power_of_2, strides

TILE_ELEMENTS = 4096
"""Values a gather program holds at once; a patch with more is processed in tiles of whole rows."""

MASK_BLOCK = 1024
"""Pixels of an image row an apply_patch_mask program handles."""


@triton.jit
def _patch_of(ids, item, num_ids, num_patches, patches_per_row, is0, is1, index_error):
    """(batch index, patch row, patch column, whether the id was out of range) of output patch `item`; an
    out-of-range id reads patch 0 and sets the error flag."""
    b = item // num_ids
    k = item - b * num_ids
    n = tl.load(ids + b * is0 + k * is1)
    bad = (n < 0) | (n >= num_patches)
    tl.store(index_error, 1, mask=bad)
    n = tl.where(bad, 0, n)
    pi = n // patches_per_row
    return b, pi, n - pi * patches_per_row, bad


@triton.jit
def _tile(r0, PATCH: tl.constexpr, CHANNELS: tl.constexpr, ROWS: tl.constexpr, BLOCK_Q: tl.constexpr):
    """Rows r, positions q = px * C + c of a tile, its valid elements, and their channel and column."""
    r = r0 + tl.arange(0, ROWS)[:, None]
    q = tl.arange(0, BLOCK_Q)[None, :]
    valid = (r < PATCH) & (q < PATCH * CHANNELS)
    px = q // CHANNELS
    c = q - px * CHANNELS
    return r, q, valid, px, c


@triton.jit
def _load_float64(pointers, valid, IS_FLOAT64: tl.constexpr):
    """Image values as float64, 0 where not valid. (No `other=` on the load: the interpreter cannot make
    bfloat16 constants, and masked-off lanes are undefined on the GPU anyway.)"""
    x = tl.load(pointers, mask=valid)
    if not IS_FLOAT64:
        x = x.to(tl.float32).to(tl.float64)
    return tl.where(valid, x, 0.0)


@triton.jit
def _moments(origin, sc, sh, sw, eps, PATCH: tl.constexpr, CHANNELS: tl.constexpr, ROWS: tl.constexpr,
             BLOCK_Q: tl.constexpr, IS_FLOAT64: tl.constexpr):
    """Mean and 1 / sqrt(unbiased variance + eps) of a patch, two passes in float64 (re-reading it)."""
    D: tl.constexpr = PATCH * PATCH * CHANNELS
    total = tl.zeros([ROWS, BLOCK_Q], dtype=tl.float64)
    for r0 in range(0, PATCH, ROWS):
        r, q, valid, px, c = _tile(r0, PATCH, CHANNELS, ROWS, BLOCK_Q)
        total += _load_float64(origin + c * sc + r * sh + px * sw, valid, IS_FLOAT64)
    mean = tl.sum(tl.sum(total, axis=1), axis=0) / D
    squares = tl.zeros([ROWS, BLOCK_Q], dtype=tl.float64)
    for r0 in range(0, PATCH, ROWS):
        r, q, valid, px, c = _tile(r0, PATCH, CHANNELS, ROWS, BLOCK_Q)
        x = _load_float64(origin + c * sc + r * sh + px * sw, valid, IS_FLOAT64)
        d = tl.where(valid, x - mean, 0.0)
        squares += d * d
    var = tl.sum(tl.sum(squares, axis=1), axis=0) / (D - 1)
    return mean, 1.0 / tl.sqrt(var + eps)


@triton.jit(do_not_specialize=["eps_bits"])
def _gather_kernel(
    images, ids, out, index_error, eps_bits, num_ids, num_patches, patches_per_row, sb, sc, sh, sw, is0, is1,
    PATCH: tl.constexpr, CHANNELS: tl.constexpr, ROWS: tl.constexpr, BLOCK_Q: tl.constexpr,
    NORMALIZE: tl.constexpr, IS_FLOAT64: tl.constexpr,
):
    item = tl.program_id(0).to(tl.int64)
    b, pi, pj, bad = _patch_of(ids, item, num_ids, num_patches, patches_per_row, is0, is1, index_error)
    origin = images + b * sb + pi * PATCH * sh + pj * PATCH * sw
    D: tl.constexpr = PATCH * PATCH * CHANNELS
    dst = out + item * D
    if NORMALIZE:
        eps = eps_bits.to(tl.int64).to(tl.float64, bitcast=True)
        if ROWS >= PATCH:  # the whole patch in one tile: read it once
            r, q, valid, px, c = _tile(0, PATCH, CHANNELS, ROWS, BLOCK_Q)
            x = _load_float64(origin + c * sc + r * sh + px * sw, valid, IS_FLOAT64)
            mean = tl.sum(tl.sum(x, axis=1), axis=0) / D
            d = tl.where(valid, x - mean, 0.0)
            var = tl.sum(tl.sum(d * d, axis=1), axis=0) / (D - 1)
            y = (x - mean) * (1.0 / tl.sqrt(var + eps))
            if not IS_FLOAT64:
                y = y.to(tl.float32)
            tl.store(dst + r * (PATCH * CHANNELS) + q, tl.where(bad, float("nan"), y).to(out.dtype.element_ty),
                     mask=valid)
        else:
            mean, inv_std = _moments(origin, sc, sh, sw, eps, PATCH, CHANNELS, ROWS, BLOCK_Q, IS_FLOAT64)
            for r0 in range(0, PATCH, ROWS):
                r, q, valid, px, c = _tile(r0, PATCH, CHANNELS, ROWS, BLOCK_Q)
                x = _load_float64(origin + c * sc + r * sh + px * sw, valid, IS_FLOAT64)
                y = (x - mean) * inv_std
                if not IS_FLOAT64:
                    y = y.to(tl.float32)
                tl.store(dst + r * (PATCH * CHANNELS) + q, tl.where(bad, float("nan"), y).to(out.dtype.element_ty),
                         mask=valid)
    else:
        for r0 in range(0, PATCH, ROWS):
            r, q, valid, px, c = _tile(r0, PATCH, CHANNELS, ROWS, BLOCK_Q)
            x = tl.load(origin + c * sc + r * sh + px * sw, mask=valid)
            nan = tl.full([ROWS, BLOCK_Q], float("nan"), tl.float32).to(x.dtype)
            tl.store(dst + r * (PATCH * CHANNELS) + q, tl.where(bad, nan, x), mask=valid)  # raw bits unless bad


@triton.jit(do_not_specialize=["eps_bits"])
def _gather_backward_kernel(
    grad, images, ids, grad_images, index_error, eps_bits, num_ids, num_patches, patches_per_row, height, width,
    sb, sc, sh, sw, is0, is1,
    PATCH: tl.constexpr, CHANNELS: tl.constexpr, ROWS: tl.constexpr, BLOCK_Q: tl.constexpr,
    NORMALIZE: tl.constexpr, IS_FLOAT64: tl.constexpr,
):
    item = tl.program_id(0).to(tl.int64)
    b, pi, pj, bad = _patch_of(ids, item, num_ids, num_patches, patches_per_row, is0, is1, index_error)
    D: tl.constexpr = PATCH * PATCH * CHANNELS
    g_row = grad + item * D
    origin = images + b * sb + pi * PATCH * sh + pj * PATCH * sw
    # grad_images is contiguous (B, C, H, W)
    target = grad_images + b * CHANNELS * height * width + pi * PATCH * width + pj * PATCH
    if NORMALIZE:
        eps = eps_bits.to(tl.int64).to(tl.float64, bitcast=True)
        mean, inv_std = _moments(origin, sc, sh, sw, eps, PATCH, CHANNELS, ROWS, BLOCK_Q, IS_FLOAT64)
        g_total = tl.zeros([ROWS, BLOCK_Q], dtype=tl.float64)
        gy_total = tl.zeros([ROWS, BLOCK_Q], dtype=tl.float64)
        for r0 in range(0, PATCH, ROWS):
            r, q, valid, px, c = _tile(r0, PATCH, CHANNELS, ROWS, BLOCK_Q)
            x = _load_float64(origin + c * sc + r * sh + px * sw, valid, IS_FLOAT64)
            g = tl.load(g_row + r * (PATCH * CHANNELS) + q, mask=valid, other=0).to(tl.float64)
            y = tl.where(valid, (x - mean) * inv_std, 0.0)
            g_total += g
            gy_total += g * y
        grad_mean = tl.sum(tl.sum(g_total, axis=1), axis=0) / D
        y_coef = tl.sum(tl.sum(gy_total, axis=1), axis=0) / (D - 1)
        for r0 in range(0, PATCH, ROWS):
            r, q, valid, px, c = _tile(r0, PATCH, CHANNELS, ROWS, BLOCK_Q)
            x = _load_float64(origin + c * sc + r * sh + px * sw, valid, IS_FLOAT64)
            g = tl.load(g_row + r * (PATCH * CHANNELS) + q, mask=valid, other=0).to(tl.float64)
            y = (x - mean) * inv_std
            dv = inv_std * (g - grad_mean - y * y_coef)
            tl.atomic_add(target + c * (height * width) + r * width + px, dv.to(grad_images.dtype.element_ty),
                          mask=valid & ~bad)
    else:
        for r0 in range(0, PATCH, ROWS):
            r, q, valid, px, c = _tile(r0, PATCH, CHANNELS, ROWS, BLOCK_Q)
            g = tl.load(g_row + r * (PATCH * CHANNELS) + q, mask=valid, other=0)
            tl.atomic_add(target + c * (height * width) + r * width + px, g, mask=valid & ~bad)


UNSIGNED_OF_SIZE = {1: tl.uint8, 2: tl.uint16, 4: tl.uint32, 8: tl.uint64}
"""The unsigned integer type of each element size: the type a fill's bit pattern is cut to before its bitcast."""


@triton.jit(do_not_specialize=["fill_bits"])
def _apply_mask_kernel(
    images, mask, out, fill_bits, channels, height, width, patches_per_row, sb, sc, sh, sw, ob, oc, oh, ow, ms0, ms1,
    PATCH: tl.constexpr, BLOCK: tl.constexpr, BITS: tl.constexpr,
):
    line = tl.program_id(0).to(tl.int64)  # (b * C + c) * H + y
    y = line % height
    bc = line // height
    c = bc % channels
    b = bc // channels
    x = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = x < width
    # fill_bits arrives as an int32, int64 or uint64 scalar (whichever holds it): its low bytes are the element
    fill = fill_bits.to(tl.uint64).to(BITS).to(out.dtype.element_ty, bitcast=True)
    hidden = tl.load(mask + b * ms0 + ((y // PATCH) * patches_per_row + x // PATCH) * ms1, mask=valid, other=0) != 0
    values = tl.load(images + b * sb + c * sc + y * sh + x * sw, mask=valid & ~hidden)  # hidden pixels: not read
    tl.store(out + b * ob + c * oc + y * oh + x * ow, tl.where(hidden, fill, values), mask=valid)


def _tiling(patch_size: int, channels: int) -> tuple[int, int]:
    """(ROWS, BLOCK_Q): rows of a patch per tile and the padded row length p * C."""
    block_q = next_power_of_2(patch_size * channels)
    return min(next_power_of_2(patch_size), max(1, TILE_ELEMENTS // block_q)), block_q


def gather_patches(
    images: torch.Tensor, ids: torch.Tensor, patch_size: int, normalize: bool, eps: float, out: torch.Tensor,
    index_error: torch.Tensor,
) -> None:
    """Patches ``ids`` (B, K) int64 of (B, C, H, W) floating images, any strides, written to ``out``
    (B, K, p*p*C) contiguous in the images' dtype; ``index_error``: (1,) int32 zero, set to 1 by an
    out-of-range id."""
    b, c, h, w = images.shape
    p = patch_size
    k = ids.shape[1]
    if out.numel() == 0:
        return
    rows, block_q = _tiling(p, c)
    with ieee_quiet(images.device):
        _gather_kernel[(b * k,)](
            images=images, ids=ids, out=out, index_error=index_error, eps_bits=float64_bits(eps), num_ids=k,
            num_patches=(h // p) * (w // p), patches_per_row=w // p, **strides(images, "sb", "sc", "sh", "sw"),
            **strides(ids, "is0", "is1"), PATCH=p, CHANNELS=c, ROWS=rows, BLOCK_Q=block_q, NORMALIZE=normalize,
            IS_FLOAT64=images.dtype == torch.float64, num_warps=4, **FP_OPTIONS,
        )


def gather_patches_backward(
    grad: torch.Tensor, images: torch.Tensor, ids: torch.Tensor, patch_size: int, normalize: bool, eps: float,
    grad_images: torch.Tensor, index_error: torch.Tensor,
) -> None:
    """Gradient of gather_patches, added into ``grad_images`` (B, C, H, W) contiguous zeros. grad (B, K, p*p*C)
    contiguous; grad, images and grad_images float32 or float64 (images are read only when normalize)."""
    b, c, h, w = images.shape
    p = patch_size
    k = ids.shape[1]
    if b * k == 0:
        return
    rows, block_q = _tiling(p, c)
    with ieee_quiet(grad.device):
        _gather_backward_kernel[(b * k,)](
            grad=grad, images=images, ids=ids, grad_images=grad_images, index_error=index_error,
            eps_bits=float64_bits(eps), num_ids=k, num_patches=(h // p) * (w // p), patches_per_row=w // p,
            height=h, width=w, **strides(images, "sb", "sc", "sh", "sw"), **strides(ids, "is0", "is1"),
            PATCH=p, CHANNELS=c, ROWS=rows, BLOCK_Q=block_q, NORMALIZE=normalize,
            IS_FLOAT64=grad.dtype == torch.float64, num_warps=4, **FP_OPTIONS,
        )


def apply_patch_mask(images: torch.Tensor, mask: torch.Tensor, patch_size: int, fill_bits: int,
                     out: torch.Tensor) -> None:
    """Write to ``out`` (the shape and dtype of ``images``, any strides) the images with every pixel of a hidden
    patch set to the element whose bit pattern is ``fill_bits`` (the encoding of ``medens.ops._launch.fill_bits``:
    an integer in [0, 2 ** (8 * itemsize)))."""
    b, c, h, w = images.shape
    if out.numel() == 0:
        return
    block = min(MASK_BLOCK, next_power_of_2(w))
    _apply_mask_kernel[(b * c * h, triton.cdiv(w, block))](
        images=images, mask=mask.view(torch.uint8), out=out, fill_bits=fill_bits, channels=c, height=h, width=w,
        patches_per_row=w // patch_size, **strides(images, "sb", "sc", "sh", "sw"),
        **strides(out, "ob", "oc", "oh", "ow"), **strides(mask, "ms0", "ms1"), PATCH=patch_size, BLOCK=block,
        BITS=UNSIGNED_OF_SIZE[images.element_size()], num_warps=4,
    )
