"""``python -m medens.train pretrain``: entropy-guided masked-autoencoder pre-training of a ConvNeXt.

Pre-trains :class:`medens.models.MaskedConvNeXt` on the (unlabelled) images of the target dataset's training
split and writes, into ``--out``:

- ``encoder.safetensors``: the encoder under timm's names, for ``finetune --init mae:DIR/encoder.safetensors``;
- ``config.yaml``: the resolved configuration (repeat the run with ``--config DIR/config.yaml``);
- ``log.csv``: one row per epoch (loss, lr, images/s, skipped steps);
- ``checkpoint.pt``: the last checkpoint (``--resume`` continues from it);
- ``reconstructions.png``: for a few images, the image, its entropy map, the mask and the reconstruction;
- ``splits.json``: which images were in which split.

Python entry points: :func:`run_pretrain`, :func:`default_config`, :func:`is_complete`.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
from pathlib import Path
from typing import Any

import torch

from medens.engine import EngineConfig, Trainer, create_optimizer, seed_everything, steps_per_epoch
from medens.errors import UsageError
from medens.layout import ENCODER_NAME, RECONSTRUCTIONS_NAME, is_pretrain_complete
from medens.models import ENCODER_FORMAT, MaskedConvNeXt, save_weights
from medens.train.arguments import add_stage_parser, run_stage_cli
from medens.train.configuration import effective_lr, option_checks, resolve_config
from medens.train.options import PRETRAIN_CLI_KEYS, PRETRAIN_DEFAULTS, PRETRAIN_SPLITS
from medens.train.session import (
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

__all__ = ["run_pretrain", "default_config", "is_complete", "mae_step", "add_parser", "main", "ENCODER_NAME"]

_logger = logging.getLogger(__name__)


DESCRIPTION = """\
Pre-train a ConvNeXt (--arch) as a masked autoencoder on the images of the target dataset, hiding patches
chosen by their entropy, and export the encoder for 'finetune --init mae:DIR/encoder.safetensors'.

Writes into --out: encoder.safetensors, config.yaml (the resolved options), log.csv (one row per epoch),
checkpoint.pt (the last checkpoint; --resume continues from it), reconstructions.png (image, entropy map,
mask and reconstruction for a few images) and splits.json.

