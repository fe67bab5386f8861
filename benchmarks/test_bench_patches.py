"""gather_patches (normalised, 25% of 196 patches kept) and apply_patch_mask on ImageNet-sized batches.

Roofline counts: gather reads the kept patches and writes them once; normalised, it does about 7 operations per
value (a sum, a squared deviation, a subtract and a multiply). apply_patch_mask reads the visible patches and
writes the whole image (no arithmetic). The backward reads the gradient and the kept patches and writes the image.
"""

from __future__ import annotations

import pytest
import torch

from medens.ops import apply_patch_mask, entropy_guided_mask, gather_patches

from .conftest import run

pytestmark = pytest.mark.benchmark

def inputs_for(device: torch.device):
    batch = 256 if device.type == "cuda" else 64
    images = torch.rand(batch, 3, 224, 224, device=device)
    m = entropy_guided_mask(torch.rand(batch, 196, device=device), 0.75, backend="reference")
    return images, m


@pytest.mark.parametrize("normalize", [True, False])
def test_gather_patches(benchmark, device, backend, normalize):
    images, m = inputs_for(device)
    out_bytes = m.ids_keep.numel() * 16 * 16 * 3 * 4
    case = f"{tuple(images.shape)} p=16 keep 49/196 normalize={normalize}"
    run(benchmark, lambda: gather_patches(images, m.ids_keep, 16, normalize=normalize, backend=backend),
        op="gather_patches", case=case, backend=backend, device=device, bytes_moved=2 * out_bytes,
        ops=7 * out_bytes // 4 if normalize else 0)


def test_gather_patches_backward(benchmark, device, backend):
    images, m = inputs_for(device)
    images.requires_grad_()
    out = gather_patches(images, m.ids_keep, 16, normalize=True, backend=backend)
    grad = torch.randn_like(out)
    case = f"{tuple(images.shape)} p=16 keep 49/196 normalize=True"
    run(benchmark, lambda: torch.autograd.grad(out, images, grad, retain_graph=True),
        op="gather_patches_backward", case=case, backend=backend, device=device,
        bytes_moved=images.numel() * 4 + 3 * out.numel() * 4)


def test_apply_patch_mask(benchmark, device, backend):
    images, m = inputs_for(device)
    case = f"{tuple(images.shape)} p=16 hide 147/196"
    run(benchmark, lambda: apply_patch_mask(images, m.mask, 16, backend=backend), op="apply_patch_mask",
        case=case, backend=backend, device=device, bytes_moved=images.numel() * 4 + int(m.ids_keep.numel() * 768 * 4))
