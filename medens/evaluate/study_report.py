"""What a cross-validated study shows: every model's spread over runs, pooled out-of-fold metrics, the paper's
comparisons with paired tests, and two PNG plots (every run's metric per model; every run's differences).

Input is the list of runs that :mod:`medens.train.study` collects (one dict per fold, seed, variant and model).
The statistics are :mod:`medens.evaluate.paired`'s.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medens.io import atomic_write_text, markdown_table, text_table
from medens.layout import REPORT_NAME, STUDY_DIFFERENCES_PLOT, STUDY_RUNS_PLOT

from .metrics import UNIT_INTERVAL_METRICS, summary_metrics
from .paired import ALPHA, MIN_RUNS_BOUNDED, compare, gives_verdict, spread
from .plots import _save
from .tables import format_p, format_value


def _key(model: str, variant: str | None) -> str:
    """A model entry's name: ``imagenet``, ``mae``, ``ensemble``, or ``mae[masking=random]`` with variants."""
    return model if variant in (None, "default") else f"{model}[{variant}]"


def _entries(runs: Sequence[Mapping[str, Any]]) -> list[tuple[str, str | None]]:
    seen: list[tuple[str, str | None]] = []
    for run in runs:
        if (run["model"], run["variant"]) not in seen:
            seen.append((run["model"], run["variant"]))
    return seen


def _values(runs: Sequence[Mapping[str, Any]], model: str, variant: str | None, metric: str) -> dict[tuple, float]:
    out = {}
    for run in runs:
        if run["model"] == model and run["variant"] == variant:
            value = run.get(metric)
            out[(run["fold"], run["seed"])] = math.nan if value is None else float(value)
    return out


def _comparisons(variants: Sequence[str], baselines: Mapping[str, str]) -> list[tuple[str, tuple, tuple]]:
    """``(name, (model, variant), (model, variant))`` for each comparison the paper makes, ``a - b``."""
    pairs = []
    for v in variants:
        tag = "" if v == "default" else f" [{v}]"
        pairs += [
            (f"ensemble - ImageNet member{tag}", ("ensemble", v), ("imagenet", None)),
            (f"ensemble - MAE member{tag}", ("ensemble", v), ("mae", v)),
            (f"MAE member - ImageNet member{tag}", ("mae", v), ("imagenet", None)),
            # With --baseline ARCH: does the method beat a plain model? (skipped when no baseline was run)
            (f"ensemble - plain baseline{tag}", ("ensemble", v), ("baseline", None)),
            (f"MAE member - plain baseline{tag}", ("mae", v), ("baseline", None)),
        ]
        if v in baselines:
            b = baselines[v]
            pairs += [
                (f"MAE member: {v} - {b}", ("mae", v), ("mae", b)),
                (f"ensemble: {v} - {b}", ("ensemble", v), ("ensemble", b)),
            ]
    return pairs


def summarize_study(runs: Sequence[Mapping[str, Any]], pooled: Mapping[tuple, tuple], *, variants: Sequence[str],
                    baselines: Mapping[str, str], metrics: Sequence[str], test_train_ratio: float) -> dict[str, Any]:
    """The statistics of a study.

    Args:
        runs: One dict per fold, seed, variant and model, with ``metrics`` as keys.
        pooled: ``(seed, variant, model) -> (paths, labels, probs)`` of the out-of-fold test predictions.
        variants: Variant names, in order.
        baselines: Variant -> its random-masking variant, where one was run.
        metrics: Metric names to summarise and compare.
        test_train_ratio: Test over training images of one run (for the corrected t-test).

    Returns:
        ``{"models": [...], "comparisons": [...]}``: per model entry, each metric's spread over runs and its
        pooled out-of-fold value (mean over seeds); per comparison and metric, :class:`~.paired.Comparison`'s
        fields.
    """
    models = []
    for model, variant in _entries(runs):
        label = next(r["label"] for r in runs if r["model"] == model and r["variant"] == variant)
        entry: dict[str, Any] = {"key": _key(model, variant), "model": model, "variant": variant, "label": label,
                                 "metrics": {}, "pooled": {}}
        pooled_runs = [v for (s, var, m), v in pooled.items() if m == model and var == variant]
        for metric in metrics:
            bounds = (0.0, 1.0) if metric in UNIT_INTERVAL_METRICS else None
            entry["metrics"][metric] = spread(list(_values(runs, model, variant, metric).values()), bounds).as_dict()
            per_seed = [summary_metrics(probs, labels)[metric] for _, labels, probs in pooled_runs]
            entry["pooled"][metric] = float(np.nanmean(per_seed)) if per_seed else math.nan
        models.append(entry)
    comparisons = []
    available = set(_entries(runs))
    for name, a, b in _comparisons(variants, baselines):
        if a not in available or b not in available:
            continue
        for metric in metrics:
            va, vb = _values(runs, *a, metric), _values(runs, *b, metric)
            common = sorted(set(va) & set(vb))
            if len(common) < 2:
                continue
            result = compare(name, metric, [va[k] for k in common], [vb[k] for k in common], test_train_ratio)
            comparisons.append({**result.as_dict(), "a": _key(*a), "b": _key(*b),
                                "verdict": result.verdict()})
    return {"models": models, "comparisons": comparisons}


