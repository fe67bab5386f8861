"""patch_entropy: each backend against the reference, beside a plain read pass over the same bytes."""

from __future__ import annotations

import pytest
import torch

from medens.ops import patch_entropy

from .conftest import run

pytestmark = pytest.mark.benchmark


def images_for(device: torch.device) -> torch.Tensor:
    batch = 256 if device.type == "cuda" else 64
    return torch.rand(batch, 3, 224, 224, device=device)


@pytest.mark.parametrize("patch", [32, 16])
def test_patch_entropy(benchmark, device, backend, patch):
    images = images_for(device)
    case = f"{tuple(images.shape)} float32 p={patch}"
    rounds = 3 if backend == "reference" else 20
    run(benchmark, lambda: patch_entropy(images, patch, backend=backend), op="patch_entropy", case=case,
        backend=backend, device=device, bytes_moved=images.numel() * images.element_size(), rounds=rounds)


@pytest.mark.parametrize("patch", [32, 16])
def test_plain_read_pass(benchmark, device, patch):
    # The bandwidth yardstick: one pass that reads every byte of the same images (a sum).
    images = images_for(device)
    case = f"{tuple(images.shape)} float32 p={patch}"
    run(benchmark, lambda: images.sum(), op="patch_entropy", case=case, backend="read-pass", device=device,
        bytes_moved=images.numel() * images.element_size(), rounds=20)
