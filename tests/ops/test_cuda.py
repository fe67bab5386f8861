"""The CUDA kernels (kernels/cuda), with and without a GPU.

Without a GPU: the kernels run in the CPU emulator (kernels/cuda/emulator) against the CPU kernels, once under
AddressSanitizer + UndefinedBehaviorSanitizer (out-of-bounds global or shared memory) and once under
ThreadSanitizer (missing barriers, races between blocks). This compiles the .cu sources of the checkout with the
host compiler, so it needs g++ and the repository, not nvcc.

With a GPU (``torch.cuda.is_available()``): the ``cuda`` and ``triton`` backends against the reference, opcheck,
gradcheck, torch.compile, streams and devices, and the kernels under compute-sanitizer (memcheck, racecheck)
when it is installed. Without one these skip, saying so.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from medens.ops import (
    PatchMask,
    apply_patch_mask,
    available_backends,
    build_info,
    entropy_guided_mask,
    gather_patches,
    patch_entropy,
)
from medens.ops import reference as R
from medens.ops._backends import _why_unavailable, extension

from .helpers import (
    FLOAT_DTYPES,
    IMAGE_DTYPES,
    OPCHECK_CASES,
    bin_edge_images,
    check_compiled_masking_step,
    opcheck_samples,
    random_images,
)
from .helpers import assert_same_mask as assert_mask_equal

REPO = Path(__file__).resolve().parents[2]
CUDA_SOURCES = REPO / "kernels" / "cuda"
HARNESS = CUDA_SOURCES / "emulator" / "check_kernels.cpp"
CPU_SOURCES = sorted((REPO / "csrc" / "cpu").glob("*.cpp"))

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(),
                                  reason="needs a CUDA device (torch.cuda.is_available() is False)")

ENTROPY_ATOL = 1e-4
NORMALIZED_TOL = {
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float64: dict(atol=1e-12, rtol=1e-12),
}


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


# ---- with a GPU ----------------------------------------------------------------------------------------------------


@pytest.fixture(params=["cuda", "triton"])
def gpu_backend(request) -> str:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (torch.cuda.is_available() is False)")
    reason = _why_unavailable(request.param, torch.device("cuda"))
    if reason is not None:
        pytest.skip(f"backend {request.param!r} cannot run here: {reason}")
    return request.param


def cuda(*tensors: torch.Tensor):
    moved = tuple(t.cuda() for t in tensors)
    return moved if len(moved) > 1 else moved[0]


def assert_same_mask(got: PatchMask, expected: PatchMask) -> None:
    assert_mask_equal(got, expected, device_type="cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", IMAGE_DTYPES, ids=str)
@pytest.mark.parametrize(("shape", "p"), [((4, 3, 224, 224), 16), ((3, 1, 7, 5), 1), ((2, 3, 15, 10), 5),
                                          ((2, 3, 64, 64), 32), ((2, 1, 24, 48), 24)], ids=str)
def test_entropy_matches_reference_and_cpu(gpu_backend, dtype, shape, p):
    images = random_images(shape, dtype)
    got = patch_entropy(cuda(images), p, backend=gpu_backend)
    torch.testing.assert_close(got.cpu(), R.patch_entropy(images, p), atol=ENTROPY_ATOL, rtol=0)
    if available_backends()["cpp"]:  # the same bins and float64 sums as the CPU kernels: equal to a few ulps
        torch.testing.assert_close(got.cpu(), patch_entropy(images, p, backend="cpp"), atol=2e-6, rtol=0)


@pytest.mark.cuda
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize(("bins", "value_range"), [(256, None), (7, (0.25, 0.8)), (4096, None)])
def test_entropy_strides_bins_and_ranges(gpu_backend, layout, bins, value_range):
    images = random_images((3, 3, 32, 48), torch.float32, layout=layout) * 1.4 - 0.2
    got = patch_entropy(cuda(images), 8, bins=bins, value_range=value_range, backend=gpu_backend)
    torch.testing.assert_close(got.cpu(), R.patch_entropy(images, 8, bins=bins, value_range=value_range),
                               atol=ENTROPY_ATOL, rtol=0)


@pytest.mark.cuda
@pytest.mark.parametrize("value_range", [(0.0, 1.0), (0.5, 0.75), (0.45, 0.55)], ids=["unit", "pow2", "divide"])
@pytest.mark.parametrize("p", [16, 32])
def test_entropy_grey_levels_at_bin_edges(gpu_backend, value_range, p):
    images = bin_edge_images((3, 3, 2 * p, 2 * p), value_range)
    got = patch_entropy(cuda(images), p, value_range=value_range, backend=gpu_backend)
    torch.testing.assert_close(got.cpu(), R.patch_entropy(images, p, value_range=value_range),
                               atol=ENTROPY_ATOL, rtol=0)


@pytest.mark.cuda
@pytest.mark.parametrize("temperature", [0.0, 0.1, 1.0, math.inf])
@pytest.mark.parametrize("prefer", ["high", "low"])
@pytest.mark.parametrize(("b", "n", "ratio"), [(1, 1, 0.0), (3, 7, 0.5), (256, 196, 0.75), (4, 1000, 0.9),
                                               (2, 4096, 0.25), (2, 5000, 0.75)])
def test_mask_identical_to_reference(gpu_backend, temperature, prefer, b, n, ratio):
    scores = torch.rand(b, n) * 8
    noise = torch.rand(b, n)
    expected = R.entropy_guided_mask(scores, ratio, temperature=temperature, prefer=prefer, noise=noise)
    got = entropy_guided_mask(cuda(scores), ratio, temperature=temperature, prefer=prefer, noise=cuda(noise),
                              backend=gpu_backend)
    assert_same_mask(got, expected)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_mask_dtypes_ties_and_strides(gpu_backend, dtype):
    scores = ((torch.rand(50, 6) * 4).round()).t().to(dtype)  # ties, strides (1, 6)
    noise = torch.rand(6, 100)[:, ::2].to(dtype)
    noise[0, :5] = 0.5
    for temperature in (0.0, 0.7):
        expected = R.entropy_guided_mask(scores, 0.6, temperature=temperature, noise=noise)
        got = entropy_guided_mask(cuda(scores), 0.6, temperature=temperature, noise=cuda(noise),
                                  backend=gpu_backend)
        assert_same_mask(got, expected)


GEOMETRIES = [  # (B, C, H, W), p, K
    ((1, 1, 1, 1), 1, 1),
    ((3, 3, 8, 12), 4, 5),
    ((2, 1, 20, 10), 5, 8),
    ((8, 3, 224, 224), 16, 147),
    ((2, 3, 64, 64), 64, 1),  # a patch too large to stage in shared memory (float64)
    ((4, 2, 12, 18), 3, 24),
]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize(("shape", "p", "k"), GEOMETRIES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gather_matches_reference(gpu_backend, dtype, shape, p, k, layout):
    images = random_images(shape, dtype, layout=layout)
    n = (shape[2] // p) * (shape[3] // p)
    ids = torch.stack([torch.randperm(n)[:k] for _ in range(shape[0])]) if k <= n else torch.randint(0, n, (shape[0], k))
    assert torch.equal(gather_patches(*cuda(images, ids), p, backend=gpu_backend).cpu(),
                       R.gather_patches(images, ids, p))
    if shape[1] * p * p >= 2:
        got = gather_patches(*cuda(images, ids), p, normalize=True, backend=gpu_backend)
        torch.testing.assert_close(got.cpu(), R.gather_patches(images, ids, p, normalize=True),
                                   **NORMALIZED_TOL[dtype])


@pytest.mark.cuda
@pytest.mark.parametrize("normalize", [False, True])
def test_gather_gradcheck(gpu_backend, normalize):
    images = torch.rand(2, 3, 8, 12, dtype=torch.float64, device="cuda", requires_grad=True)
    ids = torch.tensor([[0, 2, 2], [5, 1, 0]], device="cuda")  # repeated ids accumulate
    assert torch.autograd.gradcheck(
        lambda x: gather_patches(x, ids, 4, normalize=normalize, backend=gpu_backend), (images,))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [*IMAGE_DTYPES, torch.float64], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_apply_mask_is_exact(gpu_backend, dtype, layout):
    shape, p = (3, 3, 24, 36), 4
    images = random_images(shape, dtype, layout=layout) if dtype != torch.float64 else torch.rand(shape,
                                                                                                 dtype=dtype)
    mask = torch.rand(3, 54) < 0.6
    fill = 9.0 if dtype == torch.uint8 else -0.25
    got = apply_patch_mask(*cuda(images, mask), p, fill=fill, backend=gpu_backend)
    assert torch.equal(got.cpu(), R.apply_patch_mask(images, mask, p, fill=fill))


@pytest.mark.cuda
def test_apply_mask_gradcheck(gpu_backend):
    images = torch.rand(2, 3, 8, 8, dtype=torch.float64, device="cuda", requires_grad=True)
    mask = torch.tensor([[True, False, False, True], [False, False, True, True]], device="cuda")
    assert torch.autograd.gradcheck(lambda x: apply_patch_mask(x, mask, 4, backend=gpu_backend), (images,))


@pytest.mark.cuda
@pytest.mark.parametrize("case", range(OPCHECK_CASES))
def test_opcheck(gpu_backend, case):
    op, args = opcheck_samples(gpu_backend, "cuda")[case]
    torch.library.opcheck(op, args)


@pytest.mark.cuda
@pytest.mark.slow
def test_torch_compile_fullgraph(gpu_backend):
    check_compiled_masking_step(gpu_backend, "cuda")


@pytest.mark.cuda
def test_kernels_run_on_the_current_stream(gpu_backend):
    # Inputs written on a side stream and read by the op on that same stream, without synchronisation in
    # between: correct only if the kernels are enqueued on torch.cuda.current_stream().
    side = torch.cuda.Stream()
    images = torch.rand(64, 3, 64, 64)
    with torch.cuda.stream(side):
        on_gpu = torch.empty(images.shape, device="cuda")
        on_gpu.copy_(images, non_blocking=True)
        on_gpu.mul_(1.0)
        scores = patch_entropy(on_gpu, 16, backend=gpu_backend)
        m = entropy_guided_mask(scores, 0.75, temperature=0.0, backend=gpu_backend)
        targets = gather_patches(on_gpu, m.ids_mask, 16, backend=gpu_backend)
    side.synchronize()
    expected_scores = R.patch_entropy(images, 16)
    torch.testing.assert_close(scores.cpu(), expected_scores, atol=ENTROPY_ATOL, rtol=0)
    torch.testing.assert_close(targets.cpu(), R.gather_patches(images, m.ids_mask.cpu(), 16))


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_kernels_run_on_the_tensors_device(gpu_backend):
    images = torch.rand(2, 3, 32, 32)
    ids = torch.tensor([[0, 3], [2, 1]])
    with torch.cuda.device(0):
        got = gather_patches(images.to("cuda:1"), ids.to("cuda:1"), 16, normalize=True, backend=gpu_backend)
        scores = patch_entropy(images.to("cuda:1"), 16, backend=gpu_backend)
        assert torch.cuda.current_device() == 0
    assert got.device == torch.device("cuda:1") and scores.device == torch.device("cuda:1")
    torch.testing.assert_close(got.cpu(), R.gather_patches(images, ids, 16, normalize=True))
    torch.testing.assert_close(scores.cpu(), R.patch_entropy(images, 16), atol=ENTROPY_ATOL, rtol=0)


@pytest.mark.cuda
@pytest.mark.parametrize("op", ["forward", "backward"])
def test_out_of_range_ids_stay_in_bounds_and_raise(gpu_backend, op):
    from medens.ops._registry import kernel

    images = torch.rand(2, 3, 8, 12, device="cuda")
    ids = torch.tensor([[0, 6], [-1, 2]], device="cuda")
    with pytest.raises(ValueError, match="out of range"):
        if op == "forward":
            kernel("gather_patches", gpu_backend)(images, ids, 4, True, 1e-6)
        else:
            kernel("gather_patches_backward", gpu_backend)(torch.rand(2, 2, 48, device="cuda"), images, ids, 4,
                                                          True, 1e-6)
    torch.cuda.synchronize()  # and the context is still healthy


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
        pytest.skip("needs a CUDA device (torch.cuda.is_available() is False)")
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
