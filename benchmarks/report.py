"""Turn pytest-benchmark JSON into the Markdown tables of the README.

Usage::

    pytest --benchmark --benchmark-json=bench.json
    python benchmarks/report.py bench.json                    # print the tables
    python benchmarks/report.py bench.json --readme README.md # replace the block between the bench markers

Every row is one benchmark: median time, the interquartile range, the speed-up over the reference in the same
group, the bytes it moves per second, its share of the roofline (the time its bytes and operations imply at the
read bandwidth and peak arithmetic rate measured by the plain read pass and a matmul of the same run), the machine,
the medens version and the date. Nothing is estimated: a figure is only
shown when it was measured in the run the JSON comes from.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path

START, END = "<!-- bench:start -->", "<!-- bench:end -->"


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
    meta = dict(date=data.get("datetime", "")[:10], version=_medens_version(data))
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


def tables(rows: list[dict], meta: dict) -> str:
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
    lines.append(f"_Measured {meta['date']}, medens {meta['version'] or 'dev'}, torch {rows[0]['torch'] if rows else ''}._")
    return "\n".join(lines) + "\n"


def replace_block(readme: Path, block: str) -> None:
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme} has no {START} ... {END} block to replace")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{block}{END}{tail}"
    fd, tmp = tempfile.mkstemp(dir=readme.parent, prefix=".readme-")
    with os.fdopen(fd, "w") as f:
        f.write(new)
    os.replace(tmp, readme)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", type=Path, help="pytest-benchmark JSON (pytest --benchmark --benchmark-json=FILE)")
    parser.add_argument("--readme", type=Path, help="README whose bench block is replaced by the tables")
    args = parser.parse_args(argv)
    rows, meta = load_rows(args.json)
    if not rows:
        raise SystemExit(f"{args.json} holds no medens op benchmarks")
    block = tables(rows, meta)
    if args.readme:
        replace_block(args.readme, block)
    else:
        print(block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
