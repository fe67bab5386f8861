"""torch.library registration (opcheck, torch.compile), backend selection and build information."""

from __future__ import annotations

import pytest
import torch

import medens
from medens.ops import (
    available_backends,
    build_info,
    patch_entropy,
)
from medens.ops import reference as R

from .helpers import CPU_BACKENDS, OPCHECK_CASES, check_compiled_masking_step, opcheck_samples


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", range(OPCHECK_CASES))
def test_opcheck(backend, case):
    op, args = opcheck_samples(backend, "cpu")[case]
    torch.library.opcheck(op, args)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["reference", *CPU_BACKENDS])
def test_torch_compile_fullgraph_traces_every_op(backend):
    check_compiled_masking_step(backend, "cpu", compile_backend="aot_eager")


def test_available_backends_tells_what_runs():
    backends = available_backends()
    assert set(backends) == {"reference", "cpp", "cuda", "triton"}
    assert backends["reference"] is True
    assert backends["cuda"] == (build_info()["cuda_compiled"] and torch.cuda.is_available())
    for name, ok in backends.items():
        if name == "triton" and ok and not torch.cuda.is_available():
            continue  # interpreted Triton is tested in test_triton.py
        on_gpu = ok and name in ("cuda", "triton") and torch.cuda.is_available()
        images = torch.rand(1, 1, 8, 8, device="cuda" if on_gpu else "cpu")
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
