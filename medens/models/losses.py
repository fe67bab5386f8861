"""Classification losses of fine-tuning: inverse-frequency class weights, cross-entropy against soft targets, and
:class:`ClassificationStep`, the trainer's loss step (Mixup/CutMix, then weighted, smoothed cross-entropy).

``F.cross_entropy`` takes soft targets too, but its class weights then weight each sample by ``sum_c w_c t_c``
without the normalisation that hard targets get; :func:`soft_cross_entropy` normalises by the weighted target
mass, so Mixup/CutMix batches and plain batches are weighted alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["class_weights", "soft_cross_entropy", "ClassificationStep"]


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




class ClassificationStep:
    """The ``step_fn`` of :class:`medens.engine.Trainer` for classification: optional Mixup/CutMix (timm's
    :class:`~timm.data.Mixup`, which also smooths the mixed targets), then class-weighted, label-smoothed
    cross-entropy (:func:`soft_cross_entropy` on mixed batches).

    Args:
        num_classes: K.
        weight: ``(K,)`` class weights (e.g. :func:`class_weights`), or None.
        label_smoothing: in [0, 1].
        mixup, cutmix: Beta-distribution alphas; both 0 disables mixing.
        mixup_prob: probability of mixing a batch.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        weight: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        mixup_prob: float = 1.0,
    ) -> None:
        self.weight = weight
        self.smoothing = float(label_smoothing)
        self.mixup = None
        if mixup > 0 or cutmix > 0:
            from timm.data import Mixup

            self.mixup = Mixup(
                mixup_alpha=float(mixup),
                cutmix_alpha=float(cutmix),
                prob=float(mixup_prob),
                label_smoothing=self.smoothing,
                num_classes=num_classes,
            )

    def __call__(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
        """The loss of ``batch`` = ``(images (B, 3, H, W), labels (B,) int64)`` and the number of samples B."""
        images, labels = batch
        weight = None if self.weight is None else self.weight.to(images.device)
        if self.mixup is not None:
            images, soft = self.mixup(images, labels)
            return soft_cross_entropy(model(images), soft, weight), images.shape[0]
        logits = model(images)
        return F.cross_entropy(
            logits.float(), labels, weight=weight, label_smoothing=self.smoothing
        ), images.shape[0]
