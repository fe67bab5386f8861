"""Turn pytest-benchmark JSON into the Markdown tables of benchmarks/RESULTS.md.

Usage::

    pytest --benchmark --benchmark-json=bench.json
    python benchmarks/report.py bench.json                    # print the tables
    python benchmarks/report.py bench.json --readme benchmarks/RESULTS.md # replace the block between the bench markers
    python benchmarks/report.py cpu.json gpu.json --kernel-times gpu_kernel_times.json --readme benchmarks/RESULTS.md \
        --kernel-plot benchmarks/results/gpu-kernel-times-h200.png

Every row is one benchmark: median time, the interquartile range, the speed-up over the reference in the same
group, the bytes it moves per second, its share of the roofline (the time its bytes and operations imply at the
read bandwidth and peak arithmetic rate measured by the plain read pass and a matmul of the same run), the machine,
the medens version and the date. Nothing is estimated: a figure is only
shown when it was measured in the run the JSON comes from.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from medens.io import atomic_path, atomic_write_text

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
KERNEL_START, KERNEL_END = "<!-- gpu-kernels:start -->", "<!-- gpu-kernels:end -->"


def load_rows(path: Path) -> tuple[list[dict], dict]:
    data = json.loads(path.read_text())
    rows = []
    for bench in data["benchmarks"]:
        info = bench.get("extra_info", {})
        if "op" not in info:
            continue
        stats = bench["stats"]
        rows.append(dict(
            op=info["op"], case=info["case"], backend=info["backend"], device=info["device"],
            bytes=info.get("bytes", 0), ops=info.get("ops", 0), median=stats["median"], q1=stats["q1"], q3=stats["q3"],
            rounds=stats["rounds"], torch=info.get("torch", ""), images_per_s=info.get("images_per_s"),
            share_of_step=info.get("share_of_step"),
        ))
    meta = dict(date=data.get("datetime", "")[:10], version=_medens_version(data),
                torch=rows[0]["torch"] if rows else "", devices=sorted({r["device"] for r in rows}))
    return rows, meta


def _medens_version(data: dict) -> str:
    for bench in data["benchmarks"]:
        version = bench.get("extra_info", {}).get("medens")
        if version:
            return version
    return ""


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def machine_roofs(rows: list[dict]) -> dict[str, tuple[float | None, float | None]]:
    """Per device: the read bandwidth (bytes/s) of the plain read pass and the peak arithmetic rate (ops/s) of the
    compute pass, both measured in this run (None when that run did not measure them)."""
    roofs = {}
    for device in {r["device"] for r in rows}:
        reads = [r["bytes"] / r["median"] for r in rows if r["device"] == device and r["backend"] == "read-pass"]
        rates = [r["ops"] / r["median"] for r in rows if r["device"] == device and r["backend"] == "compute-pass"]
        roofs[device] = (max(reads) if reads else None, max(rates) if rates else None)
    return roofs


def roofline_share(row: dict, roofs: dict) -> str:
    """Time the op's bytes and operations imply at the measured roofs, as a share of its measured time."""
    bandwidth, rate = roofs.get(row["device"], (None, None))
    if row["backend"] in ("read-pass", "compute-pass") or not (row["bytes"] or row["ops"]):
        return "—"
    if (row["bytes"] and bandwidth is None) or (row["ops"] and rate is None):
        return "—"
    bound = max(row["bytes"] / bandwidth if row["bytes"] else 0.0, row["ops"] / rate if row["ops"] else 0.0)
    return f"{bound / row['median']:.0%}"


