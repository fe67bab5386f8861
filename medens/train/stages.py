"""The plan of a pipeline's stages: what each one runs with, and whether a finished one may be reused.

:func:`stage_configs` turns the pipeline's options (a preset, its flags, ``--set-pretrain``/``--set-finetune``)
into the configuration of each training stage; a :class:`Variant` names a pre-training ablation and its folders;
:func:`run_stage` skips a finished stage (after checking that it ran with the requested options), resumes one with
a checkpoint, or starts it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medens.data.options import SHARED_DATA_KEYS
from medens.engine.estimate import PlannedStage
from medens.layout import (
    BASELINE_DIR,
    CACHE_DIR,
    CONFIG_NAME,
    ENCODER_NAME,
    IMAGENET_DIR,
    MAE_DIR,
    PRETRAIN_DIR,
    SPLITS_NAME,
    is_finetune_complete,
    is_pretrain_complete,
)
from medens.models.arch import DEFAULT_NORM, ENCODER_STRIDE
from medens.train.options import EXECUTION_KEYS
from medens.train.presets import (
    DEMO_DATASET,
    DEMO_DATASET_OPTIONS,
    DEMO_OVERRIDES,
    STAGES,
    default_preset,
    load_preset,
)

__all__ = ["SHARED_KEYS", "StageOutcome", "preset_configs", "Variant", "DEFAULT_VARIANT", "stage_configs", "check_plan",
           "run_stage", "training_plan"]

logger = logging.getLogger(__name__)

#: The pipeline's run flags that set the stage option of the same name for every training stage.
RUN_SHARED_KEYS = ("arch", "norm", "image_size", "batch_size", "num_workers", "device", "seed")
#: Stage options that the pipeline's flags of the same name set for every training stage: its data flags
#: (:data:`medens.data.options.SHARED_DATA_KEYS`; the reader options are merged apart, with the demo's), its run
#: flags, and a study unit's fold.
SHARED_KEYS = (
    *(key for key in SHARED_DATA_KEYS if key != "dataset_options"),
    *RUN_SHARED_KEYS,
    "folds",
    "fold",
)

#: Options a finished stage may have recorded differently and still be reused: how it ran (EXECUTION_KEYS),
#: ``init`` (compared below by what was requested, since an MAE encoder may be named by another path), and the
#: paths of its inputs, ``split_file`` and ``pretrained_file``, and ``probe`` (a score after training, not what it learns).
_UNCHECKED_KEYS = frozenset({*EXECUTION_KEYS, "init", "split_file", "pretrained_file", "probe", "probe_every"})
#: Options added after runs were recorded without them, with the value those runs had.
_VALUES_BEFORE_THE_OPTION = {"norm": DEFAULT_NORM, "precise_bn": False, "output_stride": ENCODER_STRIDE}


@dataclass
class StageOutcome:
    """What happened to one stage: ``ran``, ``resumed`` or ``skipped``, how long it took, and where it is."""

    name: str
    status: str
    seconds: float
    folder: Path


def preset_configs(preset: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pre-training and fine-tuning options of a preset (:mod:`medens.train.presets`).

    The stages get them as explicit options (so the pipeline can adjust them and check finished stages against
    them), not as a ``preset`` name.

    Raises:
        UsageError: on an unknown preset.
    """
    pretrain, finetune = (load_preset(preset, stage) for stage in STAGES)
    return pretrain, finetune


@dataclass(frozen=True)
class Variant:
    """One pre-training variant: a name, the pre-training options it sets, and the suffix of its folders.

    The default variant (no options) uses the plain folder names (``pretrain/``, ``finetune-mae/``,
    ``ensemble/``); another writes ``pretrain-<suffix>/``, ``finetune-mae-<suffix>/``, ``ensemble-<suffix>/``.
    """

    name: str = "default"
    pretrain: Mapping[str, Any] = field(default_factory=dict)

    @property
    def suffix(self) -> str:
        return "" if not self.pretrain else "-" + "_".join(
            f"{k}-{_slug(v)}" for k, v in self.pretrain.items())

    def folder(self, stage_dir: str) -> str:
        return stage_dir + self.suffix


def _slug(value: Any) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "-" for c in str(value))


DEFAULT_VARIANT = Variant()


