"""How the installed package was built: the CUDA kernels must be compiled in wherever nvcc is on the PATH.

CI installs the package (``pip install ".[test]"``) on a machine with nvcc but no GPU, so these tests are what
catches a CUDA build that silently dropped out (CMake's ``MEDENS_CUDA=AUTO`` falls back to CPU only when it
finds no CUDA compiler).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import medens
from medens.ops import build_info
from medens.ops import reference as R

from .helpers import run_python

CUDA_ENTRY_POINTS = (
    "patch_entropy_cuda",
    "entropy_guided_mask_cuda",
    "gather_patches_cuda",
    "gather_patches_backward_cuda",
    "apply_patch_mask_cuda",
    "cuda_error_string",
)
DEFAULT_ARCHITECTURES = ["80-real", "90-real", "90-virtual"]


def _cuda_requested() -> str:
    """MEDENS_CUDA of the build: from build_info() when the extension records it, else from the environment."""
    return str(build_info().get("cuda_requested", os.environ.get("MEDENS_CUDA", "AUTO"))).upper()


def _expect_cuda_build() -> None:
    """Skip unless this machine's build must contain the CUDA kernels."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on the PATH: a CPU-only build is expected here")
    if _cuda_requested() == "OFF":
        pytest.skip("the extension was built with MEDENS_CUDA=OFF")


def _extension_path() -> Path:
    spec = importlib.util.find_spec("medens._C")
    assert spec is not None and spec.origin, "medens._C is not installed"
    return Path(spec.origin)


def test_cuda_kernels_are_compiled_in_when_nvcc_is_on_the_path():
    _expect_cuda_build()
    info = build_info()
    assert info["extension"], f"medens._C failed to import: {info.get('extension_error')}"
    assert info["cuda_compiled"], (
        f"nvcc is on the PATH ({shutil.which('nvcc')}) but medens._C was built without CUDA: the CUDA build dropped "
        "out (see the CMake output of `pip install -v .`)")
    ext = importlib.import_module("medens._C")
    missing = [name for name in CUDA_ENTRY_POINTS if not hasattr(ext, name)]
    assert not missing, f"medens._C lacks the CUDA entry points {missing}"


def test_cuda_architectures_are_named_explicitly():
    _expect_cuda_build()
    architectures = build_info()["cuda_architectures"]
    assert architectures and not any("native" in a or a in ("all", "all-major") for a in architectures)
    if "MEDENS_CUDA_ARCHITECTURES" not in os.environ:
        # machine code for 8.0 (A100) and 9.0 (H100), and PTX of the newest so later GPUs can JIT it
        assert architectures == DEFAULT_ARCHITECTURES


def test_cuda_runtime_is_linked_statically():
    # `import medens._C` must work on machines without CUDA libraries (CPU-only users of a CUDA build).
    _expect_cuda_build()
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf is not available to list the extension's dynamic dependencies")
    dynamic = subprocess.run([readelf, "-d", str(_extension_path())], capture_output=True, text=True, check=True)
    needed = [line for line in dynamic.stdout.splitlines() if "(NEEDED)" in line]
    assert not [line for line in needed if "libcudart" in line], needed


def test_triton_kernels_ship_inside_the_package():
    # The wheel maps kernels/ to medens/kernels; the triton backend imports medens.kernels.triton.
    for module in ("entropy", "masking", "patches"):
        spec = importlib.util.find_spec(f"medens.kernels.triton.{module}")
        assert spec is not None and spec.origin, f"medens.kernels.triton.{module} is not installed"
        assert Path(spec.origin).is_relative_to(Path(medens.__file__).parent)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    pytest.skip("/proc/cpuinfo does not list the CPU's flags here")


def test_avx512_kernels_run_where_the_cpu_has_avx512(tmp_path):
    if not build_info()["extension"]:
        pytest.skip("medens._C is not built")
    switched_off = os.environ.get("MEDENS_DISABLE_AVX512", "") not in ("", "0")
    on_x86 = platform.machine().lower() in ("x86_64", "amd64")
    expected = on_x86 and {"avx512f", "avx512bw", "avx512vl"} <= _cpu_flags() and not switched_off
    assert build_info()["cpu_avx512"] is expected
    # MEDENS_DISABLE_AVX512=1 keeps the portable loops, whatever the CPU.
    result = run_python("from medens.ops import build_info\nassert build_info()['cpu_avx512'] is False\n", tmp_path,
                        MEDENS_DISABLE_AVX512="1")
    assert result.returncode == 0, result.stderr


