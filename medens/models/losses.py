"""Classification losses of fine-tuning: inverse-frequency class weights and cross-entropy against soft targets.

``F.cross_entropy`` takes soft targets too, but its class weights then weight each sample by ``sum_c w_c t_c``
without the normalisation that hard targets get; :func:`soft_cross_entropy` normalises by the weighted target
mass, so Mixup/CutMix batches and plain batches are weighted alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["class_weights", "soft_cross_entropy"]


def class_weights(targets: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights ``N / (K * n_c)`` (mean 1 over the classes present; 0 for absent classes)."""
    counts = torch.bincount(torch.as_tensor(list(targets), dtype=torch.long), minlength=num_classes).double()
    weights = torch.where(
        counts > 0, counts.sum() / (num_classes * counts.clamp(min=1)), torch.zeros_like(counts)
    )
    return weights.float()


def soft_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy against soft targets (Mixup/CutMix), optionally class-weighted like ``F.cross_entropy``.

    Args:
        logits: ``(B, K)``.
        target: ``(B, K)`` rows summing to 1.
        weight: ``(K,)`` class weights, or None.
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    if weight is None:
        return -(target * logp).sum(-1).mean()
    wt = target * weight
    return -(wt * logp).sum() / wt.sum().clamp(min=1e-12)