def stage_configs(options: Mapping[str, Any], variant: Variant = DEFAULT_VARIANT) -> dict[str, dict[str, Any]]:
    """The configuration of each training stage, from the pipeline's options.

    Precedence: preset < the pipeline's flags (``dataset``, ``arch``, ``image_size``, ...) < ``pretrain_epochs`` /
    ``finetune_epochs`` < ``set_pretrain`` / ``set_finetune`` (any stage key).

    Args:
        options: ``out``, ``preset``, ``dataset`` and the optional keys of :func:`add_parser`'s flags.

    Returns:
        ``{"pretrain": ..., "imagenet": ..., "mae": ...}``, each ready for ``run_pretrain`` / ``run_finetune``; with
        ``options["baseline"]`` (a timm architecture) also ``"baseline"``: that model fine-tuned from random weights
        with the members' options.
    """
    root = Path(options["out"])
    pretrain, finetune = preset_configs(options["preset"])
    shared = {key: options[key] for key in SHARED_KEYS if options.get(key) is not None}
    dataset_options = dict(options.get("dataset_options") or {})
    demo: dict[str, dict[str, Any]] = {}
    if not dataset_options and shared.get("dataset", DEMO_DATASET) == DEMO_DATASET:
        dataset_options = dict(DEMO_DATASET_OPTIONS)
        if options["preset"] == default_preset(DEMO_DATASET):
            # The demo's trade-offs to stay within minutes (presets.DEMO_OVERRIDES); any flag still wins.
            demo = DEMO_OVERRIDES
    shared["dataset_options"] = dataset_options
    if shared.get("dataset", DEMO_DATASET) != DEMO_DATASET and not options.get("cache_dir"):
        shared["cache_dir"] = str(root / CACHE_DIR)  # decode the images once for all stages
    pretrain = {**pretrain, **demo.get("pretrain", {}), **shared}
    finetune = {**finetune, **demo.get("finetune", {}), **shared}
    if options.get("pretrain_epochs") is not None:
        pretrain["epochs"] = int(options["pretrain_epochs"])
    if options.get("finetune_epochs") is not None:
        finetune["epochs"] = int(options["finetune_epochs"])
    pretrain.update(options.get("set_pretrain") or {})
    pretrain.update(variant.pretrain)
    finetune.update(options.get("set_finetune") or {})
    for config in (pretrain, finetune):  # warm-up must fit in a shortened schedule
        if "warmup_epochs" in config and "epochs" in config:
            config["warmup_epochs"] = min(
                float(config["warmup_epochs"]), max(0.0, float(config["epochs"]) - 1)
            )

    pretrain_dir = root / variant.folder(PRETRAIN_DIR)
    common_ft = {**finetune, "split_file": str(pretrain_dir / SPLITS_NAME)}
    imagenet = {
        **common_ft,
        "init": "imagenet",
        "allow_random_imagenet_fallback": not options.get("require_imagenet", False),
        "out": str(root / IMAGENET_DIR),
    }
    if options.get("pretrained_file"):
        imagenet["pretrained_file"] = str(options["pretrained_file"])
    mae = {**common_ft, "init": f"mae:{pretrain_dir / ENCODER_NAME}", "out": str(root / variant.folder(MAE_DIR))}
    # The MAE member is built like its encoder, whatever the fine-tuning options say (also under --vary norm=...).
    mae["norm"] = pretrain.get("norm", DEFAULT_NORM)
    configs = {"pretrain": {**pretrain, "out": str(pretrain_dir)}, "imagenet": imagenet, "mae": mae}
    if options.get("baseline"):
        # Trained once, like the ImageNet member, on the split every variant shares.
        configs["baseline"] = {**common_ft, "arch": str(options["baseline"]), "init": "scratch",
                               "out": str(root / BASELINE_DIR)}
    return configs


def check_plan(options: Mapping[str, Any], variants: Sequence[Variant]) -> None:
    """Check the options of every stage of every variant before the first stage starts.

    Each stage's configuration goes through the checks that stage makes before it trains (types, ranges, names,
    geometry, the model's input size), so a mistake in the last variant or the last stage is reported in seconds,
    not after hours of the stages before it.

    Raises:
        medens.errors.UsageError: the first bad option, named as the stage would name it, with the stage.
    """
    from medens.errors import UsageError
    from medens.train import finetune, pretrain

    checked: list[dict[str, Any]] = []
    for variant in variants:
        for stage, config in stage_configs(options, variant).items():
            if config in checked:  # the ImageNet member and the baseline are the same in every variant
                continue
            checked.append(config)
            check = pretrain.check_config if stage == "pretrain" else finetune.check_config
            try:
                check(config)
            except UsageError as err:
                where = f"{stage} stage" + (f" of variant {variant.name}" if variant.pretrain else "")
                raise type(err)(f"{err} [{where}]") from None


