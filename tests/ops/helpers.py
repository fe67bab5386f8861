"""Shared helpers for the op tests: the backends to compare and their devices, the one tolerance table, random
inputs of every supported dtype.

Each op has one test file (test_entropy.py, test_masking.py, test_patches.py), whose tests take the backend as a
parameter: ``cpp`` on CPU tensors, ``cuda`` on CUDA tensors, ``triton`` on CUDA tensors or, without a GPU, on CPU
tensors in the Triton interpreter (the root conftest sets ``TRITON_INTERPRET=1`` then). A backend that cannot run
here is still collected and skipped, saying why.
"""

from __future__ import annotations

import importlib.util
import math
import subprocess
from collections.abc import Iterable, Mapping

import pytest
import torch

from medens.ops import (
    PatchMask,
    apply_patch_mask,
    entropy_guided_mask,
    gather_patches,
    patch_entropy,
)
from medens.ops._backends import _why_unavailable
from tests._installed import installed

IMAGE_DTYPES = (torch.uint8, torch.float16, torch.bfloat16, torch.float32)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# ---- the one tolerance table ---------------------------------------------------------------------------------------
# Every comparison in tests/ops that is not exact takes its tolerance from here: tol(quantity) or tol(quantity, dtype).
TOLERANCES: dict[str, dict[torch.dtype | None, dict[str, float]]] = {
    # Entropies are sums of a few hundred terms: the kernels add float32 terms (at most eight in float32, the rest
    # in float64), the reference sums in float32.
    "entropy": {None: dict(atol=1e-4, rtol=0)},
    # Two kernels against each other (cuda or triton against cpp): the same bins and float64 sums, a few ulps apart.
    "entropy_between_kernels": {None: dict(atol=2e-6, rtol=0)},
    # Normalised patches (and their gradients): kernels keep statistics in float64, the reference in float32
    # (float64 for float64 images); the results then round to the image dtype, so about one ulp of that dtype.
    "normalized": {
        torch.float16: dict(atol=2e-3, rtol=2e-3),
        torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
        torch.float32: dict(atol=1e-5, rtol=1e-5),
        torch.float64: dict(atol=1e-12, rtol=1e-12),
    },
    # The gradient of gather_patches by the cpp kernel against the reference's backward: float32 sums of up to
    # K * C * p^2 terms, and bfloat16 gradients rounded to 8 bits of mantissa.
    "gather_backward": {
        torch.float32: dict(atol=1e-5, rtol=1e-5),
        torch.bfloat16: dict(atol=5e-2, rtol=2e-2),
    },
}


def tol(quantity: str, dtype: torch.dtype | None = None) -> dict[str, float]:
    """``atol`` and ``rtol`` for comparing ``quantity`` (a key of TOLERANCES) in ``dtype``, for assert_close."""
    table = TOLERANCES[quantity]
    return table[None] if None in table else table[dtype]


# ---- backends and their devices ------------------------------------------------------------------------------------

KERNELS = ("cpp", "cuda", "triton")
CUDA_ABSENT = "needs a CUDA device (torch.cuda.is_available() is False)"


def device_of(backend: str) -> torch.device:
    """Where ``backend``'s tests put their inputs: CUDA for cuda, and for triton when a GPU is there; else CPU."""
    if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def why_skipped(backend: str, *, gpu_only: bool = False) -> str | None:
    """None if ``backend`` runs here (on a CUDA device, if ``gpu_only``), else why its tests skip."""
    if gpu_only and not torch.cuda.is_available():
        return CUDA_ABSENT
    if backend == "triton" and importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install 'medens[triton]')"
    reason = _why_unavailable(backend, device_of(backend))
    return None if reason is None else f"backend {backend!r} cannot run here: {reason}"


def backend_marks(backend: str, *, gpu_only: bool = False) -> list:
    """A skip (with its reason) where ``backend`` cannot run here, and the ``cuda`` marker where it needs a GPU."""
    reason = why_skipped(backend, gpu_only=gpu_only)
    marks = [pytest.mark.skipif(reason is not None, reason=reason or "")]
    if gpu_only or device_of(backend).type == "cuda":
        marks.append(pytest.mark.cuda)
    return marks


def backends(*names: str, gpu_only: bool = False) -> list:
    """``names`` as pytest parameters, each skipped where it cannot run (see backend_marks)."""
    return [pytest.param(name, marks=backend_marks(name, gpu_only=gpu_only), id=name) for name in names]


def backend_cases(cases: Mapping[str, Iterable]) -> list:
    """Parameters ``(backend, *case)`` where each backend has its own cases, e.g. smaller ones for the interpreter.

    ``cases`` maps a backend name, or ``"gpu"`` (cuda and triton on a CUDA device: sizes only a GPU runs fast), to
    its cases, each a tuple of the test's other arguments (or one value).
    """
    params = []
    for key, items in cases.items():
        for case in items:
            values = case if isinstance(case, tuple) else (case,)
            for name in ("cuda", "triton") if key == "gpu" else (key,):
                case_id = "-".join(str(v) for v in values)
                params.append(pytest.param(name, *values, marks=backend_marks(name, gpu_only=key == "gpu"),
                                           id=f"{name}-{case_id}" if key != "gpu" else f"{name}-gpu-{case_id}"))
    return params


def on(backend: str, *tensors: torch.Tensor):
    """``tensors`` moved to ``backend``'s device (one tensor, or a tuple of them)."""
    moved = tuple(t.to(device_of(backend)) for t in tensors)
    return moved if len(moved) > 1 else moved[0]


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
