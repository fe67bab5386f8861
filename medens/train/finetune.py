"""``python -m medens.train finetune``: fine-tune a ConvNeXt classifier, initialised from ImageNet, MAE or scratch.

Trains ``timm.create_model(arch, num_classes=K)`` on the training split, evaluates on the validation split after
every epoch, keeps the best epoch (macro-F1 by default), and with it predicts the validation and test splits.
Writes, into ``--out``:

- ``model.safetensors``: the best epoch's weights (with arch, classes, image size and normalisation as metadata);
- ``predictions.csv`` / ``val_predictions.csv``: per image ``path`` (the dataset's item id), ``label`` (class name)
  and one probability column per class, named by the class;
- ``metrics.json``: test and validation metrics of the best epoch (summary, per class, confusion matrix);
- ``config.yaml``: the resolved configuration plus the dataset's ``classes``, the ``init`` actually used and the
  ``split_hash``; ``splits.json``; ``log.csv`` (training loss and validation metrics per epoch); ``checkpoint.pt``.

Python entry points: :func:`run_finetune`, :func:`default_config`, :func:`is_complete`, :func:`check_config`
(a finished run's model: :func:`medens.inference.load_model`).
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medens.engine import EngineConfig, Trainer, create_optimizer, seed_everything, steps_per_epoch
from medens.io import atomic_write_text, json_text
from medens.layout import (
    CONFIG_NAME,
    METRICS_NAME,
    MODEL_NAME,
    PREDICTIONS_NAME,
    VAL_PREDICTIONS_NAME,
    is_finetune_complete,
)
from medens.models import (
    DEFAULT_NORM,
    ENCODER_STRIDE,
    INIT_RANDOM_FALLBACK,
    MODEL_FORMAT,
    check_arch_for_init,
    check_input_size,
    classifier_norm,
    classifier_stride,
    create_classifier,
    parse_init,
    pixel_normalisation,
)
from medens.models.losses import ClassificationStep, class_weights
from medens.train.arguments import add_stage_parser, run_stage_cli
from medens.train.configuration import effective_lr, option_checks, resolve_config
from medens.train.evaluator import BestEpochEvaluator, InferenceSettings, precise_bn_applies
from medens.train.options import FINETUNE_CLI_KEYS, FINETUNE_DEFAULTS
from medens.train.session import (
    FINETUNE_SPLIT_USES,
    RunContext,
    open_data,
    resume_and_fit,
    run_facts,
    run_session,
    split_hash,
    train_loader,
    warmup_cosine,
    write_run_config,
)

__all__ = ["run_finetune", "default_config", "is_complete", "check_config", "add_parser", "main"]

_logger = logging.getLogger(__name__)


DESCRIPTION = """\
Fine-tune timm's ConvNeXt (--arch, optionally with a pretrained tag such as convnext_tiny.fb_in1k) on the
training split, keep the best epoch on the validation split (--select-metric), and predict the validation and
test splits with it.

--init imagenet      timm's ImageNet weights: from --pretrained-file FILE, else the Hugging Face cache, else the
                     hub. Offline without them the run stops and says how to supply a file, unless
                     --allow-random-imagenet-fallback is given.
--init mae:PATH      the encoder.safetensors written by 'pretrain' (same architecture).
--init scratch       random weights.

Writes into --out: model.safetensors, predictions.csv and val_predictions.csv (path, label, one probability
column per class), metrics.json, config.yaml (with classes, the init used and split_hash), splits.json,
log.csv and checkpoint.pt (--resume continues from it).

example (CPU, a minute):
  python -m medens.train finetune --dataset synthetic --dataset-option num_images=96 --arch convnext_atto \\
      --image-size 64 --init mae:runs/mae/encoder.safetensors --epochs 5 --batch-size 16 --out runs/ft-mae
