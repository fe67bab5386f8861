"""CPU kernels of ``medens._C``, registered as the ``cpp`` backend.

Each launcher receives tensors already validated by the public op, passes data pointers, sizes and element
strides to C++, and runs with ``torch.get_num_threads()`` OpenMP threads. Image-sized outputs come from
:func:`._host_memory.empty`, which reuses large blocks instead of page-faulting fresh ones every call.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._backends import extension
from ._dtypes import (
    backward_operands,
    check_status,
    dtype_code,
    kernel_float,
    masking_outputs,
    noise_arguments,
)
from ._host_memory import empty
from ._registry import register_kernel

BACKEND = "cpp"


def _threads() -> int:
    return torch.get_num_threads()


@register_kernel("patch_entropy", BACKEND)
def patch_entropy(images: Tensor, patch_size: int, bins: int, lo: float, range_width: float) -> Tensor:
    b, c, h, w = images.shape
    out = empty((b, (h // patch_size) * (w // patch_size)), torch.float32)
    status = extension().patch_entropy_cpu(
        images.data_ptr(), dtype_code(images.dtype), b, c, h, w, list(images.stride()), patch_size, bins, lo,
        range_width, out.data_ptr(), _threads(),
    )
    check_status(status, "patch_entropy", BACKEND)
    return out



@register_kernel("entropy_guided_mask", BACKEND)
def entropy_guided_mask(
    scores: Tensor, noise: Tensor | None, num_keep: int, temperature: float, prefer_high: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    b, n = scores.shape
    scores = kernel_float(scores)
    mask, ids_keep, ids_mask, ids_restore = masking_outputs(b, n, num_keep, scores.device)
    noise = None if noise is None else kernel_float(noise)
    noise_ptr, noise_code, noise_strides = noise_arguments(noise)
    status = extension().entropy_guided_mask_cpu(
        scores.data_ptr(), dtype_code(scores.dtype), list(scores.stride()), noise_ptr, noise_code, noise_strides,
        b, n, num_keep, temperature, prefer_high, mask.data_ptr(), ids_keep.data_ptr(), ids_mask.data_ptr(),
        ids_restore.data_ptr(), _threads(),
    )
    check_status(status, "entropy_guided_mask", BACKEND)
    return mask, ids_keep, ids_mask, ids_restore


@register_kernel("gather_patches", BACKEND)
def gather_patches(images: Tensor, ids: Tensor, patch_size: int, normalize: bool, eps: float,
                   ids_checked: bool = False) -> Tensor:
    # ids_checked is not needed: the CPU kernels report out-of-range ids in their status, at no extra cost
    b, c, h, w = images.shape
    k = ids.shape[1]
    out = empty((b, k, patch_size * patch_size * c), images.dtype)
    status = extension().gather_patches_cpu(
        images.data_ptr(), dtype_code(images.dtype), b, c, h, w, list(images.stride()), ids.data_ptr(),
        list(ids.stride()), k, patch_size, normalize, eps, out.data_ptr(), _threads(),
    )
    check_status(status, "gather_patches", BACKEND)
    return out


@register_kernel("gather_patches_backward", BACKEND)
def gather_patches_backward(
    grad: Tensor, images: Tensor, ids: Tensor, patch_size: int, normalize: bool, eps: float,
    ids_checked: bool = False,
) -> Tensor:
    compute, grad, source = backward_operands(grad, images, normalize)
    b, c, h, w = images.shape
    grad_images = empty((b, c, h, w), compute)  # every element is written by the kernel
    status = extension().gather_patches_backward_cpu(
        grad.data_ptr(), dtype_code(compute), source.data_ptr(), list(source.stride()), b, c, h, w, ids.data_ptr(),
        list(ids.stride()), ids.shape[1], patch_size, normalize, eps, grad_images.data_ptr(), _threads(),
    )
    check_status(status, "gather_patches_backward", BACKEND)
    return grad_images.to(images.dtype)


@register_kernel("apply_patch_mask", BACKEND)
def apply_patch_mask(images: Tensor, mask: Tensor, patch_size: int, fill: float) -> Tensor:
    b, c, h, w = images.shape
    out = empty(tuple(images.shape), images.dtype) if images.is_contiguous() else torch.empty_like(images)
    fill_value = torch.tensor([fill], dtype=images.dtype)
    status = extension().apply_patch_mask_cpu(
        images.data_ptr(), images.element_size(), b, c, h, w, list(images.stride()), mask.data_ptr(),
        list(mask.stride()), patch_size, fill_value.data_ptr(), out.data_ptr(), list(out.stride()), _threads(),
    )
    check_status(status, "apply_patch_mask", BACKEND)
    return out
