"""dtype codes shared with the compiled kernels (csrc/include/medens/patch_math.h, enum DType), and the dtype
rules every backend's launchers apply to their operands."""

from __future__ import annotations

import torch
from torch import Tensor

from .reference import statistics_dtype

DTYPE_CODES = {
    torch.uint8: 0,
    torch.float16: 1,
    torch.bfloat16: 2,
    torch.float32: 3,
    torch.float64: 4,
}

STATUS_MESSAGES = {
    1: "unsupported dtype",
    2: "a patch index is out of range",
    3: "invalid argument",
}


def kernel_float(x: torch.Tensor) -> torch.Tensor:
    """Scores and noise as the masking kernels read them: float16/bfloat16 -> float32 (exact); float32/float64 as is."""
    return x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)


def noise_arguments(noise: Tensor | None) -> tuple[int, int, list[int]]:
    """(data pointer, dtype code, strides) of the masking noise, already in a kernel dtype (:func:`kernel_float`),
    as the compiled kernels take it; a null pointer when there is none (temperature 0). The caller keeps the
    tensor alive while the kernel runs."""
    if noise is None:
        return 0, dtype_code(torch.float32), [0, 0]
    return noise.data_ptr(), dtype_code(noise.dtype), list(noise.stride())


def masking_outputs(batch: int, num_patches: int, num_keep: int, device: torch.device) -> tuple[Tensor, ...]:
    """Uninitialised mask (B, N) bool, ids_keep (B, K), ids_mask (B, N - K) and ids_restore (B, N) int64."""
    return (
        torch.empty(batch, num_patches, dtype=torch.bool, device=device),
        torch.empty(batch, num_keep, dtype=torch.int64, device=device),
        torch.empty(batch, num_patches - num_keep, dtype=torch.int64, device=device),
        torch.empty(batch, num_patches, dtype=torch.int64, device=device),
    )


def backward_operands(grad: Tensor, images: Tensor, normalize: bool) -> tuple[torch.dtype, Tensor, Tensor]:
    """What every gather_patches backward kernel reads: the statistics dtype it computes in, the gradient in that
    dtype (contiguous), and the images (in that dtype only when normalize: only then are their values read)."""
    compute = statistics_dtype(images.dtype)
    return compute, grad.to(compute).contiguous(), images.to(compute) if normalize else images


def dtype_code(dtype: torch.dtype) -> int:
    return DTYPE_CODES[dtype]


def check_status(status: int, op: str, backend: str) -> None:
    """Turn a kernel status code into an exception naming the op."""
    if status == 0:
        return
    message = STATUS_MESSAGES.get(status, f"status {status}")
    if status == 2:
        raise ValueError(f"{op} ({backend}): {message}")
    raise RuntimeError(f"{op} ({backend}): {message}")
