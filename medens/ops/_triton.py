"""Triton kernels of :mod:`medens.kernels.triton`, registered as the ``triton`` backend.

The launchers receive tensors already validated by the public ops. On CUDA tensors they launch under the tensor's
device on PyTorch's current stream (Triton reads both from torch); on CPU tensors they run in the Triton
interpreter (``TRITON_INTERPRET=1``), which is how the tests check them without a GPU. The public ops wrap these
calls in ``torch.library`` custom ops, so ``torch.compile`` sees each one as an opaque op.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from medens.kernels.triton import entropy as _entropy
from medens.kernels.triton import masking as _masking
from medens.kernels.triton import patches as _patches

from ._cuda import raise_on_index_error
from ._dtypes import backward_operands
from ._registry import register_kernel

BACKEND = "triton"


def _on_device(tensor: Tensor) -> contextlib.AbstractContextManager:
    return torch.cuda.device(tensor.device) if tensor.device.type == "cuda" else contextlib.nullcontext()


@register_kernel("patch_entropy", BACKEND)
def patch_entropy(images: Tensor, patch_size: int, bins: int, lo: float, range_width: float) -> Tensor:
    with _on_device(images):
        return _entropy.patch_entropy(images, patch_size, bins, lo, range_width)


@register_kernel("entropy_guided_mask", BACKEND)
def entropy_guided_mask(
    scores: Tensor, noise: Tensor | None, num_keep: int, temperature: float, prefer_high: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    with _on_device(scores):
        return _masking.entropy_guided_mask(scores, noise, num_keep, temperature, prefer_high)


@register_kernel("gather_patches", BACKEND)
def gather_patches(images: Tensor, ids: Tensor, patch_size: int, normalize: bool, eps: float,
                   ids_checked: bool = False) -> Tensor:
    with _on_device(images):
        index_error = torch.zeros(1, dtype=torch.int32, device=images.device)
        out = _patches.gather_patches(images, ids, patch_size, normalize, eps, index_error)
    if not ids_checked:
        raise_on_index_error(index_error, "gather_patches", BACKEND)
    return out


@register_kernel("gather_patches_backward", BACKEND)
def gather_patches_backward(
    grad: Tensor, images: Tensor, ids: Tensor, patch_size: int, normalize: bool, eps: float,
    ids_checked: bool = False,
) -> Tensor:
    with _on_device(images):
        _, grad, source = backward_operands(grad, images, normalize)
        index_error = torch.zeros(1, dtype=torch.int32, device=images.device)
        grad_images = _patches.gather_patches_backward(grad, source, ids, patch_size, normalize, eps, index_error)
    if not ids_checked:
        raise_on_index_error(index_error, "gather_patches_backward", BACKEND)
    return grad_images.to(images.dtype)


@register_kernel("apply_patch_mask", BACKEND)
def apply_patch_mask(images: Tensor, mask: Tensor, patch_size: int, fill: float) -> Tensor:
    with _on_device(images):
        return _patches.apply_patch_mask(images, mask, patch_size, fill)
