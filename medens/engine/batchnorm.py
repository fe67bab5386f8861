"""Precise BatchNorm: running statistics recomputed over a whole dataset for fixed weights."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader, Dataset

from medens.engine.loader import resolve_num_workers
from medens.engine.signals import ignore_stop_signals

__all__ = ["recompute_batchnorm_statistics"]


@torch.no_grad()
def recompute_batchnorm_statistics(
    model: nn.Module, dataset: Dataset, batch_size: int = 64, num_workers: int = 0
) -> bool:
    """Replace every BatchNorm layer's running statistics by their average over ``dataset`` (one pass, in order).

    ``torch.optim.swa_utils.update_bn`` does the averaging (a cumulative mean over batches); this adds the loader
    and the model's device. Called on every rank with the same dataset, it leaves every rank the same statistics.

    Args:
        model: the model whose statistics are replaced (left in the mode it was in).
        dataset: ``(image tensor, label)`` items.
        batch_size: images per forward pass.
        num_workers: loader worker processes.

    Returns:
        Whether the model has BatchNorm layers (False: nothing was done).

    A last batch of a single image is left out (when there are others): a BatchNorm layer after global pooling
    sees one value per channel there, which it refuses in training mode.
    """
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return False
    device = next(model.parameters()).device
    workers = resolve_num_workers(num_workers)
    single_last = len(dataset) > 1 and len(dataset) % batch_size == 1
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, drop_last=single_last,
                        worker_init_fn=ignore_stop_signals if workers else None)
    update_bn((images for images, _ in loader), model, device=device)
    return True
