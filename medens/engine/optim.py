"""AdamW with per-group weight decay and layer-wise lr decay, the batch-scaled learning rate, and the schedule.

- ``lr = base_lr * effective_batch / 256`` (:func:`scaled_lr`) unless an absolute lr is given, where the effective
  batch is ``batch_size * accum_steps * world_size``.
- Biases, norm weights, layer scales and tokens (1-D parameters and the model's ``no_weight_decay()`` names) get no
  weight decay.
- Layer-wise lr decay (fine-tuning) multiplies each layer's lr by ``layer_decay ** (depth - layer)``, using timm's
  grouping of ConvNeXt stages; the factor is stored in each group as ``lr_scale``.
- :class:`WarmupCosine` sets every group's lr per optimiser step: linear warm-up from 0, then cosine to ``min_lr``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

__all__ = ["scaled_lr", "param_groups", "create_optimizer", "WarmupCosine"]


def scaled_lr(base_lr: float, effective_batch: int) -> float:
    """The linear scaling rule: ``base_lr * effective_batch / 256``."""
    return base_lr * effective_batch / 256


def param_groups(
    model: nn.Module, weight_decay: float, layer_decay: float | None = None
) -> list[dict[str, Any]]:
    """Parameter groups for AdamW.

    Args:
        model: the model; its ``no_weight_decay()`` names (if any) are exempt from weight decay.
        weight_decay: decoupled weight decay for weight matrices and kernels.
        layer_decay: layer-wise lr decay factor in (0, 1], or None for none.

    Returns:
        Groups with ``params``, ``weight_decay`` and ``lr_scale``.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    if layer_decay is not None and layer_decay != 1.0:
        if not 0.0 < layer_decay <= 1.0:
            raise ValueError(f"layer_decay: expected a number in (0, 1], received {layer_decay!r}")
        from timm.optim import param_groups_layer_decay

        return param_groups_layer_decay(
            model, weight_decay=weight_decay, no_weight_decay_list=tuple(skip), layer_decay=layer_decay
        )
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
    ]


def create_optimizer(
    model: nn.Module,
    lr: float,
    *,
    weight_decay: float = 0.05,
    betas: tuple[float, float] = (0.9, 0.999),
    layer_decay: float | None = None,
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; groups start at ``lr * lr_scale`` (the schedule then takes over).

    Raises:
        ValueError: for a non-positive lr or betas outside [0, 1).
    """
    if not lr > 0:
        raise ValueError(f"lr: expected a positive learning rate, received {lr!r}")
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas: expected two numbers in [0, 1), received {betas!r}")
    groups = [g for g in param_groups(model, weight_decay, layer_decay) if g["params"]]
    for g in groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay)


class WarmupCosine:
    """Per-step learning rate: linear warm-up to ``lr``, then half a cosine down to ``min_lr``.

    Args:
        optimizer: its groups' ``lr_scale`` (default 1) multiply the scheduled lr.
        lr: peak learning rate.
        total_steps: optimiser steps in the whole run.
        warmup_steps: steps of linear warm-up (from ``lr / warmup_steps`` at step 0).
        min_lr: final learning rate (at most ``lr``).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        lr: float,
        total_steps: int,
        warmup_steps: int = 0,
        min_lr: float = 0.0,
    ) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps: expected at least 1 optimiser step, received {total_steps}")
        self.optimizer = optimizer
        self.lr = float(lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = max(0, min(int(warmup_steps), self.total_steps))
        self.min_lr = min(float(min_lr), self.lr)  # the schedule never rises above its peak
        self.step_count = 0
        self._apply()

    def lr_at(self, step: int) -> float:
        """The scheduled (unscaled) lr for optimiser step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def _apply(self) -> None:
        value = self.lr_at(self.step_count)
        for group in self.optimizer.param_groups:
            group["lr"] = value * group.get("lr_scale", 1.0)

    def step(self) -> None:
        """Advance one optimiser step."""
        self.step_count += 1
        self._apply()

    def get_last_lr(self) -> float:
        """The current unscaled learning rate."""
        return self.lr_at(self.step_count)

    def state_dict(self) -> dict[str, Any]:
        return {
            "step_count": self.step_count,
            "lr": self.lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "min_lr": self.min_lr,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step_count"])
        self._apply()
