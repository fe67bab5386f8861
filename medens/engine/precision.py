"""Mixed precision: which autocast dtype a run uses, and whether it needs a gradient scaler.

``amp`` is one of ``"auto"`` (bf16 on a GPU that supports it, fp16 with a scaler on an older GPU, fp32 on CPU),
``"bf16"``, ``"fp16"`` or ``"off"`` (fp32). fp16 always comes with a :class:`torch.amp.GradScaler`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

__all__ = ["AMP_CHOICES", "Precision", "resolve_precision"]

AMP_CHOICES: tuple[str, ...] = ("auto", "bf16", "fp16", "off")


@dataclass(frozen=True)
class Precision:
    """A resolved precision policy.

    Attributes:
        name: ``"bf16"``, ``"fp16"`` or ``"fp32"``.
        dtype: the autocast dtype, or None for fp32.
        device_type: ``"cuda"`` or ``"cpu"``.
    """

    name: str
    dtype: torch.dtype | None
    device_type: str

    @property
    def needs_scaler(self) -> bool:
        return self.dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context for a forward pass (a null context in fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def make_scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(self.device_type) if self.needs_scaler else None


def resolve_precision(amp: str, device: torch.device) -> Precision:
    """Turn the ``amp`` option into a :class:`Precision` for ``device``.

    Raises:
        ValueError: for an unknown option, or fp16 on CPU (no scaler support there).
    """
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp: expected one of {AMP_CHOICES}, received {amp!r}")
    kind = device.type
    if amp == "off" or (amp == "auto" and kind != "cuda"):
        return Precision("fp32", None, kind)
    if amp == "auto":
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if amp == "fp16" and kind != "cuda":
        raise ValueError("amp: 'fp16' needs a CUDA device; on CPU use 'bf16' or 'off'")
    return Precision(amp, torch.bfloat16 if amp == "bf16" else torch.float16, kind)
