"""Distributed data parallel plumbing: one process per device, launched by ``torchrun``.

``torchrun --nproc_per_node=G -m medens.train pretrain ...`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
:func:`init_distributed` reads them and joins the process group (NCCL on GPUs, gloo on CPU). Without them the run
is a single process and every helper here is a cheap no-op, so the trainers never branch on it.

No rank can hang the others: the process group has a finite timeout, stop decisions (signals, non-finite
losses) are agreed on with one small all-reduce per step, and an exception simply ends the process, after which
``torchrun`` stops the remaining ranks.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistContext", "init_distributed", "resolve_device"]

_logger = logging.getLogger(__name__)


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"`` is ``cuda:LOCAL_RANK`` when a GPU is present, else CPU; anything else is passed to torch.

    Raises:
        ValueError: for a string torch does not know as a device, or a CUDA device when CUDA is not available.
    """
    if device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:  # torch: "Expected one of cpu, cuda, ... device type at start ..."
        raise ValueError(
            f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N' (a torch device), received {device!r}"
        ) from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device: expected 'auto' or 'cpu' on this machine (no CUDA device), received {device!r}"
        )
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


@dataclass
class DistContext:
    """Where this process sits in the run.

    Attributes:
        rank: global rank, 0 to ``world_size - 1``.
        world_size: number of processes.
        local_rank: rank on this node (picks the GPU).
        device: this process's device.
        initialized: True when this process joined a process group (and must leave it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized: bool = False

    @property
    def is_main(self) -> bool:
        """Only the main rank writes files and logs progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """In-place all-reduce of ``tensor`` (``"sum"``, ``"max"``, ``"min"``); returns it."""
        if self.distributed:
            ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
            dist.all_reduce(tensor, op=ops[op])
        return tensor

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (a one-element list without distribution)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        """Leave the process group (never blocks on other ranks)."""
        if self.initialized and dist.is_initialized():
            dist.destroy_process_group()
            self.initialized = False


def init_distributed(device: str = "auto", *, timeout_s: float = 1800.0) -> DistContext:
    """Join the process group described by torchrun's environment, or describe a single process.

    Args:
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``; under torchrun each rank takes GPU ``LOCAL_RANK``.
        timeout_s: how long a collective may wait for a missing rank before failing (instead of hanging).

    Returns:
        The :class:`DistContext` of this process.

    Raises:
        ValueError: when torchrun's variables are malformed.
    """
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as err:
        raise ValueError(f"WORLD_SIZE/RANK/LOCAL_RANK: expected integers set by torchrun ({err})") from None
    dev = resolve_device(device, local_rank)
    if world_size <= 1:
        return DistContext(0, 1, 0, dev, False)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(seconds=timeout_s),
            rank=rank,
            world_size=world_size,
            **kwargs,
        )
    _logger.info("rank %d of %d on %s (%s)", rank, world_size, dev, backend)
    return DistContext(rank, world_size, local_rank, dev, True)
