"""A training run's session: its process-wide set-up, its data, what it records, and the shared training glue.

:func:`run_session` starts a run (process group, logging into the run folder, determinism, seeds, checks that the
folder holds no other run and that the images fit the device) and undoes it afterwards; :func:`open_data` opens
and splits the dataset the config names; :func:`run_facts` and :func:`write_run_config` record how the run ran;
:func:`train_loader`, :func:`warmup_cosine` and :func:`resume_and_fit` are the steps both stages take.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medens.data.options import open_dataset  # re-exported: a run's data, as the stages open it
from medens.engine import (
    DistContext,
    EngineConfig,
    Trainer,
    WarmupCosine,
    build_loader,
    configure_determinism,
    init_distributed,
    logging_to,
    seed_everything,
    write_config,
)
from medens.errors import UsageError
from medens.io import remove_stale_temporaries
from medens.layout import CHECKPOINT_NAME, CONFIG_NAME, SPLITS_NAME, recorded_stage

__all__ = [
    "RunContext",
    "run_session",
    "check_fits_in_memory",
    "open_dataset",
    "open_data",
    "require_images",
    "FINETUNE_SPLIT_USES",
    "split_hash",
    "run_facts",
    "train_loader",
    "warmup_cosine",
    "write_run_config",
    "resume_and_fit",
]

_logger = logging.getLogger(__name__)


@dataclass
class RunContext:
    """A started run: its resolved config, folder, place among ranks, and whether it resumes."""

    config: dict[str, Any]
    out_dir: Path
    dist: DistContext
    resuming: bool


@contextlib.contextmanager
def run_session(
    config: dict[str, Any], stage: str, is_complete: Callable[[Path], bool], headline: str | None = None
) -> Iterator[RunContext]:
    """A run's process-wide set-up, undone when the block ends (so the Python entry points leave no trace).

    Joins the process group (when launched by torchrun), logs to stderr and ``out/train.log``, sets
    determinism and seeds; refuses an image size whose activations cannot fit the device (see
    :func:`check_fits_in_memory`); removes the temporary files of writes an earlier run on this folder did not finish.
    Refuses to start over another run in the same folder. ``headline`` (what the run is, in a few words) ends the
    log's first line.

    Raises:
        UsageError: when ``out`` already holds a run and ``resume`` is off.
    """
    out_dir = Path(config["out"])
    has_checkpoint = (out_dir / CHECKPOINT_NAME).is_file()
    if not config["resume"] and (has_checkpoint or is_complete(out_dir)):
        other = recorded_stage(out_dir)
        if other not in (None, stage):
            raise UsageError(f"out: {out_dir} holds a {other} run, not a {stage} run; choose another --out")
        raise UsageError(
            f"out: {out_dir} already holds a {stage} run; pass --resume to continue it (or to redo its final "
            f"outputs), or choose another --out"
        )
    saved_flags = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )
    try:
        dist = init_distributed(config["device"], timeout_s=float(config["dist_timeout_s"]))
    except ValueError as err:  # a --device this machine does not have
        raise UsageError(str(err)) from None
    try:
        check_fits_in_memory(config, dist.device)
        if dist.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        with logging_to(out_dir, rank=dist.rank):
            configure_determinism(bool(config["deterministic"]))
            seed_everything(int(config["seed"]))
            if dist.device.type == "cuda":
                torch.backends.cuda.matmul.allow_tf32 = True
                torch.backends.cudnn.allow_tf32 = True
            if dist.is_main:
                remove_stale_temporaries(out_dir)
            resuming = bool(config["resume"]) and has_checkpoint
            _logger.info("%s: %s into %s%s", stage, "resuming" if resuming else "starting", out_dir,
                         f"; {headline}" if headline else "")
            yield RunContext(config, out_dir, dist, resuming)
    finally:
        torch.use_deterministic_algorithms(saved_flags[0])
        torch.backends.cudnn.benchmark = saved_flags[1]
        torch.backends.cudnn.deterministic = saved_flags[2]
        torch.backends.cuda.matmul.allow_tf32 = saved_flags[3]
        torch.backends.cudnn.allow_tf32 = saved_flags[4]
        dist.close()


#: Channels of the narrowest ConvNeXt stem (Atto): the memory estimate is a lower bound for every arch.
_MIN_STEM_CHANNELS = 40


def device_memory_bytes(device: torch.device) -> int:
    """Total memory of ``device``: the GPU's for CUDA, the machine's RAM otherwise (0 when unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 0


def check_fits_in_memory(config: Mapping[str, Any], device: torch.device) -> None:
    """Refuse an ``image_size`` whose training step cannot fit ``device`` (a typo such as 32000 for 320).

    The estimate is a lower bound, so a size that fits is never refused: one batch of float32 input images plus
    the stem's output (``_MIN_STEM_CHANNELS`` channels at a quarter of the side), counted once.

    Raises:
        UsageError: naming ``image_size``, the estimate and the memory of the device.
    """
    size, batch = int(config["image_size"]), int(config["batch_size"])
    per_image = 4 * (3 * size * size + _MIN_STEM_CHANNELS * (size // 4) ** 2)
    needed = batch * per_image
    have = device_memory_bytes(device)
    if have and needed > have:
        raise UsageError(
            f"image_size: expected a size whose batch fits on {device} ({have / 2**30:.1f} GiB), received "
            f"{size}: a batch of {batch} needs at least {needed / 2**30:.1f} GiB for its input and first layer"
        )


#: What the splits of a fine-tuning run are used for; each must hold images.
FINETUNE_SPLIT_USES: dict[str, tuple[str, ...]] = {"training": ("train",), "validation": ("val",), "testing": ("test",)}


def open_data(config: Mapping[str, Any], ctx: RunContext,
              uses: Mapping[str, tuple[str, ...]] | None = None) -> tuple[Any, dict[str, list[int]]]:
    """Open the dataset and split it; rank 0 writes ``splits.json`` into the run folder.

    A resumed run reuses its own ``splits.json``, so it trains on exactly the images it started with.

    Args:
        config: the run's options.
        ctx: the run.
        uses: what the run uses which splits for, e.g. ``{"training": ("train",)}`` (the default): each use must
            find images in its splits (:func:`require_images`).

    Returns:
        ``(dataset, {"train": [...], "val": [...], "test": [...]})``.

    Raises:
        medens.data.DatasetError: unknown dataset, bad options, missing files, a split the run needs is empty.
    """
    from medens.data import make_splits

    dataset = open_dataset(config)
    own_splits = ctx.out_dir / SPLITS_NAME
    split_file = config.get("split_file")
    if ctx.resuming and own_splits.is_file():
        split_file = own_splits
    splits = make_splits(
        dataset,
        seed=int(config["split_seed"]),
        val_fraction=float(config["val_fraction"]),
        test_fraction=float(config["test_fraction"]),
        folds=config.get("folds"),
        fold=config.get("fold"),
        use_official=bool(config["use_official_split"]),
        out_dir=ctx.out_dir if ctx.dist.is_main else None,
        split_file=split_file,
        dedupe=_dedupe_on(config["dedupe"]),
        dedupe_threshold=int(config["dedupe_threshold"]),
        keep_conflicts=bool(config["keep_conflicts"]),
        hash_cache_dir=config.get("cache_dir"),
        progress=bool(config.get("progress", True)) and ctx.dist.is_main,
    )
    ctx.dist.barrier()
    for use, names in (uses or {"training": ("train",)}).items():
        require_images(dataset, splits, names, use, config, split_file)
    return dataset, splits


def require_images(dataset: Any, splits: Mapping[str, list[int]], names: tuple[str, ...], use: str,
                   config: Mapping[str, Any], split_file: str | os.PathLike | None = None) -> None:
    """Refuse splits ``names`` that hold no image between them, saying why they are empty and what would help.

    Raises:
        medens.data.DatasetError: naming the split, the dataset and the cause: a split file without that list or
            with an empty one, an empty official split, or fractions that leave it no image.
    """
    from medens.data import DatasetError

    if any(splits.get(name) for name in names):
        return
    name = names[0]
    if split_file is not None:
        try:
            listed = json.loads(Path(split_file).read_text(encoding="utf-8")).get("splits", {})
        except (OSError, ValueError, AttributeError):
            listed = {}
        cause = (f"the split file {split_file} has no {name!r} list (it has {sorted(listed)}); add one"
                 if name not in listed else f"the split file {split_file} lists no usable {name!r} image")
    elif dataset.official_splits is not None and name in dataset.official_splits:
        cause = f"the publisher's {name} split of {dataset.name} holds no readable image"
    elif dataset.official_splits is not None and name == "train":
        cause = f"{dataset.name}'s official splits leave no image for training"
    elif name == "train":
        cause = f"{dataset.name} holds {len(dataset)} images, too few to split"
    else:
        flag = "--val-fraction" if name == "val" else "--test-fraction"
        cause = f"raise {flag} (now {config.get(name + '_fraction')}) or use more images"
    raise DatasetError(f"splits: expected images for {use} in the {'/'.join(names)} split of {dataset.name}, "
                       f"received none: {cause}")


def _dedupe_on(value: Any) -> bool:
    """``dedupe`` as a bool: ``on``/``off`` (the flag), or a YAML boolean."""
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("on", "true", "yes", "1"):
        return True
    if str(value).lower() in ("off", "false", "no", "0"):
        return False
    raise UsageError(f"dedupe: expected on or off, received {value!r}")


def split_hash(dataset: Any, splits: Mapping[str, list[int]]) -> str:
    """SHA-256 of which image ids are in which split (independent of file formatting and of index order)."""
    canonical = {name: sorted(dataset.ids[i] for i in splits[name]) for name in sorted(splits)}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode("utf-8")).hexdigest()


def run_facts(ctx: RunContext, lr: float, effective_batch: int, precision: str) -> dict[str, Any]:
    """What a run records about where and how it ran (the ``run`` block of ``config.yaml``)."""
    import timm

    import medens

    return {
        "lr": lr,
        "effective_batch_size": effective_batch,
        "world_size": ctx.dist.world_size,
        "device": str(ctx.dist.device),
        "precision": precision,
        "versions": {
            "medens": medens.__version__,
            "torch": torch.__version__,
            "timm": timm.__version__,
            "python": sys.version.split()[0],
        },
        "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]) if sys.argv else "",
    }


def train_loader(
    config: Mapping[str, Any], dataset: Any, dist: DistContext, weights: Any = None
) -> torch.utils.data.DataLoader:
    """This rank's loader of the training images: full batches only, shuffled (or drawn by ``weights``) by seed."""
    return build_loader(
        dataset,
        int(config["batch_size"]),
        rank=dist.rank,
        world_size=dist.world_size,
        seed=int(config["seed"]),
        drop_last=True,
        weights=weights,
        num_workers=config["num_workers"],
        pin_memory=dist.device.type == "cuda",
        persistent_workers=True,
    )


def warmup_cosine(
    config: Mapping[str, Any],
    optimizer: torch.optim.Optimizer,
    lr: float,
    engine: EngineConfig,
    per_epoch: int,
) -> WarmupCosine:
    """The run's schedule: ``warmup_epochs`` of linear warm-up to ``lr``, then cosine to ``min_lr``."""
    return WarmupCosine(
        optimizer,
        lr,
        total_steps=engine.epochs * per_epoch,
        warmup_steps=round(float(config["warmup_epochs"]) * per_epoch),
        min_lr=float(config["min_lr"]),
    )


def write_run_config(ctx: RunContext, facts: Mapping[str, Any]) -> None:
    """Rank 0 writes ``config.yaml``: the resolved options (``resume`` off, so it repeats the run) and ``facts``."""
    if ctx.dist.is_main:
        write_config(ctx.out_dir / CONFIG_NAME, {**ctx.config, "resume": False, **facts})


def resume_and_fit(
    ctx: RunContext,
    trainer: Trainer,
    loader: torch.utils.data.DataLoader,
    final_output: str,
    epoch_end: Callable[[int, Trainer], Mapping[str, Any] | None] | None = None,
) -> None:
    """Restore the checkpoint when resuming, then train the remaining epochs.

    ``final_output`` (the file whose presence marks a finished run) is deleted first when epochs remain: a run
    that trains on makes it stale.
    """
    if ctx.resuming:
        trainer.resume()
    if not trainer.finished and ctx.dist.is_main:
        (ctx.out_dir / final_output).unlink(missing_ok=True)
    trainer.fit(loader, epoch_end=epoch_end)
