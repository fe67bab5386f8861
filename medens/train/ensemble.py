"""``python -m medens.train ensemble``: combine fine-tuned members and compare them with the ensemble.

Works on member folders (``config.yaml``, ``predictions.csv``, ``val_predictions.csv``); only ``--tta`` reloads the
members' models to predict again on flipped images. Writes ``metrics.json``, ``predictions.csv``, ``report.md`` and
PNG plots to ``--out`` and prints the comparison table. ``--baseline DIR`` scores one more fine-tuned model (a plain
one, e.g. ``finetune --arch resnet18 --init scratch``) beside the ensemble, on the same test images, without
combining it.

The report also shows where the models look (:mod:`medens.evaluate.gallery`): a gallery of the misclassified test
images (``--gallery N``: the N most confident errors, then the least-confident correct ones) with each member's and
the ensemble's class-activation maps, and, where the dataset ships lesion masks, each model's energy inside the
lesion and pointing-game hit rate. These reload the members' models and the test images; ``--no-maps`` leaves them
out, and a member folder without its model, or a dataset no longer where its config says, is noted in the report.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from medens.cli import command, command_help, config_file_argument
from medens.errors import UsageError
from medens.evaluate.bootstrap import DEFAULT_CONFIDENCE, DEFAULT_N_BOOT
from medens.evaluate.cam import CAM_METHODS, DEFAULT_CAM_METHOD, resolve_cam_layers
from medens.evaluate.combine import ENSEMBLE_METHODS
from medens.evaluate.ensemble import EnsembleOptions, evaluate_ensemble
from medens.evaluate.gallery import DEFAULT_GALLERY_CORRECT, DEFAULT_GALLERY_ERRORS
from medens.evaluate.members import Member, load_member, prediction_fingerprint
from medens.evaluate.metrics import DEFAULT_ECE_BINS
from medens.evaluate.report import comparison_table, skipped_note
from medens.io import remove_stale_temporaries
from medens.layout import HTML_REPORT_NAME, METRICS_NAME, REPORT_NAME
from medens.train.guards import non_negative_int, open_unit_interval, positive_int, refuse_output_over_inputs

logger = logging.getLogger(__name__)

def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``ensemble`` subcommand and return its parser."""
    p = subparsers.add_parser("ensemble", help=command_help("ensemble"), description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--members", nargs="+", required=True, metavar="DIR", help="fine-tuning output folders (2 or more)"
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="folder for metrics.json, predictions.csv, report.md"
    )
    p.add_argument(
        "--baseline", metavar="DIR", help="a fine-tuning output folder scored and compared beside the ensemble, "
        "not combined (e.g. a ResNet-18 from random weights)"
    )
    p.add_argument(
        "--confidence", type=open_unit_interval, default=DEFAULT_CONFIDENCE, help="two-sided CI coverage, in (0, 1)"
    )
    p.add_argument(
        "--ece-bins", type=positive_int, default=DEFAULT_ECE_BINS, help="bins of the calibration error"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--device", default="auto", help="device for --tta: auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--batch-size", type=positive_int, default=32, metavar="N", help="batch size for --tta inference")
    add_combination_arguments(p)
    add_map_arguments(p)
    p.add_argument("--mask-dir", metavar="DIR",
                   help="lesion masks released apart from the images, for the lesion scores (matched by image id "
                        "as --dataset-option mask_dir is at training; default: the masks the members' dataset "
                        "has). The members need not have been trained with them")
    config_file_argument(p)
    p.set_defaults(func=main)
    return p


def add_combination_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--method``, ``--calibrate``, ``--tta``, ``--bootstrap``: how the members are combined and scored (shared by
    ``ensemble``, ``pipeline`` and ``study``; read back by :func:`options_from_flags`)."""
    p.add_argument(
        "--method",
        choices=ENSEMBLE_METHODS,
        default=ENSEMBLE_METHODS[0],
        help="mean: the paper's plain average (default); weighted: weights fitted on the validation split; "
        "geometric: normalised geometric mean",
    )
    p.add_argument(
        "--calibrate", action="store_true", help="temperature-scale each member on the validation split"
    )
    p.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: re-run each member's model on flipped images",
    )
    p.add_argument(
        "--bootstrap", type=positive_int, default=DEFAULT_N_BOOT, metavar="N", help="bootstrap resamples for CIs"
    )


def add_map_arguments(p: argparse.ArgumentParser) -> None:
    """``--gallery``, ``--no-maps``, ``--cam-layer``, ``--cam-method``: the report's class-activation maps (shared
    by ``ensemble``, ``pipeline`` and ``study``; read back by :func:`options_from_flags`). ``ensemble`` adds
    ``--mask-dir``; a pipeline or study takes its lesion masks from ``--dataset-option mask_dir``."""
    g = p.add_argument_group("class-activation maps in the report")
    g.add_argument("--gallery", type=non_negative_int, default=DEFAULT_GALLERY_ERRORS, metavar="N",
                   help=f"most misclassified test images in the report's gallery, the most confident first "
                        f"(default {DEFAULT_GALLERY_ERRORS}; then the {DEFAULT_GALLERY_CORRECT} least-confident "
                        f"correct ones; 0: none)")
    g.add_argument("--no-maps", action="store_true",
                   help="no class-activation maps: no gallery and no lesion scores (the report is faster)")
    g.add_argument("--cam-layer", action="append", metavar="NAME",
                   help="module(s) the maps are taken at, e.g. stages.3 (default: each architecture's last three stages)")
    g.add_argument("--cam-method", choices=CAM_METHODS, default=DEFAULT_CAM_METHOD, help="map method")


def options_from_flags(flags: Mapping[str, Any]) -> EnsembleOptions:
    """The :class:`~medens.evaluate.ensemble.EnsembleOptions` of the flags that ``ensemble``, ``pipeline`` and
    ``study`` share (:func:`add_combination_arguments`, :func:`add_map_arguments`), from their ``dest`` names; a
    flag that is absent or ``None`` keeps the default. The lesion masks are ``ensemble``'s ``--mask-dir`` or the
    ``mask_dir`` of a pipeline's ``dataset_options`` (they play no part in training, so members trained before
    they were given are scored against them all the same)."""
    values = {
        "method": flags.get("method"),
        "calibrate": flags.get("calibrate"),
        "tta": flags.get("tta"),
        "n_boot": flags.get("bootstrap"),
        "maps": None if flags.get("no_maps") is None else not flags["no_maps"],
        "gallery": flags.get("gallery"),
        "cam_layer": flags.get("cam_layer"),
        "cam_method": flags.get("cam_method"),
        # ``ensemble --mask-dir``; a pipeline's or study's lesion masks are a data option
        "mask_dir": flags.get("mask_dir") or (flags.get("dataset_options") or {}).get("mask_dir"),
    }
    return EnsembleOptions(**{k: bool(v) if k in ("calibrate", "tta") else v for k, v in values.items()
                              if v is not None})


def check_cam_layers(options: EnsembleOptions, archs: Iterable[str]) -> None:
    """Refuse ``--cam-layer`` names that are no module of the members' architectures, before anything trains.

    The members' models are built without weights (module names do not depend on them); the maps are taken at
    the same names once the members exist (:func:`map_explainer`).

    Raises:
        medens.errors.UsageError: naming ``--cam-layer``, the names the architecture has and the names received.
    """
    if not options.maps or options.cam_layer is None:
        return
    import timm

    for arch in dict.fromkeys(archs):
        try:
            resolve_cam_layers(timm.create_model(arch, pretrained=False, num_classes=2), list(options.cam_layer),
                               argument="--cam-layer")
        except ValueError as err:
            raise UsageError(str(err)) from None


def check_mask_dir(options: EnsembleOptions, flag: str) -> None:
    """Refuse lesion masks asked for in a folder that does not exist, before anything runs."""
    if options.mask_dir is not None and not Path(options.mask_dir).is_dir():
        raise UsageError(f"{flag}: expected a folder of lesion masks, received {options.mask_dir!r} (not a folder)")


def map_explainer(options: EnsembleOptions, device: str = "auto"):
    """The ``explain`` step of :func:`medens.evaluate.ensemble.evaluate_ensemble`: reload the members' models and
    the test images, write the gallery (``options.gallery``) and score the maps (``options.cam_layer``,
    ``options.cam_method``) against lesion masks, with the bootstrap of ``options``.

    A member without its model, or a dataset that cannot be opened where the config says, gives no maps (a
    warning, and a note in the report) rather than a failed evaluation.
    """
    gallery = options.gallery
    cam_layer = None if options.cam_layer is None else list(options.cam_layer)

    def explain(*, members, baseline, paths, labels, classes, probs, weights, labels_by_name, out_dir):
        from medens.data import DatasetError, open_dataset
        from medens.data.errors import DatasetUsageError
        from medens.evaluate.gallery import explain_test_split
        from medens.inference import load_member_model

        config = members[0].config
        if options.mask_dir is not None:  # the lesion masks asked for replace those the members were trained with
            config = {**config, "dataset_options": {**(config.get("dataset_options") or {}),
                                                    "mask_dir": options.mask_dir}}
        try:
            dataset = open_dataset(config)
            models = [load_member_model(m, device) for m in members]
            base = load_member_model(baseline, device) if baseline is not None else None
        except (FileNotFoundError, DatasetError, ValueError, KeyError, OSError) as err:
            if options.mask_dir is not None and isinstance(err, DatasetUsageError):  # masks asked for, not taken
                raise UsageError(f"lesion masks {options.mask_dir!r}: {err}") from None
            logger.warning("no class-activation maps in the report: %s", err)
            return {"gallery": None, "lesion": None, "gallery_note": f"the models or images could not be loaded ({err})",
                    "mask_dir": options.mask_dir}
        for mm in [*models, *([base] if base is not None else [])]:
            try:
                resolve_cam_layers(mm.model, cam_layer if mm is not base else None, argument="--cam-layer")
            except ValueError as err:
                raise UsageError(str(err)) from None
        found = explain_test_split(
            models, dataset, paths, labels, classes, probs, out_dir, labels_by_name=labels_by_name,
            weights=weights, baseline_model=base, max_errors=gallery,
            max_correct=DEFAULT_GALLERY_CORRECT if gallery else 0, layers=cam_layer, method=options.cam_method,
            tta=options.tta,
            n_boot=options.n_boot, confidence=options.confidence, seed=options.seed,
        )
        return {**found, "mask_dir": options.mask_dir}

    return explain


def is_complete(
    out_dir: str | os.PathLike[str],
    members: list[str | os.PathLike[str]] | None = None,
    baseline: str | os.PathLike[str] | None = None,
) -> bool:
    """Whether ``out_dir`` holds a finished evaluation (of exactly ``members``, as they are now, when given).

    ``metrics.json`` is written last, so its presence means every other output is there. With ``members``, the
    evaluation must list the same folders in the same order, and the same ``baseline`` folder (or none), and
    their prediction files must be unchanged since (a model retrained after the evaluation makes it stale).
    """
    path = Path(out_dir) / METRICS_NAME
    if not path.is_file():
        return False
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    if members is None:
        return True
    recorded = list(results.get("members", []))
    if [Path(m["directory"]).resolve() for m in recorded] != [Path(m).resolve() for m in members]:
        return False
    base = results.get("baseline")
    if (base is None) != (baseline is None):
        return False
    if base is not None:
        if Path(base["directory"]).resolve() != Path(baseline).resolve():
            return False
        recorded.append(base)
    return all(m.get("fingerprint") == prediction_fingerprint(m["directory"]) for m in recorded)


def run_ensemble(
    member_dirs: list[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    options: EnsembleOptions | None = None,
    *,
    device: str = "auto",
    batch_size: int = 32,
    baseline: str | os.PathLike[str] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """Load the members, optionally re-predict with test-time augmentation, evaluate and write the outputs.

    Args:
        member_dirs: fine-tuning output folders.
        out_dir: output folder.
        options: how to evaluate (:class:`~medens.evaluate.ensemble.EnsembleOptions`; default: its defaults).
            With ``tta`` the members' stored probabilities are replaced by flip-averaged ones from their models;
            with ``maps`` the report gets the class-activation maps (the gallery and, with lesion masks, the
            lesion scores).
        device: inference device for ``tta`` and the maps.
        batch_size: inference batch size for ``tta``.
        baseline: a fine-tuning output folder scored beside the ensemble, never combined (with ``tta``, it is
            re-predicted on flipped images too).
        **fields: fields of :class:`~medens.evaluate.ensemble.EnsembleOptions` that override ``options``.

    Returns:
        The content of ``metrics.json``.

    Raises:
        OverwritesInputError: if ``out_dir`` is a member folder or lies inside one (checked before any work).
    """
    options = replace(options or EnsembleOptions(), **fields)
    inputs = [*member_dirs, *([baseline] if baseline is not None else [])]
    refuse_output_over_inputs("out", out_dir, folders=inputs)
    remove_stale_temporaries(out_dir)
    loaded: list[Member] = [load_member(d) for d in member_dirs]
    if baseline is not None:
        loaded.append(load_member(baseline, option="baseline"))
    if options.tta:
        from medens.inference import with_tta_predictions

        loaded = [with_tta_predictions(m, val=options.needs_val, device=device, batch_size=batch_size)
                  for m in loaded]
    return evaluate_ensemble(
        loaded[: len(member_dirs)],
        out_dir,
        options,
        baseline=loaded[-1] if baseline is not None else None,
        explain=map_explainer(options, device) if options.maps else None,
        progress=True,
    )


@command("ensemble")
def main(args: argparse.Namespace) -> int:
    """Run the subcommand; print the comparison table.

    Returns 0; 2 for a usage error (a missing member folder, ``--out`` over a member, a bad value); 1 when the
    members cannot be combined or a member's file is unreadable or wrong.
    """
    options = replace(options_from_flags(vars(args)), confidence=args.confidence, n_bins=args.ece_bins,
                      seed=args.seed, plots=not args.no_plots)
    check_mask_dir(options, "--mask-dir")
    if options.mask_dir is not None and not options.maps:
        raise UsageError("--mask-dir: lesion masks are for the maps' lesion scores; drop --no-maps or --mask-dir")
    results = run_ensemble(args.members, args.out, options, device=args.device, batch_size=args.batch_size,
                           baseline=args.baseline)
    print(comparison_table(results))
    note = skipped_note(results)
    if note:
        print("\n" + note)
    print(f"\nreport: {Path(args.out) / REPORT_NAME} (in a browser: {Path(args.out) / HTML_REPORT_NAME})")
    return 0
