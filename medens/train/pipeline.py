"""``python -m medens.train pipeline``: the paper's method in one command, resumable.

Runs, each into its own folder under ``--out``:

1. ``pretrain/``: entropy-guided masked-autoencoder pre-training on the training split;
2. ``finetune-imagenet/``: fine-tuning from ImageNet weights (from random weights, labelled so everywhere, when
   ImageNet weights cannot be had and ``--require-imagenet`` is off);
3. ``finetune-mae/``: fine-tuning from the pre-trained encoder;
4. ``ensemble/``: the two members averaged and compared (:mod:`medens.train.ensemble`).

With ``--baseline ARCH`` (any timm architecture, e.g. ``resnet18``) a plain model is also fine-tuned from random
weights with the members' options into ``finetune-baseline/``, and the ensemble's report scores it beside the
ensemble (never combined): does the method beat a plain model on these images?

Every stage uses the split that pre-training wrote (``pretrain/splits.json``), so the members are trained, selected
and tested on the same images. A stage already complete in ``--out`` is skipped, one with a checkpoint resumes, so a
killed pipeline continues where it stopped when the same command is run again. A complete stage whose recorded
options differ from the requested ones is refused rather than silently reused.

Without arguments (``python -m medens.train``), the pipeline runs the demo: the embedded synthetic dataset, the
``small`` preset, into ``runs/demo``.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medens.cli import command, command_help, config_file_argument
from medens.data.options import SHARED_DATA_KEYS, add_data_flags
from medens.errors import UsageError
from medens.evaluate.ensemble import EnsembleOptions
from medens.evaluate.report import comparison_table, probe_table, skipped_note
from medens.io import text_table
from medens.layout import (
    CACHE_DIR,
    ENSEMBLE_DIR,
    METRICS_NAME,
    REPORT_NAME,
    is_finetune_complete,
    is_pretrain_complete,
)
from medens.models.arch import NORM_CHOICES
from medens.train.ensemble import add_combination_arguments, add_map_arguments
from medens.train.presets import (
    DEMO_DATASET,
    DEMO_DATASET_OPTIONS,
    DEMO_OUT,
    PRESET_NAMES,
    default_preset,
)
from medens.train.stages import (
    DEFAULT_VARIANT,
    StageOutcome,
    Variant,
    run_stage,
    stage_configs,
    training_plan,
)

logger = logging.getLogger(__name__)

def run_pipeline(options: Mapping[str, Any]) -> tuple[dict[str, Any], list[StageOutcome]]:
    """Run (or resume) the four stages and return the ensemble's results.

    Args:
        options: ``out``, ``preset``, ``dataset`` and, optionally, every other flag of :func:`add_parser` under
            its ``dest`` name (``data_root``, ``arch``, ``pretrain_epochs``, ``method``, ``calibrate``, ...).

    Returns:
        ``(content of ensemble/metrics.json, outcome of each stage)``.

    Raises:
        ValueError: bad options, or a finished stage recorded with other options.
        medens.data.DatasetError: the dataset cannot be opened.
        medens.engine.TrainingInterrupted: a stage was stopped (its checkpoint is saved; rerun to resume).
    """
    results, outcomes = run_variants(options, [DEFAULT_VARIANT])
    return results[DEFAULT_VARIANT.name], outcomes


def run_variants(options: Mapping[str, Any], variants: Sequence[Variant]
                 ) -> tuple[dict[str, dict[str, Any]], list[StageOutcome]]:
    """The pipeline for several pre-training variants on one split, the ImageNet member trained once.

    Each variant pre-trains, fine-tunes its MAE member and ensembles it with the shared ImageNet member, in the
    folders :class:`Variant` names. Stages already complete are skipped, as in :func:`run_pipeline`.

    Returns:
        ``({variant name: content of its ensemble metrics.json}, outcome of each stage)``.
    """
    from medens.engine.estimate import planned_stages

    unit = options.get("fold") is not None
    label = f"this study unit (fold {options['fold']}, seed {options.get('seed')})" if unit else "the whole pipeline"
    with planned_stages(training_plan(options, variants), label):
        return _run_variants(options, variants)


def _run_variants(options: Mapping[str, Any], variants: Sequence[Variant]
                  ) -> tuple[dict[str, dict[str, Any]], list[StageOutcome]]:
    from medens.train import ensemble as ensemble_stage
    from medens.train import finetune, pretrain
    from medens.train.stages import check_plan

    check_plan(options, variants)  # every stage's options, before the first stage starts
    ensemble_options = ensemble_stage.options_from_flags(options)
    ensemble_stage.check_mask_dir(ensemble_options, "--dataset-option mask_dir")
    members = stage_configs(options, variants[0])
    ensemble_stage.check_cam_layers(ensemble_options, (members["imagenet"]["arch"], members["mae"]["arch"]))
    outcomes: list[StageOutcome] = []
    results: dict[str, dict[str, Any]] = {}
    imagenet_done = False
    baseline_dir = None
    for variant in variants:
        configs = stage_configs(options, variant)
        tag = f" [{variant.name}]" if variant.pretrain else ""
        outcomes.append(run_stage("pretrain" + tag, configs["pretrain"], pretrain.run_pretrain,
                                   is_pretrain_complete))
        if not imagenet_done:
            outcomes.append(run_stage("finetune-imagenet", configs["imagenet"], finetune.run_finetune,
                                       is_finetune_complete))
            if "baseline" in configs:
                outcomes.append(run_stage("finetune-baseline", configs["baseline"], finetune.run_finetune,
                                           is_finetune_complete))
                baseline_dir = configs["baseline"]["out"]
            imagenet_done = True
        outcomes.append(run_stage("finetune-mae" + tag, configs["mae"], finetune.run_finetune,
                                   is_finetune_complete))
        members = [configs["imagenet"]["out"], configs["mae"]["out"]]
        ens_dir = Path(options["out"]) / variant.folder(ENSEMBLE_DIR)
        found = _finished_ensemble(ens_dir, members, ensemble_options, baseline_dir)
        if found is not None:
            outcomes.append(StageOutcome("ensemble" + tag, "skipped", 0.0, ens_dir))
        else:
            start = time.perf_counter()
            found = ensemble_stage.run_ensemble(members, ens_dir, ensemble_options,
                                                device=str(options.get("device") or "auto"), baseline=baseline_dir)
            outcomes.append(StageOutcome("ensemble" + tag, "ran", time.perf_counter() - start, ens_dir))
        results[variant.name] = found
    return results, outcomes


def _finished_ensemble(
    ens_dir: Path, members: list[str], options: EnsembleOptions, baseline: str | None = None,
) -> dict[str, Any] | None:
    """The recorded results when ``ens_dir`` already evaluated these members (and baseline) the same way."""
    import json

    from medens.train.ensemble import is_complete

    if not is_complete(ens_dir, members, baseline):
        return None
    results = json.loads((ens_dir / METRICS_NAME).read_text(encoding="utf-8"))
    return results if options.recorded_in(results) else None


def _format_seconds(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def stage_table(outcomes: list[StageOutcome]) -> str:
    """The stages as a text table: name, what happened, time, folder."""
    rows = [
        [o.name, o.status, "-" if o.status == "skipped" else _format_seconds(o.seconds), str(o.folder)]
        for o in outcomes
    ]
    return text_table(["Stage", "Status", "Time", "Folder"], rows, align="llrl")


def _key_values(items: list[str] | None, option: str) -> dict[str, Any]:
    from medens.engine import parse_overrides

    try:
        return parse_overrides(items or [], option=option)
    except ValueError as err:
        raise UsageError(str(err)) from None


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``pipeline`` subcommand and return its parser."""
    p = subparsers.add_parser(
        "pipeline",
        help=command_help("pipeline"),
        description=__doc__.split("\n\n")[0].strip("`"),
        epilog=f"Without arguments: the demo ({DEMO_DATASET} images with "
        + ", ".join(f"{k}={v}" for k, v in DEMO_DATASET_OPTIONS.items())
        + f", the small preset, into {DEMO_OUT}). The stages share one decode cache, <out>/{CACHE_DIR}, for a real "
        "dataset unless --cache-dir names another.",
    )
    add_pipeline_arguments(p)
    p.set_defaults(func=main)
    return p


