"""The run-folder layout: every file a stage writes or reads, and every folder a pipeline or study makes.

One place names them; the stages, the ensemble, ``predict``, the pipeline and ``study`` all import from here.

A **pre-training run** (``pretrain --out DIR``)::

    DIR/encoder.safetensors   the encoder, for ``finetune --init mae:DIR/encoder.safetensors``
    DIR/reconstructions.png   image, entropy map, mask and reconstruction of a few images
    DIR/config.yaml, splits.json, log.csv, train.log, checkpoint.pt

A **fine-tuning run** (``finetune --out DIR``), also an ensemble **member**::

    DIR/model.safetensors     the best epoch's classifier
    DIR/predictions.csv       test split: path, label, one probability column per class
    DIR/val_predictions.csv   validation split, same columns
    DIR/metrics.json          test and validation metrics of the best epoch (written last: marks a finished run)
    DIR/config.yaml, splits.json, log.csv, train.log, checkpoint.pt

An **ensemble** (``ensemble --out DIR``): ``predictions.csv``, ``metrics.json``, ``report.md``, ``report.html``, the
PNG plots ``confusion_matrices.png``, ``roc_curves.png`` and ``reliability.png``, and the gallery's PNGs
``gallery-*.png``.

A **pipeline** (``pipeline --out ROOT``): ``ROOT/pretrain/``, ``ROOT/finetune-imagenet/``, ``ROOT/finetune-mae/``,
``ROOT/ensemble/`` and the shared decode cache ``ROOT/cache/`` (with ``--baseline ARCH`` also
``ROOT/finetune-baseline/``); a pre-training variant ``V`` of a study adds
``pretrain-V/``, ``finetune-mae-V/`` and ``ensemble-V/``.

A **study** (``study --out ROOT``): one pipeline per fold and seed in ``ROOT/fold-<k>/seed-<s>/``, and
``ROOT/study.json``, ``ROOT/report.md`` and ``ROOT/report.html`` with its plots ``study_runs.png`` and ``study_differences.png``. Each fold-seed
unit also holds ``unit.json`` (its state), ``unit.lock`` (held while it runs), and with local workers ``unit.pkl``
(the job) and ``unit.log`` (its output); SLURM jobs keep their scripts and output in ``ROOT/slurm-jobs/``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "CONFIG_NAME",
    "SPLITS_NAME",
    "LOG_NAME",
    "TRAIN_LOG_NAME",
    "CHECKPOINT_NAME",
    "ENCODER_NAME",
    "RECONSTRUCTIONS_NAME",
    "LOSS_CURVE_NAME",
    "PROBE_NAME",
    "MODEL_NAME",
    "PREDICTIONS_NAME",
    "VAL_PREDICTIONS_NAME",
    "METRICS_NAME",
    "REPORT_NAME",
    "HTML_REPORT_NAME",
    "GALLERY_PREFIX",
    "ENSEMBLE_PLOT_NAMES",
    "STUDY_RUNS_PLOT",
    "STUDY_DIFFERENCES_PLOT",
    "STUDY_NAME",
    "PRETRAIN_DIR",
    "IMAGENET_DIR",
    "MAE_DIR",
    "BASELINE_DIR",
    "ENSEMBLE_DIR",
    "CACHE_DIR",
    "PRETRAIN_OUTPUTS",
    "FINETUNE_OUTPUTS",
    "is_pretrain_complete",
    "is_finetune_complete",
    "study_run_folder",
    "UNIT_STATE_NAME",
    "UNIT_LOCK_NAME",
    "UNIT_LOG_NAME",
    "UNIT_JOB_NAME",
    "JOBS_DIR",
    "recorded_stage",
]

# Every stage
CONFIG_NAME = "config.yaml"
SPLITS_NAME = "splits.json"
LOG_NAME = "log.csv"
TRAIN_LOG_NAME = "train.log"
CHECKPOINT_NAME = "checkpoint.pt"

# Pre-training
ENCODER_NAME = "encoder.safetensors"
RECONSTRUCTIONS_NAME = "reconstructions.png"
LOSS_CURVE_NAME = "loss_curve.png"
#: The linear and k-NN probes of the encoder and of random init (medens.evaluate.probe).
PROBE_NAME = "probe.json"

# Fine-tuning (a member) and the ensemble
MODEL_NAME = "model.safetensors"
PREDICTIONS_NAME = "predictions.csv"
VAL_PREDICTIONS_NAME = "val_predictions.csv"
METRICS_NAME = "metrics.json"
REPORT_NAME = "report.md"
#: The self-contained page beside every ``report.md`` (ensemble, study).
HTML_REPORT_NAME = "report.html"
#: The ensemble's gallery of class-activation maps: PNGs beside its report, ``gallery-<n>-<error|correct>-<image>.png``.
GALLERY_PREFIX = "gallery-"
#: The ensemble's plots, by what they show.
ENSEMBLE_PLOT_NAMES = {
    "confusion_matrices": "confusion_matrices.png",
    "roc_curves": "roc_curves.png",
    "reliability": "reliability.png",
}

# Pipeline and study folders
PRETRAIN_DIR = "pretrain"
IMAGENET_DIR = "finetune-imagenet"
MAE_DIR = "finetune-mae"
#: The optional plain baseline member of a pipeline (``--baseline ARCH``), trained once per split.
BASELINE_DIR = "finetune-baseline"
ENSEMBLE_DIR = "ensemble"
CACHE_DIR = "cache"
STUDY_NAME = "study.json"
STUDY_RUNS_PLOT = "study_runs.png"
STUDY_DIFFERENCES_PLOT = "study_differences.png"
UNIT_STATE_NAME = "unit.json"
UNIT_LOCK_NAME = "unit.lock"
UNIT_LOG_NAME = "unit.log"
UNIT_JOB_NAME = "unit.pkl"
JOBS_DIR = "slurm-jobs"

#: What a finished pre-training run holds (``encoder.safetensors`` is written last).
PRETRAIN_OUTPUTS = (ENCODER_NAME, CONFIG_NAME, LOG_NAME)
#: What a finished fine-tuning run holds (``metrics.json`` is written last).
FINETUNE_OUTPUTS = (MODEL_NAME, PREDICTIONS_NAME, VAL_PREDICTIONS_NAME, CONFIG_NAME, SPLITS_NAME, METRICS_NAME)


def _holds_all(folder: str | os.PathLike, names: tuple[str, ...]) -> bool:
    out = Path(folder)
    return all((out / name).is_file() for name in names)


def is_pretrain_complete(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds a finished pre-training run."""
    return _holds_all(folder, PRETRAIN_OUTPUTS)


def is_finetune_complete(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds a finished fine-tuning run."""
    return _holds_all(folder, FINETUNE_OUTPUTS)


def study_run_folder(root: str | os.PathLike, fold: int, seed: int) -> Path:
    """Where a study runs the pipeline of one fold and seed."""
    return Path(root) / f"fold-{fold}" / f"seed-{seed}"


#: A key only that stage's ``config.yaml`` records, by stage.
_STAGE_MARKS = {"pretrain": "mask_ratio", "finetune": "init"}


def recorded_stage(folder: str | os.PathLike) -> str | None:
    """Which training stage (``pretrain`` or ``finetune``) the run in ``folder`` is, or None when unknown.

    Read from the files it holds (an encoder or a classifier), else from the keys of its ``config.yaml``.
    """
    out = Path(folder)
    if (out / ENCODER_NAME).is_file():
        return "pretrain"
    if (out / MODEL_NAME).is_file():
        return "finetune"
    try:
        import yaml

        recorded = yaml.safe_load((out / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    if isinstance(recorded, dict):
        for stage, key in _STAGE_MARKS.items():
            if key in recorded:
                return stage
    return None
