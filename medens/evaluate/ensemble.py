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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
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
from medens.evaluate.cam import CAM_METHODS, DEFAULT_CAM_METHOD
from medens.evaluate.combine import ENSEMBLE_METHODS, fit_rule
from medens.evaluate.gallery import DEFAULT_GALLERY_ERRORS
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



@dataclass(frozen=True)
class EnsembleOptions:
    """How an ensemble is evaluated and what its report holds: every option of ``medens ensemble`` but the
    folders and the inference device (``pipeline`` and ``study`` pass theirs through the same object).

    Attributes:
        method: combination rule, one of :data:`~medens.evaluate.combine.ENSEMBLE_METHODS`.
        calibrate: temperature-scale each member on its validation predictions before combining.
        tta: the members' probabilities come from test-time augmentation (the caller computed them).
        n_boot: bootstrap resamples for the confidence intervals.
        confidence: two-sided coverage of the intervals, in (0, 1).
        seed: seed of the bootstrap.
        n_bins: bins of the expected calibration error and reliability diagram.
        plots: write the PNG plots.
        maps: add the class-activation maps (gallery and lesion scores) through the ``explain`` step.
        gallery: most misclassified test images in the gallery (0: none; the lesion scores still).
        cam_layer: module names the maps are taken at (``None``: each architecture's default).
        cam_method: the map method, one of :data:`~medens.evaluate.cam.CAM_METHODS`.
        mask_dir: a folder of lesion masks for the lesion scores, matched to the test images by id
            (:func:`medens.data.masks.match_mask_dir`); ``None``: the masks the members' dataset has, if any. Masks
            play no part in training, so they can be given to an ensemble of members trained without them.

    Raises:
        ValueError: naming the field, on an unknown ``method`` or ``cam_method`` or a negative ``gallery``.
        TypeError: a ``mask_dir`` that is not a path.
    """

    method: str = ENSEMBLE_METHODS[0]
    calibrate: bool = False
    tta: bool = False
    n_boot: int = DEFAULT_N_BOOT
    confidence: float = DEFAULT_CONFIDENCE
    seed: int = 0
    n_bins: int = DEFAULT_ECE_BINS
    plots: bool = True
    maps: bool = True
    gallery: int = DEFAULT_GALLERY_ERRORS
    cam_layer: tuple[str, ...] | None = field(default=None)
    cam_method: str = DEFAULT_CAM_METHOD
    mask_dir: str | None = None

    def __post_init__(self) -> None:
        if self.method not in ENSEMBLE_METHODS:
            raise ValueError(f"method: expected one of {list(ENSEMBLE_METHODS)}, received {self.method!r}")
        if self.cam_method not in CAM_METHODS:
            raise ValueError(f"cam_method: expected one of {list(CAM_METHODS)}, received {self.cam_method!r}")
        if isinstance(self.gallery, bool) or not isinstance(self.gallery, int) or self.gallery < 0:
            raise ValueError(f"gallery: expected an integer >= 0, received {self.gallery!r}")
        if isinstance(self.cam_layer, str):
            object.__setattr__(self, "cam_layer", (self.cam_layer,))
        elif self.cam_layer is not None:
            object.__setattr__(self, "cam_layer", tuple(self.cam_layer) or None)
        if self.mask_dir is not None:
            if not isinstance(self.mask_dir, (str, os.PathLike)):
                raise TypeError(f"mask_dir: expected a folder path, received {self.mask_dir!r}")
            # One spelling of one folder (``~/m``, ``m/``, ``./m``), so that a finished ensemble is recognised.
            object.__setattr__(self, "mask_dir", os.path.abspath(os.path.expanduser(os.fspath(self.mask_dir))))

    @property
    def needs_val(self) -> bool:
        """Whether the members' validation predictions are needed (to calibrate or to fit weights)."""
        return self.calibrate or self.method == "weighted"

    def recorded_in(self, results: Mapping[str, Any]) -> bool:
        """Whether ``results`` (an ensemble's ``metrics.json``) was evaluated with these options: the same method,
        calibration, TTA and bootstrap resamples, and the same maps (none, or the same gallery size, method,
        layers and lesion masks; maps asked for that could not be made count as made)."""
        same = (results.get("method"), results.get("calibrate"), results.get("tta"),
                (results.get("bootstrap") or {}).get("n_boot"))
        if same != (self.method, self.calibrate, self.tta, self.n_boot):
            return False
        if not self.maps or "gallery" not in results:
            return not self.maps and "gallery" not in results
        gallery = results["gallery"]
        if gallery is None:
            return True
        layers = None if self.cam_layer is None else list(self.cam_layer)
        return (gallery.get("max_errors"), gallery.get("method"), gallery.get("layers"), results.get("mask_dir")) == (
            self.gallery, self.cam_method, layers, self.mask_dir)
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


