"""The CUDA kernels' own checks (kernels/cuda), with and without a GPU; each op's values on the cuda backend are
tested in its own file (test_entropy.py, test_masking.py, test_patches.py), and opcheck, torch.compile, streams
and devices in test_library.py.

Without a GPU: the kernels run in the CPU emulator (kernels/cuda/emulator) against the CPU kernels, once under
AddressSanitizer + UndefinedBehaviorSanitizer (out-of-bounds global or shared memory) and once under
ThreadSanitizer (missing barriers, races between blocks). This compiles the .cu sources of the checkout with the
host compiler, so it needs g++ and the repository, not nvcc.

With a GPU (``torch.cuda.is_available()``): the kernels under compute-sanitizer (memcheck, racecheck) when it is
installed. Without one these skip, saying so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from medens.ops import available_backends, build_info
from medens.ops._backends import _why_unavailable, extension

from .helpers import CUDA_ABSENT

REPO = Path(__file__).resolve().parents[2]
CUDA_SOURCES = REPO / "kernels" / "cuda"
HARNESS = CUDA_SOURCES / "emulator" / "check_kernels.cpp"
CPU_SOURCES = sorted((REPO / "csrc" / "cpu").glob("*.cpp"))

# ---- without a GPU: the CPU emulator -------------------------------------------------------------------------------

SANITIZERS = {
    # sanitizer: (compile flags, environment, harness mode)
    "address": (["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"],
                {"ASAN_OPTIONS": "halt_on_error=1:detect_leaks=1", "UBSAN_OPTIONS": "print_stacktrace=1"}, "full"),
    "thread": (["-fsanitize=thread"], {"TSAN_OPTIONS": "halt_on_error=1:exitcode=66"}, "quick"),
}
COMMON_FLAGS = ["-std=c++20", "-O1", "-g", "-pthread", "-ffp-contract=off", "-fno-strict-aliasing",
                "-DMEDENS_CUDA_EMULATOR", f"-I{REPO / 'csrc' / 'include'}", f"-I{CUDA_SOURCES}"]


def _compiler() -> str:
    compiler = os.environ.get("CXX") or shutil.which("g++")
    if compiler is None or not HARNESS.exists() or not CPU_SOURCES:
        pytest.skip("needs g++ and the repository's kernels/cuda and csrc sources")
    return compiler


def _sanitizer_works(compiler: str, flags: list[str], workdir: Path) -> bool:
    probe = workdir / "probe.cpp"
    probe.write_text("#include <thread>\nint main() { std::thread t([] {}); t.join(); }\n")
    result = subprocess.run([compiler, *flags, "-pthread", str(probe), "-o", str(workdir / "probe")],
                            capture_output=True, text=True)
    return result.returncode == 0 and subprocess.run([str(workdir / "probe")], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("sanitizer", sorted(SANITIZERS))
def test_cuda_kernels_in_the_cpu_emulator(sanitizer, tmp_path):
    compiler = _compiler()
    flags, environment, mode = SANITIZERS[sanitizer]
    if not _sanitizer_works(compiler, flags, tmp_path):
        pytest.skip(f"{compiler} cannot build and run -fsanitize={sanitizer} programs here")
    # The CPU kernels are the comparison baseline: built without ThreadSanitizer, whose instrumentation of their
    # ifunc resolvers (target_clones) crashes at load time.
    cpu_flags = [] if sanitizer == "thread" else flags
    objects = []
    for source in CPU_SOURCES:
        obj = tmp_path / f"{source.stem}.o"
        subprocess.run([compiler, *COMMON_FLAGS, *cpu_flags, "-c", str(source), "-o", str(obj)], check=True)
        objects.append(str(obj))
    binary = tmp_path / "check_kernels"
    build = subprocess.run([compiler, *COMMON_FLAGS, *flags, str(HARNESS), *objects, "-o", str(binary)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run([str(binary), mode], capture_output=True, text=True, timeout=1500,
                         env={**os.environ, **environment, "EMU_TIMEOUT_S": "300"})
    output = run.stdout[-3000:] + run.stderr[-6000:]
    assert run.returncode == 0, output
    assert " 0 failures" in run.stdout, output


def test_failed_launch_raises_runtime_error_naming_the_op():
    # Needs a CUDA build, not a GPU: without a driver every launch fails, with one an absurd device index does.
    if not build_info()["cuda_compiled"]:
        pytest.skip("medens._C was built without CUDA")
    from medens.ops._cuda import check_cuda_status

    ext = extension()
    device = torch.cuda.device_count() + 3 if torch.cuda.is_available() else 0
    status = ext.patch_entropy_cuda(0, 3, 1, 1, 16, 16, [256, 256, 16, 1], 16, 256, 0.0, 1.0, 0, 0, device, 0)
    assert status >= ext.CUDA_ERROR_BASE
    with pytest.raises(RuntimeError, match=r"patch_entropy \(cuda\): CUDA error cuda\w+: "):
        check_cuda_status(status, "patch_entropy")


# ---- with a GPU: compute-sanitizer ---------------------------------------------------------------------------


SANITIZED_SCRIPT = textwrap.dedent("""
    import torch
    from medens.ops import apply_patch_mask, entropy_guided_mask, gather_patches, patch_entropy
    for dtype in (torch.uint8, torch.float16, torch.float32):
        images = torch.rand(4, 3, 64, 96, device="cuda")
        images = (images * 255).to(dtype) if dtype == torch.uint8 else images.to(dtype)
        for bins in (256, 4096):
            scores = patch_entropy(images, 16, bins=bins, backend="cuda")
        patch_entropy(images.contiguous(memory_format=torch.channels_last), 8, backend="cuda")
    for n in (196, 5000):
        m = entropy_guided_mask(torch.rand(8, n, device="cuda"), 0.75, backend="cuda")
    m = entropy_guided_mask(scores.float(), 0.75, temperature=0.0, backend="cuda")
    for dtype in (torch.float16, torch.float32, torch.float64):
        images = torch.rand(4, 3, 64, 96, device="cuda", dtype=dtype, requires_grad=dtype == torch.float64)
        for normalize in (False, True):
            out = gather_patches(images, m.ids_mask, 16, normalize=normalize, backend="cuda")
            gather_patches(images.detach().contiguous(memory_format=torch.channels_last), m.ids_keep, 16,
                           normalize=normalize, backend="cuda")
            if images.requires_grad:
                out.sum().backward()
        apply_patch_mask(images.detach(), m.mask, 16, backend="cuda")
    big = torch.rand(1, 3, 64, 64, device="cuda", dtype=torch.float64)
    gather_patches(big, torch.zeros(1, 1, dtype=torch.int64, device="cuda"), 64, normalize=True, backend="cuda")
    torch.cuda.synchronize()
    print("sanitized run done")
