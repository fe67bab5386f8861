"""Evaluate an ensemble against its members on the same test images, and write the results.

The steps, in order: check and align the members; optionally fit a temperature per member on the validation split
and rescale its probabilities; optionally fit combination weights on the validation split; combine; score every
model with the same metrics, paired bootstrap intervals and McNemar's test of the ensemble against each member;
write ``metrics.json``, ``predictions.csv``, ``report.md`` and the plots.

An optional **baseline** (a plain model fine-tuned on the same split, e.g. a ResNet-18 from random weights) is
scored and compared with the ensemble in the same way, but never combined: it answers whether the method beats a
plain model on the same images.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from medens.evaluate.bootstrap import (
    DEFAULT_CONFIDENCE,
    DEFAULT_N_BOOT,
    bootstrap_samples,
    confidence_intervals,
    difference_intervals,
)
from medens.evaluate.combine import ENSEMBLE_METHODS, fit_rule
from medens.evaluate.html import write_html_report
from medens.evaluate.mcnemar import mcnemar
from medens.evaluate.members import Member, align_members, encoder_probe, init_kind, prediction_fingerprint
from medens.evaluate.metrics import DEFAULT_ECE_BINS, SUMMARY_METRICS, classification_report, predict
from medens.evaluate.plots import plot_confusion_matrices, plot_reliability, plot_roc_curves
from medens.evaluate.predictions import write_prediction_table
from medens.evaluate.report import BASELINE_NAME, ENSEMBLE_NAME, render_report
from medens.io import atomic_write_text, json_text, plain
from medens.layout import ENSEMBLE_PLOT_NAMES, HTML_REPORT_NAME, METRICS_NAME, PREDICTIONS_NAME, REPORT_NAME

logger = logging.getLogger(__name__)



def _treatments(calibrate: bool, tta: bool) -> list[str]:
    """What was done to every model's probabilities, as shown in its table label."""
    return (["T-scaled"] if calibrate else []) + (["TTA"] if tta else [])


def ensemble_label(method: str, calibrate: bool, tta: bool) -> str:
    """The ensemble's name in tables, e.g. ``Ensemble (mean)`` or ``Ensemble (weighted, T-scaled, TTA)``."""
    return f"Ensemble ({', '.join([method, *_treatments(calibrate, tta)])})"


def _member_label(member: Member, calibrate: bool, tta: bool) -> str:
    extras = _treatments(calibrate, tta)
    return f"{member.label} ({', '.join(extras)})" if extras else member.label


def baseline_label(member: Member) -> str:
    """The baseline's name in tables: its architecture and its member label, e.g.
    ``Baseline resnet18: Scratch (random init)``."""
    return f"Baseline {member.config.get('arch') or member.directory.name}: {member.label}"


