"""``python -m medens.train pretrain``: entropy-guided masked-autoencoder pre-training of a ConvNeXt.

Pre-trains :class:`medens.models.MaskedConvNeXt` on the (unlabelled) images of the target dataset's training
split and writes, into ``--out``:

- ``encoder.safetensors``: the encoder under timm's names, for ``finetune --init mae:DIR/encoder.safetensors``;
- ``config.yaml``: the resolved configuration (repeat the run with ``--config DIR/config.yaml``);
- ``log.csv``: one row per epoch (loss, lr, images/s, skipped steps);
- ``checkpoint.pt``: the last checkpoint (``--resume`` continues from it);
- ``reconstructions.png``: for a few images, the image, its entropy map, the mask and the reconstruction;
- ``loss_curve.png``: the loss of every epoch;
- ``probe.json``: did the encoder learn anything? A linear and a k-NN probe of the frozen encoder and of the same
  network at its random initialisation, cross-validated over the training and validation images
  (:mod:`medens.evaluate.probe`; ``--no-probe`` leaves it out);
- ``splits.json``: which images were in which split.

Python entry points: :func:`run_pretrain`, :func:`default_config`, :func:`is_complete`.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
from pathlib import Path
from typing import Any

import torch

from medens.engine import (
    EngineConfig,
    Trainer,
    create_optimizer,
    preserved_rng,
    seed_everything,
    steps_per_epoch,
)
from medens.errors import UsageError
from medens.evaluate.plots import plot_loss_curve
from medens.layout import (
    ENCODER_NAME,
    LOSS_CURVE_NAME,
    PROBE_NAME,
    RECONSTRUCTIONS_NAME,
    SPLITS_NAME,
    is_pretrain_complete,
)
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

__all__ = ["run_pretrain", "default_config", "is_complete", "mae_step", "add_parser", "main"]

_logger = logging.getLogger(__name__)


DESCRIPTION = """\
Pre-train a ConvNeXt (--arch) as a masked autoencoder on the images of the target dataset, hiding patches
chosen by their entropy, and export the encoder for 'finetune --init mae:DIR/encoder.safetensors'.

Writes into --out: encoder.safetensors, config.yaml (the resolved options), log.csv (one row per epoch),
checkpoint.pt (the last checkpoint; --resume continues from it), reconstructions.png (image, entropy map,
mask and reconstruction for a few images), loss_curve.png, probe.json (a linear and a k-NN probe of the frozen
encoder against the same network at random weights, cross-validated on the training and validation images)
and splits.json.

The masking grid is image size / patch size per side; --output-stride 16 (or 8) builds the encoder with its last
stage (or two) dilated so that patches finer than 32 px keep exact sparse semantics.

