"""The training loop shared by pre-training and fine-tuning.

:class:`Trainer` runs epochs of ``step_fn(model, batch) -> (loss, images)`` with gradient accumulation, clipping,
mixed precision, channels-last, optional ``torch.compile`` and EMA, under DistributedDataParallel when launched by
``torchrun``. It owns the run's state and its checkpoint (atomic, every epoch, and on SIGTERM/SIGINT after the
current optimiser step), so :meth:`Trainer.resume` followed by :meth:`Trainer.fit` continues a stopped run and
reaches the same weights as an uninterrupted one (bit for bit on CPU in deterministic mode, with or without loader
workers: :func:`medens.engine.loader.build_loader` seeds each sample's augmentation by its place in the epoch). A
signal sent to the whole process group stops the run the same way: the loader's workers ignore it.

After its first few optimiser steps the trainer logs how long the stage (and the pipeline planned around it) will
take on this machine (:mod:`medens.engine.estimate`); the progress bar shows the stage's remaining time.

A step whose loss is not finite on any rank is skipped on every rank (no weight changes, counted in
``skipped_steps``); ``max_nonfinite`` such steps in a row save a checkpoint and raise :class:`NonFiniteLossError`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from medens.engine.checkpoint import (
    capture_rng_state,
    check_checkpoint,
    checkpoint_path,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from medens.engine.distributed import DistContext
from medens.engine.ema import ModelEma
from medens.engine.estimate import StepTimer, estimate_message, format_duration, later_epochs
from medens.engine.loader import set_loader_epoch
from medens.engine.precision import resolve_precision
from medens.engine.records import TensorBoardLogger, write_csv_log
from medens.engine.signals import GracefulStop
from medens.errors import UserError
from medens.layout import LOG_NAME

__all__ = [
    "EngineConfig",
    "Trainer",
    "StepFn",
    "NonFiniteLossError",
    "TrainingInterrupted",
    "steps_per_epoch",
]

_logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "medens-checkpoint"

#: ``step_fn(model, batch) -> (loss, number of images)``; runs under autocast with the batch on the device.
StepFn = Callable[[nn.Module, Any], tuple[torch.Tensor, int]]


class _Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class NonFiniteLossError(UserError, RuntimeError):
    """Too many optimiser steps in a row had a non-finite loss; a checkpoint was saved first."""


class TrainingInterrupted(RuntimeError):
    """The run was asked to stop (SIGTERM, SIGINT or :meth:`Trainer.request_stop`) and saved a checkpoint.

    Attributes:
        checkpoint: the checkpoint written before stopping.
        reason: ``"SIGTERM"``, ``"SIGINT"`` or ``"requested"``.
    """

    def __init__(self, checkpoint: Path, reason: str) -> None:
        super().__init__(
            f"training stopped ({reason}); checkpoint saved at {checkpoint}; continue with --resume"
        )
        self.checkpoint = checkpoint
        self.reason = reason


@dataclass
class EngineConfig:
    """Settings of the loop itself (the stage's own options live in its config).

    Attributes:
        epochs: total epochs of the run.
        accum_steps: micro-batches per optimiser step.
        clip_grad: max global gradient norm, or None.
        amp: ``auto``, ``bf16``, ``fp16`` or ``off``.
        channels_last: NHWC memory format for the model and 4-D inputs.
        compile: wrap the model in ``torch.compile``.
        ema_decay: keep an EMA of the weights with this per-step decay, or None.
        max_nonfinite: consecutive non-finite steps that stop the run.
        progress: show a tqdm bar (main rank only).
        tensorboard: ``"auto"``, True or False.
    """

    epochs: int
    accum_steps: int = 1
    clip_grad: float | None = None
    amp: str = "auto"
    channels_last: bool = False
    compile: bool = False
    ema_decay: float | None = None
    max_nonfinite: int = 5
    progress: bool = True
    tensorboard: bool | str = "auto"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> EngineConfig:
        """Pick this dataclass's fields out of a flat run config."""
        return cls(**{f.name: config[f.name] for f in fields(cls) if f.name in config})

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs: expected a positive integer, received {self.epochs!r}")
        if not isinstance(self.accum_steps, int) or self.accum_steps < 1:
            raise ValueError(f"accum_steps: expected a positive integer, received {self.accum_steps!r}")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise ValueError(f"clip_grad: expected a positive norm or null, received {self.clip_grad!r}")
        if not isinstance(self.max_nonfinite, int) or self.max_nonfinite < 1:
            raise ValueError(f"max_nonfinite: expected a positive integer, received {self.max_nonfinite!r}")


def steps_per_epoch(loader: DataLoader, accum_steps: int) -> int:
    """Optimiser steps in one full epoch of ``loader`` (a trailing partial accumulation counts as a step)."""
    return math.ceil(_full_len(loader) / accum_steps)


def _full_len(loader: DataLoader) -> int:
    """Batches in a full epoch, even when the sampler currently skips some."""
    sampler = loader.sampler
    n = getattr(sampler, "num_samples", None)
    if n is None:
        return len(loader)
    return n // loader.batch_size if loader.drop_last else math.ceil(n / loader.batch_size)


class Trainer:
    """Runs, checkpoints and resumes one training run.

    Args:
        model: the model (unwrapped); moved to ``dist.device``.
        optimizer: over ``model``'s parameters.
        scheduler: per-optimiser-step schedule with ``step()``, ``state_dict()``, ``load_state_dict()``.
        step_fn: computes the loss of one batch.
        config: loop settings.
        out_dir: the run folder (checkpoint, ``log.csv``, TensorBoard events).
        dist: this process's place in the run.
        run_config: the resolved run configuration, stored in every checkpoint.
        extra_state: anything else to checkpoint (e.g. the best validation score so far).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: _Stateful,
        step_fn: StepFn,
        *,
        config: EngineConfig,
        out_dir: str | Path,
        dist: DistContext | None = None,
        run_config: Mapping[str, Any] | None = None,
        extra_state: _Stateful | None = None,
    ) -> None:
        self.cfg = config
        self.dist = dist or DistContext()
        self.out_dir = Path(out_dir)
        self.run_config = dict(run_config or {})
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.step_fn = step_fn
        self.extra_state = extra_state
        self.precision = resolve_precision(config.amp, self.dist.device)
        self.scaler = self.precision.make_scaler()

        memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.module = model.to(self.dist.device, memory_format=memory_format)
        self.ema = ModelEma(self.module, config.ema_decay) if config.ema_decay else None
        wrapped: nn.Module = self.module
        if self.dist.distributed:
            device_ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            wrapped = DistributedDataParallel(self.module, device_ids=device_ids)
        self._ddp = wrapped if isinstance(wrapped, DistributedDataParallel) else None
        self.model = torch.compile(wrapped) if config.compile else wrapped

        # Run state (all of it goes into the checkpoint).
        self.epoch = 0  # completed epochs
        self.batch_in_epoch = 0  # micro-batches of the current epoch already trained on
        self.step = 0  # optimiser steps (including skipped ones)
        self.nonfinite_streak = 0
        self.skipped_total = 0
        self.history: list[dict[str, Any]] = []
        self._acc = self._fresh_acc()
        self._stop_reason: str | None = None
        self._signals: GracefulStop | None = None
        self._tb: TensorBoardLogger | None = None
        self._timer = StepTimer()

    # -- public ------------------------------------------------------------------------------------------------

    @property
    def eval_module(self) -> nn.Module:
        """The weights to evaluate and export: the EMA when enabled, else the trained model."""
        return self.ema.module if self.ema is not None else self.module

    @property
    def checkpoint_file(self) -> Path:
        return checkpoint_path(self.out_dir)

    @property
    def finished(self) -> bool:
        return self.epoch >= self.cfg.epochs

    def request_stop(self) -> None:
        """Stop after the current optimiser step (or at the end of the current epoch callback), saving first."""
        self._stop_reason = "requested"

    def fit(
        self,
        loader: DataLoader,
        epoch_end: Callable[[int, Trainer], Mapping[str, Any] | None] | None = None,
    ) -> list[dict[str, Any]]:
        """Train until ``config.epochs`` epochs are complete.

        Args:
            loader: built by :func:`medens.engine.loader.build_loader` (its sampler is reseeded and, after a
                mid-epoch resume, told to skip what was already trained on).
            epoch_end: called on every rank after each epoch with ``(epoch index, trainer)``; the mapping it
                returns (e.g. validation metrics) joins the epoch's row of ``log.csv``.

        Returns:
            The run's history, one dict per epoch.

        Raises:
            TrainingInterrupted: after SIGTERM/SIGINT or :meth:`request_stop`, once the checkpoint is saved.
            NonFiniteLossError: after ``max_nonfinite`` non-finite steps in a row, once the checkpoint is saved.
        """
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._tb = TensorBoardLogger(self.out_dir, self.cfg.tensorboard)
        self._timer = StepTimer()
        try:
            with GracefulStop() as signals:
                self._signals = signals
                while self.epoch < self.cfg.epochs:
                    epoch = self.epoch
                    set_loader_epoch(loader, epoch, skip_batches=self.batch_in_epoch)
                    row = self._train_epoch(loader, epoch)
                    self.epoch, self.batch_in_epoch = epoch + 1, 0
                    self._acc = self._fresh_acc()
                    if epoch_end is not None:
                        row.update(epoch_end(epoch, self) or {})
                    self.history.append(row)
                    self.save()
                    if self.dist.is_main:
                        write_csv_log(self.out_dir / LOG_NAME, self.history)
                        if self._tb is not None:
                            self._tb.log(row, step=epoch + 1)
                        _logger.info("epoch %d/%d: %s", epoch + 1, self.cfg.epochs, _summary(row))
                    if self._agree_stop():
                        raise TrainingInterrupted(self.checkpoint_file, self._stop_name())
        finally:
            if self._tb is not None:
                self._tb.close()
        return self.history

    # -- one epoch ---------------------------------------------------------------------------------------------

    def _fresh_acc(self) -> dict[str, float]:
        return {"loss_sum": 0.0, "images": 0.0, "steps": 0.0, "skipped": 0.0, "seconds": 0.0}

    def _train_epoch(self, loader: DataLoader, epoch: int) -> dict[str, Any]:
        self.model.train()
        accum = self.cfg.accum_steps
        total = _full_len(loader)
        if total == 0:
            raise ValueError("loader: no batches in an epoch (too few images for the batch size and ranks)")
        acc = self._acc
        group_loss = torch.zeros((), device=self.dist.device)
        group_images = 0
        group_finite = torch.ones((), dtype=torch.bool, device=self.dist.device)
        bar = tqdm(
            total=total,
            initial=self.batch_in_epoch,
            desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
            unit="batch",
            dynamic_ncols=True,
            leave=False,
            disable=not (self.dist.is_main and self.cfg.progress),
        )
        tick = time.perf_counter()
        with bar:
            for batch in loader:
                index = self.batch_in_epoch
                group_start = index - index % accum
                group_size = min(accum, total - group_start)
                last_in_group = index - group_start == group_size - 1
                batch = self._to_device(batch)
                sync = (
                    self._ddp.no_sync()
                    if self._ddp is not None and not last_in_group
                    else contextlib.nullcontext()
                )
                with sync:
                    with self.precision.autocast():
                        loss, images = self.step_fn(self.model, batch)
                    scaled = loss.float() / group_size
                    # Every rank runs backward (DDP's gradient all-reduce needs all of them); a non-finite loss
                    # is dealt with at the optimiser step, where all ranks agree to skip it.
                    (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
                loss_value = loss.detach().float()
                group_finite &= torch.isfinite(loss_value)
                group_loss += loss_value * images
                group_images += int(images)
                self.batch_in_epoch += 1
                bar.update(1)
                if not last_in_group:
                    continue

                # One small all-reduce per optimiser step: any rank non-finite, any rank asked to stop, losses.
                status = torch.stack(
                    [
                        (~group_finite).float(),
                        torch.tensor(float(self._stop_requested()), device=self.dist.device),
                        torch.where(group_finite, group_loss, torch.zeros_like(group_loss)),
                        torch.tensor(float(group_images), device=self.dist.device),
                    ]
                )
                bad, stop, loss_sum, n_images = self.dist.all_reduce(status).tolist()
                if bad:
                    self.optimizer.zero_grad(set_to_none=True)
                stepped = bad == 0 and self._optimizer_step()
                self.scheduler.step()
                self.step += 1
                acc["steps"] += 1
                if stepped:
                    acc["loss_sum"] += loss_sum
                    acc["images"] += n_images
                    self.nonfinite_streak = 0
                else:
                    acc["skipped"] += 1
                    self.skipped_total += 1
                    self.nonfinite_streak += 1
                    _logger.warning(
                        "epoch %d step %d: non-finite %s, step skipped (%d in a row)",
                        epoch + 1,
                        self.step,
                        "loss" if bad else "gradients",
                        self.nonfinite_streak,
                    )
                group_loss.zero_()
                group_images = 0
                group_finite.fill_(True)
                acc["seconds"] += time.perf_counter() - tick
                stage_left = self._time_step(epoch, total)
                if acc["images"]:
                    bar.set_postfix(
                        loss=f"{acc['loss_sum'] / acc['images']:.4f}",
                        img_s=f"{acc['images'] / max(acc['seconds'], 1e-9):.1f}",
                        lr=f"{self.scheduler.get_last_lr():.2e}",
                        **({"stage_left": stage_left} if stage_left else {}),
                    )
                if self.nonfinite_streak >= self.cfg.max_nonfinite:
                    self.save()
                    raise NonFiniteLossError(self._nonfinite_message(epoch))
                if stop:
                    self.save()
                    raise TrainingInterrupted(self.checkpoint_file, self._stop_name())
                tick = time.perf_counter()

        seconds = acc["seconds"]
        return {
            "epoch": epoch + 1,
            "step": self.step,
            "lr": self.scheduler.get_last_lr(),
            "train_loss": acc["loss_sum"] / acc["images"] if acc["images"] else float("nan"),
            "images_per_s": acc["images"] / seconds if seconds > 0 else float("nan"),
            "skipped_steps": int(acc["skipped"]),
            "epoch_seconds": seconds,
        }

    def _time_step(self, epoch: int, total: int) -> str | None:
        """Time the step just taken; log the estimate once it is ready. Returns the stage's remaining time."""
        accum = self.cfg.accum_steps
        per_epoch = math.ceil(total / accum)
        left = (self.cfg.epochs - epoch) * per_epoch - math.ceil(self.batch_in_epoch / accum)
        if self._timer.step(left) and self.dist.is_main:
            message, _ = estimate_message(
                self._timer.seconds_per_step, left, per_epoch, self.dist.device.type, later_epochs(self.out_dir)
            )
            _logger.info("%s", message)
        if self._timer.seconds_per_step is None:
            return None
        return format_duration(self._timer.seconds_per_step * left)

    def _optimizer_step(self) -> bool:
        """Unscale, clip, step, update the EMA; False when the gradients were not finite (step skipped)."""
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        # Without clipping, the norm only tells whether the gradients are finite (the fp16 scaler knows that
        # already), so the gradients are not rescaled by 1 in a pass over all of them.
        grad_norm = None
        if params and self.cfg.clip_grad:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.clip_grad)
        elif params and self.scaler is None:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if self.scaler is not None:
            # fp16: the scaler skips steps with inf/NaN gradients itself and lowers its scale; that is routine.
            self.scaler.step(self.optimizer)
            self.scaler.update()
            stepped = True
        elif grad_norm is None or torch.isfinite(grad_norm):
            self.optimizer.step()
            stepped = True
        else:
            stepped = False
        self.optimizer.zero_grad(set_to_none=True)
        if stepped and self.ema is not None:
            self.ema.update(self.module)
        return stepped

    def _to_device(self, batch: Any) -> Any:
        if isinstance(batch, torch.Tensor):
            batch = batch.to(self.dist.device, non_blocking=True)
            if self.cfg.channels_last and batch.ndim == 4 and batch.is_floating_point():
                batch = batch.contiguous(memory_format=torch.channels_last)
            return batch
        if isinstance(batch, (list, tuple)):
            return type(batch)(self._to_device(b) for b in batch)
        if isinstance(batch, dict):
            return {k: self._to_device(v) for k, v in batch.items()}
        return batch

    # -- stopping ----------------------------------------------------------------------------------------------

    def _stop_requested(self) -> bool:
        return self._stop_reason is not None or bool(self._signals and self._signals.requested)

    def _stop_name(self) -> str:
        if self._signals is not None and self._signals.requested:
            return self._signals.signal_name or "signal"
        return self._stop_reason or "requested"

    def _agree_stop(self) -> bool:
        flag = torch.tensor([float(self._stop_requested())], device=self.dist.device)
        return bool(self.dist.all_reduce(flag, "max").item() > 0)

    def _nonfinite_message(self, epoch: int) -> str:
        return (
            f"the loss or gradients were not finite for {self.nonfinite_streak} optimiser steps in a row "
            f"(epoch {epoch + 1}, step {self.step}); stopped after saving {self.checkpoint_file}. "
            f"Try a lower learning rate (--lr/--blr), a longer warm-up, gradient clipping (--clip-grad 1.0), "
            f"full fp32 (--amp off), and check the data for NaN/inf pixels; continue with --resume."
        )

    # -- checkpoints -------------------------------------------------------------------------------------------

    def state_dict(self, rng: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "nonfinite_streak": self.nonfinite_streak,
            "skipped_total": self.skipped_total,
            "epoch_acc": dict(self._acc),
            "history": list(self.history),
            "extra": self.extra_state.state_dict() if self.extra_state is not None else None,
            "config": self.run_config,
            "world_size": self.dist.world_size,
            "rng": rng,
        }

    def save(self) -> Path:
        """Checkpoint the run (a collective: every rank must call it; rank 0 writes)."""
        rng = self.dist.all_gather_object(capture_rng_state())
        if self.dist.is_main:
            save_checkpoint(self.checkpoint_file, self.state_dict(rng))
        return self.checkpoint_file

    def resume(self, path: str | Path | None = None) -> bool:
        """Restore the run from ``path`` (default: this run's checkpoint).

        Returns:
            True when a checkpoint was loaded.

        Raises:
            FileNotFoundError: when ``path`` was given and does not exist.
            RuntimeError: when the file is not a medens checkpoint.
        """
        if path is None:
            path = self.checkpoint_file
            if not path.is_file():
                return False
        state = check_checkpoint(load_checkpoint(path), path, CHECKPOINT_FORMAT)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
            else:
                self.ema = ModelEma(self.module, self.cfg.ema_decay)
        if self.extra_state is not None and state.get("extra") is not None:
            self.extra_state.load_state_dict(state["extra"])
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.step = int(state["step"])
        self.nonfinite_streak = int(state["nonfinite_streak"])
        self.skipped_total = int(state["skipped_total"])
        self._acc = {k: float(v) for k, v in state["epoch_acc"].items()}
        self.history = [dict(row) for row in state["history"]]
        rng = state["rng"]
        if len(rng) == self.dist.world_size:
            restore_rng_state(rng[self.dist.rank])
        else:
            _logger.warning(
                "resume: the checkpoint was written by %d ranks, this run has %d; random state not restored "
                "(the run continues, but not bit-identically)",
                len(rng),
                self.dist.world_size,
            )
        _logger.info("resumed from %s at epoch %d, step %d", path, self.epoch, self.step)
        return True


def _summary(row: Mapping[str, Any]) -> str:
    parts = []
    for key, value in row.items():
        if key in ("epoch",):
            continue
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)