def test_cpu_kernels_compile_without_the_avx512_code(tmp_path):
    # Other architectures (aarch64) build without csrc/cpu/x86.h's dispatch; MEDENS_NO_X86_DISPATCH compiles that
    # configuration here, so a change that only builds with the AVX-512 code in place is caught on x86 too.
    compiler = os.environ.get("CXX") or shutil.which("g++")
    repo = Path(__file__).resolve().parents[2]
    sources = sorted((repo / "csrc" / "cpu").glob("*.cpp"))
    if compiler is None or not sources:
        pytest.skip("needs g++ and the repository's csrc sources")
    flags = ["-std=c++17", "-fsyntax-only", "-DMEDENS_NO_X86_DISPATCH", "-DMEDENS_OPENMP=1", "-fopenmp",
             f"-I{repo / 'csrc' / 'include'}", f"-I{repo / 'csrc' / 'cpu'}"]
    for source in sources:
        result = subprocess.run([compiler, *flags, str(source)], capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 0, f"{source.name}:\n{result.stderr[-3000:]}"


def test_compare_builds_times_a_build_against_itself(capsys):
    # benchmarks/compare_builds.py calls the bindings directly: this keeps it in step with their signatures.
    if not build_info()["extension"]:
        pytest.skip("medens._C is not built")
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "compare_builds.py"
    if not script.exists():
        pytest.skip("needs the repository's benchmarks/compare_builds.py")
    spec = importlib.util.spec_from_file_location("compare_builds", script)
    compare_builds = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare_builds)
    path = str(_extension_path())
    for op in ("entropy", "gather", "masking"):
        compare_builds.main([path, path, "--op", op, "--rounds", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and all("B/A" in line and line.endswith("differ by at most 0") for line in lines)


# ---- the bindings check their own arguments ----------------------------------------------------------------------


def _extension():
    if not build_info()["extension"]:
        pytest.skip("medens._C is not built")
    return importlib.import_module("medens._C")


def _parameters(function) -> list[str]:
    """Parameter names of a pybind11 function, from the signature line pybind11 writes into its docstring."""
    signature = function.__doc__.splitlines()[0]
    assert signature.startswith(function.__name__ + "("), signature
    return re.findall(r"(?:\(|, )(\w+): ", signature[: signature.rindex(") ->")])


def test_every_binding_names_its_arguments():
    # Unnamed pybind11 arguments are called arg0, arg1, ...: a caller could then only pass them by position.
    ext = _extension()
    functions = [function for _, function in inspect.getmembers(ext, inspect.isbuiltin)]
    assert any(f.__name__ == "patch_entropy_cpu" for f in functions)
    for function in functions:
        names = _parameters(function)
        assert not [n for n in names if re.fullmatch(r"arg\d+", n)], f"{function.__name__}: {names}"
        assert len(names) == len(set(names)), f"{function.__name__}: {names}"


def test_an_entry_point_refuses_a_wrong_keyword_and_takes_keywords_in_any_order():
    from medens.ops._launch import entropy_output, patch_entropy_arguments

    ext = _extension()
    images = torch.rand(1, 1, 8, 16)
    out = entropy_output(images, 4)
    arguments = {**patch_entropy_arguments(images, 4, 256, 0.0, 1.0, out), "num_threads": 1}
    misspelt = {("h" if k == "height" else k): v for k, v in arguments.items()}
    with pytest.raises(TypeError, match="incompatible function arguments"):
        ext.patch_entropy_cpu(**misspelt)
    assert ext.patch_entropy_cpu(**dict(reversed(list(arguments.items())))) == 0
    torch.testing.assert_close(out, R.patch_entropy(images, 4), atol=1e-4, rtol=0)


CUDA_LAUNCHES = {  # op -> arguments of its cuda launcher, small CPU tensors
    "patch_entropy": lambda: (torch.rand(1, 3, 8, 8), 4, 256, 0.0, 1.0),
    "entropy_guided_mask": lambda: (torch.rand(2, 8), torch.rand(2, 8), 3, 1.0, True),
    "gather_patches": lambda: (torch.rand(1, 3, 8, 8), torch.tensor([[0, 3]]), 4, True, 1e-6),
    "gather_patches_backward": lambda: (torch.rand(1, 2, 48), torch.rand(1, 3, 8, 8), torch.tensor([[0, 3]]), 4,
                                        True, 1e-6),
    "apply_patch_mask": lambda: (torch.rand(1, 3, 8, 8).half(), torch.tensor([[True, False, True, False]]), 4, -1.0),
}


@pytest.mark.parametrize("op", sorted(CUDA_LAUNCHES))
def test_cuda_launchers_pass_every_argument_by_its_name(op, monkeypatch):
    # Needs a CUDA build, not a GPU: the launcher runs on CPU tensors up to the entry point, called on a device
    # index that does not exist, so the C++ launcher returns a CUDA error before it touches any pointer. A keyword
    # the binding does not know, or one it misses, would raise TypeError instead.
    if not build_info()["cuda_compiled"]:
        pytest.skip("medens._C was built without CUDA")
    from medens.ops import _cuda
    from medens.ops._registry import kernel

    absent = torch.cuda.device_count() + 3 if torch.cuda.is_available() else 0
    monkeypatch.setattr(_cuda, "device_and_stream", lambda device: (absent, 0))
    with pytest.raises(RuntimeError, match=rf"{op} \(cuda\): CUDA error cuda\w+: "):
        kernel(op, "cuda")(*CUDA_LAUNCHES[op]())
