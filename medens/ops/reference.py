"""Pure-PyTorch reference of every op: the specification the kernels are tested against.

Written as a competent PyTorch user would write it (reshape/permute, scatter_add histograms, sort, gather), so it
is also the honest baseline the benchmarks compare against. These functions do not validate their input; the
public functions in :mod:`medens.ops` do that before calling any backend, this one included.

Rounding is part of the specification, and the kernels reproduce it exactly:

- grey levels are computed in float32 as ``(0.299 R + 0.587 G) + 0.114 B``;
- the bin of a grey level ``v`` is ``floor((v - lo) / (hi - lo) * bins)`` in float32, clamped to
  ``[0, bins - 1]``, NaN in bin 0, with ``lo``, ``hi`` and ``hi - lo`` rounded to float32 first;
- masking keys are float64: ``±log(score + 1e-6) / T - log(-log(noise))``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

SCORE_EPS = 1e-6
"""Added to scores before their logarithm, so that zero scores keep a finite key."""

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R BT.601 weights of R, G and B in the grey level of a colour image."""


class PatchMask(NamedTuple):
    """The result of :func:`entropy_guided_mask`.

    Attributes:
        mask: (B, N) bool, True where a patch is hidden.
        ids_keep: (B, K) int64, indices of the visible patches, ascending.
        ids_mask: (B, N - K) int64, indices of the hidden patches, ascending.
        ids_restore: (B, N) int64, ``argsort(cat(ids_keep, ids_mask))``: position of each patch in that list.
    """

    mask: Tensor
    ids_keep: Tensor
    ids_mask: Tensor
    ids_restore: Tensor


