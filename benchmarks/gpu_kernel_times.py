"""Where the time of each op goes on a GPU: its kernels' own time (torch.profiler) beside the time of a call.

For every op and GPU backend at the benchmark sizes this reports
- ``call``: median wall time of one call followed by a synchronisation (what ``pytest --benchmark`` times);
- ``pipelined``: wall time per call of 50 calls issued back to back, one synchronisation at the end (host-bound
  when the host takes longer to issue a call than the GPU to run it);
- ``kernels``: the GPU time of all kernels and copies of one call, from the profiler, listed by kernel name;
- bandwidth: the op's bytes over its kernel time, and as a share of a plain device copy measured in the same run.

    python benchmarks/gpu_kernel_times.py --out gpu_kernel_times.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from medens.ops import (
    apply_patch_mask,
    available_backends,
    entropy_guided_mask,
    gather_patches,
    patch_entropy,
)


def wall_per_call(fn, rounds: int = 30) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pipelined_per_call(fn, calls: int = 50) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls


def kernel_times(fn, calls: int = 10) -> dict[str, float]:
    """GPU seconds per call of each kernel (and copy) that ``fn`` launches."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    per_kernel: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        device_us = getattr(event, "self_device_time_total", None)
        if device_us is None:
            device_us = getattr(event, "self_cuda_time_total", 0.0)
        if device_us:
            per_kernel[event.key[:90]] += device_us * 1e-6 / calls
    return dict(per_kernel)


def copy_bandwidth(images: torch.Tensor) -> float:
    """Bytes read and written per second by a plain device copy of ``images`` (CUDA events, median of 20)."""
    dst = torch.empty_like(images)
    times = []
    for _ in range(23):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(images)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3)
    return 2 * images.numel() * images.element_size() / statistics.median(times[3:])


def cases(backend: str):
    """(op, case, function, bytes the op must move) at the sizes of benchmarks/test_bench_*.py."""
    images = torch.rand(256, 3, 224, 224, device="cuda")
    image_bytes = images.numel() * 4
    for p in (32, 16):
        yield "patch_entropy", f"p={p}", (lambda p=p: patch_entropy(images, p, backend=backend)), image_bytes
    m = entropy_guided_mask(torch.rand(256, 196, device="cuda"), 0.75, backend="reference")
    out_bytes = m.ids_keep.numel() * 16 * 16 * 3 * 4
    for normalize in (True, False):
        yield ("gather_patches", f"keep 49/196 normalize={normalize}",
               (lambda n=normalize: gather_patches(images, m.ids_keep, 16, normalize=n, backend=backend)),
               2 * out_bytes)
    source = images.clone().requires_grad_()
    out = gather_patches(source, m.ids_keep, 16, normalize=True, backend=backend)
    grad = torch.randn_like(out)
    yield ("gather_patches_backward", "normalize=True",
           lambda: torch.autograd.grad(out, source, grad, retain_graph=True), image_bytes + 3 * out.numel() * 4)
    yield ("apply_patch_mask", "hide 147/196", lambda: apply_patch_mask(images, m.mask, 16, backend=backend),
           image_bytes + m.ids_keep.numel() * 768 * 4)
    scores, noise = torch.rand(256, 196, device="cuda") * 8, torch.rand(256, 196, device="cuda")
    for t in (1.0, 0.0):
        yield ("entropy_guided_mask", f"(256, 196) T={t:g}",
               (lambda t=t: entropy_guided_mask(scores, 0.75, temperature=t, noise=noise, backend=backend)),
               2 * scores.numel() * 4 + scores.numel() * 25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    copy_bps = copy_bandwidth(torch.rand(256, 3, 224, 224, device="cuda"))
    rows = []
    print(f"{torch.cuda.get_device_name()}: device copy {copy_bps / 1e12:.2f} TB/s (bytes read + written)")
    backends = [b for b in ("reference", "cuda", "triton") if available_backends()[b]]
    for backend in backends:
        for op, case, fn, nbytes in cases(backend):
            for _ in range(5):
                fn()
            torch.cuda.synchronize()
            call, pipelined, kernels = wall_per_call(fn), pipelined_per_call(fn), kernel_times(fn)
            gpu = sum(kernels.values())
            row = dict(op=op, case=case, backend=backend, call_s=call, pipelined_s=pipelined, kernel_s=gpu,
                       kernel_bytes_per_s=nbytes / gpu if gpu else None, copy_bytes_per_s=copy_bps,
                       kernels=kernels, device=torch.cuda.get_device_name(), torch=torch.__version__)
            rows.append(row)
            share = f"{nbytes / gpu / copy_bps:5.0%} of copy" if gpu else ""
            print(f"{op:<24} {case:<28} {backend:<9} call {call * 1e6:8.1f} us  pipelined {pipelined * 1e6:8.1f} us"
                  f"  kernels {gpu * 1e6:8.1f} us  {share}")
            for name, seconds in sorted(kernels.items(), key=lambda kv: -kv[1])[:6]:
                print(f"      {seconds * 1e6:8.1f} us  {name}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