"""


def default_config() -> dict[str, Any]:
    """The resolved defaults of ``finetune`` (a fresh copy; presets and callers override keys of it)."""
    return copy.deepcopy(FINETUNE_DEFAULTS)


#: True when a folder holds a finished fine-tuning run (``metrics.json`` is written last): the layout's own test,
#: under the name of this module's Python entry points.
is_complete = is_finetune_complete


def _predictions(split_set: Any, probs: np.ndarray, classes: list[str], skipped_indices=()):
    """A split's predictions; ``skipped_indices`` (dataset indices that could not be decoded) are listed unscored."""
    from medens.evaluate.predictions import Predictions

    dataset = split_set.dataset
    return Predictions(
        paths=list(split_set.ids),
        label_names=[classes[t] for t in split_set.targets],
        classes=list(classes),
        probs=probs,
        skipped={str(dataset.ids[i]): classes[dataset.targets[i]] for i in skipped_indices},
    )


# ---------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------


def run_finetune(config: dict[str, Any]) -> Path:
    """Fine-tune, keep the best epoch, predict the validation and test splits, and write the run folder.

    Args:
        config: options over :func:`default_config` (only the keys to change are needed), plus ``out`` and
            optionally ``resume`` (continue the run in ``out``; its ``config.yaml`` is the base).

    Returns:
        The output folder.

    Raises:
        ValueError: bad options, an MAE encoder of another architecture, a folder holding another run.
        FileNotFoundError: a missing ``--pretrained-file`` or MAE encoder.
        medens.models.PretrainedWeightsUnavailable: ImageNet weights unavailable and no fallback allowed.
        medens.data.DatasetError: the dataset cannot be opened.
        medens.engine.TrainingInterrupted / NonFiniteLossError: see :class:`medens.engine.Trainer`.
    """
    config = resolve_config(FINETUNE_DEFAULTS, config, stage="finetune")
    with option_checks():  # before any data is read
        _check_options(config)
        engine = EngineConfig.from_config(config)
    with run_session(config, "finetune", is_finetune_complete) as ctx:
        return _finetune(ctx, engine)


def _check_options(config: dict[str, Any]) -> None:
    init = config["init"]
    if init == INIT_RANDOM_FALLBACK:  # a config.yaml of a run that fell back, reused
        init = config["init"] = "imagenet"
        config["allow_random_imagenet_fallback"] = True
    check_arch_for_init(config["arch"], parse_init(init)[0])
    if config["image_size"] % 32 or config["image_size"] <= 0:
        raise ValueError(f"image_size: expected a positive multiple of 32, received {config['image_size']!r}")
    for key in ("label_smoothing", "mixup_prob"):
        if not 0.0 <= config[key] <= 1.0:
            raise ValueError(f"{key}: expected a number in [0, 1], received {config[key]!r}")
    for key in ("mixup", "cutmix", "drop_path", "drop_rate"):
        if config[key] < 0:
            raise ValueError(f"{key}: expected a number >= 0, received {config[key]!r}")
    if (config["mixup"] > 0 or config["cutmix"] > 0) and config["batch_size"] % 2:
        raise ValueError(f"batch_size: Mixup/CutMix need an even batch size, received {config['batch_size']}")
    if len(config["color_jitter"]) != 3:
        raise ValueError(f"color_jitter: expected three numbers B,C,S, received {config['color_jitter']!r}")
    check_input_size(config["arch"], config["image_size"], norm=config["norm"])


def check_config(config: dict[str, Any]) -> None:
    """The checks :func:`run_finetune` makes on its options before any work, and nothing else (no files written,
    no data read): for a pipeline to refuse a bad fine-tuning option before its first stage trains.

    Raises:
        medens.errors.UsageError: as :func:`run_finetune` would for the same options.
        FileNotFoundError: a ``pretrained_file`` that is not a file.
    """
    from medens.errors import describe_path

    config = resolve_config(FINETUNE_DEFAULTS, {**config, "resume": False}, stage="finetune")
    with option_checks():
        _check_options(config)
        EngineConfig.from_config(config)
    path = config.get("pretrained_file")
    if path is not None and not Path(path).expanduser().is_file():
        raise FileNotFoundError(f"pretrained_file: expected a weights file, received {path}, {describe_path(path)}")


