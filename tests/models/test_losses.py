"""Fine-tuning's loss step (``ClassificationStep``) and the inputs' normalisation (``pixel_normalisation``)."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from medens.models import pixel_normalisation
from medens.models.losses import ClassificationStep, class_weights, soft_cross_entropy


def _batch(n: int = 6, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 8, 8, generator=g), torch.arange(n) % k


def _linear(k: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, k))


def test_plain_step_is_weighted_smoothed_cross_entropy() -> None:
    images, labels = _batch()
    model = _linear()
    weight = class_weights([0, 0, 0, 1, 2], 3)
    loss, n = ClassificationStep(3, weight=weight, label_smoothing=0.1)(model, (images, labels))
    assert n == 6
    expected = F.cross_entropy(model(images), labels, weight=weight, label_smoothing=0.1)
    torch.testing.assert_close(loss, expected)


def test_mixup_step_is_soft_cross_entropy_against_timm_mixed_targets() -> None:
    images, labels = _batch()
    model = _linear()
    step = ClassificationStep(3, mixup=0.4, cutmix=0.0, mixup_prob=1.0, label_smoothing=0.1)
    assert step.mixup is not None
    torch.manual_seed(1)
    np.random.seed(1)  # timm's Mixup draws its lambda from numpy
    loss, n = step(model, (images.clone(), labels))
    torch.manual_seed(1)
    np.random.seed(1)
    mixed, soft = step.mixup(images.clone(), labels)
    assert n == 6 and torch.allclose(soft.sum(-1), torch.ones(6))
    torch.testing.assert_close(loss, soft_cross_entropy(model(mixed), soft))
    assert ClassificationStep(3).mixup is None


@pytest.mark.parametrize("arch", ["convnext_atto", "resnet10t"])
def test_pixel_normalisation_is_the_models_own_or_timms_imagenet(arch: str) -> None:
    model = timm.create_model(arch, pretrained=False, num_classes=2)
    mean, std = pixel_normalisation(model)
    assert (mean, std) == (list(model.pretrained_cfg["mean"]), list(model.pretrained_cfg["std"]))
    assert pixel_normalisation(nn.Linear(1, 1)) == (list(timm.data.IMAGENET_DEFAULT_MEAN),
                                                    list(timm.data.IMAGENET_DEFAULT_STD))
    model.pretrained_cfg = {**model.pretrained_cfg, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    assert pixel_normalisation(model) == ([0.5] * 3, [0.25] * 3)
