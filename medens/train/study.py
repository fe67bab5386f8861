"""``python -m medens.train study``: the whole method, cross-validated over folds and seeds, with ablations.

For every fold of a stratified, duplicate-grouped K-fold (every image in exactly one test fold; validation
carved, grouped, from the training folds) and every seed (which varies initialisation, masking noise and data
order, never the folds), the pipeline runs into ``<out>/fold-<k>/seed-<s>/``: pre-training, both members, the
ensemble. ``--vary KEY=V1,V2`` (repeatable) adds pre-training variants (the grid of all values); each variant
pre-trains, fine-tunes its MAE member and ensembles it, while the ImageNet member, which does not depend on the
variant, is trained once per fold and seed.

Everything a run finished is kept, so a killed study continues where it stopped when the same command is run
again. At the end it writes ``<out>/study.json`` (one entry per fold, seed, variant and model, with the summary
metrics) and ``<out>/report.md`` with PNG plots (:mod:`medens.evaluate.study_report`)::

    python -m medens.train study --dataset busi --data-root ~/data/BUSI --out runs/busi-cv --folds 5 --seeds 3 \\
        --preset small --vary masking=random,entropy
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medens.cli import command, command_help
from medens.errors import UsageError
from medens.layout import (
    ENSEMBLE_DIR,
    METRICS_NAME,
    PREDICTIONS_NAME,
    PRETRAIN_DIR,
    PROBE_NAME,
    REPORT_NAME,
    SPLITS_NAME,
    STUDY_NAME,
    study_run_folder,
)

logger = logging.getLogger(__name__)

STUDY_FORMAT = "medens.study/1"
#: The metrics every run reports and the report compares.
STUDY_METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_f1", "auroc_macro")
#: Model keys in ``study.json``, in the order of the pipeline's ensemble members (then the ensemble, then the
#: optional plain baseline of ``--baseline ARCH``).
MODELS: tuple[str, ...] = ("imagenet", "mae", "ensemble", "baseline")
#: Models trained once per fold and seed, whatever the pre-training variant: ``variant`` is None in their entries.
SHARED_MODELS: frozenset[str] = frozenset({"imagenet", "baseline"})
DEFAULT_FOLDS = 5
DEFAULT_SEEDS = 3


def parse_seeds(text: str) -> list[int]:
    """``--seeds``: a count N (seeds 0..N-1) or a comma-separated list (``0,1,7``).

    Raises:
        UsageError: not a positive count or a list of distinct integers.
    """
    try:
        values = [int(v) for v in str(text).split(",")]
    except ValueError:
        raise UsageError(f"seeds: expected a count (3) or a list (0,1,7), received {text!r}") from None
    if "," not in str(text):
        if values[0] < 1:
            raise UsageError(f"seeds: expected a count of at least 1, received {values[0]}")
        return list(range(values[0]))
    if len(set(values)) != len(values):
        raise UsageError(f"seeds: expected distinct seeds, received {text!r}")
    return values


def parse_variants(items: Sequence[str] | None) -> list[Any]:
    """The pre-training variants of ``--vary KEY=V1,V2`` items: every combination of the values, in order.

    Raises:
        UsageError: an item without ``=`` or values, a key repeated, a value repeated (``0.6,0.60``), or a key
            pre-training does not have.
    """
    from medens.engine import parse_overrides
    from medens.train.pretrain import default_config
    from medens.train.stages import DEFAULT_VARIANT, Variant

    if not items:
        return [DEFAULT_VARIANT]
    known = default_config()
    axes: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key or not values.strip():
            raise UsageError(f"vary: expected KEY=V1,V2,..., received {item!r}")
        if key not in known:
            raise UsageError(f"vary: {key!r} is not a pre-training option; expected one of {sorted(known)}")
        if key in axes:
            raise UsageError(f"vary: {key!r} is given twice; list all its values in one --vary")
        parsed = [parse_overrides([f"{key}={v.strip()}"])[key] for v in values.split(",")]
        repeated = [v for i, v in enumerate(parsed) if _same_value(v, parsed[:i])]
        if repeated:
            raise UsageError(f"vary: expected distinct values of {key!r}, received {values.strip()!r}, which gives "
                             f"{repeated[0]!r} more than once (each variant would run twice)")
        axes[key] = parsed
    variants = []
    for combo in itertools.product(*axes.values()):
        setting = dict(zip(axes, combo, strict=True))
        variants.append(Variant(",".join(f"{k}={v}" for k, v in setting.items()), setting))
    return variants


def _same_value(value: Any, earlier: Sequence[Any]) -> bool:
    """Whether ``value`` equals one of ``earlier`` as an option value (0.6 and 0.60, 1 and 1.0; True is not 1)."""
    return any((type(value) is bool) == (type(e) is bool) and value == e for e in earlier)


def baseline_of(variant: Any, variants: Sequence[Any]) -> Any | None:
    """The random-masking variant to compare ``variant`` with: the same settings but ``masking=random``.

    None when ``variant`` itself masks at random or no such variant was run.
    """
    if variant.pretrain.get("masking") == "random" or "masking" not in variant.pretrain:
        return None
    want = {**variant.pretrain, "masking": "random"}
    return next((v for v in variants if dict(v.pretrain) == want), None)


# ---------------------------------------------------------------------------------------------------------------
# Reading finished runs
# ---------------------------------------------------------------------------------------------------------------


def model_names(results: Mapping[str, Any], folder: Path | None = None) -> dict[str, str]:
    """Each model of :data:`MODELS` that an ensemble's ``metrics.json`` scored, and its name there.

    A member is paired by the init kind it recorded (``imagenet``, or the random-weight fallback that stands in for
    it, and ``mae``), never by its position, so a member listed in another order keeps its own name and a missing
    one is left out rather than reported under another's.

    Raises:
        ValueError: two members of one kind, or a member of a kind no study model stands for (naming ``folder``).
    """
    from medens.evaluate.members import init_kind
    from medens.evaluate.report import ENSEMBLE_NAME
    from medens.models.classifier import INIT_RANDOM_FALLBACK

    # The init kinds of the members each member model stands for: the ImageNet member is the one trained from
    # random weights when ImageNet weights could not be had.
    kinds = {"imagenet": ("imagenet", INIT_RANDOM_FALLBACK), "mae": ("mae",)}
    where = f" in {folder / METRICS_NAME}" if folder is not None else ""
    names: dict[str, str] = {}
    for member in results["members"]:
        kind = member.get("init_kind") or init_kind(member.get("init"))
        model = next((m for m, allowed in kinds.items() if kind in allowed), None)
        if model is None or model in names:
            raise ValueError(
                f"members: expected one member of each init kind {kinds}{where}, received "
                f"{member.get('name')!r} of init {member.get('init')!r}"
                + (f" besides {names[model]!r}" if model in names else "")
            )
        names[model] = member["name"]
    missing = [m for m in kinds if m not in names]
    if missing:
        logger.warning("study: %s holds no %s member; left out of the study", folder or "an ensemble",
                       " or ".join(missing))
    names["ensemble"] = ENSEMBLE_NAME
    if results.get("baseline"):
        names["baseline"] = results["baseline"]["name"]
    return names


def collect_runs(out: Path, folds: int, seeds: Sequence[int], variants: Sequence[Any],
                 units: Sequence[tuple[int, int]] | None = None) -> tuple[list[dict], dict]:
    """The metrics of every finished run (of ``units``' fold-seed pairs only, when given), and the pooled
    out-of-fold predictions.

    Returns:
        ``(runs, pooled)``: ``runs`` as ``study.json`` lists them; ``pooled[(seed, variant, model)]`` is
        ``(paths, labels, probs)`` over all folds. The ImageNet member's entries carry ``variant: None``.
    """
    from medens.evaluate.predictions import read_prediction_table

    runs: list[dict] = []
    pooled: dict[tuple, list] = {}
    for fold, seed in (units if units is not None else itertools.product(range(folds), seeds)):
        root = study_run_folder(out, fold, seed)
        for v_index, variant in enumerate(variants):
            folder = root / variant.folder(ENSEMBLE_DIR)
            results = json.loads((folder / METRICS_NAME).read_text("utf-8"))
            names = model_names(results, folder)
            # Rows of test images that could not be decoded carry no probabilities: in no pooled metric either.
            paths, truth, probs, _ = read_prediction_table(folder / PREDICTIONS_NAME)
            for model in MODELS:
                if model not in names or (model in SHARED_MODELS and v_index > 0):
                    continue  # a model this ensemble did not score; or the same model in every variant
                name = names[model]
                metrics = results["models"][name]["metrics"]
                shared = model in SHARED_MODELS
                runs.append({"fold": fold, "seed": seed, "variant": None if shared else variant.name,
                             "model": model, "label": results["models"][name]["label"], "n_test": results["n_test"],
                             **{m: metrics.get(m) for m in STUDY_METRICS}})
                key = (seed, None if shared else variant.name, model)
                pooled.setdefault(key, []).append((paths, truth, probs[name], results["classes"]))
    return runs, {key: _concat(parts) for key, parts in pooled.items()}


def collect_probes(out: Path, folds: int, seeds: Sequence[int], variants: Sequence[Any],
                   units: Sequence[tuple[int, int]] | None = None) -> list[dict]:
    """The pre-training probe of every finished run and variant (``pretrain/probe.json``), where one was written
    (of ``units``' fold-seed pairs only, when given).

    Returns:
        One dict per fold, seed and variant: ``fold``, ``seed``, ``variant``, ``mask_grid`` and, for ``linear``
        and ``knn``, the balanced accuracy of the ``encoder`` and of ``random_init`` and the ``gain``.
    """
    probes = []
    for fold, seed in (units if units is not None else itertools.product(range(folds), seeds)):
        root = study_run_folder(out, fold, seed)
        for variant in variants:
            path = root / variant.folder(PRETRAIN_DIR) / PROBE_NAME
            if not path.is_file():
                continue
            record = json.loads(path.read_text("utf-8"))
            entry: dict[str, Any] = {"fold": fold, "seed": seed, "variant": variant.name,
                                     "mask_grid": record.get("mask_grid")}
            for probe in ("linear", "knn"):
                enc = record["encoder"][probe]["balanced_accuracy"]
                rnd = record["random_init"][probe]["balanced_accuracy"]
                entry[probe] = {"encoder": enc, "random_init": rnd, "gain": enc - rnd}
            probes.append(entry)
    return probes


def _concat(parts: list) -> tuple[list[str], np.ndarray, np.ndarray]:
    classes = parts[0][3]
    index = {c: i for i, c in enumerate(classes)}
    paths = [p for part in parts for p in part[0]]
    labels = np.array([index[t] for part in parts for t in part[1]], dtype=np.int64)
    return paths, labels, np.concatenate([part[2] for part in parts])


def test_train_ratio(out: Path, folds: int, seeds: Sequence[int], variants: Sequence[Any],
                     units: Sequence[tuple[int, int]] | None = None) -> float:
    """Test images over training images in one run, averaged over the folds (of ``units``, when given; for the
    corrected t-test)."""
    ratios = []
    firsts = {fold: seed for fold, seed in reversed(list(units))} if units is not None else {
        fold: seeds[0] for fold in range(folds)}
    for fold, seed in firsts.items():
        record = json.loads((study_run_folder(out, fold, seed) / variants[0].folder(PRETRAIN_DIR) / SPLITS_NAME)
                            .read_text("utf-8"))
        n = {name: len(ids) for name, ids in record["splits"].items()}
        ratios.append(n["test"] / max(1, n["train"]))
    return float(np.mean(ratios))


# ---------------------------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------------------------


def check_folds(options: Mapping[str, Any], folds: int) -> None:
    """Refuse more folds than the smallest class has images to spread over them (before anything trains).

    Every test fold (with an official test split: every validation fold) must hold each class, or its per-class
    metrics, macro-F1 and AUROC are undefined and the study cannot be summarised. The images counted are those
    the folds are cut from: every image, or those outside the official test split.

    Raises:
        UsageError: naming ``folds``, the limit, the smallest class and its count.
    """
    from collections import Counter

    from medens.data import open_dataset
    from medens.train.stages import stage_configs

    config = stage_configs(options)["pretrain"]
    dataset = open_dataset({**config, "cache_dir": None})  # the count needs no decode cache
    official = dataset.official_splits if config.get("use_official_split", True) else None
    cut = [t for i, t in enumerate(dataset.targets) if official is None or official[i] != "test"]
    counts = Counter(cut)
    if not counts:
        return  # no image to cut: the first stage says so
    smallest = min(counts, key=lambda c: (counts[c], c))  # a class without any image is reported by the dataset
    limit = counts[smallest]
    if folds > limit:
        part = "validation" if official is not None and "test" in official else "test"
        raise UsageError(
            f"folds: expected at most {limit} folds for {dataset.name}, whose smallest class "
            f"{dataset.classes[smallest]!r} has {limit} images to share among the folds (every {part} fold needs "
            f"each class for per-class metrics and AUROC), received {folds}"
        )


def run_study(options: Mapping[str, Any], folds: int, seeds: Sequence[int], variants: Sequence[Any],
              executor: Any = None, partial: bool = False) -> dict:
    """Run (or continue) every fold, seed and variant, then write ``study.json`` and the report.

    The fold-seed units run as ``executor`` (:class:`medens.train.executors.ExecutorSpec`; default: one after
    another in this process) says. With ``partial``, nothing runs: the record is written from the finished units
    alone and says so (``"partial": true`` and the ``missing_units``).

    Args:
        options: the pipeline's options (:func:`medens.train.pipeline.options_from_args`), ``out`` included.
        folds: K of the K-fold (at least 2).
        seeds: The seeds of every fold.
        variants: Pre-training variants (:func:`parse_variants`).

    Returns:
        The content of ``study.json``.

    Raises:
        ValueError: bad options (before anything runs), or a finished run recorded with other options.
        medens.train.executors.UnitsNotDone: some units failed or did not finish (``study --status`` says which).
        medens.engine.TrainingInterrupted: a stage was stopped; run the same command again to continue.
    """
    from medens.evaluate.study_report import compare_probes, summarize_probes, summarize_study, write_report
    from medens.io import atomic_write_text
    from medens.train.executors import ExecutorSpec, Unit, UnitsNotDone, run_units, unit_done

    if int(folds) < 2:
        raise UsageError(f"folds: expected at least 2 folds, received {folds}")
    if not seeds:
        raise UsageError("seeds: expected at least one seed, received none")
    check_folds(options, int(folds))
    out = Path(options["out"])
    units = [Unit(fold, int(seed)) for fold, seed in itertools.product(range(int(folds)), seeds)]
    if not partial:
        left = run_units(options, units, variants, int(folds), executor or ExecutorSpec())
        if left:
            raise UnitsNotDone(f"study: {len(left)} of {len(units)} units are not done ({', '.join(map(str, left))}): "
                               f"see study --status; run the same command again to continue")
    done = [(u.fold, u.seed) for u in units if unit_done(out, u, variants)]
    if not done:
        raise UnitsNotDone("partial: no unit is finished yet; see study --status")
    runs, pooled = collect_runs(out, int(folds), seeds, variants, units=done)
    probes = collect_probes(out, int(folds), seeds, variants, units=done)
    ratio = test_train_ratio(out, int(folds), seeds, variants, units=done)
    baselines = {v.name: b.name for v in variants if (b := baseline_of(v, variants))}
    summary = summarize_study(runs, pooled, variants=[v.name for v in variants], baselines=baselines,
                              metrics=STUDY_METRICS, test_train_ratio=ratio)
    from medens.data.options import DATA_DEFAULTS

    # The split's settings as the stages ran them: the flag's value, else the stages' default.
    split = {key: DATA_DEFAULTS[key] if options.get(key) is None else options[key] for key in ("split_seed", "dedupe")}
    record = {"format": STUDY_FORMAT, "dataset": options.get("dataset"), "preset": options.get("preset"),
              "folds": int(folds), "seeds": list(seeds), **split,
              "variants": [{"name": v.name, "pretrain": dict(v.pretrain)} for v in variants],
              "test_train_ratio": ratio, "runs": runs, **summary,
              "probes": probes, "probe_summary": summarize_probes(probes, [v.name for v in variants]),
              "probe_comparisons": compare_probes(probes, baselines, ratio)}
    if len(done) < len(units):
        record["partial"] = True
        record["missing_units"] = [{"fold": u.fold, "seed": u.seed} for u in units if (u.fold, u.seed) not in done]
    atomic_write_text(out / STUDY_NAME, json.dumps(record, indent=1, default=float) + "\n")
    write_report(record, out)
    return record


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``study`` subcommand and return its parser."""
    from medens.train.executors import add_executor_arguments
    from medens.train.pipeline import add_pipeline_arguments

    p = subparsers.add_parser("study", help=command_help("study"), description=__doc__.split("\n\n")[1],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pipeline_arguments(p, with_seed=False)
    cv = p.add_argument_group("study")
    cv.add_argument("--folds", type=int, default=DEFAULT_FOLDS, metavar="K",
                    help=f"folds of the cross-validation (default {DEFAULT_FOLDS}; at most the images of the smallest "
                         "class, so that every test fold holds each class)")
    cv.add_argument("--seeds", default=str(DEFAULT_SEEDS), metavar="S",
                    help=f"seeds per fold: a count (seeds 0..S-1) or a list such as 0,1,7 (default {DEFAULT_SEEDS})")
    cv.add_argument("--vary", action="append", metavar="KEY=V1,V2",
                    help="a pre-training option to vary, repeatable (the grid of all values, each value once), e.g. "
                         "--vary masking=random,entropy --vary mask_ratio=0.6,0.75")
    add_executor_arguments(p)
    p.set_defaults(func=main)
    return p


@command("study", stopped_hint="Run the same study command again to continue.")
def main(args: argparse.Namespace) -> int:
    """Run the study, print where the results are.

    Returns 0; 2 for a usage error, 1 for another error (one message, no traceback); 130/143 if stopped.
    """
    from medens.evaluate.study_report import headline_table
    from medens.train.executors import Unit, pop_executor_spec, status_table
    from medens.train.pipeline import options_from_args

    if not args.out:
        raise UsageError("out: expected --out DIR for the study, received none")
    seeds = parse_seeds(args.seeds)
    variants = parse_variants(args.vary)
    options = options_from_args(args)
    for key in ("seeds", "vary"):  # the study's own flags, not pipeline options
        options.pop(key, None)
    executor, status, partial = pop_executor_spec(options)
    if status:
        units = [Unit(fold, seed) for fold, seed in itertools.product(range(args.folds), seeds)]
        print(status_table(args.out, units, variants))
        return 0
    logger.info("study: %s, %d folds x %d seeds x %d variants into %s", options["dataset"], args.folds,
                len(seeds), len(variants), options["out"])
    record = run_study(options, args.folds, seeds, variants, executor=executor, partial=partial)
    print(headline_table(record))
    if record.get("partial"):
        print(f"\npartial study: {len(record['missing_units'])} units not finished (see --status)")
    print(f"\nstudy: {Path(args.out) / STUDY_NAME}\nreport: {Path(args.out) / REPORT_NAME}")
    return 0
