"""patch_entropy: each backend against the reference, beside a plain read pass over the same bytes.

Roofline counts: the op reads every byte of the images once; per pixel it does about 12 operations
(3 multiplies and 2 adds for the grey level, subtract, divide, multiply, two clamps and a conversion for the bin,
one histogram increment). The machine's peak arithmetic rate is measured by ``test_plain_compute_pass``.
"""

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
    rounds = 10 if backend == "reference" else 30
    run(benchmark, lambda: patch_entropy(images, patch, backend=backend), op="patch_entropy", case=case,
        backend=backend, device=device, bytes_moved=images.numel() * images.element_size(), rounds=rounds,
        ops=12 * images.shape[0] * images.shape[2] * images.shape[3])


@pytest.mark.parametrize("patch", [32, 16])
def test_plain_read_pass(benchmark, device, patch):
    # The bandwidth yardstick: one pass that reads every byte of the same images (a sum).
    images = images_for(device)
    case = f"{tuple(images.shape)} float32 p={patch}"
    run(benchmark, lambda: images.sum(), op="patch_entropy", case=case, backend="read-pass", device=device,
        bytes_moved=images.numel() * images.element_size(), rounds=20)


def test_plain_compute_pass(benchmark, device):
    # The arithmetic roof: the machine's peak float32 rate, as a large matrix product reaches it (2 n^3 operations).
    n = 1024
    a, b = torch.rand(n, n, device=device), torch.rand(n, n, device=device)
    run(benchmark, lambda: a @ b, op="machine", case="float32 peak rate (1024^3 matmul)", backend="compute-pass",
        device=device, bytes_moved=0, ops=2 * n**3, rounds=20)
