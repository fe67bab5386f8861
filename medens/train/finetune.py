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

Python entry points: :func:`run_finetune`, :func:`default_config`, :func:`is_complete`, :func:`load_model`.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medens.engine import (
    EngineConfig,
    Trainer,
    create_optimizer,
    recompute_batchnorm_statistics,
    seed_everything,
    steps_per_epoch,
)
from medens.engine.atomic import atomic_write_text
from medens.inference import load_model, sharded_probs
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
    load_weights,
    parse_init,
    save_weights,
)
from medens.models.losses import class_weights, soft_cross_entropy
from medens.train.arguments import add_stage_parser, run_stage_cli
from medens.train.configuration import effective_lr, option_checks, resolve_config
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

__all__ = [
    "run_finetune",
    "default_config",
    "is_complete",
    "load_model",
    "add_parser",
    "main",
    "MODEL_NAME",
    "PREDICTIONS_NAME",
    "VAL_PREDICTIONS_NAME",
    "METRICS_NAME",
]

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


# ---------------------------------------------------------------------------------------------------------------
# Training pieces
# ---------------------------------------------------------------------------------------------------------------


class _Best:
    """Best validation score so far (checkpointed with the run)."""

    def __init__(self) -> None:
        self.score = -math.inf
        self.epoch = -1

    def state_dict(self) -> dict[str, Any]:
        return {"score": self.score, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.score, self.epoch = float(state["score"]), int(state["epoch"])


class _ClassifierStep:
    """``step_fn`` of the trainer: optional Mixup/CutMix, then (weighted, smoothed) cross-entropy."""

    def __init__(self, config: dict[str, Any], num_classes: int, weight: torch.Tensor | None) -> None:
        self.weight = weight
        self.smoothing = float(config["label_smoothing"])
        self.mixup = None
        if config["mixup"] > 0 or config["cutmix"] > 0:
            from timm.data import Mixup

            self.mixup = Mixup(
                mixup_alpha=float(config["mixup"]),
                cutmix_alpha=float(config["cutmix"]),
                prob=float(config["mixup_prob"]),
                label_smoothing=self.smoothing,
                num_classes=num_classes,
            )

    def __call__(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
        images, labels = batch
        weight = None if self.weight is None else self.weight.to(images.device)
        if self.mixup is not None:
            images, soft = self.mixup(images, labels)
            return soft_cross_entropy(model(images), soft, weight), images.shape[0]
        logits = model(images)
        return F.cross_entropy(
            logits.float(), labels, weight=weight, label_smoothing=self.smoothing
        ), images.shape[0]


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
    from medens.data import SplitDataset, build_transforms

    config, dist, out = ctx.config, ctx.dist, ctx.out_dir
    dataset, splits = open_data(config, ctx, FINETUNE_SPLIT_USES)
    classes = list(dataset.classes)

    seed_everything(int(config["seed"]))
    init_requested = config["init"]
    # A resumed run rebuilds the model its checkpoint holds, with the init, normalisation and stride it recorded (a
    # run recorded before these options had LayerNorm and stride 32); a new run takes them from its options.
    if ctx.resuming:
        recorded_init, recorded_norm, recorded_stride = _recorded_build(out / CONFIG_NAME)
        init_used, norm = recorded_init or init_requested, recorded_norm or DEFAULT_NORM
        stride = recorded_stride or ENCODER_STRIDE
    else:
        init_used, norm, stride = None, config["norm"], ENCODER_STRIDE
    model, built_init = create_classifier(
        config["arch"],
        len(classes),
        init="scratch" if ctx.resuming else init_requested,
        pretrained_file=None if ctx.resuming else config["pretrained_file"],
        allow_random_fallback=bool(config["allow_random_imagenet_fallback"]),
        allow_partial=bool(config["allow_partial"]),
        drop_path_rate=float(config["drop_path"]),
        drop_rate=float(config["drop_rate"]),
        norm=norm,
        output_stride=stride,
    )
    init_used = init_used or built_init
    norm_used = norm if ctx.resuming else classifier_norm(init_used, norm)
    stride_used = stride if ctx.resuming else classifier_stride(init_used)
    cfg = model.pretrained_cfg or {}
    mean, std = list(cfg.get("mean", (0.485, 0.456, 0.406))), list(cfg.get("std", (0.229, 0.224, 0.225)))

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
    # Evaluation never scores an image it could not read: such files are left out of every metric and listed in
    # metrics.json and, with empty probabilities, in the prediction files.
    val_set, val_skipped = SplitDataset(dataset, splits["val"], eval_tf, substitute=False).without_unreadable()
    test_set, test_skipped = SplitDataset(dataset, splits["test"], eval_tf, substitute=False).without_unreadable()
    skipped = {"val": [vars(k) for k in val_skipped], "test": [vars(k) for k in test_skipped]}

    targets = train_set.targets
    weight = class_weights(targets, len(classes)) if config["imbalance"] == "weighted_loss" else None
    sample_weights = None
    if config["imbalance"] == "balanced_sampler":
        per_class = class_weights(targets, len(classes))
        sample_weights = per_class[torch.as_tensor(targets)].double()
    loader = train_loader(config, train_set, dist, weights=sample_weights)
    seed_everything(int(config["seed"]) + dist.rank)

    lr, effective = effective_lr(config, dist.world_size)
    layer_decay = _layer_decay_for(init_used, float(config["layer_decay"]))
    optimizer = create_optimizer(
        model,
        lr,
        weight_decay=float(config["weight_decay"]),
        betas=tuple(config["betas"]),
        layer_decay=layer_decay if layer_decay < 1.0 else None,
    )
    per_epoch = steps_per_epoch(loader, engine.accum_steps)
    scheduler = warmup_cosine(config, optimizer, lr, engine, per_epoch)
    best = _Best()
    trainer = Trainer(
        model,
        optimizer,
        scheduler,
        _ClassifierStep(config, len(classes), weight),
        config=engine,
        out_dir=out,
        dist=dist,
        run_config=config,
        extra_state=best,
    )
    eval_bs = int(config["eval_batch_size"] or 2 * int(config["batch_size"]))

    precise_bn = _precise_bn_applies(bool(config["precise_bn"]), model)
    write_run_config(
        ctx,
        {
            # Without BatchNorm --precise-bn changes nothing: recorded as not applied, with what was asked.
            **({"precise_bn": False, "precise_bn_requested": True} if config["precise_bn"] and not precise_bn else {}),
            "init": init_used,
            "init_requested": init_requested,
            "classes": classes,
            "num_classes": len(classes),
            "split_hash": split_hash(dataset, splits),
            "run": {
                **run_facts(ctx, lr, effective, trainer.precision.name),
                "mean": mean,
                "std": std,
                "layer_decay_applied": layer_decay,
                "norm_applied": norm_used,
                "output_stride_applied": stride_used,
            },
        },
    )

    metadata = {
        "format": MODEL_FORMAT,
        "arch": config["arch"],
        "norm": norm_used,
        "output_stride": stride_used,
        "classes": classes,
        "image_size": size,
        "init": init_used,
        "mean": mean,
        "std": std,
    }

    # Precise BatchNorm: the running statistics (momentum 0.1, about the last ten batches) move so much from step to
    # step on a few hundred images that nearly equal weights score far apart in validation accuracy (measured on
    # BUSI fold 2, 2026-12-02: the live weights 0.724, the same weights with their EMA's buffers 0.566; in
    # benchmarks/RESULTS.md); averaged over the whole training split they depend on
    # the weights alone. Evaluation transforms, so no augmentation draws; an unreadable image is substituted as in
    # training (no extra decoding pass up front, and a model without BatchNorm never reads the set). Like the
    # validation pass it runs before the epoch's checkpoint, so a resumed run stays exact.
    bn_set = SplitDataset(dataset, splits["train"], eval_tf) if precise_bn else None

    def evaluate(epoch: int, tr: Trainer) -> dict[str, Any]:
        from medens.evaluate.metrics import summary_metrics

        if bn_set is not None:
            recompute_batchnorm_statistics(
                tr.eval_module, bn_set, batch_size=eval_bs, num_workers=config["num_workers"]
            )
        probs = sharded_probs(
            tr.eval_module,
            val_set,
            batch_size=eval_bs,
            dist=dist,
            precision=tr.precision,
            channels_last=engine.channels_last,
            num_workers=config["num_workers"],
        )
        metrics = summary_metrics(probs, np.asarray(val_set.targets))
        score = metrics[config["select_metric"]]
        improved = not math.isnan(score) and score > best.score
        if improved:
            best.score, best.epoch = float(score), epoch + 1
            if dist.is_main:
                save_weights(out / MODEL_NAME, tr.eval_module.state_dict(), {**metadata, "epoch": epoch + 1})
        return {
            f"val_{k}": v for k, v in metrics.items() if k in ("accuracy", "macro_f1", "auroc_macro", "nll")
        } | {"best_epoch": best.epoch}

    _logger.info(
        "fine-tuning %s (init %s) on %d %s images, %d classes, %d epochs x %d steps, lr %.3g (batch %d)",
        config["arch"],
        init_used,
        len(train_set),
        config["dataset"],
        len(classes),
        engine.epochs,
        per_epoch,
        lr,
        effective,
    )
    resume_and_fit(ctx, trainer, loader, METRICS_NAME, epoch_end=evaluate)

    # The best epoch's weights predict both splits.
    if not (out / MODEL_NAME).is_file():  # every epoch scored NaN (e.g. a single-class validation split)
        if dist.is_main:
            save_weights(
                out / MODEL_NAME, trainer.eval_module.state_dict(), {**metadata, "epoch": trainer.epoch}
            )
        dist.barrier()
    state, _ = load_weights(out / MODEL_NAME)
    trainer.eval_module.load_state_dict(state)
    kwargs = dict(
        batch_size=eval_bs,
        dist=dist,
        precision=trainer.precision,
        channels_last=engine.channels_last,
        num_workers=config["num_workers"],
    )
    val_probs = sharded_probs(trainer.eval_module, val_set, **kwargs)
    test_probs = sharded_probs(trainer.eval_module, test_set, **kwargs)
    if dist.is_main:
        _write_outputs(out, classes, splits, val_set, val_probs, test_set, test_probs, best, config, skipped)
    dist.barrier()
    return out


def _precise_bn_applies(requested: bool, model: nn.Module) -> bool:
    """Whether ``precise_bn`` does anything for ``model``: asked for, and the model has BatchNorm layers."""
    if not requested:
        return False
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return True
    _logger.warning("precise_bn: the model has no BatchNorm layer (e.g. a LayerNorm ConvNeXt), so there are no "
                    "statistics to recompute; not applied, and recorded so in config.yaml")
    return False


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
    out: Path, classes, splits, val_set, val_probs, test_set, test_probs, best: _Best, config, skipped=None
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
    atomic_write_text(out / METRICS_NAME, json.dumps(_json_safe(metrics), indent=2) + "\n")
    t = metrics["test"]
    _logger.info(
        "best epoch %d; test accuracy %.4f, macro-F1 %.4f, AUROC %.4f -> %s",
        best.epoch,
        t["accuracy"],
        t["macro_f1"],
        t["auroc_macro"],
        out,
    )


def _json_safe(value: Any) -> Any:
    """NaN/inf become None (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


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