Options come from the defaults (the paper's) or --preset, then --config YAML, then the flags and --set KEY=VALUE.
Multi-GPU: torchrun --nproc_per_node=G -m medens.train pretrain ...

example (CPU, a minute):
  python -m medens.train pretrain --dataset synthetic --dataset-option num_images=64 \\
      --arch convnext_atto --image-size 64 --epochs 5 --batch-size 16 --out runs/mae
"""

def default_config() -> dict[str, Any]:
    """The resolved defaults of ``pretrain`` (a fresh copy; presets and callers override keys of it)."""
    return copy.deepcopy(PRETRAIN_DEFAULTS)


def is_complete(out_dir: str | os.PathLike) -> bool:
    """True when ``out_dir`` holds a finished pre-training run (``encoder.safetensors`` is written last)."""
    return is_pretrain_complete(out_dir)


def build_model(config: dict[str, Any]) -> MaskedConvNeXt:
    """The masked autoencoder the config describes (bad geometry or names fail here, before any data is read)."""
    return MaskedConvNeXt(
        arch=config["arch"],
        image_size=config["image_size"],
        patch_size=config["patch_size"],
        mask_ratio=config["mask_ratio"],
        masking=config["masking"],
        mask_temperature=float(config["mask_temperature"]),
        mask_prefer=config["mask_prefer"],
        entropy_bins=config["entropy_bins"],
        decoder_dim=config["decoder_dim"],
        decoder_depth=config["decoder_depth"],
        norm_pix_loss=config["norm_pix_loss"],
        drop_path_rate=config["drop_path"],
        ops_backend=config["ops_backend"],
        norm=config["norm"],
    )


def mae_step(model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
    """The trainer's ``step_fn`` for pre-training: the masked autoencoder's loss on a batch of images.

    ``batch`` is the images, or a ``(images, labels)`` pair whose labels are ignored.
    """
    images = batch[0] if isinstance(batch, (list, tuple)) else batch
    return model(images).loss, images.shape[0]


def _check_ops_backend(name: str) -> None:
    """Refuse an ``ops_backend`` that is not a backend, or that cannot run on this machine, before any work."""
    from medens.ops import available_backends

    available = available_backends()
    if name == "auto":
        return
    if name not in available:
        raise UsageError(f"ops_backend: expected 'auto' or one of {sorted(available)}, received {name!r}")
    if not available[name]:
        usable = ["auto", *sorted(k for k, ok in available.items() if ok)]
        raise UsageError(f"ops_backend: expected a backend that can run on this machine ({usable}), received {name!r}")


def run_pretrain(config: dict[str, Any]) -> Path:
    """Pre-train and export the encoder.

    Args:
        config: options over :func:`default_config` (only the keys to change are needed), plus ``out`` (the
            output folder) and optionally ``resume`` (continue the run in ``out``; its ``config.yaml`` is the
            base and ``config`` overrides it).

    Returns:
        The output folder.

    Raises:
        medens.errors.UsageError: bad options (unknown key, wrong type, mask ratio, image size, arch, ...) or an
            output folder that holds another run without ``resume``.
        medens.data.DatasetError: the dataset cannot be opened.
        medens.engine.TrainingInterrupted: stopped by SIGTERM/SIGINT after saving a checkpoint.
        medens.engine.NonFiniteLossError: too many non-finite steps in a row, after saving a checkpoint.
    """
    config = resolve_config(PRETRAIN_DEFAULTS, config, stage="pretrain")
    with option_checks():  # arch, sizes, masking, schedule: before anything slow happens
        _check_ops_backend(config["ops_backend"])
        seed_everything(int(config["seed"]))
        model = build_model(config)
        engine = EngineConfig.from_config(config)
    with run_session(config, "pretrain", is_complete) as ctx:
        return _pretrain(ctx, model, engine)


def check_config(config: dict[str, Any]) -> None:
    """The checks :func:`run_pretrain` makes on its options before any work, and nothing else (no files written,
    no data read, no seeding): for a pipeline to refuse a bad pre-training option before its first stage trains.

    Raises:
        medens.errors.UsageError: as :func:`run_pretrain` would for the same options.
    """
    config = resolve_config(PRETRAIN_DEFAULTS, {**config, "resume": False}, stage="pretrain")
    with option_checks():
        _check_ops_backend(config["ops_backend"])
        build_model(config)
        EngineConfig.from_config(config)


def _pretrain(ctx: RunContext, model: MaskedConvNeXt, engine: EngineConfig) -> Path:
    from medens.data import SplitDataset, build_transforms

    config, dist, out = ctx.config, ctx.dist, ctx.out_dir
    dataset, splits = open_data(config, ctx, {"pre-training": PRETRAIN_SPLITS[config["pretrain_split"]]})
    indices = sorted(i for name in PRETRAIN_SPLITS[config["pretrain_split"]] for i in splits[name])
    if config["pretrain_split"] == "all":
        _logger.warning("pretrain_split=all: pre-training also sees the test images (transductive)")
    transform = build_transforms(
        config["image_size"],
        train=True,
        normalize=False,
        scale=(float(config["crop_scale_min"]), 1.0),
        hflip=float(config["hflip"]),
        rotation=0.0,
        color_jitter=(0.0, 0.0, 0.0),
    )
    train_set = SplitDataset(dataset, indices, transform=transform)
    loader = train_loader(config, train_set, dist)
    seed_everything(int(config["seed"]) + dist.rank)  # masks and augmentation differ between ranks

    lr, effective = effective_lr(config, dist.world_size)
    optimizer = create_optimizer(
        model, lr, weight_decay=float(config["weight_decay"]), betas=tuple(config["betas"])
    )
    per_epoch = steps_per_epoch(loader, engine.accum_steps)
    scheduler = warmup_cosine(config, optimizer, lr, engine, per_epoch)
    trainer = Trainer(
        model, optimizer, scheduler, mae_step, config=engine, out_dir=out, dist=dist, run_config=config
    )
    write_run_config(
        ctx,
        {
            "split_hash": split_hash(dataset, splits),
            "encoder": model.encoder_config(),
            "run": run_facts(ctx, lr, effective, trainer.precision.name),
        },
    )
    _logger.info(
        "pre-training %s on %d %s images (%s masking, ratio %.2f), %d epochs x %d steps, lr %.3g (batch %d)",
        config["arch"],
        len(train_set),
        config["dataset"],
        config["masking"],
        config["mask_ratio"],
        engine.epochs,
        per_epoch,
        lr,
        effective,
    )
    resume_and_fit(ctx, trainer, loader, ENCODER_NAME)

    if dist.is_main:
        _save_reconstructions(model, dataset, splits, config, out)
        # Written last: its presence marks a finished run (is_complete).
        save_weights(
            out / ENCODER_NAME,
            model.encoder_state_dict(),
            {
                "format": ENCODER_FORMAT,
                **model.encoder_config(),
                "epochs": trainer.epoch,
                "dataset": config["dataset"],
            },
        )
        _logger.info("encoder written to %s", out / ENCODER_NAME)
    dist.barrier()
    return out


def _save_reconstructions(model: MaskedConvNeXt, dataset: Any, splits: dict, config: dict, out: Path) -> None:
    from medens.data import SplitDataset, build_transforms
    from medens.models.reconstruction import reconstruct, save_reconstruction_grid

    count = int(config["num_reconstructions"])
    if count <= 0:
        return
    pool = splits.get("val") or splits["train"]
    view = SplitDataset(
        dataset, pool[:count], transform=build_transforms(config["image_size"], normalize=False)
    )
    images = torch.stack([view[i][0] for i in range(len(view))])
    save_reconstruction_grid(out / RECONSTRUCTIONS_NAME, reconstruct(model, images, seed=int(config["seed"])))


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------

def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``pretrain`` subcommand."""
    return add_stage_parser(
        subparsers, "pretrain", description=DESCRIPTION, defaults=PRETRAIN_DEFAULTS, keys=PRETRAIN_CLI_KEYS, func=main
    )


def main(args: argparse.Namespace) -> int:
    """Run ``pretrain`` from parsed arguments; returns the exit code."""
    return run_stage_cli("pretrain", run_pretrain, args, PRETRAIN_DEFAULTS)