""")


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.parametrize("tool", ["memcheck", "racecheck"])
def test_cuda_kernels_under_compute_sanitizer(tool, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip(CUDA_ABSENT)
    if not available_backends()["cuda"]:
        pytest.skip(f"the cuda backend cannot run here: {_why_unavailable('cuda', torch.device('cuda'))}")
    sanitizer = shutil.which("compute-sanitizer") or shutil.which(
        "compute-sanitizer", path="/usr/local/cuda/bin:/usr/local/cuda/compute-sanitizer")
    if sanitizer is None:
        pytest.skip("compute-sanitizer is not installed")
    script = tmp_path / "sanitized.py"
    script.write_text(SANITIZED_SCRIPT)
    # Only our kernels are checked (their mangled names contain the medens namespace); torch's are its own.
    run = subprocess.run([sanitizer, f"--tool={tool}", "--kernel-name", "kns=medens", "--error-exitcode=1",
                          sys.executable, str(script)],
                         capture_output=True, text=True, timeout=1800)
    output = run.stdout[-4000:] + run.stderr[-4000:]
    assert run.returncode == 0 and "sanitized run done" in run.stdout, output
    # memcheck ends with "ERROR SUMMARY: 0 errors", racecheck with "RACECHECK SUMMARY: 0 hazards displayed (0 errors,"
    summary = "ERROR SUMMARY: 0 errors" if tool == "memcheck" else "SUMMARY: 0 hazards displayed (0 errors"
    assert summary in run.stdout + run.stderr, output
