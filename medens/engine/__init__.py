"""The training engine shared by pre-training and fine-tuning.

- :mod:`~medens.engine.trainer`      the loop: accumulation, clipping, AMP, DDP, EMA, non-finite steps, stop/resume
- :mod:`~medens.engine.checkpoint`   checkpoints with every RNG state, read with ``weights_only=True``
- :mod:`~medens.engine.loader`       a resumable DistributedSampler (optionally class-balanced) and the DataLoader
- :mod:`~medens.engine.optim`        AdamW groups, layer-wise lr decay, the batch-scaled lr, warm-up + cosine
- :mod:`~medens.engine.precision`    bf16 / fp16 (with a scaler) / fp32 policy
- :mod:`~medens.engine.distributed`  torchrun process groups (NCCL on GPU, gloo on CPU)
- :mod:`~medens.engine.config`       YAML defaults + command-line overrides, resolved config written out
- :mod:`~medens.engine.records`      logging, ``log.csv``, TensorBoard
- :mod:`~medens.engine.batchnorm`    BatchNorm statistics recomputed over a dataset (precise BN)
"""

from medens.engine.batchnorm import recompute_batchnorm_statistics
from medens.engine.checkpoint import (
    CHECKPOINT_NAME,
    capture_rng_state,
    load_checkpoint,
    preserved_rng,
    restore_rng_state,
)
from medens.engine.config import load_yaml, merge_config, parse_overrides, write_config
from medens.engine.distributed import DistContext, init_distributed, resolve_device
from medens.engine.ema import ModelEma
from medens.engine.loader import ResumableDistributedSampler, build_loader, set_loader_epoch
from medens.engine.optim import WarmupCosine, create_optimizer, param_groups, scaled_lr
from medens.engine.precision import AMP_CHOICES, Precision, resolve_precision
from medens.engine.records import logging_to, setup_logging, write_csv_log
from medens.engine.runtime import configure_determinism, seed_everything
from medens.engine.trainer import (
    EngineConfig,
    NonFiniteLossError,
    Trainer,
    TrainingInterrupted,
    steps_per_epoch,
)

__all__ = [
    "AMP_CHOICES",
    "CHECKPOINT_NAME",
    "DistContext",
    "EngineConfig",
    "ModelEma",
    "NonFiniteLossError",
    "Precision",
    "ResumableDistributedSampler",
    "Trainer",
    "TrainingInterrupted",
    "WarmupCosine",
    "build_loader",
    "capture_rng_state",
    "preserved_rng",
    "configure_determinism",
    "create_optimizer",
    "init_distributed",
    "load_checkpoint",
    "load_yaml",
    "logging_to",
    "merge_config",
    "param_groups",
    "parse_overrides",
    "recompute_batchnorm_statistics",
    "resolve_device",
    "resolve_precision",
    "restore_rng_state",
    "scaled_lr",
    "seed_everything",
    "set_loader_epoch",
    "setup_logging",
    "steps_per_epoch",
    "write_config",
    "write_csv_log",
]
