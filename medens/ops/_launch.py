"""What the launchers of the compiled backends (``_cpp``, ``_cuda`` and ``_triton``) share, written once.

A launcher receives tensors already validated by the public op. Around its backend's own call it does the same
things on every backend, and they live here:

- the operands as the kernels read them (:func:`masking_operands`, :func:`backward_operands`);
- the outputs, from the backend's allocator (:func:`entropy_output`, :func:`masking_outputs`, :func:`gather_output`,
  :func:`gather_backward_output`, :func:`mask_output`) and the GPU kernels' index-error flag;
- the one encoding of ``fill`` (:func:`fill_bits`), which every backend's ``apply_patch_mask`` kernel takes;
- the keyword arguments of the compiled entry points ``<op>_cpu`` and ``<op>_cuda`` of ``medens._C``, one builder
  per op (:func:`patch_entropy_arguments`, ...). Their keys are the ``py::arg`` names of csrc/bindings.cpp and
  csrc/cuda_bindings.cpp, and the launchers pass them by keyword: a misspelt or missing argument raises TypeError,
  and two sizes cannot trade places unnoticed;
- status codes and the index-error flag as exceptions naming the op (:func:`check_status`,
  :func:`raise_on_index_error`).

What only one backend does stays in its module: threads and the host cache (cpp); workspaces, the device index,
the stream and CUDA error strings (cuda); the device context (triton).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .reference import statistics_dtype

# ---- facts shared with the compiled kernels --------------------------------------------------------------------

DTYPE_CODES = {
    torch.uint8: 0,
    torch.float16: 1,
    torch.bfloat16: 2,
    torch.float32: 3,
    torch.float64: 4,
}
"""dtype codes of the compiled kernels (csrc/include/medens/patch_math.h, enum DType)."""

INDEX_OUT_OF_RANGE = 2
"""medens::kIndexOutOfRange: a patch index is out of range (a ValueError, as the public ops raise)."""

STATUS_MESSAGES = {
    1: "unsupported dtype",
    INDEX_OUT_OF_RANGE: "a patch index is out of range",
    3: "invalid argument",
}
"""What the kernels' status codes mean (csrc/include/medens/patch_math.h, enum Status)."""

_BITS_VIEWS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_EVERYWHERE = torch.ones((), dtype=torch.bool)  # the mask of fill_bits' masked_fill_ (read only)


def dtype_code(dtype: torch.dtype) -> int:
    """The compiled kernels' code for ``dtype``."""
    return DTYPE_CODES[dtype]


def check_status(status: int, op: str, backend: str) -> None:
    """Turn a kernel status code into an exception naming the op.

    Raises:
        ValueError: a patch index is out of range.
        RuntimeError: any other non-zero status.
    """
    if status == 0:
        return
    message = STATUS_MESSAGES.get(status, f"status {status}")
    if status == INDEX_OUT_OF_RANGE:
        raise ValueError(f"{op} ({backend}): {message}")
    raise RuntimeError(f"{op} ({backend}): {message}")


def raise_on_index_error(index_error: Tensor, op: str, backend: str) -> None:
    """Raise ValueError if a GPU kernel flagged an out-of-range id (it stayed in bounds, writing NaN or skipping).

    The public ops reject such ids before any kernel in eager mode; this catches them where those checks are not
    traced (torch.compile). Reading the flag waits for the kernel; during CUDA graph capture it cannot be read,
    and the check is skipped.
    """
    if index_error.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return
    if int(index_error.item()):
        check_status(INDEX_OUT_OF_RANGE, op, backend)


def fill_bits(fill: float, dtype: torch.dtype) -> int:
    """The one encoding of ``fill`` every backend's apply_patch_mask kernel takes: the bit pattern of ``fill`` as
    one element of ``dtype``, an integer in [0, 2 ** (8 * itemsize)) (a kernel keeps its low itemsize bytes).

    ``fill`` is converted as the reference converts it (``masked_fill``), so -0.0, inf and NaN keep their bits
    and a finite value the dtype cannot hold raises the reference's error on every backend (the public op refuses
    it earlier, with a ValueError).

    Raises:
        RuntimeError: ``fill`` overflows ``dtype`` (e.g. 1e6 for float16), as ``Tensor.masked_fill`` raises.
    """
    element = torch.empty((), dtype=dtype).masked_fill_(_EVERYWHERE, fill)
    bits = int(element.view(_BITS_VIEWS[dtype.itemsize]).item())
    return bits & ((1 << (8 * dtype.itemsize)) - 1)