# ---- layout ----------------------------------------------------------------------------------------------------


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, N, p*p*C), patches row-major, each flattened in (row, column, channel) order (MAE's)."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)
    x = x.permute(0, 2, 4, 3, 5, 1)  # b, patch row, patch col, py, px, c
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: Tensor, patch_size: int, height: int, width: int) -> Tensor:
    """(B, N, p*p*C) -> (B, C, H, W); the inverse of :func:`patchify`."""
    b, _, d = patches.shape
    p = patch_size
    c = d // (p * p)
    x = patches.reshape(b, height // p, width // p, p, p, c)
    x = x.permute(0, 5, 1, 3, 2, 4)  # b, c, patch row, py, patch col, px
    return x.reshape(b, c, height, width)


# ---- patch entropy -----------------------------------------------------------------------------------------------


def default_value_range(dtype: torch.dtype) -> tuple[float, float]:
    """(0, 255) for uint8 images, (0, 1) for floating ones."""
    return (0.0, 255.0) if dtype == torch.uint8 else (0.0, 1.0)


def binning_constants(value_range: tuple[float, float]) -> tuple[float, float]:
    """``lo`` and ``hi - lo`` exactly as the binning uses them: each rounded to float32.

    Eagerly with numpy's float32 scalars, which round as torch's float32 tensors do at a tenth of the cost of
    building two tensors (that was a third of a small patch_entropy call); while torch.compile traces, which cannot
    trace numpy's error state, with tensors. Out-of-range values become inf, silently, either way.
    """
    if torch.compiler.is_compiling():
        lo, hi = (torch.tensor(v, dtype=torch.float32) for v in value_range)
        return float(lo), float(hi - lo)
    with np.errstate(over="ignore"):
        lo, hi = np.float32(value_range[0]), np.float32(value_range[1])
        return float(lo), float(hi - lo)


def grey_levels(images: Tensor) -> Tensor:
    """(B, C, H, W) with C in {1, 3} -> (B, H, W) float32 grey levels."""
    x = images.to(torch.float32)
    if x.shape[1] == 1:
        return x[:, 0]
    red, green, blue = LUMA_WEIGHTS
    return (red * x[:, 0] + green * x[:, 1]) + blue * x[:, 2]


def grey_bins(grey: Tensor, bins: int, value_range: tuple[float, float]) -> Tensor:
    """Histogram bin (int64) of every grey level."""
    lo, range_width = binning_constants(value_range)
    x = (grey - lo) / range_width * bins
    x = torch.nan_to_num(x, nan=0.0)
    return x.floor().clamp(0, bins - 1).to(torch.int64)


def patch_entropy(
    images: Tensor, patch_size: int, *, bins: int = 256, value_range: tuple[float, float] | None = None
) -> Tensor:
    """Shannon entropy (bits) of the grey-level histogram of every patch.

    Args:
        images: (B, C, H, W), C in {1, 3}, uint8 or floating.
        patch_size: p; H and W are multiples of it.
        bins: number of histogram bins.
        value_range: (lo, hi) mapped onto the bins; default :func:`default_value_range`.

    Returns:
        (B, N) float32, N = (H // p) * (W // p), patches row-major.
    """
    if value_range is None:
        value_range = default_value_range(images.dtype)
    b = images.shape[0]
    bin_index = grey_bins(grey_levels(images), bins, value_range)  # (B, H, W)
    per_patch = patchify(bin_index.unsqueeze(1), patch_size)  # (B, N, p*p)
    counts = torch.zeros(b, per_patch.shape[1], bins, dtype=torch.float32, device=images.device)
    counts.scatter_add_(2, per_patch, torch.ones_like(per_patch, dtype=torch.float32))
    q = counts / (patch_size * patch_size)
    return torch.special.entr(q).sum(-1) / math.log(2.0) + 0.0


# ---- entropy-guided masking ------------------------------------------------------------------------------------


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """K, the number of visible patches: ``int(N * (1 - mask_ratio))`` as in MAE."""
    return int(num_patches * (1 - mask_ratio))


def masking_keys(scores: Tensor, noise: Tensor | None, temperature: float, prefer: str) -> Tensor:
    """(B, N) float64 keys; the N - K largest are hidden (ties to the lower index)."""
    s = scores.to(torch.float64)
    sign = 1.0 if prefer == "high" else -1.0
    if temperature == 0:
        return sign * s
    assert noise is not None
    gumbel = -torch.log(-torch.log(noise.to(torch.float64)))
    if math.isinf(temperature):
        return gumbel
    return (sign / temperature) * torch.log(s + SCORE_EPS) + gumbel


def entropy_guided_mask(
    scores: Tensor,
    mask_ratio: float,
    *,
    temperature: float = 1.0,
    prefer: str = "high",
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> PatchMask:
    """Hide N - K patches drawn without replacement with probability ∝ (score + 1e-6) ** (±1 / T).

    Gumbel top-k: the hidden patches are the N - K largest keys ``±log(score + 1e-6) / T + g`` with
    ``g = -log(-log(noise))``. T = 0 hides the top-scored patches (ties to the lower index); T = inf masks
    uniformly at random.

    Args:
        scores: (B, N) non-negative floats.
        mask_ratio: fraction hidden, in [0, 1).
        temperature: T >= 0, may be inf.
        prefer: "high" hides high scores preferentially, "low" low ones.
        noise: (B, N) uniform in (0, 1); drawn with ``torch.rand`` when None.
        generator: random generator for the noise.
    """
    b, n = scores.shape
    k = num_visible(n, mask_ratio)
    if temperature != 0 and noise is None:
        noise = torch.rand(b, n, generator=generator, device=scores.device)
    keys = masking_keys(scores, noise, temperature, prefer)
    order = torch.sort(keys, dim=1, descending=True, stable=True).indices
    ids_mask = order[:, : n - k].sort(dim=1).values
    ids_keep = order[:, n - k :].sort(dim=1).values
    mask = torch.zeros(b, n, dtype=torch.bool, device=scores.device).scatter_(1, ids_mask, True)
    ids_restore = torch.argsort(torch.cat([ids_keep, ids_mask], dim=1), dim=1)
    return PatchMask(mask, ids_keep, ids_mask, ids_restore)


# ---- gathering and masking patches -------------------------------------------------------------------------------


def statistics_dtype(dtype: torch.dtype) -> torch.dtype:
    """Precision of the per-patch mean and variance: float64 for float64 images, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def gather_patches(
    images: Tensor, ids: Tensor, patch_size: int, *, normalize: bool = False, eps: float = 1e-6
) -> Tensor:
    """``patchify(images)[b, ids[b, k]]``, optionally normalised per patch.

    Args:
        images: (B, C, H, W) floating.
        ids: (B, K) int64 patch indices in [0, N).
        patch_size: p.
        normalize: return ``(v - mean(v)) / sqrt(var(v) + eps)`` per patch vector (unbiased variance).
        eps: added to the variance.

    Returns:
        (B, K, p*p*C), dtype of ``images``.
    """
    patches = patchify(images, patch_size)
    out = torch.gather(patches, 1, ids.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
    if not normalize:
        return out
    x = out.to(statistics_dtype(images.dtype))
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True, unbiased=True)
    return ((x - mean) / torch.sqrt(var + eps)).to(images.dtype)


def gather_patches_backward(
    grad: Tensor, images: Tensor, ids: Tensor, patch_size: int, *, normalize: bool = False, eps: float = 1e-6
) -> Tensor:
    """Gradient of :func:`gather_patches` with respect to ``images``, written out (repeated ids accumulate).

    With y = (v - m) / s, s = sqrt(var + eps) and D values per patch:
    ``dL/dv = (g - mean(g) - y * sum(g * y) / (D - 1)) / s``.
    """
    b, c, h, w = images.shape
    compute = statistics_dtype(images.dtype)
    g = grad.to(compute)
    if normalize:
        x = gather_patches(images, ids, patch_size).to(compute)
        d = x.shape[-1]
        mean = x.mean(dim=-1, keepdim=True)
        inv_std = torch.rsqrt(x.var(dim=-1, keepdim=True, unbiased=True) + eps)
        y = (x - mean) * inv_std
        g = inv_std * (g - g.mean(dim=-1, keepdim=True) - y * (g * y).sum(dim=-1, keepdim=True) / (d - 1))
    n = (h // patch_size) * (w // patch_size)
    patch_grads = torch.zeros(b, n, g.shape[-1], dtype=compute, device=images.device)
    patch_grads.scatter_add_(1, ids.unsqueeze(-1).expand(-1, -1, g.shape[-1]), g)
    return unpatchify(patch_grads, patch_size, h, w).to(images.dtype)


def pixel_mask(mask: Tensor, patch_size: int, height: int, width: int) -> Tensor:
    """(B, N) patch mask -> (B, 1, H, W) pixel mask."""
    b = mask.shape[0]
    grid = mask.reshape(b, height // patch_size, width // patch_size)
    grid = grid.repeat_interleave(patch_size, dim=1).repeat_interleave(patch_size, dim=2)
    return grid.unsqueeze(1)


def apply_patch_mask(images: Tensor, mask: Tensor, patch_size: int, *, fill: float = 0.0) -> Tensor:
    """A new tensor equal to ``images`` except that every pixel of a hidden patch is ``fill``."""
    return images.masked_fill(pixel_mask(mask, patch_size, images.shape[2], images.shape[3]), fill)
