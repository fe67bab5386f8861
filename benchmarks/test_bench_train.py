"""One masked-autoencoder training step (mask, forward, backward, AdamW) with the medens ops against the same
step with the pure-PyTorch reference ops; images per second in ``extra_info["images_per_s"]``.

On CPU: ConvNeXt-Atto, 16 images of 128 px, fp32. On a GPU: ConvNeXt-Tiny, 64 images of 224 px, bf16/fp16
autocast (the paper's model and size). Run with ``pytest benchmarks/test_bench_train.py --benchmark``.
"""

from __future__ import annotations

import pytest
import torch

from medens.engine import create_optimizer, resolve_precision
from medens.models import MaskedConvNeXt

from .conftest import run

pytestmark = pytest.mark.benchmark


def _train_step(device: torch.device, backend: str):
    arch, size, batch = ("convnext_tiny", 224, 64) if device.type == "cuda" else ("convnext_atto", 128, 16)
    torch.manual_seed(0)
    model = MaskedConvNeXt(arch, image_size=size, ops_backend=backend).to(device, memory_format=torch.channels_last)
    optimizer = create_optimizer(model, 1e-4, betas=(0.9, 0.95))
    precision = resolve_precision("auto", device)
    images = torch.rand(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)

    def step() -> torch.Tensor:
        with precision.autocast():
            loss = model(images).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step, f"{arch} {batch}x{size}px {precision.name}", batch


def test_train_step(benchmark, device, backend) -> None:
    step, case, batch = _train_step(device, backend)
    step()  # first-call allocations and kernel selection
    run(benchmark, step, op="mae_train_step", case=case, backend=backend, device=device, bytes_moved=0,
        rounds=5 if device.type == "cpu" else 20)
    benchmark.extra_info["images_per_s"] = batch / benchmark.stats.stats.median
