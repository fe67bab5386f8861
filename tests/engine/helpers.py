"""Small runs of the engine for the tests: a masked ConvNeXt-Atto on 64x64 noise images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from medens.engine import (
    DistContext,
    EngineConfig,
    Trainer,
    WarmupCosine,
    build_loader,
    create_optimizer,
    seed_everything,
    steps_per_epoch,
)
from medens.models import MaskedConvNeXt
from medens.train.pretrain import mae_step

__all__ = ["IMAGE", "images", "mae_step", "make_trainer", "assert_same_weights"]

IMAGE = 64


def images(n: int = 12, seed: int = 0, poison: tuple[int, ...] = ()) -> TensorDataset:
    """``n`` random [0, 1] images with zero labels; images listed in ``poison`` are NaN."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, IMAGE, IMAGE, generator=gen)
    for i in poison:
        x[i] = float("nan")
    return TensorDataset(x, torch.zeros(n, dtype=torch.long))


def make_trainer(
    out_dir: Path,
    dataset: TensorDataset,
    *,
    epochs: int = 2,
    batch_size: int = 4,
    accum_steps: int = 1,
    lr: float = 1e-3,
    seed: int = 0,
    dist: DistContext | None = None,
    step_fn: Callable = mae_step,
    **engine: Any,
) -> tuple[Trainer, torch.utils.data.DataLoader]:
    """A trainer for a masked ConvNeXt-Atto, built the way the pretrain command builds it."""
    dist = dist or DistContext()
    seed_everything(seed)
    model = MaskedConvNeXt("convnext_atto", image_size=IMAGE, mask_ratio=0.5, decoder_dim=32)
    seed_everything(seed + dist.rank)
    loader = build_loader(
        dataset, batch_size, rank=dist.rank, world_size=dist.world_size, seed=seed, drop_last=True
    )
    optimizer = create_optimizer(model, lr, betas=(0.9, 0.95))
    total = epochs * steps_per_epoch(loader, accum_steps)
    scheduler = WarmupCosine(optimizer, lr, total_steps=total, warmup_steps=2)
    config = EngineConfig(epochs=epochs, accum_steps=accum_steps, progress=False, **engine)
    trainer = Trainer(model, optimizer, scheduler, step_fn, config=config, out_dir=out_dir, dist=dist)
    return trainer, loader


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), f"{key} differs"
