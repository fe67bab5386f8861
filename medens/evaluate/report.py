"""The ensemble evaluation as tables and a markdown report, rendered from the content of ``metrics.json``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medens.evaluate.gallery import gallery_markdown
from medens.evaluate.tables import format_ci, format_p, format_value
from medens.io import markdown_table, text_table

#: Column name of the ensemble in ``predictions.csv`` and key in ``metrics.json``.
ENSEMBLE_NAME = "ensemble"
#: Column name of the baseline (a plain model scored beside the ensemble, never combined) and its ``models`` key.
BASELINE_NAME = "baseline"

#: Metric key to column title.
METRIC_TITLES: dict[str, str] = {
    "accuracy": "Acc",
    "balanced_accuracy": "BalAcc",
    "macro_precision": "Macro-P",
    "macro_recall": "Macro-R",
    "macro_f1": "Macro-F1",
    "auroc_macro": "AUROC",
    "ece": "ECE",
    "nll": "NLL",
}

#: Columns of the short comparison table printed by the command line.
HEADLINE_METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_f1", "auroc_macro")


def comparison_rows(results: dict[str, Any], metrics: Sequence[str] = HEADLINE_METRICS) -> list[list[str]]:
    """One row per model (members, then the ensemble): its label and ``value [low, high]`` per metric."""
    rows = []
    for model in results["models"].values():
        rows.append([model["label"]] + [format_ci(model["metrics"][m], model["ci"].get(m)) for m in metrics])
    return rows


def comparison_table(
    results: dict[str, Any], metrics: Sequence[str] = HEADLINE_METRICS, markdown: bool = False
) -> str:
    """Members and ensemble side by side, each metric with its bootstrap interval.

    Args:
        results: the content of ``metrics.json``.
        metrics: metric keys, in column order.
        markdown: GitHub markdown instead of aligned plain text.

    Returns:
        The table as text.
    """
    level = round(100 * results["bootstrap"]["confidence"])
    headers = ["Model"] + [f"{METRIC_TITLES[m]} [{level}% CI]" for m in metrics]
    rows = comparison_rows(results, metrics)
    return markdown_table(headers, rows) if markdown else text_table(headers, rows)


def probe_table(results: dict[str, Any], markdown: bool = False) -> str | None:
    """The pre-training probe of each MAE member's encoder beside random init, or None when no member has one.

    Balanced accuracy of the linear and the k-NN probe (:mod:`medens.evaluate.probe`): encoder, random init and
    the gain, with the masking grid the encoder was pre-trained on.
    """
    rows = []
    for member in results.get("members", []):
        probe = member.get("probe")
        if not probe:
            continue
        grid = "x".join(str(v) for v in probe.get("mask_grid", [])) or "n/a"
        row = [member["label"], grid]
        for name in ("linear", "knn"):
            enc = probe["encoder"][name]["balanced_accuracy"]
            rnd = probe["random_init"][name]["balanced_accuracy"]
            row.append(f"{format_value(enc)} / {format_value(rnd)} ({format_value(enc - rnd, signed=True)})")
        rows.append(row)
    if not rows:
        return None
    headers = ["Member", "Masking grid", "Linear probe: encoder / random init (gain)",
               "k-NN probe: encoder / random init (gain)"]
    return markdown_table(headers, rows) if markdown else text_table(headers, rows)


def _probe_lines(results: dict[str, Any]) -> list[str]:
    table = probe_table(results, markdown=True)
    if table is None:
        return []
    probe = next(m["probe"] for m in results["members"] if m.get("probe"))
    return [
        "",
        "## Did pre-training learn anything?",
        "",
        f"Balanced accuracy of a linear and a {probe.get('neighbours', 20)}-nearest-neighbour probe on the frozen "
        f"encoder's pooled features, {probe.get('folds', 5)}-fold cross-validated over the "
        f"{probe.get('num_images', 'n/a')} training and validation images (grouped by duplicate group; never the "
        "test images), against the same network at the random weights pre-training started from.",
        "",
        table,
    ]


def _setup_lines(results: dict[str, Any]) -> list[str]:
    members = results["members"]
    lines = [
        f"- Dataset: {results.get('dataset') or 'unrecorded'}; classes: {', '.join(results['classes'])}; "
        f"test images: {results['n_test']}; split hash: `{results.get('split_hash') or 'unrecorded'}`.",
        f"- Combination rule: `{results['method']}`"
        + (
            " (the paper's: the plain average of the members' probabilities)."
            if results["method"] == "mean"
            else "."
        ),
        f"- Temperature scaling on the validation split: {'yes' if results['calibrate'] else 'no'}; "
        f"test-time augmentation (flips): {'yes' if results['tta'] else 'no'}.",
    ]
    for m in members:
        extra = []
        if m.get("temperature") is not None:
            extra.append(f"temperature {m['temperature']:.3f}")
        if m.get("weight") is not None:
            extra.append(f"weight {m['weight']:.3f}")
        lines.append(
            f"- Member **{m['label']}**: `{m['directory']}` (init `{m.get('init')}`, arch `{m.get('arch')}`"
            + (f"; {'; '.join(extra)}" if extra else "")
            + ")."
        )
    base = results.get("baseline")
    if base:
        lines.append(f"- Baseline **{base['label']}**: `{base['directory']}` (init `{base.get('init')}`, arch "
                     f"`{base.get('arch')}`): scored beside the ensemble, not part of it.")
    boot = results["bootstrap"]
    lines.append(
        f"- Intervals: {round(100 * boot['confidence'])}% percentile bootstrap over test images, "
        f"{boot['n_boot']} paired resamples (seed {boot['seed']})."
    )
    return lines


def render_report(results: dict[str, Any]) -> str:
    """``report.md``: setup, comparison table, differences with McNemar's test, per-class rates and plots.

    Args:
        results: the content of ``metrics.json`` as written by
            :func:`medens.evaluate.ensemble.evaluate_ensemble`.

    Returns:
        Markdown text.
    """
    models = results["models"]
    ens_label = models[ENSEMBLE_NAME]["label"]
    level = round(100 * results["bootstrap"]["confidence"])
    out = [
        "# Ensemble evaluation",
        "",
        *_setup_lines(results),
        "",
        "## Members and ensemble on the test split" + (" (and the baseline, not in the ensemble)"
                                                        if results.get("baseline") else ""),
        "",
    ]
    out.append(comparison_table(results, tuple(METRIC_TITLES), markdown=True))
    out += [
        "",
        "Acc: accuracy. BalAcc: mean per-class sensitivity. Macro-P/R/F1: unweighted means over classes. "
        f"AUROC: one-vs-rest, macro. ECE: expected calibration error ({results['ece_bins']} equal-width bins of "
        "top-class confidence; lower is better). NLL: mean negative log-likelihood (nats; lower is better).",
        *_probe_lines(results),
        "",
        f"## {ens_label} minus each member" + (" and the baseline" if results.get("baseline") else ""),
        "",
    ]
    headers = ["Member"] + [f"Δ {METRIC_TITLES[m]} [{level}% CI]" for m in HEADLINE_METRICS]
    headers += ["McNemar b / c", "McNemar p"]
    rows = []
    versus = dict(results["ensemble_vs_members"])
    if results.get("ensemble_vs_baseline"):
        versus[results["baseline"]["name"]] = results["ensemble_vs_baseline"]
    for name, comp in versus.items():
        row = [models[name]["label"]]
        for m in HEADLINE_METRICS:
            d = comp["difference"][m]
            row.append(format_ci(d, comp["difference_ci"][m], signed=True) if d is not None else "n/a")
        mc = comp["mcnemar"]
        row += [f"{mc['b']} / {mc['c']}", format_p(mc["p_value"])]
        rows.append(row)
    out.append(markdown_table(headers, rows))
    methods = {comp["mcnemar"]["method"] for comp in versus.values()}
    out += [
        "",
        "b: test images the ensemble gets right and the member wrong; c: the reverse. "
        f"McNemar's test: {', '.join(sorted(methods))}, two-sided. "
        "Differences use the same bootstrap resamples for both models.",
        "",
        "## Per-class sensitivity / specificity",
        "",
    ]
    classes = results["classes"]
    headers = ["Model"] + [
        f"{c} (n={models[ENSEMBLE_NAME]['metrics']['per_class'][c]['support']})" for c in classes
    ]
    rows = []
    for model in models.values():
        pc = model["metrics"]["per_class"]
        rows.append(
            [model["label"]]
            + [
                f"{format_value(pc[c]['sensitivity'])} / {format_value(pc[c]['specificity'])}"
                for c in classes
            ]
        )
    out.append(markdown_table(headers, rows))
    skipped = results.get("skipped_test") or []
    if skipped:
        out += [
            "",
            "## Test images left out",
            "",
            f"{len(skipped)} test image(s) could not be decoded when the members were evaluated; they are in no "
            "metric above (in predictions.csv their probability cells are empty):",
            "",
            *[f"- `{path}`" for path in skipped],
        ]
    files = results.get("files", {})
    captions = {
        "confusion_matrices": "Confusion matrices",
        "roc_curves": "ROC curves (one-vs-rest)",
        "reliability": "Reliability diagrams",
    }
    shown = [(captions[k], files[k]) for k in captions if k in files]
    if shown:
        out += ["", "## Plots", ""]
        for caption, file in shown:
            out += [f"### {caption}", "", f"![{caption}]({file})", ""]
    looks = gallery_markdown(results)
    if looks:
        out += ["", *looks]
    return "\n".join(out).rstrip() + "\n"


def skipped_note(results: dict[str, Any], shown: int = 5) -> str | None:
    """One line for the terminal naming the test images no member could decode, or None when there are none."""
    skipped = results.get("skipped_test") or []
    if not skipped:
        return None
    more = " ..." if len(skipped) > shown else ""
    return (f"{len(skipped)} test image(s) could not be decoded: they are in no metric "
            f"(listed in the report, rows without probabilities in predictions.csv): {', '.join(skipped[:shown])}{more}")