def tables(rows: list[dict], metas: list[dict]) -> str:
    roofs = machine_roofs(rows)
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["op"], row["device"], row["case"])].append(row)
    lines = []
    by_op: dict[str, list[tuple]] = defaultdict(list)
    for key in sorted(groups):
        by_op[key[0]].append(key)
    for op, keys in by_op.items():
        lines += [f"#### {op}", "",
                  "| case | backend | median ms | IQR ms | vs reference | throughput | share of roofline | device |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
        for key in keys:
            group = sorted(groups[key], key=lambda r: r["median"])
            ref = next((r["median"] for r in group if r["backend"] == "reference"), None)
            for r in group:
                speedup = f"{ref / r['median']:.1f}x" if ref else "—"
                if r["images_per_s"]:
                    gbps = f"{r['images_per_s']:.1f} img/s"
                elif r["bytes"]:
                    gbps = f"{r['bytes'] / r['median'] / 1e9:.1f} GB/s"
                else:
                    gbps = "—"
                if r["share_of_step"]:
                    gbps += f" ({r['share_of_step']:.1%} of a step)"
                share = roofline_share(r, roofs)
                lines.append(f"| {key[2]} | {r['backend']} | {_ms(r['median'])} | {_ms(r['q1'])}–{_ms(r['q3'])} | "
                             f"{speedup} | {gbps} | {share} | {r['device']} |")
        lines.append("")
    for device, (bandwidth, rate) in sorted(roofs.items()):
        parts = []
        if bandwidth:
            parts.append(f"read bandwidth {bandwidth / 1e9:.1f} GB/s (plain read pass)")
        if rate:
            parts.append(f"peak rate {rate / 1e9:.0f} Gop/s (float32 matmul)")
        if parts:
            lines.append(f"Roofs on {device}: " + ", ".join(parts) + ". Share of roofline = the time the op's bytes "
                         "and operations imply at these roofs, divided by its measured time.")
            lines.append("")
    for meta in metas:
        lines.append(f"_Measured {meta['date']} on {' and '.join(meta['devices'])}: medens {meta['version'] or 'dev'}, "
                     f"torch {meta['torch']}._")
        lines.append("")
    return "\n".join(lines)


def _is_own_kernel(name: str) -> bool:
    """A medens kernel: CUDA ones live in the medens namespace, Triton ones are named _<op>_kernel."""
    return "medens" in name or name.startswith("_")


def _copy_share(nbytes: float, seconds: float, copy_bytes_per_s: float) -> str:
    return f"{nbytes / seconds / copy_bytes_per_s:.0%}" if nbytes and seconds else "—"


def kernel_time_table(rows: list[dict]) -> str:
    """Markdown table of benchmarks/gpu_kernel_times.py output: each op's kernel time beside its call time."""
    lines = ["| op | case | backend | call µs | pipelined µs | GPU µs, all kernels | share of copy bandwidth | "
             "medens kernels µs | their share | device |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        nbytes = (r.get("kernel_bytes_per_s") or 0.0) * r["kernel_s"]  # the bytes the op must move
        own = sum(seconds for name, seconds in r["kernels"].items() if _is_own_kernel(name))
        own_cells = (f"{own * 1e6:.1f} | {_copy_share(nbytes, own, r['copy_bytes_per_s'])}"
                     if r["backend"] != "reference" else "— | —")
        lines.append(f"| {r['op']} | {r['case']} | {r['backend']} | {r['call_s'] * 1e6:.1f} | "
                     f"{r['pipelined_s'] * 1e6:.1f} | {r['kernel_s'] * 1e6:.1f} | "
                     f"{_copy_share(nbytes, r['kernel_s'], r['copy_bytes_per_s'])} | "
                     f"{own_cells} | {r['device']} |")
    copy = rows[0]["copy_bytes_per_s"] if rows else 0.0
    lines += ["", f"A plain device copy of the same images moved {copy / 1e12:.2f} TB/s (bytes read plus written) in "
              f"the same run; torch {rows[0]['torch'] if rows else ''}.", ""]
    return "\n".join(lines)


def kernel_time_plot(rows: list[dict], path: Path) -> None:
    """PNG: per op, case and backend, a call's time beside its GPU time and its medens kernels' time (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = {"reference": 0, "cuda": 1, "triton": 2}
    rows = sorted(rows, key=lambda r: (r["op"], r["case"], order.get(r["backend"], 3)))
    labels = [f"{r['op']} {r['case']} [{r['backend']}]" for r in rows]
    own = [sum(s for name, s in r["kernels"].items() if _is_own_kernel(name)) for r in rows]
    y = range(len(rows))
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(rows) + 1.5))
    ax.barh(y, [r["call_s"] * 1e6 for r in rows], color="#d9d9d9", label="call (op + synchronisation)")
    ax.barh(y, [r["kernel_s"] * 1e6 for r in rows], height=0.55, color="#6a9fd4", label="GPU time, all kernels")
    ax.barh(y, [s * 1e6 for s in own], height=0.25, color="#1f3f77", label="medens kernels")
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("µs (log scale)")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    device = rows[0]["device"] if rows else ""
    ax.set_title(f"medens ops on {device}: call time against kernel time", fontsize=9)
    fig.tight_layout()
    with atomic_path(path, fsync=False) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def replace_block(readme: Path, block: str, start: str = START, end: str = END) -> None:
    text = readme.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{readme} has no {start} ... {end} block to replace")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    atomic_write_text(readme, f"{head}{start}\n{block}{end}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", type=Path, nargs="+",
                        help="pytest-benchmark JSON files (pytest --benchmark --benchmark-json=FILE), one per machine")
    parser.add_argument("--kernel-times", type=Path, help="output of benchmarks/gpu_kernel_times.py --out FILE")
    parser.add_argument("--kernel-plot", type=Path, help="draw the --kernel-times results into this PNG")
    parser.add_argument("--readme", type=Path, help="Markdown file (benchmarks/RESULTS.md) whose bench (and gpu-kernels) blocks are replaced")
    args = parser.parse_args(argv)
    rows, metas = [], []
    for path in args.json:
        file_rows, meta = load_rows(path)
        if not file_rows:
            raise SystemExit(f"{path} holds no medens op benchmarks")
        rows += file_rows
        metas.append(meta)
    block = tables(rows, metas)
    kernel_rows = json.loads(args.kernel_times.read_text()) if args.kernel_times else None
    kernel_block = kernel_time_table(kernel_rows) if kernel_rows else None
    if kernel_rows and args.kernel_plot:
        kernel_time_plot(kernel_rows, args.kernel_plot)
    if args.readme:
        replace_block(args.readme, block)
        if kernel_block:
            replace_block(args.readme, kernel_block, KERNEL_START, KERNEL_END)
    else:
        print(block)
        if kernel_block:
            print(kernel_block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
