"""dtype codes shared with the compiled kernels (csrc/include/medens/patch_math.h, enum DType)."""

from __future__ import annotations

import torch

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
    4: "kernel not compiled",
}


def kernel_float(x: torch.Tensor) -> torch.Tensor:
    """Scores and noise as the masking kernels read them: float16/bfloat16 -> float32 (exact); float32/float64 as is."""
    return x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)


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