Options come from the defaults (the paper's) or --preset, then --config YAML, then the flags and --set KEY=VALUE.
Multi-GPU: torchrun --nproc_per_node=G -m medens.train pretrain ...

example (CPU, a minute):
  python -m medens.train pretrain --dataset synthetic --dataset-option num_images=64 \\
      --arch convnext_atto --image-size 64 --epochs 5 --batch-size 16 --out runs/mae
"""

def default_config() -> dict[str, Any]:
    """The resolved defaults of ``pretrain`` (a fresh copy; presets and callers override keys of it)."""
    return copy.deepcopy(PRETRAIN_DEFAULTS)


#: True when a folder holds a finished pre-training run (``encoder.safetensors`` is written last): the layout's own
#: test, under the name of this module's Python entry points.
is_complete = is_pretrain_complete


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
        output_stride=int(config["output_stride"]),
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
    with run_session(config, "pretrain", is_pretrain_complete, headline=_grid_line(model)) as ctx:
        return _pretrain(ctx, model, engine)


def _grid_line(model: MaskedConvNeXt) -> str:
    """The masking grid in words, for the first line of the log."""
    rows, cols = model.mask_grid
    return (
        f"masking grid {rows} x {cols}: {model.patch_size} px patches of {model.image_size} px images, encoder "
        f"stride {model.output_stride}, {model.num_patches - model.num_visible} of {model.num_patches} hidden"
    )


def check_config(config: dict[str, Any]) -> None:
    """The checks :func:`run_pretrain` makes on its options before any work, and nothing else (no files written,
    no data read, no seeding): for a pipeline to refuse a bad pre-training option before its first stage trains.

    Raises:
        medens.errors.UsageError: as :func:`run_pretrain` would for the same options.
    """
    config = resolve_config(PRETRAIN_DEFAULTS, {**config, "resume": False}, stage="pretrain")
    with option_checks():
        _check_ops_backend(config["ops_backend"])
        with torch.device("meta"):  # names and geometry, without the memory and time of initialising weights
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
            "mask_grid": list(model.mask_grid),
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
    prober = _Prober(model, dataset, splits, config, out) if dist.is_main and config["probe"] else None
    every = int(config["probe_every"])

    def probe_during_training(epoch: int, _trainer: Trainer) -> dict[str, float]:
        last = epoch + 1 == engine.epochs
        if prober is None or not (last or (every and (epoch + 1) % every == 0)):
            return {}
        record = prober.try_record(model)
        if last:
            prober.final = record
        return _Prober.columns(record) if record is not None else {}

    resume_and_fit(ctx, trainer, loader, ENCODER_NAME, epoch_end=probe_during_training)

    if dist.is_main:
        _save_reconstructions(model, dataset, splits, config, out)
        if prober is not None:
            _write_probe(prober, model, out)
        plot_loss_curve(trainer.history, out / LOSS_CURVE_NAME, title=f"pre-training loss ({config['arch']})")
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


class _Prober:
    """The probes of :mod:`medens.evaluate.probe` for one pre-training run: its images, groups and baseline.

    Uses the training and validation images only, grouped as ``splits.json`` groups them. The baseline is the
    network pre-training started from (the same seed builds it), encoded once. Nothing here draws from the global
    random generators, so probing during training leaves the run (and its exact resume) unchanged.
    """

    def __init__(self, model: MaskedConvNeXt, dataset: Any, splits: dict, config: dict, out: Path) -> None:
        self.dataset, self.splits, self.out = dataset, splits, out
        self.config = config
        self.seed = int(config["seed"])
        self.mask_grid = model.mask_grid
        self.image_size = model.image_size
        self._images = None
        self._random_features = None
        #: The record of the last epoch's probe, once training ends in this process (else None).
        self.final: dict[str, Any] | None = None

    def _probe_images(self):
        """The readable training and validation images, their labels and groups (read on first use)."""
        if self._images is None:
            from medens.data import SplitDataset, build_transforms
            from medens.evaluate.probe import probe_groups

            indices = sorted(self.splits.get("train", []) + self.splits.get("val", []))
            transform = build_transforms(self.config["image_size"], normalize=False)
            with preserved_rng():
                view, unreadable = SplitDataset(
                    self.dataset, indices, transform=transform, substitute=False
                ).without_unreadable()
            if unreadable:
                _logger.info("probe: %d unreadable images left out", len(unreadable))
            split_file = self.out / SPLITS_NAME
            record = json.loads(split_file.read_text("utf-8")) if split_file.is_file() else {}
            dataset_groups = self.dataset.groups
            by_id = dict(zip(self.dataset.ids, dataset_groups, strict=True)) if dataset_groups is not None else None
            groups = probe_groups(
                view.ids, [by_id[i] for i in view.ids] if by_id else None,
                (record.get("duplicates") or {}).get("groups"),
            )
            self._images = (view, view.targets, groups)
        return self._images

    def _features(self, model: MaskedConvNeXt):
        from medens.evaluate.probe import encoder_features

        with preserved_rng():
            return encoder_features(
                model.encoder,
                self._probe_images()[0],
                normalize=model.normalize,
                batch_size=int(self.config["batch_size"]),
                device=next(model.parameters()).device,
                progress=bool(self.config.get("progress", True)),
                refresh_batchnorm=True,
            )

    def random_features(self, device: torch.device):
        if self._random_features is None:
            with preserved_rng():
                seed_everything(self.seed)
                random_init = build_model(self.config).to(device)  # the weights pre-training started from
            self._random_features = self._features(random_init)
        return self._random_features

    def record(self, model: MaskedConvNeXt) -> dict[str, Any]:
        """``probe.json``'s content (raises :class:`medens.evaluate.probe.ProbeSkipped`)."""
        from medens.evaluate.probe import probe_record

        device = next(model.parameters()).device
        _, labels, groups = self._probe_images()
        return probe_record(
            self._features(model), self.random_features(device), labels, groups,
            mask_grid=self.mask_grid, seed=self.seed, extra={"images": "train+val", "image_size": self.image_size},
        )

    def try_record(self, model: MaskedConvNeXt) -> dict[str, Any] | None:
        """:meth:`record`, or None where the probe cannot be scored (:func:`_write_probe` says why)."""
        from medens.evaluate.probe import ProbeSkipped

        try:
            return self.record(model)
        except ProbeSkipped:
            return None

    @staticmethod
    def columns(record: dict[str, Any]) -> dict[str, float]:
        """The balanced accuracy of both probes, encoder and random init, as ``log.csv`` columns."""
        return {
            f"probe_{probe}_{who}": record[key][probe]["balanced_accuracy"]
            for probe in ("linear", "knn")
            for who, key in (("bacc", "encoder"), ("random_bacc", "random_init"))
        }


def _write_probe(prober: _Prober, model: MaskedConvNeXt, out: Path) -> dict[str, Any] | None:
    """Write ``probe.json`` and return it, or say in one line why the probe cannot be scored (None)."""
    from medens.data.files import atomic_write_json
    from medens.evaluate.probe import ProbeSkipped

    try:
        record = prober.final or prober.record(model)
    except ProbeSkipped as skipped:
        _logger.info("probe skipped: %s", skipped)
        (out / PROBE_NAME).unlink(missing_ok=True)
        return None
    atomic_write_json(out / PROBE_NAME, record)
    _logger.info(
        "probe (balanced accuracy, %d-fold over %d train+val images): linear %.3f (random init %.3f, %+.3f), "
        "k-NN %.3f (random init %.3f, %+.3f)",
        record["folds"], record["num_images"],
        record["encoder"]["linear"]["balanced_accuracy"], record["random_init"]["linear"]["balanced_accuracy"],
        record["gain"]["linear"]["balanced_accuracy"],
        record["encoder"]["knn"]["balanced_accuracy"], record["random_init"]["knn"]["balanced_accuracy"],
        record["gain"]["knn"]["balanced_accuracy"],
    )
    return record


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
