"""Shared pieces of the op benchmarks: inputs, the backends to time, and the ratio table printed at the end.

Every benchmark records (op, case, backend, median seconds, bytes moved) in ``benchmark.extra_info``; the
terminal summary prints, per case, each backend's median and its speed-up over the reference, and
``benchmarks/report.py`` turns ``--benchmark-json`` output into the tables of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import os
import platform
from collections import defaultdict

import torch

import medens
from medens.ops import available_backends

_RESULTS: dict[tuple[str, str], dict[str, dict]] = defaultdict(dict)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_cpu_model()}, {torch.get_num_threads()} threads"


def bench_devices() -> list[torch.device]:
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    return devices


def backends_for(device: torch.device) -> list[str]:
    """The backends to time on ``device`` (interpreted Triton on the CPU is a correctness tool, not timed)."""
    ok = available_backends()
    if device.type == "cpu":
        return [b for b in ("reference", "cpp") if ok[b]]
    return [b for b in ("reference", "cuda", "triton") if ok[b]]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(benchmark, fn, *, op: str, case: str, backend: str, device: torch.device, bytes_moved: int,
        rounds: int = 30, ops: int = 0, warmup_rounds: int = 3) -> None:
    """Time ``fn`` (synchronised on GPUs) and record it for the summary.

    ``bytes_moved`` and ``ops`` are what the op must read and write and the arithmetic it must do (counted per
    element in each benchmark's docstring): the roofline in benchmarks/report.py divides them by the bandwidth
    and arithmetic rate measured in the same run.

    A few warm-up rounds come first: on a virtual machine the first writes to freshly allocated memory are slow
    (the host maps the pages in), and a training loop sees the steady state, not the first calls.
    """

    def timed():
        out = fn()
        synchronize(device)
        return out

    benchmark.group = f"{op} {case} on {device.type}"
    benchmark.extra_info.update(
        op=op, case=case, backend=backend, device=device_name(device), bytes=bytes_moved, ops=ops,
        torch=torch.__version__, medens=medens.__version__,
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "default"),
    )
    benchmark.pedantic(timed, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
    record(op, f"{case} on {device.type}", backend, benchmark)


def write_image_folder(root, count: int, suffix: str, **save) -> None:
    """``count`` ultrasound-like 512 x 384 images in class folders under ``root`` (a ``folder`` dataset)."""
    from medens.data.synthetic import SyntheticDataset

    source = SyntheticDataset(count, (384, 512), num_classes=3, seed=0)
    for i in range(count):
        image, label = source[i]
        folder = root / source.classes[label]
        folder.mkdir(exist_ok=True)
        image.save(folder / f"{i:04d}{suffix}", **save)


def record(op: str, case: str, backend: str, benchmark) -> None:
    """Keep a benchmark for the summary (its extra_info stays live: values added after the run show too)."""
    _RESULTS[(op, case)][backend] = dict(median=benchmark.stats.stats.median,
                                         bytes=benchmark.extra_info.get("bytes", 0), info=benchmark.extra_info)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not _RESULTS:
        return
    write = terminalreporter.write_line
    terminalreporter.section("medens: speed-up over the reference (median times)")
    if config.getoption("--benchmark-reference-only"):
        write("--benchmark-reference-only: the reference backend alone was timed (no compiled-backend rows)")
    for (op, case), rows in sorted(_RESULTS.items()):
        ref = rows.get("reference", {}).get("median")
        read = rows.get("read-pass", {}).get("median")
        for backend, row in sorted(rows.items(), key=lambda kv: kv[1]["median"]):
            ratio = f"{ref / row['median']:7.1f}x" if ref else "      -"
            gbps = row["bytes"] / row["median"] / 1e9 if row["bytes"] else 0.0
            share = f"  {read / row['median']:5.0%} of a plain read pass" if read and backend != "read-pass" else ""
            info = row["info"]
            extra = "".join([
                f"  {info['images_per_s']:7.1f} img/s" if "images_per_s" in info else "",
                f"  {info['share_of_step']:5.1%} of a training step" if "share_of_step" in info else "",
            ])
            rate = f"{gbps:6.1f} GB/s" if row["bytes"] else ""
            write(f"{op:<22} {case:<44} {backend:<10} {row['median'] * 1e3:9.3f} ms {ratio}  {rate}{share}{extra}")
    _write_bottlenecks(write)


def _write_bottlenecks(write) -> None:
    """Loader against model: whichever delivers fewer images per second bounds training."""
    loaders = {case: row["info"]["images_per_s"] for (op, case), rows in _RESULTS.items() if op == "dataloader"
               for row in rows.values() if "images_per_s" in row["info"]}
    models = {f"{op} {case}": row["info"]["images_per_s"] for (op, case), rows in _RESULTS.items()
              if op in ("mae_train_step", "finetune_step") for name, row in rows.items()
              if "images_per_s" in row["info"] and name in ("cpp", "cuda", "torch")}
    if not loaders or not models:
        return
    write("")
    write("bottleneck (images per second; the smaller side bounds a training epoch):")
    for model, model_rate in sorted(models.items()):
        for loader, loader_rate in sorted(loaders.items()):
            side = "loader" if loader_rate < model_rate else "model"
            write(f"  {model} {model_rate:7.1f}  vs  dataloader {loader} {loader_rate:7.1f}  ->  {side}")


def pytest_generate_tests(metafunc) -> None:
    """``device`` runs a benchmark on every device here; ``device, backend`` on every backend timed there (the
    reference alone with ``--benchmark-reference-only``)."""
    if "backend" in metafunc.fixturenames and "device" in metafunc.fixturenames:
        reference_only = metafunc.config.getoption("--benchmark-reference-only")
        pairs = [(d, b) for d in bench_devices() for b in backends_for(d) if not reference_only or b == "reference"]
        metafunc.parametrize(("device", "backend"), pairs, ids=[f"{d.type}-{b}" for d, b in pairs])
    elif "device" in metafunc.fixturenames:
        metafunc.parametrize("device", bench_devices(), ids=lambda d: d.type)