def skipped_test_images(directory: str | os.PathLike[str]) -> list[str]:
    """The test images a member's fine-tuning left out as unreadable (``metrics.json`` ``skipped.test``).

    A member folder without that record (written before it existed, or by hand) has none.
    """
    try:
        record = json.loads((Path(directory) / METRICS_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    skipped = record.get("skipped") if isinstance(record, dict) else None
    items = skipped.get("test", []) if isinstance(skipped, dict) else []
    return [str(item["path"]) for item in items if isinstance(item, dict) and "path" in item]


def _skipped_test(members: Sequence[Member]) -> dict[str, str]:
    """Every member's unreadable test images (path to label), from its ``predictions.csv`` rows without
    probabilities, or for a folder written before those rows existed, from its ``metrics.json``."""
    skipped: dict[str, str] = {}
    for m in members:
        skipped.update(m.test.skipped or dict.fromkeys(skipped_test_images(m.directory), ""))
    return dict(sorted(skipped.items()))


def evaluate_ensemble(
    members: Sequence[Member],
    out_dir: str | os.PathLike[str],
    method: str = "mean",
    calibrate: bool = False,
    tta: bool = False,
    n_boot: int = DEFAULT_N_BOOT,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
    n_bins: int = DEFAULT_ECE_BINS,
    plots: bool = True,
    progress: bool = False,
    baseline: Member | None = None,
    explain: Callable[..., dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Combine members, score members and ensemble (and a baseline), and write every output to ``out_dir``.

    Args:
        members: loaded members (see :func:`medens.evaluate.members.load_member`), at least two.
        out_dir: folder for ``metrics.json``, ``predictions.csv``, ``report.md`` and the PNG plots.
        method: combination rule, one of :data:`~medens.evaluate.combine.ENSEMBLE_METHODS`.
        calibrate: temperature-scale each member on its validation predictions before combining.
        tta: record that the members' probabilities come from test-time augmentation (the caller computed them).
        n_boot: bootstrap resamples for the confidence intervals.
        confidence: two-sided coverage of the intervals.
        seed: seed of the bootstrap.
        n_bins: bins of the expected calibration error and reliability diagram.
        plots: write the PNG plots.
        progress: show a progress bar for the bootstrap.
        baseline: a loaded model on the same split scored beside the ensemble (never combined; its probabilities
            are used as they are, neither calibrated nor weighted). In ``metrics.json``: ``baseline`` (its folder)
            and ``ensemble_vs_baseline`` (the ensemble's differences from it).
        explain: called before the report is written, with keyword arguments ``members``, ``baseline`` (the
            aligned members), ``paths``, ``labels``, ``classes``, ``probs`` (model name -> test probabilities, as
            scored), ``weights``, ``labels_by_name`` and ``out_dir``; what it returns (e.g. ``gallery`` and
            ``lesion``, :mod:`medens.evaluate.gallery`) is added to ``metrics.json`` and shown in the report.

    Returns:
        The content of ``metrics.json``.

    Raises:
        ValueError: on an unknown method.
        IncompatibleMembersError: when the members cannot be ensembled, or validation predictions are missing
            for ``calibrate`` or ``method='weighted'``.
    """
    if method not in ENSEMBLE_METHODS:
        raise ValueError(f"method: expected one of {list(ENSEMBLE_METHODS)}, received {method!r}")
    needs_val = calibrate or method == "weighted"
    # The baseline is named before alignment, so it never changes the members' names (nor they its own).
    extra = [] if baseline is None else [replace(baseline, name=BASELINE_NAME, label=baseline_label(baseline))]
    aligned = align_members([*members, *extra], require_val=needs_val)
    members, baseline = aligned[: len(members)], (aligned[-1] if extra else None)
    if baseline is not None and baseline.name != BASELINE_NAME:
        raise ValueError(f"members: expected no member named {BASELINE_NAME!r} beside a baseline")
    first = members[0]
    classes = first.classes
    labels = first.test.labels
    skipped = _skipped_test(aligned)
    test = {m.name: m.test.probs for m in members}
    val = {m.name: m.val.probs for m in members} if needs_val else {}
    val_labels = first.val.labels if needs_val and first.val is not None else None

    rule = fit_rule(
        val or None, val_labels, method=method, calibrate=calibrate, members=[m.name for m in members]
    )
    test, ensemble = rule.apply(test)
    if rule.temperatures:
        logger.info("temperatures: %s", {k: round(v, 4) for k, v in rule.temperatures.items()})
    if rule.weights:
        logger.info("ensemble weights: %s", dict(zip(rule.members, np.round(rule.weights, 4), strict=True)))

    labels_by_name = {m.name: _member_label(m, calibrate, tta) for m in members}
    labels_by_name[ENSEMBLE_NAME] = ensemble_label(method, calibrate, tta)
    probs_by_name = {**test, ENSEMBLE_NAME: ensemble}
    if baseline is not None:
        labels_by_name[BASELINE_NAME] = baseline.label
        probs_by_name[BASELINE_NAME] = baseline.test.probs

    samples = bootstrap_samples(
        probs_by_name, labels, n_boot=n_boot, seed=seed, n_bins=n_bins, progress=progress
    )
    cis = confidence_intervals(samples, confidence)
    diffs = difference_intervals(samples, ENSEMBLE_NAME, confidence)
    ens_correct = predict(ensemble) == labels

    models: dict[str, Any] = {}
    for name, probs in probs_by_name.items():
        models[name] = {
            "label": labels_by_name[name],
            "metrics": classification_report(probs, labels, classes, n_bins),
            "ci": {m: list(cis[name][m]) for m in SUMMARY_METRICS},
        }

    def versus(name: str) -> dict[str, Any]:
        return {
            "difference": {
                k: models[ENSEMBLE_NAME]["metrics"][k] - models[name]["metrics"][k] for k in SUMMARY_METRICS
            },
            "difference_ci": {k: list(diffs[name][k]) for k in SUMMARY_METRICS},
            "mcnemar": mcnemar(ens_correct, predict(probs_by_name[name]) == labels).to_dict(),
        }

    comparisons = {m.name: versus(m.name) for m in members}
    results: dict[str, Any] = {
        "classes": classes,
        "n_test": int(labels.size),
        "n_val": int(val_labels.size) if val_labels is not None else None,
        "split_hash": first.split_hash,
        "dataset": first.config.get("dataset"),
        "method": method,
        "calibrate": calibrate,
        "tta": tta,
        "members": [
            {
                "name": m.name,
                "label": labels_by_name[m.name],
                "directory": str(m.directory),
                "init": m.config.get("init"),
                "init_kind": init_kind(m.config.get("init")),
                "arch": m.config.get("arch"),
                "temperature": rule.temperatures[m.name] if rule.temperatures else None,
                "weight": rule.weights[i] if rule.weights else None,
                "fingerprint": prediction_fingerprint(m.directory),
                "probe": encoder_probe(m.config),
            }
            for i, m in enumerate(members)
        ],
        "models": models,
        "ensemble_vs_members": comparisons,
        "baseline": None if baseline is None else {
            "name": BASELINE_NAME,
            "label": baseline.label,
            "directory": str(baseline.directory),
            "init": baseline.config.get("init"),
            "arch": baseline.config.get("arch"),
            "fingerprint": prediction_fingerprint(baseline.directory),
        },
        "ensemble_vs_baseline": None if baseline is None else versus(BASELINE_NAME),
        "bootstrap": {
            "n_boot": n_boot,
            "confidence": confidence,
            "seed": seed,
            "method": "percentile, paired",
        },
        "ece_bins": n_bins,
        # Test images a member's fine-tuning could not decode: in no metric; rows without probabilities.
        "skipped_test": list(skipped),
        "files": {"predictions": PREDICTIONS_NAME, "report": REPORT_NAME, "report_html": HTML_REPORT_NAME, **(ENSEMBLE_PLOT_NAMES if plots else {})},
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if explain is not None:
        results.update(explain(
            members=members, baseline=baseline, paths=first.test.paths, labels=labels, classes=classes,
            probs=probs_by_name, weights=list(rule.weights) if rule.weights else None,
            labels_by_name=labels_by_name, out_dir=out,
        ))
    results = plain(results, finite=True)

    write_prediction_table(
        out / PREDICTIONS_NAME,
        first.test.paths,
        first.test.label_names,
        classes,
        probs_by_name,
        skipped=skipped,
    )
    if plots:
        shown = {labels_by_name[n]: p for n, p in probs_by_name.items()}
        plot_confusion_matrices(shown, labels, classes, out / ENSEMBLE_PLOT_NAMES["confusion_matrices"])
        plot_roc_curves(shown, labels, classes, out / ENSEMBLE_PLOT_NAMES["roc_curves"])
        plot_reliability(shown, labels, out / ENSEMBLE_PLOT_NAMES["reliability"], n_bins)
    report = render_report(results)
    atomic_write_text(out / REPORT_NAME, report)
    write_html_report(report, out, "ensemble")
    # metrics.json last: its presence marks a complete evaluation.
    atomic_write_text(out / METRICS_NAME, json_text(results))
    return results
