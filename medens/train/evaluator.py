"""Fine-tuning's end of epoch: score the validation split, keep the best epoch's weights, predict with them.

:class:`BestEpochEvaluator` is both the trainer's ``epoch_end`` hook and its ``extra_state`` (the best score and
epoch are checkpointed, so a resumed run keeps selecting against the same best). After each epoch it optionally
recomputes the BatchNorm statistics over the training split (precise BatchNorm), predicts the validation split,
and when the selection metric improves writes the weights to ``model.safetensors``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from medens.engine import DistContext, Trainer, recompute_batchnorm_statistics
from medens.inference import sharded_probs
from medens.models import load_weights, save_weights

__all__ = ["BestEpochEvaluator", "InferenceSettings", "precise_bn_applies"]

_logger = logging.getLogger(__name__)

#: The validation metrics added to ``log.csv`` each epoch (as ``val_<name>``).
LOGGED_METRICS: tuple[str, ...] = ("accuracy", "macro_f1", "auroc_macro", "nll")


@dataclass(frozen=True)
class InferenceSettings:
    """How a fine-tuning run predicts a split: batch size, data-loading workers, channels-last memory format."""

    batch_size: int
    num_workers: int | None = 0
    channels_last: bool = False


def precise_bn_applies(requested: bool, model: nn.Module) -> bool:
    """Whether ``precise_bn`` does anything for ``model``: asked for, and the model has BatchNorm layers."""
    if not requested:
        return False
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return True
    _logger.warning("precise_bn: the model has no BatchNorm layer (e.g. a LayerNorm ConvNeXt), so there are no "
                    "statistics to recompute; not applied, and recorded so in config.yaml")
    return False


class BestEpochEvaluator:
    """Scores every epoch on the validation split and keeps the best one's weights.

    Args:
        val_set: the validation split (items ``(image (3, H, W) float, target int)``), unreadable images removed.
        select_metric: the :func:`medens.evaluate.metrics.summary_metrics` key to maximise (NaN never improves).
        model_path: where the best weights go (``model.safetensors``), written by the main rank only.
        metadata: the weights' metadata (arch, classes, normalisation...); ``epoch`` is added (1-based).
        dist: the process group (every rank predicts a shard).
        inference: batch size, workers and memory format of the predictions.
        bn_set: the training split with evaluation transforms for precise BatchNorm, or None for none.

    Attributes:
        score: the best validation score so far (``-inf`` before the first finite one).
        epoch: its epoch, 1-based (``-1`` before).
    """

    def __init__(
        self,
        val_set: Any,
        *,
        select_metric: str,
        model_path: Path,
        metadata: dict[str, Any],
        dist: DistContext,
        inference: InferenceSettings,
        bn_set: Any | None = None,
    ) -> None:
        self.val_set = val_set
        self.select_metric = select_metric
        self.model_path = Path(model_path)
        self.metadata = metadata
        self.dist = dist
        self.inference = inference
        self.bn_set = bn_set
        self.score = -math.inf
        self.epoch = -1

    # The trainer checkpoints this state with the run.
    def state_dict(self) -> dict[str, Any]:
        return {"score": self.score, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.score, self.epoch = float(state["score"]), int(state["epoch"])

    def predict(self, trainer: Trainer, split_set: Any) -> np.ndarray:
        """Class probabilities ``(N, K)`` float64 of ``trainer``'s evaluation model on ``split_set``, on every
        rank."""
        return sharded_probs(
            trainer.eval_module,
            split_set,
            batch_size=self.inference.batch_size,
            dist=self.dist,
            precision=trainer.precision,
            channels_last=self.inference.channels_last,
            num_workers=self.inference.num_workers,
        )

    def __call__(self, epoch: int, trainer: Trainer) -> dict[str, Any]:
        """The ``epoch_end`` hook (``epoch`` 0-based): the validation metrics for ``log.csv`` and ``best_epoch``."""
        from medens.evaluate.metrics import summary_metrics

        if self.bn_set is not None:
            recompute_batchnorm_statistics(trainer.eval_module, self.bn_set, batch_size=self.inference.batch_size,
                                           num_workers=self.inference.num_workers)
        metrics = summary_metrics(self.predict(trainer, self.val_set), np.asarray(self.val_set.targets))
        score = metrics[self.select_metric]
        if not math.isnan(score) and score > self.score:
            self.score, self.epoch = float(score), epoch + 1
            self._save(trainer, epoch + 1)
        return {f"val_{k}": v for k, v in metrics.items() if k in LOGGED_METRICS} | {"best_epoch": self.epoch}

    def restore_best(self, trainer: Trainer) -> None:
        """Load the best epoch's weights into ``trainer``'s evaluation model; when no epoch scored (every one NaN,
        e.g. a single-class validation split), the last epoch's weights are saved and kept."""
        if not self.model_path.is_file():
            self._save(trainer, trainer.epoch)
            self.dist.barrier()
        state, _ = load_weights(self.model_path)
        trainer.eval_module.load_state_dict(state)

    def _save(self, trainer: Trainer, epoch: int) -> None:
        if self.dist.is_main:
            save_weights(self.model_path, trainer.eval_module.state_dict(), {**self.metadata, "epoch": epoch})