@dataclass
class EnsembleScores:
    """An evaluated ensemble, before anything is written.

    Attributes:
        results: the content of ``metrics.json`` (plain values, NaN as ``None`` once written).
        members: the aligned members; ``baseline``: the aligned baseline or ``None``.
        probs: model name -> ``(N, K)`` test probabilities as scored (members after calibration, the ensemble,
            the baseline).
        labels_by_name: model name -> its label in tables.
        weights: the fitted combination weights (``None`` unless ``method='weighted'``).
        skipped: the unreadable test images, path -> label.
    """

    results: dict[str, Any]
    members: list[Member]
    baseline: Member | None
    probs: dict[str, np.ndarray]
    labels_by_name: dict[str, str]
    weights: list[float] | None
    skipped: dict[str, str]


def evaluate_ensemble(
    members: Sequence[Member],
    out_dir: str | os.PathLike[str],
    options: EnsembleOptions | None = None,
    *,
    baseline: Member | None = None,
    explain: Callable[..., dict[str, Any]] | None = None,
    progress: bool = False,
    **fields: Any,
) -> dict[str, Any]:
    """Combine members, score members and ensemble (and a baseline), and write every output to ``out_dir``.

    Args:
        members: loaded members (see :func:`medens.evaluate.members.load_member`), at least two.
        out_dir: folder for ``metrics.json``, ``predictions.csv``, ``report.md`` and the PNG plots.
        options: how to evaluate (default :class:`EnsembleOptions`); ``options.maps`` is the caller's to honour by
            passing ``explain`` or not.
        baseline: a loaded model on the same split scored beside the ensemble (never combined; its probabilities
            are used as they are, neither calibrated nor weighted). In ``metrics.json``: ``baseline`` (its folder)
            and ``ensemble_vs_baseline`` (the ensemble's differences from it).
        explain: called before the report is written, with keyword arguments ``members``, ``baseline`` (the
            aligned members), ``paths``, ``labels``, ``classes``, ``probs`` (model name -> test probabilities, as
            scored), ``weights``, ``labels_by_name`` and ``out_dir``; what it returns (e.g. ``gallery`` and
            ``lesion``, :mod:`medens.evaluate.gallery`) is added to ``metrics.json`` and shown in the report.
        progress: show a progress bar for the bootstrap.
        **fields: fields of :class:`EnsembleOptions` that override ``options`` (e.g. ``n_boot=200``).

    Returns:
        The content of ``metrics.json``.

    Raises:
        ValueError: on an unknown method (see :class:`EnsembleOptions`).
        TypeError: a keyword that is no field of :class:`EnsembleOptions`.
        IncompatibleMembersError: when the members cannot be ensembled, or validation predictions are missing
            for ``calibrate`` or ``method='weighted'``.
    """
    options = replace(options or EnsembleOptions(), **fields)
    scores = score_ensemble(members, options, baseline=baseline, progress=progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if explain is not None:
        first = scores.members[0]
        scores.results.update(explain(
            members=scores.members, baseline=scores.baseline, paths=first.test.paths, labels=first.test.labels,
            classes=first.classes, probs=scores.probs, weights=scores.weights, labels_by_name=scores.labels_by_name,
            out_dir=out,
        ))
    return write_ensemble(scores, out, plots=options.plots)


def score_ensemble(
    members: Sequence[Member],
    options: EnsembleOptions,
    *,
    baseline: Member | None = None,
    progress: bool = False,
) -> EnsembleScores:
    """Align the members, fit the combination rule, combine, and score every model; writes nothing.

    Args:
        members: loaded members, at least two; ``baseline``: scored beside them, never combined.
        options: how to evaluate.
        progress: show a progress bar for the bootstrap.

    Raises:
        IncompatibleMembersError: as :func:`evaluate_ensemble`.
    """
    # The baseline is named before alignment, so it never changes the members' names (nor they its own).
    extra = [] if baseline is None else [replace(baseline, name=BASELINE_NAME, label=baseline_label(baseline))]
    aligned = align_members([*members, *extra], require_val=options.needs_val)
    members, baseline = aligned[: len(members)], (aligned[-1] if extra else None)
    if baseline is not None and baseline.name != BASELINE_NAME:
        raise ValueError(f"members: expected no member named {BASELINE_NAME!r} beside a baseline")
    first = members[0]
    labels = first.test.labels
    val = {m.name: m.val.probs for m in members} if options.needs_val else {}
    val_labels = first.val.labels if options.needs_val and first.val is not None else None

    rule = fit_rule(val or None, val_labels, method=options.method, calibrate=options.calibrate,
                    members=[m.name for m in members])
    test, ensemble = rule.apply({m.name: m.test.probs for m in members})
    if rule.temperatures:
        logger.info("temperatures: %s", {k: round(v, 4) for k, v in rule.temperatures.items()})
    if rule.weights:
        logger.info("ensemble weights: %s", dict(zip(rule.members, np.round(rule.weights, 4), strict=True)))

    calibrate, tta = options.calibrate, options.tta
    labels_by_name = {m.name: _member_label(m, calibrate, tta) for m in members}
    labels_by_name[ENSEMBLE_NAME] = ensemble_label(options.method, calibrate, tta)
    probs_by_name = {**test, ENSEMBLE_NAME: ensemble}
    if baseline is not None:
        labels_by_name[BASELINE_NAME] = baseline.label
        probs_by_name[BASELINE_NAME] = baseline.test.probs

    models = _score_models(probs_by_name, labels_by_name, labels, first.classes, options, progress)
    skipped = _skipped_test(aligned)
    results: dict[str, Any] = {
        "classes": first.classes,
        "n_test": int(labels.size),
        "n_val": int(val_labels.size) if val_labels is not None else None,
        "split_hash": first.split_hash,
        "dataset": first.config.get("dataset"),
        "method": options.method,
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
        "models": models["models"],
        "ensemble_vs_members": {m.name: models["versus"][m.name] for m in members},
        "baseline": None if baseline is None else {
            "name": BASELINE_NAME,
            "label": baseline.label,
            "directory": str(baseline.directory),
            "init": baseline.config.get("init"),
            "arch": baseline.config.get("arch"),
            "fingerprint": prediction_fingerprint(baseline.directory),
        },
        "ensemble_vs_baseline": None if baseline is None else models["versus"][BASELINE_NAME],
        "bootstrap": {
            "n_boot": options.n_boot,
            "confidence": options.confidence,
            "seed": options.seed,
            "method": "percentile, paired",
        },
        "ece_bins": options.n_bins,
        # Test images a member's fine-tuning could not decode: in no metric; rows without probabilities.
        "skipped_test": list(skipped),
        "files": {"predictions": PREDICTIONS_NAME, "report": REPORT_NAME, "report_html": HTML_REPORT_NAME,
                  **(ENSEMBLE_PLOT_NAMES if options.plots else {})},
    }
    return EnsembleScores(results, list(members), baseline, probs_by_name, labels_by_name,
                          list(rule.weights) if rule.weights else None, skipped)


def _score_models(
    probs_by_name: dict[str, np.ndarray], labels_by_name: dict[str, str], labels: np.ndarray, classes: list[str],
    options: EnsembleOptions, progress: bool,
) -> dict[str, dict[str, Any]]:
    """Every model's metrics with bootstrap intervals (``models``), and the ensemble against each other model:
    differences with paired intervals and McNemar's test (``versus``)."""
    samples = bootstrap_samples(
        probs_by_name, labels, n_boot=options.n_boot, seed=options.seed, n_bins=options.n_bins, progress=progress
    )
    cis = confidence_intervals(samples, options.confidence)
    diffs = difference_intervals(samples, ENSEMBLE_NAME, options.confidence)
    models = {
        name: {
            "label": labels_by_name[name],
            "metrics": classification_report(probs, labels, classes, options.n_bins),
            "ci": {m: list(cis[name][m]) for m in SUMMARY_METRICS},
        }
        for name, probs in probs_by_name.items()
    }
    ens_correct = predict(probs_by_name[ENSEMBLE_NAME]) == labels
    versus = {
        name: {
            "difference": {
                k: models[ENSEMBLE_NAME]["metrics"][k] - models[name]["metrics"][k] for k in SUMMARY_METRICS
            },
            "difference_ci": {k: list(diffs[name][k]) for k in SUMMARY_METRICS},
            "mcnemar": mcnemar(ens_correct, predict(probs_by_name[name]) == labels).to_dict(),
        }
        for name in probs_by_name
        if name != ENSEMBLE_NAME
    }
    return {"models": models, "versus": versus}


def write_ensemble(scores: EnsembleScores, out_dir: str | os.PathLike[str], *, plots: bool = True) -> dict[str, Any]:
    """Write ``predictions.csv``, the PNG plots (with ``plots``), ``report.md``, ``report.html`` and, last (its
    presence marks a complete evaluation), ``metrics.json`` into ``out_dir``.

    Returns:
        The content of ``metrics.json`` as written (NaN as ``None``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = plain(scores.results, finite=True)
    first = scores.members[0]
    labels, classes = first.test.labels, first.classes
    write_prediction_table(out / PREDICTIONS_NAME, first.test.paths, first.test.label_names, classes, scores.probs,
                           skipped=scores.skipped)
    if plots:
        shown = {scores.labels_by_name[n]: p for n, p in scores.probs.items()}
        plot_confusion_matrices(shown, labels, classes, out / ENSEMBLE_PLOT_NAMES["confusion_matrices"])
        plot_roc_curves(shown, labels, classes, out / ENSEMBLE_PLOT_NAMES["roc_curves"])
        plot_reliability(shown, labels, out / ENSEMBLE_PLOT_NAMES["reliability"], results["ece_bins"])
    report = render_report(results)
    atomic_write_text(out / REPORT_NAME, report)
    write_html_report(report, out, "ensemble")
    atomic_write_text(out / METRICS_NAME, json_text(results))
    return results
