"""A view of some items of a dataset, with a transform: what a DataLoader iterates over."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from torch.utils.data import Dataset

from .base import LabeledDataset, Skipped
from .errors import CorruptImageError, DatasetError

logger = logging.getLogger(__name__)


class SplitDataset(Dataset):
    """Items ``indices`` of ``dataset``, passed through ``transform``.

    With a transform from :func:`medens.data.build_transforms`, items are ``(float32 tensor (3, H, W), int)``,
    ready for a :class:`torch.utils.data.DataLoader`.

    A file that fails to decode here (it passed the check when the dataset was opened, but is corrupt further
    in, or changed since) is, unless the dataset is ``strict``, logged with its path and replaced by the next
    readable item of this split, so one bad file never stops a run. That substitution is for training only: with
    ``substitute=False`` (evaluation) such a file raises :class:`CorruptImageError` instead, and
    :meth:`without_unreadable` returns the split without the files that cannot be decoded, and lists them, so that
    no image is scored with another's prediction. Open datasets with ``verify="full"`` or a decode cache to rule
    this out entirely.

    Args:
        dataset: The full dataset.
        indices: Positions in ``dataset`` (e.g. ``make_splits(...)["train"]``).
        transform: Callable applied to the PIL image, or None to return the image unchanged.
        substitute: replace an unreadable item by the next readable one (training); False raises instead.

    Attributes:
        targets, ids, paths: Per item of this split, in order.
        classes: The dataset's class names.
    """

    def __init__(self, dataset: LabeledDataset, indices: Sequence[int],
                 transform: Callable[[Any], Any] | None = None, *, substitute: bool = True) -> None:
        bad = [i for i in indices if not 0 <= int(i) < len(dataset)]
        if bad:
            raise DatasetError(f"argument 'indices': expected positions in 0..{len(dataset) - 1}, got {bad[:5]}")
        self.dataset = dataset
        self.indices = [int(i) for i in indices]
        self.transform = transform
        self.substitute = bool(substitute)
        self._unreadable: set[int] = set()

    @property
    def classes(self) -> list[str]:
        return self.dataset.classes

    @property
    def targets(self) -> list[int]:
        return [self.dataset.targets[i] for i in self.indices]

    @property
    def ids(self) -> list[str]:
        return [self.dataset.ids[i] for i in self.indices]

    @property
    def paths(self) -> list[str]:
        paths = self.dataset.paths
        return [paths[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[Any, int]:
        """Return ``(transform(image), label)`` for the ``position``-th item of this split."""
        if not -len(self) <= position < len(self):
            raise IndexError(f"index {position} out of range for a split of {len(self)} items")
        position %= len(self)
        for step in range(len(self)):
            index = self.indices[(position + step) % len(self)]
            if index in self._unreadable:
                continue
            try:
                image, label = self.dataset[index]
            except CorruptImageError as exc:
                if getattr(self.dataset, "strict", False) or not self.substitute:
                    raise
                self._unreadable.add(index)
                logger.error("%s: %s; using the next item of the split instead", self.dataset.name, exc)
                continue
            return (self.transform(image) if self.transform is not None else image), label
        raise DatasetError(f"{self.dataset.name}: no item of this split of {len(self)} can be decoded")

    def without_unreadable(self) -> tuple[SplitDataset, list[Skipped]]:
        """This split without the items whose image cannot be decoded now, and those items' files and reasons.

        Decodes every item once (without the transform). The split returned never substitutes: an item that breaks
        later raises. For evaluation, where an unreadable image must be left out of the metrics, not replaced.
        """
        keep: list[int] = []
        skipped: list[Skipped] = []
        paths = self.dataset.paths
        for index in self.indices:
            try:
                self.dataset.load_image(index)
            except CorruptImageError as exc:
                if getattr(self.dataset, "strict", False):
                    raise
                skipped.append(Skipped(paths[index], exc.reason))
                logger.warning("%s: %s; left out of the evaluation", self.dataset.name, exc)
                continue
            keep.append(index)
        return SplitDataset(self.dataset, keep, self.transform, substitute=False), skipped
