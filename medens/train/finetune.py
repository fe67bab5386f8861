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
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from medens.engine import EngineConfig, Precision, Trainer, create_optimizer, seed_everything, steps_per_epoch
from medens.engine.atomic import atomic_write_text
from medens.models import (
    INIT_RANDOM_FALLBACK,
    MODEL_FORMAT,
    check_arch,
    create_classifier,
    load_weights,
    parse_init,
    save_weights,
    split_arch,
)
from medens.train.common import (
    CONFIG_NAME,
    DATA_CLI_KEYS,
    DATA_DEFAULTS,
    ENGINE_CLI_KEYS,
    ENGINE_DEFAULTS,
    OPTIM_CLI_KEYS,
    OPTIONS,
    SPLITS_NAME,
    Option,
    RunContext,
    _floats,
    _optional_int,
    _optional_str,
    add_stage_parser,
    effective_lr,
    open_data,
    resolve_config,
    resume_and_fit,
    run_cli,
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

HELP = "fine-tune a ConvNeXt classifier (init: imagenet, mae:PATH or scratch)"
MODEL_NAME = "model.safetensors"
PREDICTIONS_NAME = "predictions.csv"
VAL_PREDICTIONS_NAME = "val_predictions.csv"
METRICS_NAME = "metrics.json"
LOG_NAME = "log.csv"
#: Validation metrics a run can select its best epoch by (all: higher is better).
SELECT_METRICS = ("macro_f1", "accuracy", "balanced_accuracy", "auroc_macro")
IMBALANCE_CHOICES = ("none", "weighted_loss", "balanced_sampler")

_STAGE_OPTIONS: dict[str, Option] = {
    "init": Option(
        "initialisation: imagenet (timm's weights for --arch), mae:PATH (an encoder.safetensors from "
        "'pretrain') or scratch",
        metavar="imagenet|mae:PATH|scratch",
    ),
    "pretrained_file": Option(
        "local ImageNet weights for --init imagenet (a timm model.safetensors/.pth/.bin)",
        _optional_str,
        metavar="FILE",
    ),
    "allow_partial": Option(
        "accept a --pretrained-file that lacks some of the model's tensors (they start at random, with a "
        "warning naming them) instead of refusing it",
        bool,
    ),
    "allow_random_imagenet_fallback": Option(
        "when ImageNet weights cannot be had, train from random weights (recorded as init "
        f"'{INIT_RANDOM_FALLBACK}') instead of failing",
        bool,
    ),
    "layer_decay": Option(
        "layer-wise lr decay factor (1: none); applied to pre-trained inits only (imagenet, mae:PATH), "
        "never to random weights",
        float,
    ),
    "label_smoothing": Option("label smoothing of the cross-entropy", float),
    "drop_rate": Option("dropout before the classifier", float),
    "mixup": Option("Mixup alpha (0: off)", float),
    "cutmix": Option("CutMix alpha (0: off)", float),
    "mixup_prob": Option("probability of applying Mixup/CutMix to a batch", float),
    "imbalance": Option(
        "class imbalance: none, weighted_loss (inverse-frequency class weights) or "
        "balanced_sampler (draw classes equally often)",
        choices=IMBALANCE_CHOICES,
    ),
    "select_metric": Option("validation metric that picks the best epoch", choices=SELECT_METRICS),
    "eval_batch_size": Option(
        "batch size for evaluation (none: twice --batch-size)", _optional_int, metavar="N"
    ),
    "vflip": Option("probability of a vertical flip", float),
    "rotation": Option("maximum random rotation in degrees", float),
    "color_jitter": Option("brightness,contrast,saturation jitter", _floats, metavar="B,C,S"),
    "crop_pct": Option("evaluation: share of the resized image kept by the centre crop", float),
}
OPTIONS.update(_STAGE_OPTIONS)

_DEFAULTS: dict[str, Any] = {
    **DATA_DEFAULTS,
    "arch": "convnext_tiny.fb_in1k",
    "init": "imagenet",
    "pretrained_file": None,
    "allow_random_imagenet_fallback": False,
    "allow_partial": False,
    "image_size": 224,
    "epochs": 100,
    "warmup_epochs": 5.0,
    "batch_size": 32,
    "blr": 5e-4,
    "betas": [0.9, 0.999],
    "layer_decay": 0.8,
    "label_smoothing": 0.1,
    "drop_path": 0.1,
    "drop_rate": 0.0,
    "mixup": 0.0,
    "cutmix": 0.0,
    "mixup_prob": 1.0,
    "imbalance": "weighted_loss",
    "select_metric": "macro_f1",
    "eval_batch_size": None,
    "crop_scale_min": 0.75,
    "hflip": 0.5,
    "vflip": 0.0,
    "rotation": 10.0,
    "color_jitter": [0.1, 0.1, 0.05],
    "crop_pct": 0.875,
    **ENGINE_DEFAULTS,
    "min_lr": 1e-6,
}

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
    return copy.deepcopy(_DEFAULTS)


def is_complete(out_dir: str | os.PathLike) -> bool:
    """True when ``out_dir`` holds a finished fine-tuning run (``metrics.json`` is written last)."""
    out = Path(out_dir)
    names = (MODEL_NAME, PREDICTIONS_NAME, VAL_PREDICTIONS_NAME, CONFIG_NAME, SPLITS_NAME, METRICS_NAME)
    return all((out / name).is_file() for name in names)


def load_model(
    out_dir: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """The fine-tuned classifier of a finished run, in eval mode, and the run's ``config.yaml``.

    The config holds what predicting needs: ``classes``, ``image_size``, ``crop_pct`` and, in
    ``run.mean``/``run.std``, the input normalisation.

    Raises:
        FileNotFoundError: when ``out_dir`` lacks ``model.safetensors`` or ``config.yaml``.
    """
    import timm

    from medens.engine import load_yaml

    out = Path(out_dir)
    if not (out / CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"out_dir: expected a fine-tuning run folder with {CONFIG_NAME}, received {out}"
        )
    config = load_yaml(out / CONFIG_NAME)
    state, meta = load_weights(out / MODEL_NAME)
    arch, _ = split_arch(str(meta.get("arch") or config["arch"]))
    model = timm.create_model(arch, pretrained=False, num_classes=len(config["classes"]))
    model.load_state_dict(state)
    return model.to(device).eval(), config


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


def class_weights(targets: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights ``N / (K * n_c)`` (mean 1 over the classes present; 0 for absent classes)."""
    counts = torch.bincount(torch.as_tensor(list(targets), dtype=torch.long), minlength=num_classes).double()
    weights = torch.where(
        counts > 0, counts.sum() / (num_classes * counts.clamp(min=1)), torch.zeros_like(counts)
    )
    return weights.float()


def soft_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy against soft targets (Mixup/CutMix), optionally class-weighted like ``F.cross_entropy``.

    Args:
        logits: ``(B, K)``.
        target: ``(B, K)`` rows summing to 1.
        weight: ``(K,)`` class weights, or None.
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    if weight is None:
        return -(target * logp).sum(-1).mean()
    wt = target * weight
    return -(wt * logp).sum() / wt.sum().clamp(min=1e-12)


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


@torch.no_grad()
def predict_probs(
    model: nn.Module,
    dataset: Any,
    *,
    batch_size: int,
    ctx: RunContext,
    precision: Precision,
    channels_last: bool = False,
    num_workers: int = 0,
) -> np.ndarray:
    """Class probabilities ``(N, K)`` float64 for every item of ``dataset``, in order, on every rank.

    Each rank predicts an interleaved shard; the shards are gathered so all ranks hold the full result.
    """
    dist = ctx.dist
    positions = list(range(dist.rank, len(dataset), dist.world_size))
    loader = DataLoader(
        Subset(dataset, positions), batch_size=batch_size, shuffle=False, num_workers=num_workers
    )
    was_training = model.training
    model.eval()
    chunks = []
    for images, _ in loader:
        images = images.to(dist.device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with precision.autocast():
            logits = model(images)
        chunks.append(torch.softmax(logits.double(), dim=-1).cpu().numpy())
    model.train(was_training)
    local = np.concatenate(chunks) if chunks else np.zeros((0, 0))
    gathered = dist.all_gather_object((positions, local))
    num_classes = max(part[1].shape[1] for part in gathered if part[1].size) if len(dataset) else 0
    probs = np.zeros((len(dataset), num_classes))
    for idx, part in gathered:
        if len(idx):
            probs[idx] = part
    return probs


def _predictions(split_set: Any, probs: np.ndarray, classes: list[str]):
    from medens.evaluate.predictions import Predictions

    return Predictions(
        paths=list(split_set.ids),
        label_names=[classes[t] for t in split_set.targets],
        classes=list(classes),
        probs=probs,
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
    config = resolve_config(_DEFAULTS, config)
    _check_options(config)
    engine = EngineConfig.from_config(config)  # checks epochs, accum_steps, ... before any data is read
    with run_session(config, "finetune", is_complete) as ctx:
        return _finetune(ctx, engine)


def _check_options(config: dict[str, Any]) -> None:
    check_arch(config["arch"])
    init = config["init"]
    if init == INIT_RANDOM_FALLBACK:  # a config.yaml of a run that fell back, reused
        init = config["init"] = "imagenet"
        config["allow_random_imagenet_fallback"] = True
    parse_init(init)
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


def _finetune(ctx: RunContext, engine: EngineConfig) -> Path:
    from medens.data import SplitDataset, build_transforms

    config, dist, out = ctx.config, ctx.dist, ctx.out_dir
    dataset, splits = open_data(config, ctx)
    classes = list(dataset.classes)
    if not splits.get("val") or not splits.get("test"):
        raise ValueError(
            f"splits: expected non-empty validation and test splits, received "
            f"{ {k: len(v) for k, v in splits.items()} }; raise --val-fraction/--test-fraction"
        )

    seed_everything(int(config["seed"]))
    init_requested = config["init"]
    model, init_used = create_classifier(
        config["arch"],
        len(classes),
        init="scratch" if ctx.resuming else init_requested,
        pretrained_file=None if ctx.resuming else config["pretrained_file"],
        allow_random_fallback=bool(config["allow_random_imagenet_fallback"]),
        allow_partial=bool(config["allow_partial"]),
        drop_path_rate=float(config["drop_path"]),
        drop_rate=float(config["drop_rate"]),
    )
    if ctx.resuming:  # the weights come from the checkpoint; the init is what the run recorded
        saved = out / CONFIG_NAME
        init_used = _recorded_init(saved) or init_requested
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
    # Evaluation never scores an image it could not read: such files are left out and listed in metrics.json.
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

    write_run_config(
        ctx,
        {
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
            },
        },
    )

    metadata = {
        "format": MODEL_FORMAT,
        "arch": config["arch"],
        "classes": classes,
        "image_size": size,
        "init": init_used,
        "mean": mean,
        "std": std,
    }

    def evaluate(epoch: int, tr: Trainer) -> dict[str, Any]:
        from medens.evaluate.metrics import summary_metrics

        probs = predict_probs(
            tr.eval_module,
            val_set,
            batch_size=eval_bs,
            ctx=ctx,
            precision=tr.precision,
            channels_last=engine.channels_last,
            num_workers=int(config["num_workers"]),
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
        ctx=ctx,
        precision=trainer.precision,
        channels_last=engine.channels_last,
        num_workers=int(config["num_workers"]),
    )
    val_probs = predict_probs(trainer.eval_module, val_set, **kwargs)
    test_probs = predict_probs(trainer.eval_module, test_set, **kwargs)
    if dist.is_main:
        _write_outputs(out, classes, val_set, val_probs, test_set, test_probs, best, config, skipped)
    dist.barrier()
    return out


def _layer_decay_for(init_used: str, layer_decay: float) -> float:
    """The layer-wise lr decay a run applies: ``layer_decay`` for pre-trained weights, 1 (none) for random ones.

    Layer-wise decay keeps the early layers of a *pre-trained* network close to their weights; on random weights
    (``scratch``, or the ImageNet fallback) it only starves the stem (0.8 gives it a few percent of the lr).
    """
    if init_used in ("scratch", INIT_RANDOM_FALLBACK) and layer_decay < 1.0:
        _logger.info("layer_decay %.3g not applied: init %s has random weights", layer_decay, init_used)
        return 1.0
    return layer_decay


def _recorded_init(config_path: Path) -> str | None:
    from medens.engine import load_yaml

    if not config_path.is_file():
        return None
    value = load_yaml(config_path).get("init")
    return None if value is None else str(value)


def _write_outputs(
    out: Path, classes, val_set, val_probs, test_set, test_probs, best: _Best, config, skipped=None
) -> None:
    from medens.evaluate.metrics import classification_report
    from medens.evaluate.predictions import write_predictions

    write_predictions(out / VAL_PREDICTIONS_NAME, _predictions(val_set, val_probs, classes))
    write_predictions(out / PREDICTIONS_NAME, _predictions(test_set, test_probs, classes))
    metrics = {
        "select_metric": config["select_metric"],
        "best_epoch": best.epoch,
        "best_val_score": best.score if math.isfinite(best.score) else None,
        "classes": classes,
        "test": classification_report(test_probs, np.asarray(test_set.targets), classes),
        "val": classification_report(val_probs, np.asarray(val_set.targets), classes),
        "num_test": len(test_set),
        "num_val": len(val_set),
        # Images of the splits that could not be decoded: not in the predictions, not in any metric.
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

_CLI_KEYS = (
    *DATA_CLI_KEYS,
    "arch",
    "init",
    "pretrained_file",
    "allow_partial",
    "allow_random_imagenet_fallback",
    "image_size",
    *OPTIM_CLI_KEYS,
    "layer_decay",
    "label_smoothing",
    "drop_path",
    "drop_rate",
    "mixup",
    "cutmix",
    "mixup_prob",
    "imbalance",
    "select_metric",
    "eval_batch_size",
    "crop_scale_min",
    "hflip",
    "vflip",
    "rotation",
    "color_jitter",
    "crop_pct",
    *ENGINE_CLI_KEYS,
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``finetune`` subcommand."""
    return add_stage_parser(
        subparsers,
        "finetune",
        help=HELP,
        description=DESCRIPTION,
        defaults=_DEFAULTS,
        keys=_CLI_KEYS,
        func=main,
    )


def main(args: argparse.Namespace) -> int:
    """Run ``finetune`` from parsed arguments; returns the exit code."""
    return run_cli(run_finetune, args, _DEFAULTS)
