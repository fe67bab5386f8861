"""Data loading that a resumed run can replay exactly.

:class:`ResumableDistributedSampler` is torch's :class:`~torch.utils.data.DistributedSampler` (one shard per rank,
reshuffled by ``set_epoch``) with two additions: optional per-sample weights (a class-balanced sampler, drawn with
replacement from a generator seeded by seed and epoch) and :meth:`~ResumableDistributedSampler.skip`, which starts
the epoch part-way so a run stopped mid-epoch continues with the very batches it had not yet seen.
:func:`build_loader` also gives the loader a generator seeded by seed and epoch, so worker seeds, and with them
worker-side augmentation, do not depend on how many epochs ran in this process.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = ["ResumableDistributedSampler", "build_loader", "set_loader_epoch"]


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
        return iter(shard[self.start :])

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
    num_workers: int = 0,
    pin_memory: bool = False,
    persistent_workers: bool = False,
) -> DataLoader:
    """A DataLoader over this rank's shard with a :class:`ResumableDistributedSampler`.

    ``drop_last`` drops the last incomplete *batch* (and, across ranks, the uneven tail).

    Raises:
        ValueError: for a non-positive batch size, or a dataset too small for one batch with ``drop_last``.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, received {batch_size!r}")
    sampler = ResumableDistributedSampler(
        dataset,
        num_replicas=world_size,
        rank=rank,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
        weights=weights,
    )
    if drop_last and sampler.num_samples < batch_size:
        raise ValueError(
            f"batch_size: {batch_size} is larger than this rank's {sampler.num_samples} samples "
            f"({len(dataset)} in the dataset over {world_size} ranks); lower --batch-size"
        )
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
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