def _without_masks(dataset_options: Any) -> Any:
    """``dataset_options`` without the lesion-mask options (:data:`medens.data.registry.MASK_OPTIONS`)."""
    from medens.data.registry import MASK_OPTIONS

    if not isinstance(dataset_options, Mapping):
        return dataset_options
    return {k: v for k, v in dataset_options.items() if k not in MASK_OPTIONS}


def _recorded_mismatches(folder: Path, requested: Mapping[str, Any]) -> list[str]:
    """Requested options that differ from what the finished run in ``folder`` recorded in its config.yaml."""
    import yaml

    from medens.engine import load_yaml

    recorded = {**_VALUES_BEFORE_THE_OPTION, **load_yaml(folder / CONFIG_NAME)}
    diffs = []
    for key, value in requested.items():
        if key in _UNCHECKED_KEYS:
            continue
        want = yaml.safe_load(yaml.safe_dump(value))  # tuples -> lists, as recorded
        if key == "dataset_options" and key in recorded:
            # Lesion masks play no part in training: the ensemble reads them afresh.
            want = _without_masks(want)
            recorded = {**recorded, key: _without_masks(recorded[key])}
        if key == "precise_bn" and recorded.get("precise_bn_requested") == want:
            continue  # asked for, and recorded as not applied (a model without BatchNorm)
        if key in recorded and recorded[key] != want:
            diffs.append(f"{key}={recorded[key]!r} (requested {want!r})")
    if "init" in requested and not str(requested["init"]).startswith("mae:"):
        if recorded.get("init_requested", requested["init"]) != requested["init"]:
            diffs.append(f"init={recorded.get('init_requested')!r} (requested {requested['init']!r})")
    return diffs


def run_stage(
    name: str,
    config: dict[str, Any],
    run: Callable[[dict[str, Any]], Path],
    is_complete: Callable[[Path], bool],
) -> StageOutcome:
    """Skip a finished stage (after checking its options), resume one with a checkpoint, or start it."""
    from medens.engine import CHECKPOINT_NAME

    folder = Path(config["out"])
    complete = is_complete(folder)
    resume = not complete and (folder / CHECKPOINT_NAME).is_file()
    if (complete or resume) and (folder / CONFIG_NAME).is_file():
        diffs = _recorded_mismatches(folder, config)
        if diffs:
            raise ValueError(
                f"out: {folder} holds a{' finished' if complete else 'n unfinished'} {name} run with other options: "
                f"{'; '.join(diffs)}. Use another --out, or delete {folder} to redo the stage"
            )
    if complete:
        logger.info("%s: already complete in %s, skipped", name, folder)
        return StageOutcome(name, "skipped", 0.0, folder)
    logger.info("%s: %s in %s", name, "resuming" if resume else "starting", folder)
    start = time.perf_counter()
    run({**config, "resume": resume})
    return StageOutcome(name, "resumed" if resume else "ran", time.perf_counter() - start, folder)


def training_plan(options: Mapping[str, Any], variants: Sequence[Variant]) -> list[PlannedStage]:
    """The training stages :func:`medens.train.pipeline.run_variants` will run, in order, finished ones left out.

    For the estimates of :mod:`medens.engine.estimate`: each variant's pre-training, the shared ImageNet member
    (and ``--baseline``) once after the first pre-training, then the variant's MAE member.
    """
    plan: list[PlannedStage] = []
    shared_done = False
    for variant in variants:
        configs = stage_configs(options, variant)
        keys = ["pretrain"]
        if not shared_done:
            keys += ["imagenet", *(["baseline"] if "baseline" in configs else [])]
            shared_done = True
        keys.append("mae")
        for key in keys:
            config = configs[key]
            is_complete = is_pretrain_complete if key == "pretrain" else is_finetune_complete
            if not is_complete(Path(config["out"])):
                plan.append(PlannedStage(Path(config["out"]), int(config["epochs"])))
    return plan