def _finetune(ctx: RunContext, engine: EngineConfig) -> Path:
    from medens.data import SplitDataset

    config, dist, out = ctx.config, ctx.dist, ctx.out_dir
    dataset, splits = open_data(config, ctx, FINETUNE_SPLIT_USES)
    classes = list(dataset.classes)

    seed_everything(int(config["seed"]))
    model, built = _build_classifier(ctx, len(classes))
    mean, std = pixel_normalisation(model)
    train_set, val_set, test_set, skipped, eval_tf = _split_sets(config, dataset, splits, mean, std)

    weight, sample_weights = _imbalance_weights(config["imbalance"], train_set.targets, len(classes))
    loader = train_loader(config, train_set, dist, weights=sample_weights)
    seed_everything(int(config["seed"]) + dist.rank)

    lr, effective = effective_lr(config, dist.world_size)
    layer_decay = _layer_decay_for(built["init"], float(config["layer_decay"]))
    optimizer = create_optimizer(
        model,
        lr,
        weight_decay=float(config["weight_decay"]),
        betas=tuple(config["betas"]),
        layer_decay=layer_decay if layer_decay < 1.0 else None,
    )
    per_epoch = steps_per_epoch(loader, engine.accum_steps)
    scheduler = warmup_cosine(config, optimizer, lr, engine, per_epoch)
    step = ClassificationStep(
        len(classes),
        weight=weight,
        label_smoothing=float(config["label_smoothing"]),
        mixup=float(config["mixup"]),
        cutmix=float(config["cutmix"]),
        mixup_prob=float(config["mixup_prob"]),
    )
    precise_bn = precise_bn_applies(bool(config["precise_bn"]), model)
    # Precise BatchNorm: the running statistics (momentum 0.1, about the last ten batches) move so much from step to
    # step on a few hundred images that nearly equal weights score far apart in validation accuracy (measured on
    # BUSI fold 2, 2026-12-02: the live weights 0.724, the same weights with their EMA's buffers 0.566; in
    # benchmarks/RESULTS.md); averaged over the whole training split they depend on
    # the weights alone. Evaluation transforms, so no augmentation draws; an unreadable image is substituted as in
    # training (no extra decoding pass up front, and a model without BatchNorm never reads the set). Like the
    # validation pass it runs before the epoch's checkpoint, so a resumed run stays exact.
    evaluator = BestEpochEvaluator(
        val_set,
        select_metric=config["select_metric"],
        model_path=out / MODEL_NAME,
        metadata={"format": MODEL_FORMAT, "arch": config["arch"], "norm": built["norm"],
                  "output_stride": built["stride"], "classes": classes, "image_size": int(config["image_size"]),
                  "init": built["init"], "mean": mean, "std": std},
        dist=dist,
        inference=InferenceSettings(int(config["eval_batch_size"] or 2 * int(config["batch_size"])),
                                    config["num_workers"], engine.channels_last),
        bn_set=SplitDataset(dataset, splits["train"], eval_tf) if precise_bn else None,
    )
    trainer = Trainer(model, optimizer, scheduler, step, config=engine, out_dir=out, dist=dist, run_config=config,
                      extra_state=evaluator)
    write_run_config(
        ctx,
        {
            # Without BatchNorm --precise-bn changes nothing: recorded as not applied, with what was asked.
            **({"precise_bn": False, "precise_bn_requested": True} if config["precise_bn"] and not precise_bn else {}),
            "init": built["init"],
            "init_requested": config["init"],
            "classes": classes,
            "num_classes": len(classes),
            "split_hash": split_hash(dataset, splits),
            "run": {
                **run_facts(ctx, lr, effective, trainer.precision.name),
                "mean": mean,
                "std": std,
                "layer_decay_applied": layer_decay,
                "norm_applied": built["norm"],
                "output_stride_applied": built["stride"],
            },
        },
    )
    _logger.info(
        "fine-tuning %s (init %s) on %d %s images, %d classes, %d epochs x %d steps, lr %.3g (batch %d)",
        config["arch"], built["init"], len(train_set), config["dataset"], len(classes), engine.epochs, per_epoch,
        lr, effective,
    )
    resume_and_fit(ctx, trainer, loader, METRICS_NAME, epoch_end=evaluator)

    # The best epoch's weights predict both splits.
    evaluator.restore_best(trainer)
    val_probs = evaluator.predict(trainer, val_set)
    test_probs = evaluator.predict(trainer, test_set)
    if dist.is_main:
        _write_outputs(out, classes, splits, val_set, val_probs, test_set, test_probs, evaluator, config, skipped)
    dist.barrier()
    return out


