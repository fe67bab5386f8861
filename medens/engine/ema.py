"""Exponential moving average of a model's weights (evaluated and exported instead of the raw weights when on)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["ModelEma"]


class ModelEma:
    """Keeps ``ema = decay * ema + (1 - decay) * weights`` after every optimiser step.

    Floating-point buffers (BatchNorm's running mean and variance) are averaged the same way, so that the averaged
    weights are evaluated with statistics of the same window (as timm's ``ModelEmaV2``/``V3`` do by default);
    copying the live model's statistics instead pairs the averaged weights with statistics of the latest weights.
    Other buffers (BatchNorm's batch counter) are copied.

    Args:
        model: the model being trained (unwrapped, not DDP).
        decay: per-step decay in [0, 1), e.g. 0.9998.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay: expected a number in [0, 1), received {decay!r}")
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_params = [p for p in self.module.parameters()]
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - self.decay)
        for b_ema, b in zip(self.module.buffers(), model.buffers(), strict=True):
            if b_ema.is_floating_point():
                b_ema.lerp_(b.detach(), 1.0 - self.decay)
            else:
                b_ema.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state)
