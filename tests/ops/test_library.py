"""torch.library registration (opcheck, torch.compile), backend selection and build information."""

from __future__ import annotations

import pytest
import torch

import medens
from medens.ops import (
    apply_patch_mask,
    available_backends,
    build_info,
    entropy_guided_mask,
    gather_patches,
    patch_entropy,
)
from medens.ops import reference as R

from .helpers import CPU_BACKENDS


def _samples(backend: str):
    images = torch.rand(2, 3, 16, 16)
    leaf = lambda x: x.detach().clone().requires_grad_()  # noqa: E731
    ids = torch.tensor([[0, 2], [3, 1]])
    scores = torch.rand(2, 16)
    noise = torch.rand(2, 16)
    mask = torch.rand(2, 4) < 0.5
    ops = torch.ops.medens
    return [
        (ops.patch_entropy.default, (images, 8, 256, 0.0, 1.0, backend)),
        (ops.patch_entropy.default, (leaf(images), 8, 256, 0.0, 1.0, backend)),
        (ops.patch_entropy.default, ((images * 255).to(torch.uint8), 4, 256, 0.0, 255.0, backend)),
        (ops.entropy_guided_mask.default, (scores, noise, 6, 1.0, True, backend)),
        (ops.entropy_guided_mask.default, (scores, None, 6, 0.0, False, backend)),
        (ops.gather_patches.default, (leaf(images.double()), ids, 8, False, 1e-6, backend)),
        (ops.gather_patches.default, (leaf(images.double()), ids, 8, True, 1e-6, backend)),
        (ops.gather_patches_backward.default, (torch.rand(2, 2, 192), images, ids, 8, True, 1e-6, backend)),
        (ops.apply_patch_mask.default, (leaf(images), mask, 8, 0.0, backend)),
        (ops.apply_patch_mask.default, ((images * 255).to(torch.uint8), mask, 8, 3.0, backend)),
    ]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", range(10))
def test_opcheck(backend, case):
    op, args = _samples(backend)[case]
    torch.library.opcheck(op, args)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["reference", *CPU_BACKENDS])
def test_torch_compile_fullgraph_traces_every_op(backend):
    def step(images, noise):
        scores = patch_entropy(images, 8, backend=backend)
        m = entropy_guided_mask(scores, 0.5, noise=noise, backend=backend)
        target = gather_patches(images, m.ids_mask, 8, normalize=True, backend=backend)
        visible = apply_patch_mask(images, m.mask, 8, backend=backend)
        return target.square().mean() + visible.mean(), m.mask

    images = torch.rand(2, 3, 16, 32, requires_grad=True)
    noise = torch.rand(2, 8)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss, mask = compiled(images, noise)
    expected_loss, expected_mask = step(images, noise)
    assert torch.equal(mask, expected_mask)
    torch.testing.assert_close(loss, expected_loss)
    (grad,) = torch.autograd.grad(loss, images)
    (expected_grad,) = torch.autograd.grad(expected_loss, images)
    torch.testing.assert_close(grad, expected_grad)


def test_available_backends_tells_what_runs():
    backends = available_backends()
    assert set(backends) == {"reference", "cpp", "cuda", "triton"}
    assert backends["reference"] is True
    assert backends["cuda"] == (build_info()["cuda_compiled"] and torch.cuda.is_available())
    for name, ok in backends.items():
        if name == "triton" and ok and not torch.cuda.is_available():
            continue  # interpreted Triton is tested in test_triton.py
        images = torch.rand(1, 1, 8, 8, device="cuda" if name == "cuda" and ok else "cpu")
        if ok:
            assert patch_entropy(images, 4, backend=name).shape == (1, 4)
        else:
            with pytest.raises(RuntimeError, match=f"backend '{name}' cannot run here"):
                patch_entropy(images, 4, backend=name)


def test_auto_picks_cpp_for_cpu_tensors_when_built():
    from medens.ops._backends import resolve_backend

    expected = "cpp" if available_backends()["cpp"] else "reference"
    assert resolve_backend("auto", torch.device("cpu"), "patch_entropy") == expected


def test_build_info_reports_the_build():
    info = build_info()
    assert info["version"] == medens.__version__
    assert isinstance(info["openmp"], bool)
    assert isinstance(info["cuda_compiled"], bool)
    assert isinstance(info["cuda_architectures"], list)
    assert all(isinstance(a, str) for a in info["cuda_architectures"])
    assert bool(info["cuda_architectures"]) == info["cuda_compiled"]


def test_compiled_extension_is_installed():
    # A `pip install .` must produce medens._C; only a deliberately broken install would lack it.
    info = build_info()
    assert info["extension"], f"medens._C failed to import: {info.get('extension_error')}"
    assert info["openmp"], "the CPU kernels were built without OpenMP"


def test_kernels_honour_torch_threads():
    images = torch.rand(8, 3, 64, 64)
    expected = R.patch_entropy(images, 16)
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            torch.testing.assert_close(patch_entropy(images, 16), expected, atol=1e-4, rtol=0)
    finally:
        torch.set_num_threads(previous)