def summarize_probes(probes: Sequence[Mapping[str, Any]], variants: Sequence[str]) -> list[dict[str, Any]]:
    """Per variant and probe, the gain of the pre-trained encoder over random init across runs.

    Returns:
        One dict per variant with probes: ``variant``, ``mask_grid`` and, for ``linear`` and ``knn``, the gain's
        spread (:func:`~.paired.spread`), the encoder's and random init's mean, and ``wins`` (runs with a gain).
    """
    summary = []
    for variant in variants:
        rows = [p for p in probes if p["variant"] == variant]
        if not rows:
            continue
        entry: dict[str, Any] = {"variant": variant, "mask_grid": rows[0].get("mask_grid"), "runs": len(rows)}
        for probe in ("linear", "knn"):
            gains = [r[probe]["gain"] for r in rows]
            entry[probe] = {
                "gain": spread(gains).as_dict(),
                "encoder_mean": float(np.mean([r[probe]["encoder"] for r in rows])),
                "random_init_mean": float(np.mean([r[probe]["random_init"] for r in rows])),
                "wins": int(sum(g > 0 for g in gains)),
            }
        summary.append(entry)
    return summary


def compare_probes(probes: Sequence[Mapping[str, Any]], baselines: Mapping[str, str],
                   test_train_ratio: float) -> list[dict[str, Any]]:
    """The encoders' probes of each variant against its baseline variant (entropy against random masking), paired
    by run: ``a - b`` of the encoder's balanced accuracy, as :func:`~.paired.compare` gives it, per probe."""
    by_run = {(p["fold"], p["seed"], p["variant"]): p for p in probes}
    comparisons = []
    for variant, base in baselines.items():
        common = sorted({(f, s) for f, s, v in by_run if v == variant} & {(f, s) for f, s, v in by_run if v == base})
        if len(common) < 2:
            continue
        for probe in ("linear", "knn"):
            a = [by_run[(*run, variant)][probe]["encoder"] for run in common]
            b = [by_run[(*run, base)][probe]["encoder"] for run in common]
            result = compare(f"{probe} probe of the encoder: {variant} - {base}", "balanced_accuracy", a, b,
                             test_train_ratio)
            comparisons.append({**result.as_dict(), "probe": probe, "verdict": result.verdict()})
    return comparisons


def _probe_section(record: Mapping[str, Any]) -> list[str]:
    summary = record.get("probe_summary") or []
    if not summary:
        return []
    rows = []
    for entry in summary:
        grid = "x".join(str(v) for v in entry.get("mask_grid") or []) or "n/a"
        row = [entry["variant"], grid, str(entry["runs"])]
        for probe in ("linear", "knn"):
            p = entry[probe]
            row.append(f"{format_value(p['encoder_mean'])} / {format_value(p['random_init_mean'])}; gain "
                       f"{_fmt_spread(p['gain'])} {_fmt_ci(p['gain']['ci'], signed=True)}, {p['wins']} of "
                       f"{entry['runs']} runs > 0")
        rows.append(row)
    return [
        "## Did pre-training learn anything?",
        "",
        "Balanced accuracy of a linear and a k-nearest-neighbour probe on each run's frozen encoder, cross-validated "
        "over that run's training and validation images, against the same network at random initialisation "
        "(`pretrain/probe.json` of each run): mean encoder / mean random init; the gain's mean ± sd and 95% CI over "
        "runs.",
        "",
        markdown_table(["variant", "masking grid", "runs", "linear probe", "k-NN probe"], rows),
        "",
        *_probe_comparisons(record.get("probe_comparisons") or []),
    ]


def _probe_comparisons(comparisons: Sequence[Mapping[str, Any]]) -> list[str]:
    if not comparisons:
        return []
    rows = [[c["name"], format_value(c["mean"], signed=True), _fmt_ci(c["ci"], signed=True, n=len(c["differences"])),
             f"{c['wins']}/{c['losses']}/{c['ties']}", format_p(c["wilcoxon_p"]), format_p(c["corrected_p"]),
             verdict_label(c, "**")] for c in comparisons]
    return ["The encoders of two variants, paired by run (balanced accuracy of the probe, `a - b`; tests as in the "
            "comparisons below):", "",
            markdown_table(["comparison (a - b)", "mean", "95% CI", "wins/losses/ties", "Wilcoxon p", "corrected t p",
                            "verdict"], rows), ""]


