"""CUDA kernels of ``medens._C`` (kernels/cuda), registered as the ``cuda`` backend.

Each launcher receives tensors already validated by the public op, all on one CUDA device, allocates its outputs
(and small workspaces) there, and passes data pointers, sizes, element strides, the device index and PyTorch's
current stream of that device to C++. The C++ launcher selects the device, enqueues its kernels on that stream
and checks every launch; nothing synchronises, except reading gather's index-error flag (see
:func:`raise_on_index_error`) where the public op could not check the ids first (under torch.compile). A failed launch raises RuntimeError naming the op and the
CUDA error.
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
from ._registry import register_kernel

BACKEND = "cuda"
INDEX_OUT_OF_RANGE = 2  # medens::kIndexOutOfRange (csrc/include/medens/patch_math.h, _dtypes.STATUS_MESSAGES)


def raise_on_index_error(index_error: Tensor, op: str, backend: str) -> None:
    """Raise ValueError if a kernel flagged an out-of-range id (it stayed in bounds, writing NaN or skipping).

    The public ops reject such ids before any kernel in eager mode; this catches them where those checks are not
    traced (torch.compile). Reading the flag waits for the kernel; during CUDA graph capture it cannot be read,
    and the check is skipped.
    """
    if index_error.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return
    if int(index_error.item()):
        check_status(INDEX_OUT_OF_RANGE, op, backend)


def check_cuda_status(status: int, op: str) -> None:
    """Raise for a failed launcher status: RuntimeError naming the op and the CUDA error, or as check_status."""
    ext = extension()
    if status >= ext.CUDA_ERROR_BASE:
        raise RuntimeError(f"{op} ({BACKEND}): CUDA error {ext.cuda_error_string(status)}")
    check_status(status, op, BACKEND)


def _launch(op: str, entry_point: str, device: torch.device, *args) -> None:
    """Call ``medens._C.<entry_point>(*args, device index, current stream)`` and raise on a failed status."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    stream = torch.cuda.current_stream(index).cuda_stream
    check_cuda_status(getattr(extension(), entry_point)(*args, index, stream), op)


def _pointer(tensor: Tensor | None) -> int:
    return 0 if tensor is None else tensor.data_ptr()


@register_kernel("patch_entropy", BACKEND)
def patch_entropy(images: Tensor, patch_size: int, bins: int, lo: float, range_width: float) -> Tensor:
    b, c, h, w = images.shape
    device = images.device
    out = torch.empty(b, (h // patch_size) * (w // patch_size), dtype=torch.float32, device=device)
    pixels = patch_size * patch_size
    terms = torch.empty(pixels + 1, dtype=torch.float64, device=device) if (
        pixels <= extension().CUDA_MAX_TABULATED_PATCH) else None
    _launch("patch_entropy", "patch_entropy_cuda", device, images.data_ptr(), dtype_code(images.dtype), b, c, h, w,
            list(images.stride()), patch_size, bins, lo, range_width, _pointer(terms), out.data_ptr())
    return out



@register_kernel("entropy_guided_mask", BACKEND)
def entropy_guided_mask(
    scores: Tensor, noise: Tensor | None, num_keep: int, temperature: float, prefer_high: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    b, n = scores.shape
    device = scores.device
    scores = kernel_float(scores)
    mask, ids_keep, ids_mask, ids_restore = masking_outputs(b, n, num_keep, device)
    workspace = torch.empty(b, n, dtype=torch.int64, device=device) if n > extension().CUDA_MAX_SHARED_KEYS else None
    noise = None if noise is None else kernel_float(noise)
    noise_ptr, noise_code, noise_strides = noise_arguments(noise)
    _launch("entropy_guided_mask", "entropy_guided_mask_cuda", device, scores.data_ptr(), dtype_code(scores.dtype),
            list(scores.stride()), noise_ptr, noise_code, noise_strides, b, n, num_keep, temperature, prefer_high,
            _pointer(workspace), mask.data_ptr(), _pointer(ids_keep), _pointer(ids_mask), ids_restore.data_ptr())
    return mask, ids_keep, ids_mask, ids_restore


@register_kernel("gather_patches", BACKEND)
def gather_patches(images: Tensor, ids: Tensor, patch_size: int, normalize: bool, eps: float,
                   ids_checked: bool = False) -> Tensor:
    b, c, h, w = images.shape
    device = images.device
    k = ids.shape[1]
    out = torch.empty(b, k, patch_size * patch_size * c, dtype=images.dtype, device=device)
    index_error = torch.zeros(1, dtype=torch.int32, device=device)
    _launch("gather_patches", "gather_patches_cuda", device, images.data_ptr(), dtype_code(images.dtype), b, c, h, w,
            list(images.stride()), ids.data_ptr(), list(ids.stride()), k, patch_size, normalize, eps,
            _pointer(out), index_error.data_ptr())
    if not ids_checked:
        raise_on_index_error(index_error, "gather_patches", BACKEND)
    return out


@register_kernel("gather_patches_backward", BACKEND)
def gather_patches_backward(
    grad: Tensor, images: Tensor, ids: Tensor, patch_size: int, normalize: bool, eps: float,
    ids_checked: bool = False,
) -> Tensor:
    device = images.device
    compute, grad, source = backward_operands(grad, images, normalize)
    b, c, h, w = images.shape
    grad_images = torch.zeros(b, c, h, w, dtype=compute, device=device)
    index_error = torch.zeros(1, dtype=torch.int32, device=device)
    _launch("gather_patches_backward", "gather_patches_backward_cuda", device, _pointer(grad), dtype_code(compute),
            source.data_ptr(), list(source.stride()), b, c, h, w, ids.data_ptr(), list(ids.stride()), ids.shape[1],
            patch_size, normalize, eps, grad_images.data_ptr(), index_error.data_ptr())
    if not ids_checked:
        raise_on_index_error(index_error, "gather_patches_backward", BACKEND)
    return grad_images.to(images.dtype)


@register_kernel("apply_patch_mask", BACKEND)
def apply_patch_mask(images: Tensor, mask: Tensor, patch_size: int, fill: float) -> Tensor:
    b, c, h, w = images.shape
    out = torch.empty_like(images)
    fill_bits = int.from_bytes(bytes(torch.tensor([fill], dtype=images.dtype).view(torch.uint8).tolist()), "little")
    _launch("apply_patch_mask", "apply_patch_mask_cuda", images.device, images.data_ptr(), images.element_size(), b,
            c, h, w, list(images.stride()), mask.data_ptr(), list(mask.stride()), patch_size, fill_bits,
            out.data_ptr(), list(out.stride()))
    return out