def add_pipeline_arguments(p: argparse.ArgumentParser, *, with_seed: bool = True) -> None:
    """The pipeline's flags (data, run, ensemble groups), shared with ``study``; ``with_seed`` adds ``--seed``."""
    data = p.add_argument_group("data")
    # The stages' own defaults apply to a flag not given (None here); --dataset names the demo's data.
    add_data_flags(data, values={**dict.fromkeys(SHARED_DATA_KEYS), "dataset": DEMO_DATASET})
    run = p.add_argument_group("run")
    run.add_argument(
        "--out", metavar="DIR", help=f"output folder (default for the synthetic demo: {DEMO_OUT})"
    )
    run.add_argument(
        "--preset",
        choices=PRESET_NAMES,
        help="paper: ConvNeXt-Tiny, 224 px, paper-scale schedules; small: fits a CPU; smoke: every stage in "
        "seconds, for trying commands, never for results (default: small for synthetic, paper otherwise)",
    )
    run.add_argument("--arch", help="timm ConvNeXt for every stage (overrides the preset)")
    run.add_argument(
        "--norm",
        choices=NORM_CHOICES,
        help="ConvNeXt normalisation for every stage: layer (LayerNorm, as published) or batch (BatchNorm); the "
        "ImageNet member keeps LayerNorm when its weights load (overrides the preset)",
    )
    run.add_argument(
        "--image-size", type=int, metavar="N", help="input side in pixels (overrides the preset)"
    )
    run.add_argument(
        "--pretrain-epochs", type=int, metavar="N", help="pre-training epochs (overrides the preset)"
    )
    run.add_argument(
        "--finetune-epochs", type=int, metavar="N", help="fine-tuning epochs (overrides the preset)"
    )
    run.add_argument("--batch-size", type=int, metavar="N", help="batch size of every stage")
    run.add_argument("--num-workers", type=int, metavar="N", help="data-loading workers")
    run.add_argument("--device", help="auto, cpu or cuda")
    if with_seed:
        run.add_argument("--seed", type=int, help="random seed of every stage")
    run.add_argument(
        "--pretrained-file", metavar="FILE", help="local ImageNet weights for the ImageNet member"
    )
    run.add_argument(
        "--require-imagenet",
        action="store_true",
        help="fail when ImageNet weights cannot be had, instead of training that member from "
        "random weights (labelled 'Random-init (ImageNet weights unavailable)')",
    )
    run.add_argument(
        "--baseline", metavar="ARCH", help="also fine-tune this timm architecture from random weights (e.g. "
        "resnet18) with the members' options, and score it beside the ensemble, not in it"
    )
    run.add_argument("--set-pretrain", action="append", metavar="KEY=VALUE", help="any pre-training option")
    run.add_argument("--set-finetune", action="append", metavar="KEY=VALUE", help="any fine-tuning option")
    add_combination_arguments(p.add_argument_group("ensemble"))
    add_map_arguments(p)
    config_file_argument(p)


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The options of :func:`run_pipeline` from parsed flags, with the demo's defaults filled in.

    Raises:
        UsageError: when a real dataset is given without ``--out``, a ``KEY=VALUE`` item is ill-formed, or
            ``--baseline`` names no timm architecture.
    """
    options = {k: v for k, v in vars(args).items() if k not in ("func", "command", "config")}
    if not options.get("out"):
        if args.dataset != DEMO_DATASET:
            raise UsageError(f"out: expected --out DIR for dataset {args.dataset!r}, received none")
        options["out"] = DEMO_OUT
    if options.get("baseline"):
        from medens.models import check_timm_arch

        try:
            check_timm_arch(options["baseline"], argument="baseline")
        except ValueError as err:
            raise UsageError(str(err)) from None
    options["preset"] = options.get("preset") or default_preset(args.dataset)
    options["dataset_options"] = _key_values(args.dataset_options, "--dataset-option")
    options["set_pretrain"] = _key_values(args.set_pretrain, "--set-pretrain")
    options["set_finetune"] = _key_values(args.set_finetune, "--set-finetune")
    return options


@command("pipeline", stopped_hint="Run the same pipeline command again to resume.")
def main(args: argparse.Namespace) -> int:
    """Run the pipeline, print the stages and the comparison table.

    Returns 0; 2 for a usage error, 1 for another error (one message, no traceback); 130/143 if stopped.
    """
    options = options_from_args(args)
    logger.info("pipeline: dataset %s, preset %s, into %s", options["dataset"], options["preset"], options["out"])
    results, outcomes = run_pipeline(options)
    print(stage_table(outcomes))
    print()
    print(comparison_table(results))
    probes = probe_table(results)
    if probes:
        print("\npre-training probe (balanced accuracy, cross-validated on the training and validation images):")
        print(probes)
    note = skipped_note(results)
    if note:
        print("\n" + note)
    print(f"\nreport: {Path(options['out']) / ENSEMBLE_DIR / REPORT_NAME}")
    return 0