def _fmt_spread(s: Mapping[str, Any]) -> str:
    if s["n"] < 2:
        return format_value(s["mean"])
    return f"{format_value(s['mean'])} ± {format_value(s['std'])}"


def _no_ci(ci: Sequence[float]) -> bool:
    return any(c is None or math.isnan(c) for c in ci)


def _fmt_ci(ci: Sequence[float], signed: bool = False, n: int | None = None) -> str:
    if _no_ci(ci):
        return f"none from {n} runs" if n is not None and 1 < n < MIN_RUNS_BOUNDED else "n/a"
    return f"[{format_value(ci[0], signed=signed)}, {format_value(ci[1], signed=signed)}]"


def verdict_label(comparison: Mapping[str, Any], emphasis: str = "") -> str:
    """The verdict column: "too few runs" under :data:`MIN_RUNS_BOUNDED` paired runs, else within or beyond noise."""
    if not gives_verdict(len(comparison["differences"])):  # also for records written before the rule
        return "too few runs"
    if comparison["within_noise"]:
        return "within noise"
    return f"{emphasis}beyond noise{emphasis}"


def headline_table(record: Mapping[str, Any], metrics: Sequence[str] = ("accuracy", "balanced_accuracy")) -> str:
    """Plain-text tables for the terminal: each model's mean ± sd over runs, then the comparisons."""
    rows = [[m["key"], m["label"], *(_fmt_spread(m["metrics"][k]) for k in metrics)] for m in record["models"]]
    parts = [text_table(["model", "label", *(f"{k} (mean ± sd)" for k in metrics)], rows)]
    comp = [[c["name"], c["metric"], format_value(c["mean"], signed=True), f"{c['wins']}/{c['losses']}/{c['ties']}",
             format_p(c["corrected_p"]), verdict_label(c)]
            for c in record["comparisons"] if c["metric"] in metrics]
    if comp:
        parts.append(text_table(["comparison", "metric", "mean diff", "wins/losses/ties", "corrected p", "verdict"],
                                comp))
    return "\n\n".join(parts)


def _figure(n_panels: int, width: float, height: float) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * n_panels, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, list(np.atleast_1d(fig.subplots(1, n_panels)))


def plot_runs(record: Mapping[str, Any], metrics: Sequence[str], path: str | os.PathLike[str]) -> Path:
    """Every run's metric per model (dots), with the mean and its 95% interval (bar)."""
    runs, models = record["runs"], record["models"]
    fig, axes = _figure(len(metrics), 0.9 + 0.55 * len(models), 3.6)
    rng = np.random.default_rng(0)
    for ax, metric in zip(axes, metrics, strict=True):
        for x, entry in enumerate(models):
            values = list(_values(runs, entry["model"], entry["variant"], metric).values())
            ax.scatter(x + rng.uniform(-0.12, 0.12, len(values)), values, s=14, alpha=0.6, color="tab:blue")
            s = entry["metrics"][metric]
            if not _no_ci(s["ci"]):
                # A bounded metric's interval is asymmetric and need not be centred on the mean: a line and a dot.
                ax.plot([x + 0.25, x + 0.25], s["ci"], color="black", lw=1.2)
                ax.plot([x + 0.25], [s["mean"]], "o", color="black")
        ax.set_xticks(range(len(models)), [m["key"] for m in models], rotation=30, ha="right", fontsize=8)
        ax.set_title(metric)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{record.get('dataset')}: every run (fold x seed); black: mean and 95% interval")
    _save(fig, Path(path))
    return Path(path)


def plot_differences(record: Mapping[str, Any], metrics: Sequence[str], path: str | os.PathLike[str]) -> Path:
    """Per comparison, every run's difference (dots), the mean and its 95% interval, and zero."""
    names = list(dict.fromkeys(c["name"] for c in record["comparisons"]))
    fig, axes = _figure(len(metrics), 4.2, 0.9 + 0.45 * max(1, len(names)))
    for ax, metric in zip(axes, metrics, strict=True):
        for y, name in enumerate(names):
            found = [c for c in record["comparisons"] if c["name"] == name and c["metric"] == metric]
            if not found:
                continue
            c = found[0]
            ax.scatter(c["differences"], [y] * len(c["differences"]), s=14, alpha=0.6,
                       color="tab:red" if verdict_label(c) == "beyond noise" else "tab:gray")
            if not any(math.isnan(v) for v in c["ci"]):
                ax.plot(c["ci"], [y + 0.2, y + 0.2], color="black", lw=1.2)
                ax.plot([c["mean"]], [y + 0.2], "o", color="black")
        ax.axvline(0.0, color="black", lw=0.8)
        ax.set_yticks(range(len(names)), names if ax is axes[0] else [""] * len(names), fontsize=8)
        ax.set_title(f"{metric}: a - b per run")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"paired differences (red: beyond noise, corrected t-test p < {ALPHA})")
    _save(fig, Path(path))
    return Path(path)