def _build_classifier(ctx: RunContext, num_classes: int) -> tuple[nn.Module, dict[str, Any]]:
    """The classifier to train and ``{"init", "norm", "stride"}``: the init, normalisation and output stride used.

    A resumed run rebuilds the model its checkpoint holds, with the init, normalisation and stride it recorded (a
    run recorded before these options had LayerNorm and stride 32); a new run takes them from its options.
    """
    config = ctx.config
    if ctx.resuming:
        recorded_init, recorded_norm, recorded_stride = _recorded_build(ctx.out_dir / CONFIG_NAME)
        init_used, norm = recorded_init or config["init"], recorded_norm or DEFAULT_NORM
        stride = recorded_stride or ENCODER_STRIDE
    else:
        init_used, norm, stride = None, config["norm"], ENCODER_STRIDE
    model, built_init = create_classifier(
        config["arch"],
        num_classes,
        init="scratch" if ctx.resuming else config["init"],
        pretrained_file=None if ctx.resuming else config["pretrained_file"],
        allow_random_fallback=bool(config["allow_random_imagenet_fallback"]),
        allow_partial=bool(config["allow_partial"]),
        drop_path_rate=float(config["drop_path"]),
        drop_rate=float(config["drop_rate"]),
        norm=norm,
        output_stride=stride,
    )
    init_used = init_used or built_init
    return model, {
        "init": init_used,
        "norm": norm if ctx.resuming else classifier_norm(init_used, norm),
        "stride": stride if ctx.resuming else classifier_stride(init_used),
    }


def _split_sets(config: dict[str, Any], dataset: Any, splits: dict[str, Any], mean: list[float], std: list[float]):
    """``(train_set, val_set, test_set, skipped, eval_transform)``: the splits with their transforms.

    Evaluation never scores an image it could not read: such files are left out of the validation and test sets,
    listed in ``skipped`` (``{"val": [...], "test": [...]}``, for ``metrics.json``) and, with empty
    probabilities, in the prediction files.
    """
    from medens.data import SplitDataset, build_transforms

    size = int(config["image_size"])
    train_tf = build_transforms(
        size,
        train=True,
        mean=mean,
        std=std,
        scale=(float(config["crop_scale_min"]), 1.0),
        hflip=float(config["hflip"]),
        vflip=float(config["vflip"]),
        rotation=float(config["rotation"]),
        color_jitter=tuple(config["color_jitter"]),
    )
    eval_tf = build_transforms(size, train=False, mean=mean, std=std, crop_pct=float(config["crop_pct"]))
    train_set = SplitDataset(dataset, splits["train"], transform=train_tf)
    val_set, val_skipped = SplitDataset(dataset, splits["val"], eval_tf, substitute=False).without_unreadable()
    test_set, test_skipped = SplitDataset(dataset, splits["test"], eval_tf, substitute=False).without_unreadable()
    skipped = {"val": [vars(k) for k in val_skipped], "test": [vars(k) for k in test_skipped]}
    return train_set, val_set, test_set, skipped, eval_tf


