"""torch.library registration (opcheck, torch.compile), backend selection, build information, and what every op
shares on a GPU (streams, devices)."""

from __future__ import annotations

import pytest
import torch

import medens
from medens.ops import (
    _backends,
    available_backends,
    build_info,
    entropy_guided_mask,
    gather_patches,
    patch_entropy,
)
from medens.ops import reference as R

from .helpers import (
    OPCHECK_CASES,
    backends,
    check_compiled_masking_step,
    device_of,
    opcheck_samples,
    tol,
)

GPU_BACKENDS = backends("cuda", "triton", gpu_only=True)


@pytest.mark.parametrize("backend", [*backends("cpp"), *GPU_BACKENDS])
@pytest.mark.parametrize("case", range(OPCHECK_CASES))
def test_opcheck(backend, case):
    op, args = opcheck_samples(backend, device_of(backend).type)[case]
    torch.library.opcheck(op, args)


@pytest.mark.slow
@pytest.mark.parametrize("backend", [*backends("reference", "cpp"), *GPU_BACKENDS])
def test_torch_compile_fullgraph_traces_every_op(backend):
    device = device_of(backend).type
    check_compiled_masking_step(backend, device, compile_backend="inductor" if device == "cuda" else "aot_eager")


def test_available_backends_tells_what_runs():
    # Each backend said to run does run (on its device), and each said not to run is refused saying so.
    backends = available_backends()
    assert set(backends) == {"reference", "cpp", "cuda", "triton"}
    assert backends["reference"] is True
    for name, ok in backends.items():
        images = torch.rand(1, 1, 8, 8, device=device_of(name) if ok else "cpu")
        if ok:
            assert patch_entropy(images, 4, backend=name).shape == (1, 4)
        else:
            with pytest.raises(RuntimeError, match=f"backend '{name}' cannot run here"):
                patch_entropy(images, 4, backend=name)


def test_without_the_compiled_core_only_reference_and_triton_can_run(monkeypatch):
    # medens._C absent (a source tree): cpp and cuda are unavailable and refused with the reason, and "auto"
    # falls back to the reference on CPU tensors.
    monkeypatch.setattr(_backends, "extension", lambda: None)
    backends = available_backends()
    assert backends["reference"] is True
    assert backends["cpp"] is False and backends["cuda"] is False
    images = torch.rand(1, 1, 8, 8)
    for name in ("cpp", "cuda"):
        with pytest.raises(RuntimeError, match=f"backend '{name}' cannot run here"):
            patch_entropy(images, 4, backend=name)
    assert _backends.resolve_backend("auto", torch.device("cpu"), "patch_entropy") == "reference"


def test_without_a_gpu_cuda_and_compiled_triton_cannot_run(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    backends = available_backends()
    assert backends["cuda"] is False and backends["triton"] is False
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert available_backends()["triton"] is _backends.triton_importable()


def test_auto_picks_the_compiled_cpu_kernels_for_cpu_tensors():
    # The suite runs on an installed medens, whose medens._C test_compiled_extension_is_installed requires.
    assert _backends.resolve_backend("auto", torch.device("cpu"), "patch_entropy") == "cpp"
    assert _backends.resolve_backend("reference", torch.device("cpu"), "patch_entropy") == "reference"


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


def test_kernels_use_torch_threads(monkeypatch):
    # Each call of a CPU kernel is given torch.get_num_threads() OpenMP threads, read at the call: spy on the
    # arguments the extension receives, at thread counts other than the default.
    ext = _backends.extension()
    calls = []
    original = ext.patch_entropy_cpu

    def spy(*args, **kwargs):
        calls.append(kwargs["num_threads"])
        return original(*args, **kwargs)

    monkeypatch.setattr(ext, "patch_entropy_cpu", spy)
    images = torch.rand(8, 3, 64, 64)
    expected = R.patch_entropy(images, 16)
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            torch.testing.assert_close(patch_entropy(images, 16, backend="cpp"), expected, **tol("entropy"))
    finally:
        torch.set_num_threads(previous)
    assert calls == [1, 2, 3]


# ---- what every op shares on a GPU ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_kernels_run_on_the_current_stream(backend):
    # Inputs written on a side stream and read by the op on that same stream, without synchronisation in
    # between: correct only if the kernels are enqueued on torch.cuda.current_stream().
    side = torch.cuda.Stream()
    images = torch.rand(64, 3, 64, 64)
    with torch.cuda.stream(side):
        on_gpu = torch.empty(images.shape, device="cuda")
        on_gpu.copy_(images, non_blocking=True)
        on_gpu.mul_(1.0)
        scores = patch_entropy(on_gpu, 16, backend=backend)
        m = entropy_guided_mask(scores, 0.75, temperature=0.0, backend=backend)
        targets = gather_patches(on_gpu, m.ids_mask, 16, backend=backend)
    side.synchronize()
    expected_scores = R.patch_entropy(images, 16)
    torch.testing.assert_close(scores.cpu(), expected_scores, **tol("entropy"))
    torch.testing.assert_close(targets.cpu(), R.gather_patches(images, m.ids_mask.cpu(), 16))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_kernels_run_on_the_tensors_device(backend):
    images = torch.rand(2, 3, 32, 32)
    ids = torch.tensor([[0, 3], [2, 1]])
    with torch.cuda.device(0):
        got = gather_patches(images.to("cuda:1"), ids.to("cuda:1"), 16, normalize=True, backend=backend)
        scores = patch_entropy(images.to("cuda:1"), 16, backend=backend)
        assert torch.cuda.current_device() == 0
    assert got.device == torch.device("cuda:1") and scores.device == torch.device("cuda:1")
    torch.testing.assert_close(got.cpu(), R.gather_patches(images, ids, 16, normalize=True))
    torch.testing.assert_close(scores.cpu(), R.patch_entropy(images, 16), **tol("entropy"))
