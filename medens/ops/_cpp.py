"""CPU kernels of ``medens._C``, registered as the ``cpp`` backend.

Each launcher receives tensors already validated by the public op, allocates its outputs, and calls the entry point
``medens._C.<op>_cpu`` by keyword with the arguments :mod:`._launch` builds (data pointers, sizes, element
strides, dtype codes), and ``torch.get_num_threads()`` OpenMP threads. Image-sized outputs come from
:func:`._host_memory.empty`, which reuses large blocks instead of page-faulting fresh ones every call.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._backends import extension
from ._host_memory import empty
from ._launch import (
    apply_patch_mask_arguments,
    backward_operands,
    check_status,
    entropy_guided_mask_arguments,
    entropy_output,
    gather_backward_output,
    gather_output,
    gather_patches_arguments,
    gather_patches_backward_arguments,
    mask_output,
    masking_operands,
    masking_outputs,
    patch_entropy_arguments,
)
from ._registry import register_kernel

BACKEND = "cpp"


def _host_empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    return empty(shape, dtype)


def _run(op: str, arguments: dict[str, object]) -> None:
    """Call ``medens._C.<op>_cpu(**arguments, num_threads=...)`` and raise on a failed status."""
    status = getattr(extension(), f"{op}_cpu")(**arguments, num_threads=torch.get_num_threads())
    check_status(status, op, BACKEND)


@register_kernel("patch_entropy", BACKEND)
def patch_entropy(images: Tensor, patch_size: int, bins: int, lo: float, range_width: float) -> Tensor:
    out = entropy_output(images, patch_size, _host_empty)
    _run("patch_entropy", patch_entropy_arguments(images, patch_size, bins, lo, range_width, out))
    return out


@register_kernel("entropy_guided_mask", BACKEND)
def entropy_guided_mask(
    scores: Tensor, noise: Tensor | None, num_keep: int, temperature: float, prefer_high: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    scores, noise = masking_operands(scores, noise)
    outputs = masking_outputs(scores, num_keep)
    _run("entropy_guided_mask",
         entropy_guided_mask_arguments(scores, noise, num_keep, temperature, prefer_high, outputs))
    return outputs


@register_kernel("gather_patches", BACKEND)
def gather_patches(images: Tensor, ids: Tensor, patch_size: int, normalize: bool, eps: float,
                   ids_checked: bool = False) -> Tensor:
    # ids_checked is not needed: the CPU kernels report out-of-range ids in their status, at no extra cost
    out = gather_output(images, ids, patch_size, _host_empty)
    _run("gather_patches", gather_patches_arguments(images, ids, patch_size, normalize, eps, out))
    return out


@register_kernel("gather_patches_backward", BACKEND)
def gather_patches_backward(
    grad: Tensor, images: Tensor, ids: Tensor, patch_size: int, normalize: bool, eps: float,
    ids_checked: bool = False,
) -> Tensor:
    compute, grad, source = backward_operands(grad, images, normalize)
    grad_images = gather_backward_output(images, compute, _host_empty)  # every element is written by the kernel
    _run("gather_patches_backward",
         gather_patches_backward_arguments(grad, source, ids, patch_size, normalize, eps, grad_images))
    return grad_images.to(images.dtype)


@register_kernel("apply_patch_mask", BACKEND)
def apply_patch_mask(images: Tensor, mask: Tensor, patch_size: int, fill: float) -> Tensor:
    out = mask_output(images, _host_empty)
    _run("apply_patch_mask", apply_patch_mask_arguments(images, mask, patch_size, fill, out))
    return out
