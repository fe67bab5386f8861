"""Data loading that a resumed run can replay exactly.

:class:`ResumableDistributedSampler` is torch's :class:`~torch.utils.data.DistributedSampler` (one shard per rank,
reshuffled by ``set_epoch``) with two additions: optional per-sample weights (a class-balanced sampler, drawn with
replacement from a generator seeded by seed and epoch) and :meth:`~ResumableDistributedSampler.skip`, which starts
the epoch part-way so a run stopped mid-epoch continues with the very batches it had not yet seen.
:func:`build_loader` also gives the loader a generator seeded by seed and epoch, so worker seeds do not depend on how many epochs ran in this process.

With loader workers, each sample's worker-side randomness (augmentation) is seeded from the seed, the epoch, the
rank and the sample's place in the epoch (the sampler hands ``(index, seed)`` pairs to :class:`SeededSamples`), so
it does not depend on which worker draws the sample nor on how far that worker's random stream has run: a run
stopped mid-epoch and resumed sees the very same augmented images as an uninterrupted one. Workers ignore
SIGTERM/SIGINT (:func:`medens.engine.signals.ignore_stop_signals`), which the main process handles.

:func:`default_num_workers` is the worker count when none is given: one per core this process may run on, at most
:data:`MAX_DEFAULT_WORKERS`.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from medens.engine.signals import ignore_stop_signals

__all__ = [
    "MAX_DEFAULT_WORKERS",
    "ResumableDistributedSampler",
    "SeededSamples",
    "available_cpus",
    "build_loader",
    "default_num_workers",
    "resolve_num_workers",
    "set_loader_epoch",
]

#: The most loader workers a run starts when ``num_workers`` is not given.
MAX_DEFAULT_WORKERS = 4


def available_cpus() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a SLURM allocation), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def default_num_workers() -> int:
    """Loader workers when none are given: one per available core, at most :data:`MAX_DEFAULT_WORKERS`."""
    return min(MAX_DEFAULT_WORKERS, available_cpus())


def resolve_num_workers(num_workers: int | None) -> int:
    """``num_workers`` as given, or :func:`default_num_workers` for None.

    Raises:
        ValueError: a negative count.
    """
    if num_workers is None:
        return default_num_workers()
    if int(num_workers) < 0:
        raise ValueError(f"num_workers: expected 0 or more worker processes, received {num_workers!r}")
    return int(num_workers)


class SeededSamples(Dataset):
    """``dataset`` indexed by ``(index, seed)``: seeds torch, numpy and ``random`` with ``seed``, then loads ``index``.

    Meant for loader workers only (it reseeds the process it runs in), fed by a sampler with ``sample_seeds``.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        return self.dataset[index]


class ResumableDistributedSampler(DistributedSampler):
    """A DistributedSampler that can weight samples and skip the start of an epoch.

    Args:
        dataset: the dataset (only its length is used).
        num_replicas: world size.
        rank: this rank.
        shuffle: reshuffle every epoch (ignored when ``weights`` are given: weighted draws are random anyway).
        seed: base seed shared by all ranks.
        drop_last: drop the tail that does not divide evenly among ranks (otherwise it is padded by repetition).
        weights: optional ``(len(dataset),)`` non-negative sampling weights; an epoch then draws ``len(dataset)``
            indices with replacement.
        sample_seeds: yield ``(index, seed)`` pairs, the seed a function of ``seed``, the epoch, the rank and the
            sample's place in this rank's epoch (for :class:`SeededSamples`).
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        weights: Sequence[float] | torch.Tensor | None = None,
        sample_seeds: bool = False,
    ) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        self.weights = None
        if weights is not None:
            w = torch.as_tensor(weights, dtype=torch.double)
            if w.shape != (len(dataset),) or bool((w < 0).any()) or not float(w.sum()) > 0:
                raise ValueError(
                    f"weights: expected {len(dataset)} non-negative sampling weights with a positive sum, "
                    f"received shape {tuple(w.shape)}"
                )
            self.weights = w
        self.start = 0
        self.sample_seeds = sample_seeds

    def skip(self, num_samples: int) -> None:
        """Start the current epoch at this rank's ``num_samples``-th sample (reset by :meth:`set_epoch`)."""
        if num_samples < 0:
            raise ValueError(f"num_samples: expected >= 0, received {num_samples}")
        self.start = int(num_samples)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.start = 0

    def _epoch_indices(self) -> list[int]:
        n = len(self.dataset)
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        if self.weights is not None:
            return torch.multinomial(self.weights, n, replacement=True, generator=g).tolist()
        if self.shuffle:
            return torch.randperm(n, generator=g).tolist()
        return list(range(n))

    def __iter__(self) -> Iterator[int]:
        indices = self._epoch_indices()
        if not self.drop_last:
            pad = self.total_size - len(indices)
            if pad > 0:
                indices += (indices * math.ceil(pad / len(indices)))[:pad]
        else:
            indices = indices[: self.total_size]
        shard = indices[self.rank : self.total_size : self.num_replicas]
        if not self.sample_seeds:
            return iter(shard[self.start :])
        # One seed per place in this rank's epoch (63 bits: torch.manual_seed takes a signed 64-bit integer).
        seeds = np.random.SeedSequence([self.seed, self.epoch, self.rank]).generate_state(len(shard), np.uint64)
        pairs = zip(shard[self.start :], (int(s) >> 1 for s in seeds[self.start :]), strict=True)
        return iter(pairs)

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = False,
    weights: Sequence[float] | torch.Tensor | None = None,
    num_workers: int | None = 0,
    pin_memory: bool = False,
    persistent_workers: bool = False,
) -> DataLoader:
    """A DataLoader over this rank's shard with a :class:`ResumableDistributedSampler`.

    ``drop_last`` drops the last incomplete *batch* (and, across ranks, the uneven tail). ``num_workers`` None
    means :func:`default_num_workers`. With workers, each sample's augmentation is seeded by its place in the epoch
    (:class:`SeededSamples`) and the workers leave SIGTERM/SIGINT to the main process.

    Raises:
        ValueError: for a non-positive batch size, or a dataset too small for one batch with ``drop_last``.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, received {batch_size!r}")
    num_workers = resolve_num_workers(num_workers)
    sampler = ResumableDistributedSampler(
        dataset,
        num_replicas=world_size,
        rank=rank,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
        weights=weights,
        sample_seeds=num_workers > 0,
    )
    if drop_last and sampler.num_samples < batch_size:
        raise ValueError(
            f"batch_size: {batch_size} is larger than this rank's {sampler.num_samples} samples "
            f"({len(dataset)} in the dataset over {world_size} ranks); lower --batch-size"
        )
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        SeededSamples(dataset) if num_workers > 0 else dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
        worker_init_fn=ignore_stop_signals if num_workers > 0 else None,
        generator=generator,
    )


def set_loader_epoch(loader: DataLoader, epoch: int, *, skip_batches: int = 0) -> None:
    """Prepare ``loader`` for ``epoch``: reshuffle, reseed its workers, and skip the first ``skip_batches``."""
    sampler = loader.sampler
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)
        if skip_batches:
            if not isinstance(sampler, ResumableDistributedSampler):
                raise TypeError("skip_batches: needs a ResumableDistributedSampler (see build_loader)")
            sampler.skip(skip_batches * loader.batch_size)
    base_seed = getattr(sampler, "seed", 0)
    generator = torch.Generator()
    generator.manual_seed((base_seed + 1) * 1_000_003 + epoch)
    loader.generator = generator
