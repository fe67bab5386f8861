"""CUDA kernels of ``medens._C`` (kernels/cuda), registered as the ``cuda`` backend.

Each launcher receives tensors already validated by the public op, all on one CUDA device, allocates its outputs
(and small workspaces) there, and calls the entry point ``medens._C.<op>_cuda`` by keyword with the arguments
:mod:`._launch` builds (the same as the CPU entry point's), its workspaces, the device index and PyTorch's current
stream of that device. The C++ launcher selects the device, enqueues its kernels on that stream and checks every
launch; nothing synchronises, except reading gather's index-error flag (see :func:`._launch.raise_on_index_error`)
where the public op could not check the ids first (under torch.compile). A failed launch raises RuntimeError
naming the op and the CUDA error.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._backends import extension
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
    index_error_flag,
    mask_output,
    masking_operands,
    masking_outputs,
    patch_entropy_arguments,
    pointer,
    raise_on_index_error,
)
from ._registry import register_kernel

BACKEND = "cuda"


def check_cuda_status(status: int, op: str) -> None:
    """Raise for a failed launcher status: RuntimeError naming the op and the CUDA error, or as check_status."""
    ext = extension()
    if status >= ext.CUDA_ERROR_BASE:
        raise RuntimeError(f"{op} ({BACKEND}): CUDA error {ext.cuda_error_string(status=status)}")
    check_status(status, op, BACKEND)


def device_and_stream(device: torch.device) -> tuple[int, int]:
    """The device index of ``device`` (the current device when it has none) and its current stream's handle."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    return index, torch.cuda.current_stream(index).cuda_stream


def _run(op: str, device: torch.device, arguments: dict[str, object], **workspaces: int) -> None:
    """Call ``medens._C.<op>_cuda(**arguments, **workspaces, device=..., stream=...)``; raise on a failed status."""
    index, stream = device_and_stream(device)
    check_cuda_status(getattr(extension(), f"{op}_cuda")(**arguments, **workspaces, device=index, stream=stream), op)


@register_kernel("patch_entropy", BACKEND)
def patch_entropy(images: Tensor, patch_size: int, bins: int, lo: float, range_width: float) -> Tensor:
    out = entropy_output(images, patch_size)
    pixels = patch_size * patch_size
    terms = torch.empty(pixels + 1, dtype=torch.float64, device=images.device) if (
        pixels <= extension().CUDA_MAX_TABULATED_PATCH) else None
    _run("patch_entropy", images.device, patch_entropy_arguments(images, patch_size, bins, lo, range_width, out),
         terms=pointer(terms))
    return out


@register_kernel("entropy_guided_mask", BACKEND)
def entropy_guided_mask(
    scores: Tensor, noise: Tensor | None, num_keep: int, temperature: float, prefer_high: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    scores, noise = masking_operands(scores, noise)
    outputs = masking_outputs(scores, num_keep)
    b, n = scores.shape
    workspace = torch.empty(b, n, dtype=torch.int64, device=scores.device) if (
        n > extension().CUDA_MAX_SHARED_KEYS) else None
    _run("entropy_guided_mask", scores.device,
         entropy_guided_mask_arguments(scores, noise, num_keep, temperature, prefer_high, outputs),
         key_workspace=pointer(workspace))
    return outputs


@register_kernel("gather_patches", BACKEND)
def gather_patches(images: Tensor, ids: Tensor, patch_size: int, normalize: bool, eps: float,
                   ids_checked: bool = False) -> Tensor:
    out = gather_output(images, ids, patch_size)
    index_error = index_error_flag(images.device)
    _run("gather_patches", images.device, gather_patches_arguments(images, ids, patch_size, normalize, eps, out),
         index_error=index_error.data_ptr())
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
    _run("gather_patches_backward", images.device,
         gather_patches_backward_arguments(grad, source, ids, patch_size, normalize, eps, grad_images),
         index_error=index_error.data_ptr())
    if not ids_checked:
        raise_on_index_error(index_error, "gather_patches_backward", BACKEND)
    return grad_images.to(images.dtype)


@register_kernel("apply_patch_mask", BACKEND)
def apply_patch_mask(images: Tensor, mask: Tensor, patch_size: int, fill: float) -> Tensor:
    out = mask_output(images)
    _run("apply_patch_mask", images.device, apply_patch_mask_arguments(images, mask, patch_size, fill, out))
    return out
