"""Patch layout ops: ``patchify``/``unpatchify``, ``gather_patches`` and ``apply_patch_mask``."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import reference
from ._backends import resolve_backend
from ._registry import kernel
from ._validation import (
    FLOAT_DTYPES,
    IMAGE_DTYPES,
    check_float,
    check_images,
    check_indices,
    check_int,
    check_same_device,
    check_shape,
    check_tensor,
)

MASKABLE_DTYPES = (*IMAGE_DTYPES, torch.float64)


# ---- gather_patches ----------------------------------------------------------------------------------------------


@torch.library.custom_op("medens::gather_patches", mutates_args=())
def _gather_patches_op(
    images: Tensor, ids: Tensor, patch_size: int, normalize: bool, eps: float, backend: str,
    ids_checked: bool = False,
) -> Tensor:
    # ids_checked: the caller has verified the ids (eager mode), so GPU kernels need not read back their
    # out-of-range flag, which would wait for the kernel (a device synchronisation on every call).
    return kernel("gather_patches", backend)(images, ids, patch_size, normalize, eps, ids_checked=ids_checked)


@_gather_patches_op.register_fake
def _(images, ids, patch_size, normalize, eps, backend, ids_checked=False):
    return images.new_empty((images.shape[0], ids.shape[1], patch_size * patch_size * images.shape[1]))


@torch.library.custom_op("medens::gather_patches_backward", mutates_args=())
def _gather_patches_backward_op(
    grad: Tensor, images: Tensor, ids: Tensor, patch_size: int, normalize: bool, eps: float, backend: str,
    ids_checked: bool = False,
) -> Tensor:
    return kernel("gather_patches_backward", backend)(grad, images, ids, patch_size, normalize, eps,
                                                      ids_checked=ids_checked)


@_gather_patches_backward_op.register_fake
def _(grad, images, ids, patch_size, normalize, eps, backend, ids_checked=False):
    return torch.empty_like(images, memory_format=torch.contiguous_format)


def _gather_setup_context(ctx, inputs, output) -> None:
    images, ids, patch_size, normalize, eps, backend, ids_checked = inputs
    ctx.save_for_backward(images if normalize else None, ids)
    ctx.image_meta = (images.shape, images.dtype, images.device)
    ctx.options = (patch_size, normalize, eps, backend, ids_checked)


def _gather_backward(ctx, grad: Tensor):
    images, ids = ctx.saved_tensors
    patch_size, normalize, eps, backend, ids_checked = ctx.options
    if images is None:  # not normalised: the values are not needed, only the geometry
        shape, dtype, device = ctx.image_meta
        images = torch.empty(shape, dtype=dtype, device=device)
    grad_images = _gather_patches_backward_op(grad.contiguous(), images, ids, patch_size, normalize, eps, backend,
                                              ids_checked)
    return grad_images, None, None, None, None, None, None


_gather_patches_op.register_autograd(_gather_backward, setup_context=_gather_setup_context)


def gather_patches(
    images: Tensor,
    ids: Tensor,
    patch_size: int,
    *,
    normalize: bool = False,
    eps: float = 1e-6,
    backend: str = "auto",
) -> Tensor:
    """The patches ``ids`` of every image, flattened as MAE's patchify does.

    Exactly ``patchify(images, patch_size)[b, ids[b, k]]``. With ``normalize=True`` every returned vector v becomes
    ``(v - mean(v)) / sqrt(var(v) + eps)`` (unbiased variance), the targets of MAE's norm_pix_loss.
    Differentiable with respect to ``images`` in both modes.

    Args:
        images: (B, C, H, W) float16, bfloat16, float32 or float64; any strides.
        ids: (B, K) int64 patch indices in [0, N), N = (H // p) * (W // p). Out-of-range ids raise ValueError.
        patch_size: p >= 1; H and W must be multiples of p.
        normalize: normalise each patch vector (needs p*p*C >= 2).
        eps: added to the variance, >= 0.
        backend: "auto", "reference", "cpp", "cuda" or "triton".

    Returns:
        (B, K, p*p*C), the dtype of ``images``.
    """
    images, p = check_images("images", images, patch_size, dtypes=FLOAT_DTYPES, channels=None)
    ids = check_tensor("ids", ids, ndim=2, dtypes=(torch.int64,))
    if ids.shape[0] != images.shape[0]:
        raise ValueError(f"ids must have shape (B, K) with B = {images.shape[0]} (batch of images), got "
                         f"{tuple(ids.shape)}")
    check_same_device(images=images, ids=ids)
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be a bool, got {type(normalize).__name__}")
    eps = check_float("eps", eps)
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    d = p * p * images.shape[1]
    if normalize and d < 2:
        raise ValueError(f"normalize=True needs at least 2 values per patch (p*p*C), got {d}")
    _, _, h, w = images.shape
    ids_checked = check_indices("ids", ids, (h // p) * (w // p))
    name = resolve_backend(backend, images.device, "gather_patches")
    if name == "reference":
        return reference.gather_patches(images, ids, p, normalize=normalize, eps=eps)
    return _gather_patches_op(images, ids, p, normalize, eps, name, ids_checked)


# ---- apply_patch_mask --------------------------------------------------------------------------------------------


@torch.library.custom_op("medens::apply_patch_mask", mutates_args=())
def _apply_patch_mask_op(images: Tensor, mask: Tensor, patch_size: int, fill: float, backend: str) -> Tensor:
    return kernel("apply_patch_mask", backend)(images, mask, patch_size, fill)


@_apply_patch_mask_op.register_fake
def _(images, mask, patch_size, fill, backend):
    return torch.empty_like(images)


def _apply_setup_context(ctx, inputs, output) -> None:
    _, mask, patch_size, _, backend = inputs
    ctx.save_for_backward(mask)
    ctx.options = (patch_size, backend)


def _apply_backward(ctx, grad: Tensor):
    (mask,) = ctx.saved_tensors
    patch_size, backend = ctx.options
    return _apply_patch_mask_op(grad, mask, patch_size, 0.0, backend), None, None, None, None


_apply_patch_mask_op.register_autograd(_apply_backward, setup_context=_apply_setup_context)


def apply_patch_mask(
    images: Tensor, mask: Tensor, patch_size: int, *, fill: float = 0.0, backend: str = "auto"
) -> Tensor:
    """A new tensor in which every pixel of a hidden patch equals ``fill``; the rest is unchanged.

    Differentiable with respect to ``images`` (the gradient is zero inside hidden patches).

    Args:
        images: (B, C, H, W) uint8, float16, bfloat16, float32 or float64; any strides.
        mask: (B, N) bool, True = hidden, N = (H // p) * (W // p).
        patch_size: p >= 1; H and W must be multiples of p.
        fill: the value of hidden pixels (an integer in [0, 255] for uint8 images; for float images a value the
            dtype can hold, or inf/nan).
        backend: "auto", "reference", "cpp", "cuda" or "triton".

    Returns:
        (B, C, H, W), same dtype as ``images``.

    Raises:
        ValueError: bad shapes, or a ``fill`` the dtype cannot represent (e.g. 1e6 for float16), on every backend.
    """
    images, p = check_images("images", images, patch_size, dtypes=MASKABLE_DTYPES, channels=None)
    mask = check_tensor("mask", mask, ndim=2, dtypes=(torch.bool,))
    b, _, h, w = images.shape
    check_shape("mask", mask, (b, (h // p) * (w // p)), "(B, N) for images of this shape and patch size")
    check_same_device(images=images, mask=mask)
    fill = check_float("fill", fill)
    if images.dtype == torch.uint8 and not (fill.is_integer() and 0 <= fill <= 255):
        raise ValueError(f"fill must be an integer in [0, 255] for uint8 images, got {fill}")
    if images.dtype.is_floating_point and math.isfinite(fill) and abs(fill) > torch.finfo(images.dtype).max:
        # The reference's masked_fill refuses a finite value the dtype cannot hold; refuse it here, once, so that
        # no backend fills inf instead (inf and nan themselves are valid fills).
        raise ValueError(
            f"fill must be representable in {images.dtype} (|fill| <= {torch.finfo(images.dtype).max}, or inf/nan), "
            f"got {fill}"
        )
    name = resolve_backend(backend, images.device, "apply_patch_mask")
    if name == "reference":
        return reference.apply_patch_mask(images, mask, p, fill=fill)
    return _apply_patch_mask_op(images, mask, p, fill, name)


# ---- layout ------------------------------------------------------------------------------------------------------


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, N, p*p*C): patches row-major, each flattened in (row, column, channel) order."""
    images, p = check_images("images", images, patch_size, dtypes=MASKABLE_DTYPES, channels=None)
    return reference.patchify(images, p)


def unpatchify(patches: Tensor, patch_size: int, height: int, width: int) -> Tensor:
    """(B, N, p*p*C) -> (B, C, H, W), the inverse of :func:`patchify`."""
    patches = check_tensor("patches", patches, ndim=3, dtypes=MASKABLE_DTYPES)
    p = check_int("patch_size", patch_size, low=1)
    height = check_int("height", height, low=1)
    width = check_int("width", width, low=1)
    if height % p or width % p:
        raise ValueError(f"height and width must be multiples of patch_size = {p}, got {height} x {width}")
    n = (height // p) * (width // p)
    d = patches.shape[2]
    if patches.shape[1] != n or d % (p * p):
        raise ValueError(
            f"patches must have shape (B, {n}, p*p*C) for a {height} x {width} image with p = {p}, got "
            f"{tuple(patches.shape)}")
    return reference.unpatchify(patches, p, height, width)