def render_report(record: Mapping[str, Any], metrics: Sequence[str]) -> str:
    """``report.md``: set-up, per-model tables, comparisons with verdicts, and the plots."""
    n_runs = record["folds"] * len(record["seeds"])
    lines = [
        f"# Study: {record.get('dataset')}",
        "",
        f"{record['folds']}-fold cross-validation (duplicate-aware splits: {record.get('dedupe')}, split seed "
        f"{record.get('split_seed')}) x seeds {record['seeds']} = {n_runs} runs per model; preset "
        f"`{record.get('preset')}`; variants: {', '.join(v['name'] for v in record['variants'])}. Test images "
        f"per training image in one run: {record['test_train_ratio']:.3f}. Every image is in exactly one test "
        "fold per seed; the pooled column scores all out-of-fold predictions of a seed at once (mean over seeds).",
        "",
        "Intervals: every metric here lies in [0, 1] (a difference of two in [-1, 1]), so its 95% interval of the "
        "mean is a Student-t interval on the logit scale, mapped back: it stays inside the bounds and is "
        f"asymmetric near them. Fewer than {MIN_RUNS_BOUNDED} runs give no informative interval (over 2 runs a "
        "t-interval spans most of the range whatever the runs are), and none is shown.",
        "",
        "## Models",
        "",
    ]
    for metric in metrics:
        rows = [[m["key"], m["label"], str(m["metrics"][metric]["n"]), _fmt_spread(m["metrics"][metric]),
                 _fmt_ci(m["metrics"][metric]["ci"], n=m["metrics"][metric]["n"]), format_value(m["pooled"][metric])]
                for m in record["models"]]
        lines += [f"### {metric}", "", markdown_table(
            ["model", "label", "runs", "mean ± sd", "95% interval of the mean", "pooled out-of-fold"], rows), ""]
    lines += _probe_section(record)
    lines += [
        "## Comparisons",
        "",
        "Paired over runs (same fold and seed), `a - b`. Tests: Wilcoxon signed-rank, and the corrected "
        "resampled t-test of Nadeau and Bengio (2003), whose variance accounts for the training images the runs "
        f"share; a difference is *within noise* when the corrected p is {ALPHA} or more, and gets no verdict "
        f"(*too few runs*) from fewer than {MIN_RUNS_BOUNDED} paired runs.",
        "",
    ]
    rows = [[c["name"], c["metric"], format_value(c["mean"], signed=True),
             _fmt_ci(c["ci"], signed=True, n=len(c["differences"])),
             f"{c['wins']}/{c['losses']}/{c['ties']}", format_p(c["wilcoxon_p"]), format_p(c["corrected_p"]),
             verdict_label(c, "**")] for c in record["comparisons"]]
    lines += [markdown_table(["comparison (a - b)", "metric", "mean", "95% CI", "wins/losses/ties", "Wilcoxon p",
                              "corrected t p", "verdict"], rows), ""]
    for c in record["comparisons"]:
        if c["metric"] in ("accuracy", "balanced_accuracy"):
            lines.append(f"- {c['name']}, {c['metric']}: {c['verdict']}; {c['wins']} of {len(c['differences'])} "
                         "runs favour a.")
    lines += ["", f"![every run]({STUDY_RUNS_PLOT})", ""]
    if record["comparisons"]:  # the differences plot is drawn only when there are comparisons
        lines += [f"![differences]({STUDY_DIFFERENCES_PLOT})", ""]
    return "\n".join(lines)


def write_report(record: Mapping[str, Any], out: str | os.PathLike[str],
                 metrics: Sequence[str] = ("accuracy", "balanced_accuracy", "macro_f1", "auroc_macro")) -> Path:
    """Write ``report.md``, ``report.html`` and the two plots into ``out``; returns the markdown report's path.

    The report ends with a link to each run's gallery (:func:`medens.evaluate.gallery.run_gallery_lines`).
    """
    from medens.evaluate.gallery import run_gallery_lines
    from medens.evaluate.html import write_html_report

    out = Path(out)
    plot_runs(record, metrics, out / STUDY_RUNS_PLOT)
    if record["comparisons"]:
        plot_differences(record, metrics, out / STUDY_DIFFERENCES_PLOT)
    text = render_report(record, metrics).rstrip("\n") + "\n"
    runs = run_gallery_lines(out, record["folds"], record["seeds"])
    if runs:
        text += "\n" + "\n".join(runs).rstrip("\n") + "\n"
    path = atomic_write_text(out / REPORT_NAME, text)
    write_html_report(text, out, "study")
    return path