def _imbalance_weights(
    imbalance: str, targets: list[int], num_classes: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(class weights (K,) of the loss, sampling weights (N,) float64 of the training images)`` for the
    ``imbalance`` option: ``weighted_loss`` sets the first, ``balanced_sampler`` the second, anything else neither."""
    if imbalance == "weighted_loss":
        return class_weights(targets, num_classes), None
    if imbalance == "balanced_sampler":
        return None, class_weights(targets, num_classes)[torch.as_tensor(targets)].double()
    return None, None


def _layer_decay_for(init_used: str, layer_decay: float) -> float:
    """The layer-wise lr decay a run applies: ``layer_decay`` for pre-trained weights, 1 (none) for random ones.

    Layer-wise decay keeps the early layers of a *pre-trained* network close to their weights; on random weights
    (``scratch``, or the ImageNet fallback) it only starves the stem (0.8 gives it a few percent of the lr).
    """
    if init_used in ("scratch", INIT_RANDOM_FALLBACK) and layer_decay < 1.0:
        _logger.info("layer_decay %.3g not applied: init %s has random weights", layer_decay, init_used)
        return 1.0
    return layer_decay


def _recorded_build(config_path: Path) -> tuple[str | None, str | None, int | None]:
    """The init, normalisation and output stride a run recorded (``None`` for what it did not record)."""
    from medens.engine import load_yaml

    if not config_path.is_file():
        return None, None, None
    recorded = load_yaml(config_path)
    run = recorded.get("run") or {}
    init, norm, stride = recorded.get("init"), run.get("norm_applied"), run.get("output_stride_applied")
    return (
        None if init is None else str(init),
        None if norm is None else str(norm),
        None if stride is None else int(stride),
    )


def _write_outputs(
    out: Path, classes, splits, val_set, val_probs, test_set, test_probs, best: BestEpochEvaluator, config, skipped=None
) -> None:
    from medens.evaluate.metrics import classification_report
    from medens.evaluate.predictions import write_predictions

    for name, split_set, probs in (("val", val_set, val_probs), ("test", test_set, test_probs)):
        unreadable = sorted(set(splits[name]) - set(split_set.indices))
        file_name = VAL_PREDICTIONS_NAME if name == "val" else PREDICTIONS_NAME
        write_predictions(out / file_name, _predictions(split_set, probs, classes, unreadable))
    metrics = {
        "select_metric": config["select_metric"],
        "best_epoch": best.epoch,
        "best_val_score": best.score if math.isfinite(best.score) else None,
        "classes": classes,
        "test": classification_report(test_probs, np.asarray(test_set.targets), classes),
        "val": classification_report(val_probs, np.asarray(val_set.targets), classes),
        "num_test": len(test_set),
        "num_val": len(val_set),
        # Images of the splits that could not be decoded: in no metric; rows with empty probabilities.
        "skipped": skipped or {"val": [], "test": []},
    }
    atomic_write_text(out / METRICS_NAME, json_text(metrics))
    t = metrics["test"]
    _logger.info(
        "best epoch %d; test accuracy %.4f, macro-F1 %.4f, AUROC %.4f -> %s",
        best.epoch,
        t["accuracy"],
        t["macro_f1"],
        t["auroc_macro"],
        out,
    )


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------

def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``finetune`` subcommand."""
    return add_stage_parser(
        subparsers, "finetune", description=DESCRIPTION, defaults=FINETUNE_DEFAULTS, keys=FINETUNE_CLI_KEYS, func=main
    )


def main(args: argparse.Namespace) -> int:
    """Run ``finetune`` from parsed arguments; returns the exit code."""
    return run_stage_cli("finetune", run_finetune, args, FINETUNE_DEFAULTS)
