"""The interface every dataset in :mod:`medens.data` offers, whatever it is read from.

A dataset is a sequence of ``(image, label)`` items, where ``image`` is an 8-bit RGB :class:`PIL.Image.Image`
and ``label`` an ``int`` indexing :attr:`LabeledDataset.classes`. Around the items it carries what splitting,
reporting and caching need: one id per item (stable names for ``predictions.csv`` and ``splits.json``),
the official split of each item where the publisher ships one, the group of each item where items come in
groups (all images of one lesion), and the files that were skipped and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from .errors import DatasetError

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class Skipped:
    """A file left out of a dataset, and why (``"truncated ..."``, ``"no label in the CSV"``, ...)."""

    path: str
    reason: str


class LabeledDataset(Dataset):
    """Base class: a labelled image dataset with ids, optional official splits and groups.

    Subclasses set the attributes below in ``__init__`` and implement :meth:`load_image`,
    :meth:`image_size` and :meth:`fingerprint`.

    Attributes:
        name: Registry name, e.g. ``"busi"`` or ``"medmnist:breastmnist"``.
        root: Folder the data was read from (``None`` for generated data).
        classes: Class names; ``label`` indexes this list. Fixed and documented per dataset.
        targets: One label per item.
        ids: One unique, stable name per item (a path relative to ``root`` for files).
        strict: Whether a corrupt image is an error (True) or is skipped with a warning (False).
        skipped: Files left out while reading, with reasons.
    """

    name: str
    root: str | None
    classes: list[str]
    targets: list[int]
    ids: list[str]
    strict: bool
    skipped: list[Skipped]
    _splits: list[str | None]
    _groups: list[str | None]

    def _init_items(
        self,
        targets: list[int],
        ids: list[str],
        splits: list[str | None] | None = None,
        groups: list[str | None] | None = None,
    ) -> None:
        """Store per-item metadata after checking it is consistent with :attr:`classes`."""
        count = len(targets)
        if len(ids) != count or len(set(ids)) != count:
            raise DatasetError(f"{self.name}: expected {count} unique item ids, got {len(set(ids))}")
        bad = [t for t in targets if not 0 <= t < len(self.classes)]
        if bad:
            raise DatasetError(
                f"{self.name}: labels must lie in 0..{len(self.classes) - 1} ({len(self.classes)} classes), "
                f"found {sorted(set(bad))[:5]}"
            )
        self.targets = [int(t) for t in targets]
        self.ids = list(ids)
        self._splits = list(splits) if splits is not None else [None] * count
        self._groups = list(groups) if groups is not None else [None] * count
        unknown = {s for s in self._splits if s is not None and s not in SPLIT_NAMES}
        if unknown:
            raise DatasetError(f"{self.name}: official splits must be among {SPLIT_NAMES}, found {unknown}")

    # ----------------------------------------------------------------- what subclasses provide
    def load_image(self, index: int) -> Image.Image:
        """Decode item ``index`` as an 8-bit RGB image. Raises :class:`CorruptImageError` if it cannot."""
        raise NotImplementedError

    def image_size(self, index: int) -> tuple[int, int] | None:
        """(width, height) of item ``index`` as stored, if known without decoding it."""
        raise NotImplementedError

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this dataset's pixels (files, mtimes and sizes, or generator parameters).

        The decode cache hashes it: a change in any part means the cache is rebuilt.
        """
        raise NotImplementedError

    # ----------------------------------------------------------------- shared behaviour
    @property
    def paths(self) -> list[str]:
        """Where each item comes from: an absolute file path, or the item id for data without files."""
        return list(self.ids)

    @property
    def official_splits(self) -> list[str | None] | None:
        """The publisher's split (``"train"``, ``"val"``, ``"test"``) of each item, or None if it ships none."""
        return list(self._splits) if any(s is not None for s in self._splits) else None

    @property
    def groups(self) -> list[str | None] | None:
        """The group of each item (e.g. lesion id; items of one group stay in one split), or None."""
        return list(self._groups) if any(g is not None for g in self._groups) else None

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        """Return ``(RGB image, label)`` for item ``index`` (negative indices count from the end)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} items")
        index %= len(self)
        return self.load_image(index), self.targets[index]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, items={len(self)}, classes={self.classes})"
