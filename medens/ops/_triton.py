"""Triton kernels of :mod:`medens.kernels.triton`, registered as the ``triton`` backend.

The launchers receive tensors already validated by the public ops, prepare operands and outputs with
:mod:`._launch` as the other backends do, and call the Triton launchers by keyword. On CUDA tensors they launch
under the tensor's device on PyTorch's current stream (Triton reads both from torch); on CPU tensors they run in
the Triton interpreter (``TRITON_INTERPRET=1``), which is how the tests check them without a GPU. The public ops
wrap these calls in ``torch.library`` custom ops, so ``torch.compile`` sees each one as an opaque op.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from medens.kernels.triton import entropy as _entropy
from medens.kernels.triton import masking as _masking
from medens.kernels.triton import patches as _patches

from ._launch import (
    backward_operands,
    entropy_output,
    fill_bits,
    gather_backward_output,
    gather_output,
    index_error_flag,
    mask_output,
    masking_operands,
    masking_outputs,
    raise_on_index_error,
)
from ._registry import register_kernel

BACKEND = "triton"


def _on_device(tensor: Tensor) -> contextlib.AbstractContextManager:
    return torch.cuda.device(tensor.device) if tensor.device.type == "cuda" else contextlib.nullcontext()


@register_kernel("patch_entropy", BACKEND)
def patch_entropy(images: Tensor, patch_size: int, bins: int, lo: float, range_width: float) -> Tensor:
    out = entropy_output(images, patch_size)
    with _on_device(images):
        _entropy.patch_entropy(images=images, patch_size=patch_size, bins=bins, lo=lo, range_width=range_width,
                               out=out)
    return out


@register_kernel("entropy_guided_mask", BACKEND)
def entropy_guided_mask(
    scores: Tensor, noise: Tensor | None, num_keep: int, temperature: float, prefer_high: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    scores, noise = masking_operands(scores, noise)
    mask, ids_keep, ids_mask, ids_restore = outputs = masking_outputs(scores, num_keep)
    with _on_device(scores):
        _masking.entropy_guided_mask(scores=scores, noise=noise, num_keep=num_keep, temperature=temperature,
                                     prefer_high=prefer_high, mask=mask, ids_keep=ids_keep, ids_mask=ids_mask,
                                     ids_restore=ids_restore)
    return outputs


@register_kernel("gather_patches", BACKEND)
def gather_patches(images: Tensor, ids: Tensor, patch_size: int, normalize: bool, eps: float,
                   ids_checked: bool = False) -> Tensor:
    out = gather_output(images, ids, patch_size)
    index_error = index_error_flag(images.device)
    with _on_device(images):
        _patches.gather_patches(images=images, ids=ids, patch_size=patch_size, normalize=normalize, eps=eps,
                                out=out, index_error=index_error)
    if not ids_checked:
        raise_on_index_error(index_error, "gather_patches", BACKEND)
    return out


@register_kernel("gather_patches_backward", BACKEND)
def gather_patches_backward(
    grad: Tensor, images: Tensor, ids: Tensor, patch_size: int, normalize: bool, eps: float,
    ids_checked: bool = False,
) -> Tensor:
    compute, grad, source = backward_operands(grad, images, normalize)
    grad_images = gather_backward_output(images, compute)  # zeros: the kernel adds into it
    index_error = index_error_flag(images.device)
    with _on_device(images):
        _patches.gather_patches_backward(grad=grad, images=source, ids=ids, patch_size=patch_size,
                                         normalize=normalize, eps=eps, grad_images=grad_images,
                                         index_error=index_error)
    if not ids_checked:
        raise_on_index_error(index_error, "gather_patches_backward", BACKEND)
    return grad_images.to(images.dtype)


@register_kernel("apply_patch_mask", BACKEND)
def apply_patch_mask(images: Tensor, mask: Tensor, patch_size: int, fill: float) -> Tensor:
    out = mask_output(images)
    with _on_device(images):
        _patches.apply_patch_mask(images=images, mask=mask, patch_size=patch_size,
                                  fill_bits=fill_bits(fill, images.dtype), out=out)
    return out
