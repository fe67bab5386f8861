"""How each op's time grows with batch size and image size, as a PNG and a CSV.

Usage::

    python benchmarks/scaling.py --out benchmarks/results            # CPU, every compiled backend + reference
    python benchmarks/scaling.py --device cuda --out benchmarks/results

For each op and backend it times (median of several runs) a sweep over the batch size at 224 px and over the
image size at a fixed batch, and draws time per image against the bytes per image beside the plain read pass
over the same bytes (time of `images.sum()`): a line parallel to the read pass is memory-bound, a steeper one
is compute-bound, and a flat one at small sizes is launch or thread overhead.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from medens.io import atomic_path
from medens.ops import (
    apply_patch_mask,
    available_backends,
    entropy_guided_mask,
    gather_patches,
    patch_entropy,
)
from medens.ops import reference as R

BATCHES = (1, 2, 4, 8, 16, 32, 64)
SIZES = (64, 128, 224, 320, 448)
PATCH = 16


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def op_calls(images: torch.Tensor, backend: str) -> dict[str, Callable[[], object]]:
    b, _, h, w = images.shape
    n = (h // PATCH) * (w // PATCH)
    m = R.entropy_guided_mask(torch.rand(b, n, device=images.device), 0.75)
    scores = torch.rand(b, n, device=images.device)
    if backend == "read-pass":
        return {op: images.sum for op in ("patch_entropy", "gather_patches", "apply_patch_mask",
                                            "entropy_guided_mask")}
    return {
        "patch_entropy": lambda: patch_entropy(images, PATCH, backend=backend),
        "gather_patches": lambda: gather_patches(images, m.ids_keep, PATCH, normalize=True, backend=backend),
        "apply_patch_mask": lambda: apply_patch_mask(images, m.mask, PATCH, backend=backend),
        "entropy_guided_mask": lambda: entropy_guided_mask(scores, 0.75, backend=backend),
    }


def sweep(device: torch.device, backends: list[str], repeats: int) -> list[dict]:
    rows = []
    shapes = [("batch", b, (b, 3, 224, 224)) for b in BATCHES] + [("size", s, (8, 3, s, s)) for s in SIZES]
    for axis, value, shape in shapes:
        images = torch.rand(shape, device=device)
        for backend in ["read-pass", *backends]:
            reps = max(1, repeats // 4) if backend == "reference" else repeats
            for op, fn in op_calls(images, backend).items():
                seconds = median_seconds(fn, device, reps)
                rows.append(dict(axis=axis, value=value, batch=shape[0], size=shape[2], op=op, backend=backend,
                                 seconds=seconds, bytes=images.numel() * images.element_size()))
                print(f"{axis}={value:<4} {op:<20} {backend:<10} {seconds * 1e3:9.3f} ms", flush=True)
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    with atomic_path(path, fsync=False) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = sorted({r["op"] for r in rows})
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    fig, axes = plt.subplots(2, len(ops), figsize=(4.2 * len(ops), 7.5), squeeze=False)
    for col, op in enumerate(ops):
        for row_index, axis in enumerate(("batch", "size")):
            ax = axes[row_index][col]
            for backend in backends:
                pts = sorted((r["bytes"], r["seconds"]) for r in rows
                             if r["op"] == op and r["axis"] == axis and r["backend"] == backend)
                if pts:
                    style = "k--" if backend == "read-pass" else "o-"
                    ax.loglog([p[0] / 1e6 for p in pts], [p[1] * 1e3 for p in pts], style, label=backend, ms=3)
            label = "batch of 224 px images" if axis == "batch" else "image size, batch 8"
            ax.set_title(f"{op}\n({label})", fontsize=9)
            ax.set_xlabel("input MB")
            ax.set_ylabel("ms")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path, fsync=False) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    ok = available_backends()
    compiled = ["cpp"] if device.type == "cpu" else ["cuda", "triton"]
    backends = ["reference", *[b for b in compiled if ok[b]]]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = sweep(device, backends, args.repeats)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    write_csv(rows, args.out / f"scaling-{device.type}.csv")
    plot(rows, args.out / f"scaling-{device.type}.png", f"medens op scaling on {name}")
    print(f"wrote {args.out / f'scaling-{device.type}.png'} and .csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
