"""Time two builds of medens._C against each other in one process, their calls alternating.

On a shared machine the time of a whole benchmark run drifts by more than most changes to a kernel, and the
reference's time drifts further still. Loading both builds into one process and alternating their calls
(A B B A ...) exposes them to the same drift, so the ratio of their medians shows the change itself.

    python benchmarks/compare_builds.py OLD/_C.cpython-*.so build/dev/_C.cpython-*.so --op entropy

The builds' outputs are compared first: the largest difference is printed beside the times.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

FLOAT32 = 3  # dtype code of medens/ops/_launch.py (DTYPE_CODES)


def load_extension(path: Path, name: str) -> ModuleType:
    """Loads the extension at `path` as a module of its own (two builds can then live in one process)."""
    spec = importlib.util.spec_from_file_location(f"{name}._C", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load an extension from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def entropy_call(ext: ModuleType, images: torch.Tensor, patch: int) -> Callable[[], torch.Tensor]:
    b, c, h, w = images.shape
    out = torch.empty(b, (h // patch) * (w // patch))

    def call() -> torch.Tensor:
        status = ext.patch_entropy_cpu(images.data_ptr(), FLOAT32, b, c, h, w, list(images.stride()), patch, 256,
                                       0.0, 1.0, out.data_ptr(), torch.get_num_threads())
        assert status == 0, f"patch_entropy_cpu returned status {status}"
        return out

    return call


def gather_call(ext: ModuleType, images: torch.Tensor, ids: torch.Tensor, normalize: bool) -> Callable:
    b, c, h, w = images.shape
    out = torch.empty(b, ids.shape[1], 16 * 16 * c)

    def call() -> torch.Tensor:
        status = ext.gather_patches_cpu(images.data_ptr(), FLOAT32, b, c, h, w, list(images.stride()),
                                        ids.data_ptr(), list(ids.stride()), ids.shape[1], 16, normalize, 1e-6,
                                        out.data_ptr(), torch.get_num_threads())
        assert status == 0, f"gather_patches_cpu returned status {status}"
        return out

    return call


def masking_call(ext: ModuleType, scores: torch.Tensor, noise: torch.Tensor, keep: int) -> Callable:
    b, n = scores.shape
    mask = torch.empty(b, n, dtype=torch.bool)
    ids = [torch.empty(b, keep, dtype=torch.long), torch.empty(b, n - keep, dtype=torch.long),
           torch.empty(b, n, dtype=torch.long)]

    def call() -> torch.Tensor:
        status = ext.entropy_guided_mask_cpu(scores.data_ptr(), FLOAT32, list(scores.stride()), noise.data_ptr(),
                                             FLOAT32, list(noise.stride()), b, n, keep, 1.0, True, mask.data_ptr(),
                                             *(t.data_ptr() for t in ids), torch.get_num_threads())
        assert status == 0, f"entropy_guided_mask_cpu returned status {status}"
        return mask

    return call


def cases(op: str, ext: ModuleType) -> dict[str, Callable]:
    """The calls timed for `op` (the benchmarks' shapes), keyed by a label."""
    g = torch.Generator().manual_seed(0)
    if op == "entropy":
        images = torch.rand(64, 3, 224, 224, generator=g)
        return {f"patch_entropy p={p}": entropy_call(ext, images, p) for p in (32, 16)}
    if op == "gather":
        images = torch.rand(64, 3, 224, 224, generator=g)
        ids = torch.stack([torch.randperm(196, generator=g)[:49].sort().values for _ in range(64)])
        return {f"gather normalize={n}": gather_call(ext, images, ids, n) for n in (True, False)}
    scores, noise = torch.rand(256, 196, generator=g) * 8, torch.rand(256, 196, generator=g)
    return {"entropy_guided_mask T=1": masking_call(ext, scores, noise, 49)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build_a", type=Path, help="the first (old) build's _C shared object")
    parser.add_argument("build_b", type=Path, help="the second (new) build's _C shared object")
    parser.add_argument("--op", choices=("entropy", "gather", "masking"), default="entropy")
    parser.add_argument("--rounds", type=int, default=60, help="calls per build (default 60)")
    args = parser.parse_args(argv)
    a, b = load_extension(args.build_a, "build_a"), load_extension(args.build_b, "build_b")
    cases_a, cases_b = cases(args.op, a), cases(args.op, b)
    for label in cases_a:
        call_a, call_b = cases_a[label], cases_b[label]
        difference = (call_a().double() - call_b().double()).abs().max().item()
        times: dict[str, list[float]] = {"a": [], "b": []}
        for i in range(2 * args.rounds):
            order = (("a", call_a), ("b", call_b)) if i % 2 else (("b", call_b), ("a", call_a))
            for key, call in order:
                start = time.perf_counter()
                call()
                times[key].append(time.perf_counter() - start)
        median_a, median_b = statistics.median(times["a"]), statistics.median(times["b"])
        print(f"{label:26s} A {median_a * 1e3:7.3f} ms  B {median_b * 1e3:7.3f} ms  B/A {median_b / median_a:.3f}"
              f"  outputs differ by at most {difference:.3g}")


if __name__ == "__main__":
    main()
