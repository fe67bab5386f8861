"""``patch_entropy``: Shannon entropy of the grey-level histogram of every patch."""

from __future__ import annotations

import torch
from torch import Tensor

from . import reference
from ._backends import resolve_backend
from ._registry import kernel
from ._validation import IMAGE_DTYPES, MAX_BINS, MIN_BINS, check_images, check_int, check_value_range


@torch.library.custom_op("medens::patch_entropy", mutates_args=())
def _patch_entropy_op(
    images: Tensor, patch_size: int, bins: int, lo: float, range_width: float, backend: str
) -> Tensor:
    return kernel("patch_entropy", backend)(images, patch_size, bins, lo, range_width)


@_patch_entropy_op.register_fake
def _(images: Tensor, patch_size: int, bins: int, lo: float, range_width: float, backend: str) -> Tensor:
    b, _, h, w = images.shape
    return images.new_empty((b, (h // patch_size) * (w // patch_size)), dtype=torch.float32)


def _no_gradient(ctx, grad: Tensor):
    # A histogram is piecewise constant in the pixels: its gradient is zero almost everywhere.
    return None, None, None, None, None, None


_patch_entropy_op.register_autograd(_no_gradient)


def patch_entropy(
    images: Tensor,
    patch_size: int,
    *,
    bins: int = 256,
    value_range: tuple[float, float] | None = None,
    backend: str = "auto",
) -> Tensor:
    """Shannon entropy (bits) of the grey-level histogram of every p x p patch.

    The grey level is the channel itself for one channel and ``0.299 R + 0.587 G + 0.114 B`` (float32) for three.
    A grey level ``v`` falls in bin ``floor((v - lo) / (hi - lo) * bins)``, clamped to ``[0, bins - 1]``; NaN falls
    in bin 0. For uint8 images with the default range and 256 bins the bin is ``v`` itself.

    Args:
        images: (B, C, H, W), C in {1, 3}; uint8, float16, bfloat16 or float32; any strides.
        patch_size: p >= 1; H and W must be multiples of p.
        bins: number of histogram bins, in [2, 4096].
        value_range: (lo, hi) with lo < hi; default (0, 255) for uint8 and (0.0, 1.0) for floating images.
        backend: "auto", "reference", "cpp", "cuda" or "triton".

    Returns:
        (B, N) float32 entropies in [0, log2(min(bins, p*p))], N = (H // p) * (W // p), patch (i, j) at
        index ``i * (W // p) + j``.

    Raises:
        TypeError, ValueError: bad arguments (named in the message).
        RuntimeError: the requested backend cannot run here.
    """
    images, p = check_images("images", images, patch_size, dtypes=IMAGE_DTYPES)
    bins = check_int("bins", bins, low=MIN_BINS, high=MAX_BINS)
    value_range = reference.default_value_range(images.dtype) if value_range is None else check_value_range(
        value_range)
    name = resolve_backend(backend, images.device, "patch_entropy")
    if name == "reference":
        return reference.patch_entropy(images, p, bins=bins, value_range=value_range)
    lo, range_width = reference.binning_constants(value_range)
    return _patch_entropy_op(images, p, bins, lo, range_width, name)
