"""Shared helpers for the op tests: random inputs of every supported dtype and the backends to compare."""

from __future__ import annotations

import math
import subprocess

import torch

from medens.ops import (
    PatchMask,
    apply_patch_mask,
    available_backends,
    entropy_guided_mask,
    gather_patches,
    patch_entropy,
)
from tests._installed import installed

IMAGE_DTYPES = (torch.uint8, torch.float16, torch.bfloat16, torch.float32)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# The CPU backends that are compared with the reference here (Triton/CUDA have their own test files).
CPU_BACKENDS = [name for name in ("cpp",) if available_backends()[name]]


def random_images(shape: tuple[int, ...], dtype: torch.dtype, *, generator: torch.Generator | None = None,
                  layout: str = "contiguous") -> torch.Tensor:
    """Random images in the dtype's default value range, in one of several memory layouts.

    layout: "contiguous", "channels_last", or "strided" (every other column of a twice-as-wide tensor,
    so no dimension has unit stride).
    """
    b, c, h, w = shape
    full_w = 2 * w if layout == "strided" else w
    if dtype == torch.uint8:
        x = torch.randint(0, 256, (b, c, h, full_w), dtype=torch.uint8, generator=generator)
    else:
        x = torch.rand(b, c, h, full_w, generator=generator).to(dtype)
    if layout == "strided":
        x = x[..., ::2]
    elif layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    assert x.shape == shape
    return x


def smooth_images(shape: tuple[int, ...], dtype: torch.dtype, *, levels: int = 12,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Images with few distinct grey levels and large flat areas (histograms with repeated bins), like scans."""
    b, c, h, w = shape
    coarse = torch.randint(0, levels, (b, 1, max(h // 4, 1), max(w // 4, 1)), generator=generator).float() / levels
    x = torch.nn.functional.interpolate(coarse, size=(h, w), mode="nearest").expand(b, c, h, w).contiguous()
    return (x * 255).round().to(torch.uint8) if dtype == torch.uint8 else x.to(dtype)


def bin_edge_images(shape: tuple[int, int, int, int], value_range: tuple[float, float], bins: int = 256, *,
                    steps: int = 4) -> torch.Tensor:
    """Grey float32 images (every channel equal) whose levels sit on each bin edge of `value_range` and on the
    `steps` floats either side of it, in a fixed random order, repeated to fill `shape`. Where a kernel rounds the
    grey level or its scaling to bins differently from the reference, pixels change bins here; random pixels
    almost never come within an ulp of an edge."""
    lo, hi = value_range
    edges = torch.tensor([lo + (hi - lo) * k / bins for k in range(bins)], dtype=torch.float32)
    levels, up, down = [edges], edges, edges
    for _ in range(steps):
        up = torch.nextafter(up, torch.tensor(math.inf))
        down = torch.nextafter(down, torch.tensor(-math.inf))
        levels += [up, down]
    flat = torch.cat(levels)
    flat = flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))]
    b, c, h, w = shape
    count = b * h * w
    grey = flat.repeat(count // flat.numel() + 1)[:count].reshape(b, 1, h, w)
    return grey.expand(b, c, h, w).contiguous()


def assert_same_mask(got: PatchMask, expected: PatchMask, device_type: str | None = None) -> None:
    """Every field of `got` equals the reference's, in the same dtype (and on `device_type` when given)."""
    assert isinstance(got, PatchMask)
    for name, a, b in zip(PatchMask._fields, got, expected, strict=True):
        if device_type is not None:
            assert a.device.type == device_type, name
        assert a.dtype == b.dtype, name
        assert torch.equal(a.cpu(), b.cpu()), name


def opcheck_samples(backend: str, device: str) -> list[tuple]:
    """One call of each registered op (and each mode) on small inputs, for torch.library.opcheck."""
    images = torch.rand(2, 3, 16, 16, device=device)
    leaf = lambda x: x.detach().clone().requires_grad_()  # noqa: E731
    ids = torch.tensor([[0, 2], [3, 1]], device=device)
    scores = torch.rand(2, 16, device=device)
    noise = torch.rand(2, 16, device=device)
    mask = torch.rand(2, 4, device=device) < 0.5
    ops = torch.ops.medens
    return [
        (ops.patch_entropy.default, (images, 8, 256, 0.0, 1.0, backend)),
        (ops.patch_entropy.default, (leaf(images), 8, 256, 0.0, 1.0, backend)),
        (ops.patch_entropy.default, ((images * 255).to(torch.uint8), 4, 256, 0.0, 255.0, backend)),
        (ops.entropy_guided_mask.default, (scores, noise, 6, 1.0, True, backend)),
        (ops.entropy_guided_mask.default, (scores, None, 6, 0.0, False, backend)),
        (ops.gather_patches.default, (leaf(images.double()), ids, 8, False, 1e-6, backend)),
        (ops.gather_patches.default, (leaf(images.double()), ids, 8, True, 1e-6, backend)),
        (ops.gather_patches_backward.default,
         (torch.rand(2, 2, 192, device=device), images, ids, 8, True, 1e-6, backend)),
        (ops.apply_patch_mask.default, (leaf(images), mask, 8, 0.0, backend)),
        (ops.apply_patch_mask.default, ((images * 255).to(torch.uint8), mask, 8, 3.0, backend)),
    ]


OPCHECK_CASES = 10  # len(opcheck_samples(...)), for parametrize


def check_compiled_masking_step(backend: str, device: str, compile_backend: str = "inductor") -> None:
    """A masked-autoencoder step using every op, compiled with fullgraph=True, equals the eager step in its loss,
    its mask and the gradient of the loss with respect to the images."""

    def step(images, noise):
        scores = patch_entropy(images, 8, backend=backend)
        m = entropy_guided_mask(scores, 0.5, noise=noise, backend=backend)
        target = gather_patches(images, m.ids_mask, 8, normalize=True, backend=backend)
        visible = apply_patch_mask(images, m.mask, 8, backend=backend)
        return target.square().mean() + visible.mean(), m.mask

    images = torch.rand(2, 3, 16, 32, device=device, requires_grad=True)
    noise = torch.rand(2, 8, device=device)
    loss, mask = torch.compile(step, fullgraph=True, backend=compile_backend)(images, noise)
    expected_loss, expected_mask = step(images, noise)
    assert torch.equal(mask, expected_mask)
    torch.testing.assert_close(loss, expected_loss)
    (grad,) = torch.autograd.grad(loss, images)
    (expected_grad,) = torch.autograd.grad(expected_loss, images)
    torch.testing.assert_close(grad, expected_grad)


def run_python(code: str, cwd, **environment: str) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter with the installed medens and its medens._C loaded (tests/_installed.py),
    for settings read once per process (environment variables), in the folder `cwd` outside the checkout."""
    return subprocess.run(**installed("-c", code, cwd=cwd, **environment), capture_output=True, text=True,
                          timeout=120)
