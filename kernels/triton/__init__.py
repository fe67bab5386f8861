"""Triton kernels of the medens ops, one module per op family (``entropy``, ``masking``, ``patches``).

Each module holds ``@triton.jit`` kernels and plain-Python launchers that take tensors already validated by the
public ops in :mod:`medens.ops`, already in the dtypes the kernels read, and the outputs to write (allocated by
the caller, as for the other backends); :mod:`medens.ops._triton` registers the launchers as the ``triton``
backend. The launchers pass the kernels their arguments by keyword. Nothing here imports :mod:`medens.ops`: what
a kernel needs from it is passed in. They run on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1``
(the interpreter, how the test suite checks them on machines without a GPU).

Rounding follows :mod:`medens.ops.reference` exactly where the CUDA and CPU kernels do:

- grey levels and bins in float32, with IEEE division (``tl.div_rn``; Triton's ``/`` on float32 is approximate on
  NVIDIA GPUs) and no fused multiply-adds (every launch passes ``enable_fp_fusion=False``);
- masking keys in float64. Float64 scalars (1/T, eps, log2 n) are passed as their int64 bit patterns, because a
  Python float argument becomes a float32 kernel argument.
"""

from __future__ import annotations

import contextlib
import struct

import numpy as np
import torch

FP_OPTIONS = {"enable_fp_fusion": False}
"""Launch options of every kernel: no contraction of a * b + c into one rounding."""


def float64_bits(value: float) -> int:
    """The bit pattern of ``value`` as a float64, as a signed int64 (kernels bitcast it back)."""
    return struct.unpack("<q", struct.pack("<d", value))[0]


def strides(tensor: torch.Tensor, *names: str) -> dict[str, int]:
    """The element strides of ``tensor`` as keyword arguments of a kernel, one name per dimension in order."""
    if len(names) != tensor.dim():
        raise ValueError(f"strides: {len(names)} names {names} for a tensor of {tensor.dim()} dimensions")
    return dict(zip(names, tensor.stride(), strict=True))


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (Triton block shapes must be powers of two)."""
    return 1 << max(n - 1, 0).bit_length()


def ieee_quiet(device: torch.device) -> contextlib.AbstractContextManager:
    """No numpy warnings for IEEE special values (log(0) = -inf, ...) in the interpreter, which computes with
    numpy on CPU tensors; on the GPU these are silent as everywhere else in torch."""
    return np.errstate(all="ignore") if device.type == "cpu" else contextlib.nullcontext()