def pointer(tensor: Tensor | None) -> int:
    """The data pointer of ``tensor``, 0 for None (an absent workspace or operand)."""
    return 0 if tensor is None else tensor.data_ptr()


# ---- operands and outputs --------------------------------------------------------------------------------------

Allocate = Callable[[tuple[int, ...], torch.dtype, torch.device], Tensor]
"""How a backend makes a contiguous output: ``allocate(shape, dtype, device)``."""


def device_empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.empty(shape, dtype=dtype, device=device)


def device_zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.zeros(shape, dtype=dtype, device=device)


def kernel_float(x: Tensor) -> Tensor:
    """Scores and noise as the masking kernels read them: float16/bfloat16 -> float32 (exact); float32/float64 as is."""
    return x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)


def masking_operands(scores: Tensor, noise: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Scores (B, N) and noise (B, N, or None at temperature 0) in a kernel dtype (:func:`kernel_float`)."""
    return kernel_float(scores), None if noise is None else kernel_float(noise)


def backward_operands(grad: Tensor, images: Tensor, normalize: bool) -> tuple[torch.dtype, Tensor, Tensor]:
    """What every gather_patches backward kernel reads: the statistics dtype it computes in, the gradient in that
    dtype (contiguous), and the images (in that dtype only when normalize: only then are their values read)."""
    compute = statistics_dtype(images.dtype)
    return compute, grad.to(compute).contiguous(), images.to(compute) if normalize else images


def entropy_output(images: Tensor, patch_size: int, allocate: Allocate = device_empty) -> Tensor:
    """Uninitialised (B, N) float32 entropies of (B, C, H, W) images."""
    b, _, h, w = images.shape
    return allocate((b, (h // patch_size) * (w // patch_size)), torch.float32, images.device)


def masking_outputs(scores: Tensor, num_keep: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Uninitialised mask (B, N) bool, ids_keep (B, K), ids_mask (B, N - K) and ids_restore (B, N) int64."""
    b, n = scores.shape
    device = scores.device
    return (
        torch.empty(b, n, dtype=torch.bool, device=device),
        torch.empty(b, num_keep, dtype=torch.int64, device=device),
        torch.empty(b, n - num_keep, dtype=torch.int64, device=device),
        torch.empty(b, n, dtype=torch.int64, device=device),
    )


def gather_output(images: Tensor, ids: Tensor, patch_size: int, allocate: Allocate = device_empty) -> Tensor:
    """Uninitialised (B, K, p*p*C) patches in the dtype of ``images``."""
    b, c, _, _ = images.shape
    return allocate((b, ids.shape[1], patch_size * patch_size * c), images.dtype, images.device)


def gather_backward_output(images: Tensor, dtype: torch.dtype, allocate: Allocate = device_zeros) -> Tensor:
    """The (B, C, H, W) contiguous image gradient in ``dtype``: zeros for the GPU kernels, which add into it;
    the CPU kernel writes every element and passes an uninitialised allocator."""
    return allocate(tuple(images.shape), dtype, images.device)


def mask_output(images: Tensor, allocate: Allocate = device_empty) -> Tensor:
    """Uninitialised output of apply_patch_mask: contiguous from ``allocate`` when ``images`` is, else with the
    strides of ``images`` when they are dense (``torch.empty_like``)."""
    if images.is_contiguous():
        return allocate(tuple(images.shape), images.dtype, images.device)
    return torch.empty_like(images)


def index_error_flag(device: torch.device) -> Tensor:
    """The (1,) int32 zero a GPU gather kernel sets to 1 when it meets an out-of-range id."""
    return torch.zeros(1, dtype=torch.int32, device=device)


# ---- keyword arguments of the compiled entry points (py::arg names) --------------------------------------------


def _geometry(images: Tensor) -> dict[str, int]:
    b, c, h, w = images.shape
    return {"batch": b, "channels": c, "height": h, "width": w}


def patch_entropy_arguments(images: Tensor, patch_size: int, bins: int, lo: float, range_width: float,
                            out: Tensor) -> dict[str, object]:
    """``patch_entropy_cpu`` / ``patch_entropy_cuda``: images (B, C, H, W), out (B, N) float32."""
    return {
        "images": images.data_ptr(), "dtype": dtype_code(images.dtype), **_geometry(images),
        "strides": list(images.stride()), "patch": patch_size, "bins": bins, "lo": lo, "range_width": range_width,
        "out": out.data_ptr(),
    }


def entropy_guided_mask_arguments(scores: Tensor, noise: Tensor | None, num_keep: int, temperature: float,
                                  prefer_high: bool, outputs: tuple[Tensor, ...]) -> dict[str, object]:
    """``entropy_guided_mask_cpu`` / ``_cuda``: operands from :func:`masking_operands`, outputs from
    :func:`masking_outputs`. Without noise (temperature 0) a null pointer."""
    b, n = scores.shape
    mask, ids_keep, ids_mask, ids_restore = outputs
    return {
        "scores": scores.data_ptr(), "scores_dtype": dtype_code(scores.dtype), "scores_strides": list(scores.stride()),
        "noise": pointer(noise), "noise_dtype": dtype_code(torch.float32 if noise is None else noise.dtype),
        "noise_strides": [0, 0] if noise is None else list(noise.stride()),
        "batch": b, "num_patches": n, "num_keep": num_keep, "temperature": temperature, "prefer_high": prefer_high,
        "mask": mask.data_ptr(), "ids_keep": ids_keep.data_ptr(), "ids_mask": ids_mask.data_ptr(),
        "ids_restore": ids_restore.data_ptr(),
    }


def gather_patches_arguments(images: Tensor, ids: Tensor, patch_size: int, normalize: bool, eps: float,
                             out: Tensor) -> dict[str, object]:
    """``gather_patches_cpu`` / ``_cuda``: images (B, C, H, W), ids (B, K), out from :func:`gather_output`."""
    return {
        "images": images.data_ptr(), "dtype": dtype_code(images.dtype), **_geometry(images),
        "strides": list(images.stride()), "ids": ids.data_ptr(), "ids_strides": list(ids.stride()),
        "num_ids": ids.shape[1], "patch": patch_size, "normalize": normalize, "eps": eps, "out": out.data_ptr(),
    }


def gather_patches_backward_arguments(grad: Tensor, images: Tensor, ids: Tensor, patch_size: int, normalize: bool,
                                      eps: float, grad_images: Tensor) -> dict[str, object]:
    """``gather_patches_backward_cpu`` / ``_cuda``: grad and images from :func:`backward_operands` (grad's dtype
    is the one the kernel computes and writes in), grad_images from :func:`gather_backward_output`."""
    return {
        "grad": grad.data_ptr(), "dtype": dtype_code(grad.dtype), "images": images.data_ptr(),
        "image_strides": list(images.stride()), **_geometry(images), "ids": ids.data_ptr(),
        "ids_strides": list(ids.stride()), "num_ids": ids.shape[1], "patch": patch_size, "normalize": normalize,
        "eps": eps, "grad_images": grad_images.data_ptr(),
    }


def apply_patch_mask_arguments(images: Tensor, mask: Tensor, patch_size: int, fill: float,
                               out: Tensor) -> dict[str, object]:
    """``apply_patch_mask_cpu`` / ``_cuda``: images (B, C, H, W), mask (B, N) bool, out from :func:`mask_output`."""
    return {
        "images": images.data_ptr(), "element_size": images.element_size(), **_geometry(images),
        "strides": list(images.stride()), "mask": mask.data_ptr(), "mask_strides": list(mask.stride()),
        "patch": patch_size, "fill_bits": fill_bits(fill, images.dtype), "out": out.data_ptr(),
        "out_strides": list(out.stride()),
    }
