"""Train/val/test splits: official where the publisher ships them, else stratified (and grouped) from a seed,
or k-fold; written to ``splits.json`` and read back to repeat a run exactly.

Every split keeps each duplicate group (near-identical images, found by :mod:`medens.data.duplicates`, merged
with the groups the dataset knows, e.g. lesions) on one side; the images of a group with conflicting labels are
excluded unless ``keep_conflicts``. ``dedupe=False`` gives plain stratified splits (a leaky protocol, on purpose).

``splits.json`` names items by id (not by position), so it stays valid if a dataset is re-listed::

    {"format": "medens.splits/1", "dataset": "busi", "num_items": 780, "classes": [...], "method": "stratified",
     "seed": 0, "val_fraction": 0.1, "test_fraction": 0.2, "folds": null, "fold": null,
     "dedupe": true, "duplicates": {"method": "phash256-knn+...", "parameters": {"threshold": 96, ...},
     "groups": [...], "conflicts": [...], ...}, "excluded": {"label_conflict": [...]},
     "counts": {"train": {"benign": 306, ...}, ...}, "splits": {"train": ["benign/benign (1).png", ...], ...}}

The duplicate detector's method and every parameter are recorded (``duplicates.method``, ``.parameters``), so a
split made with other settings, or by another version of the detector, says so.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medens.errors import describe_path
from medens.layout import SPLITS_NAME

from .base import SPLIT_NAMES, LabeledDataset
from .duplicates import DEFAULT_MIN_CORRELATION, DEFAULT_THRESHOLD, DuplicateGroups, find_duplicates
from .errors import DatasetError, DatasetNotFoundError
from .filedataset import item_id
from .files import atomic_write_json
from .partition import kfold_partition, stratified_partition

logger = logging.getLogger(__name__)

FORMAT = "medens.splits/1"
Splits = dict[str, list[int]]
#: Why an item is in no split, as ``splits.json`` records it.
EXCLUDED_LABEL_CONFLICT = "label_conflict"


@dataclass
class SplitPlan:
    """A split and how it was made: the method, the duplicate groups respected and the items excluded.

    Attributes:
        splits: ``{"train": [...], "val": [...], "test": [...]}``, sorted indices.
        method: e.g. ``"grouped-stratified"``, ``"official"``, ``"grouped-kfold"``.
        duplicates: The duplicate groups found (None when ``dedupe`` was off).
        excluded: Reason -> indices of items in no split (label conflicts unless kept).
    """

    splits: Splits
    method: str
    duplicates: DuplicateGroups | None = None
    excluded: dict[str, list[int]] = field(default_factory=dict)

    def record(self, dataset: LabeledDataset) -> dict[str, Any]:
        """The duplicate settings, groups and exclusions for ``splits.json`` (items named by id)."""
        ids = dataset.ids
        out: dict[str, Any] = {"excluded": {why: [ids[i] for i in items] for why, items in self.excluded.items()},
                               "num_excluded": sum(len(v) for v in self.excluded.values())}
        if self.duplicates is not None:
            out["duplicates"] = self.duplicates.record(ids)
        return out


def _check_fractions(val_fraction: float, test_fraction: float, folds: int | None, fold: int | None) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise DatasetError(f"argument {name!r} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise DatasetError(
            f"val_fraction + test_fraction must be below 1 to leave a training set, got {val_fraction + test_fraction}"
        )
    if folds is None:
        if fold is not None:
            raise DatasetError(f"argument 'fold' ({fold}) needs 'folds' (the number of folds), got folds=None")
        return
    if int(folds) < 2:
        raise DatasetError(f"argument 'folds' must be at least 2, got {folds}")
    if fold is None or not 0 <= int(fold) < int(folds):
        raise DatasetError(f"argument 'fold' must be in 0..{int(folds) - 1} for folds={folds}, got {fold}")


def _carve(pool: list[int], labels: list[int], groups: list[str | None] | None, fractions: dict[str, float],
           rng: np.random.Generator) -> dict[str, list[int]]:
    """Partition the items ``pool`` (indices into the dataset) by ``fractions`` of the pool."""
    sub_groups = [groups[i] for i in pool] if groups is not None else None
    parts = stratified_partition([labels[i] for i in pool], fractions, rng, sub_groups)
    return {name: sorted(pool[j] for j in part) for name, part in parts.items()}


def _official(dataset: LabeledDataset, official: list[str | None], labels: list[int], groups, val_fraction: float,
              test_fraction: float, folds: int | None, fold: int | None, rng) -> tuple[Splits, str]:
    present = {s for s in official if s is not None}
    fixed = {s: [i for i, o in enumerate(official) if o == s] for s in ("val", "test") if s in present}
    pool = [i for i, o in enumerate(official) if o not in fixed]
    if folds is not None:
        if "test" not in fixed:
            raise DatasetError(
                f"{dataset.name}: k-fold with official splits needs an official test split; found only "
                f"{sorted(present)} (pass use_official=False to cross-validate over every item)"
            )
        pool = [i for i, o in enumerate(official) if o != "test"]
        pool_groups = [groups[i] for i in pool] if groups is not None else None
        parts = kfold_partition([labels[i] for i in pool], int(folds), rng, pool_groups)
        val = sorted(pool[j] for j in parts[int(fold)])
        train = sorted(set(pool) - set(val))
        return {"train": train, "val": val, "test": fixed["test"]}, "official-test+kfold"
    missing = [s for s in ("val", "test") if s not in fixed]
    if not missing:
        return {"train": pool, "val": fixed["val"], "test": fixed["test"]}, "official"
    wanted = {"val": val_fraction, "test": test_fraction}
    share = {"train": 1.0 - val_fraction - test_fraction} | {s: wanted[s] for s in missing}
    total = sum(share.values())
    carved = _carve(pool, labels, groups, {s: v / total for s, v in share.items()}, rng)
    return {**fixed, **carved}, "official+" + "+".join(f"carved-{s}" for s in missing)


def _unofficial(labels: list[int], groups, val_fraction: float, test_fraction: float, folds: int | None,
                fold: int | None, rng) -> tuple[Splits, str]:
    kind = "grouped-" if groups is not None else ""
    if folds is None:
        fractions = {"train": 1.0 - val_fraction - test_fraction, "val": val_fraction, "test": test_fraction}
        return stratified_partition(labels, fractions, rng, groups), f"{kind}stratified"
    parts = kfold_partition(labels, int(folds), rng, groups)
    test = parts[int(fold)]
    rest = sorted(set(range(len(labels))) - set(test))
    val_share = val_fraction / (1.0 - 1.0 / int(folds))
    if val_share >= 1.0:
        raise DatasetError(f"val_fraction {val_fraction} leaves no training data with folds={folds}")
    carved = _carve(rest, labels, groups, {"train": 1.0 - val_share, "val": val_share}, rng)
    return {"train": carved["train"], "val": carved["val"], "test": test}, f"{kind}kfold"


def make_splits(
    dataset: LabeledDataset,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    folds: int | None = None,
    fold: int | None = None,
    use_official: bool = True,
    grouped: bool = True,
    out_dir: str | os.PathLike[str] | None = None,
    split_file: str | os.PathLike[str] | None = None,
    dedupe: bool = True,
    dedupe_threshold: int = DEFAULT_THRESHOLD,
    min_correlation: float = DEFAULT_MIN_CORRELATION,
    keep_conflicts: bool = False,
    hash_cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> Splits:
    """Split a dataset into train/val/test index lists, reproducibly, and record the split.

    Rules, in order:

    1. ``split_file`` given: read it (see :func:`load_splits`); with ``dedupe``, it must keep every duplicate group
       of ``dataset`` on one side (:func:`check_split_file_groups`). The other options of the split are ignored;
       ``splits.json`` records the file as ``source``, with this dataset's root and duplicate statistics.
    2. The dataset has official splits (and ``use_official``): they are kept. A missing ``val`` or ``test``
       part is carved out of the official training part, stratified (and grouped), in the proportions
       ``val_fraction : test_fraction : rest``. With ``folds``, the official test part stays the test split and
       fold ``fold`` of the remaining items becomes ``val``.
    3. Otherwise: stratified by class (grouped when the dataset knows groups and ``grouped``), ``1 - val - test``
       / ``val`` / ``test``. With ``folds=K, fold=i``, fold ``i`` of a stratified K-fold is the test split, and
       ``val_fraction`` of all items is carved from the other folds for validation.

    With ``dedupe`` (the default), near-duplicate images are found first (:mod:`medens.data.duplicates`) and
    each duplicate group, merged with the dataset's own groups, stays in one split (and one fold); the images of
    groups with conflicting labels are in no split unless ``keep_conflicts``. ``splits.json`` records the
    setting, the detector's method and parameters (the threshold among them), the groups and what was excluded.

    Args:
        dataset: Any :class:`LabeledDataset`.
        seed: Seed of the shuffles; the same seed and dataset give the same split on any machine.
        val_fraction: Share of items for validation.
        test_fraction: Share of items for testing.
        folds: Number of folds for k-fold cross-validation, or None.
        fold: Which fold (0-based) this run uses, with ``folds``.
        use_official: Use the publisher's splits when the dataset has them.
        grouped: Keep groups (e.g. all images of one lesion) inside one split, when the dataset knows groups.
        out_dir: If given, ``splits.json`` is written there (atomically).
        split_file: A ``splits.json`` from an earlier run, to repeat it exactly.
        dedupe: Keep near-duplicate images on one side of every split.
        dedupe_threshold: Hamming threshold of the duplicate detector's candidates (bits of its 256-bit
            perceptual hash).
        min_correlation: Aligned detail correlation the detector asks of a candidate pair.
        keep_conflicts: Keep the images of duplicate groups whose labels disagree (excluded by default).
        hash_cache_dir: Folder of the image-signature cache (default: the user cache, see
            :func:`~medens.data.duplicates.default_cache_folder`).
        progress: Show a bar while hashing images.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``: sorted indices into ``dataset``, disjoint.

    Raises:
        DatasetError: Bad fractions or fold numbers, or a split file that does not fit the dataset.
    """
    if split_file is not None:
        splits = load_splits(split_file, dataset)
        duplicates = None
        if dedupe:  # the split file meets this data's duplicate groups, whoever made it and for whichever data
            duplicates = find_duplicates(dataset, threshold=dedupe_threshold, min_correlation=min_correlation,
                                         cache_dir=hash_cache_dir, progress=progress, known_groups=grouped)
            check_split_file_groups(split_file, dataset, splits, duplicates)
        if out_dir is not None:
            target = Path(out_dir) / SPLITS_NAME
            if not target.exists() or not target.samefile(split_file):
                save_splits(target, dataset, splits, _split_file_settings(split_file, dedupe, duplicates, dataset))
        return splits
    plan = plan_splits(dataset, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction, folds=folds,
                       fold=fold, use_official=use_official, grouped=grouped, dedupe=dedupe,
                       dedupe_threshold=dedupe_threshold, min_correlation=min_correlation,
                       keep_conflicts=keep_conflicts, hash_cache_dir=hash_cache_dir, progress=progress)
    if out_dir is not None:
        settings = {"method": plan.method, "seed": seed, "val_fraction": val_fraction,
                    "test_fraction": test_fraction, "folds": folds, "fold": fold, "use_official": use_official,
                    "grouped": grouped, "dedupe": bool(dedupe), "keep_conflicts": bool(keep_conflicts),
                    **plan.record(dataset)}
        save_splits(Path(out_dir) / SPLITS_NAME, dataset, plan.splits, settings)
    logger.info("%s: split by %s%s: %s", dataset.name, plan.method, " (duplicate-aware)" if dedupe else "",
                {k: len(v) for k, v in plan.splits.items()})
    return plan.splits


def plan_splits(dataset: LabeledDataset, *, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2,
                folds: int | None = None, fold: int | None = None, use_official: bool = True, grouped: bool = True,
                dedupe: bool = True, dedupe_threshold: int = DEFAULT_THRESHOLD,
                min_correlation: float = DEFAULT_MIN_CORRELATION, keep_conflicts: bool = False,
                hash_cache_dir: str | os.PathLike[str] | None = None,
                duplicates: DuplicateGroups | None = None, progress: bool = True) -> SplitPlan:
    """:func:`make_splits` without files, with everything it decided (see :class:`SplitPlan`).

    Args:
        dedupe: Find near-duplicate images and keep each group on one side of every split.
        dedupe_threshold, min_correlation: The detector's settings (:func:`~medens.data.duplicates.find_duplicates`).
        keep_conflicts: Keep the images of groups with conflicting labels (excluded by default).
        hash_cache_dir: Folder of the image-signature cache.
        duplicates: Groups already found for this dataset (skips the detection).
        The other arguments: as :func:`make_splits`.
    """
    _check_fractions(val_fraction, test_fraction, folds, fold)
    if dedupe and duplicates is None:
        duplicates = find_duplicates(dataset, threshold=dedupe_threshold, min_correlation=min_correlation,
                                     cache_dir=hash_cache_dir, progress=progress, known_groups=grouped)
    elif not dedupe:
        duplicates = None
    excluded: dict[str, list[int]] = {}
    if duplicates is not None:
        groups = duplicates.group_ids(len(dataset))
        conflicted = duplicates.conflicting_items()
        if conflicted:
            if keep_conflicts:
                logger.warning("%s: %d images in %d groups with conflicting labels are kept (keep_conflicts)",
                               dataset.name, len(conflicted), len(duplicates.conflicts))
            else:
                excluded[EXCLUDED_LABEL_CONFLICT] = conflicted
                logger.warning("%s: %d images in %d duplicate groups with conflicting labels are excluded from "
                               "training and evaluation (keep_conflicts keeps them)", dataset.name,
                               len(conflicted), len(duplicates.conflicts))
    else:
        groups = dataset.groups if grouped else None
    out = set(i for items in excluded.values() for i in items)
    pool = [i for i in range(len(dataset)) if i not in out]
    labels = [dataset.targets[i] for i in pool]
    sub_groups = [groups[i] for i in pool] if groups is not None else None
    if sub_groups is not None and all(g is None for g in sub_groups):
        sub_groups = None
    rng = np.random.default_rng(seed)
    official = dataset.official_splits if use_official else None
    if official is not None:
        splits, method = _official(dataset, [official[i] for i in pool], labels, sub_groups, val_fraction,
                                   test_fraction, folds, fold, rng)
    else:
        splits, method = _unofficial(labels, sub_groups, val_fraction, test_fraction, folds, fold, rng)
    splits = {name: sorted(pool[j] for j in splits.get(name, [])) for name in SPLIT_NAMES}
    if duplicates is not None and method.startswith("official"):
        side = {i: name for name, part in splits.items() for i in part}
        straddling = [g for g in duplicates.groups if len({side.get(i) for i in g if i in side}) > 1]
        if straddling:  # the publisher's split is kept as shipped; say what it leaks
            logger.warning("%s: the official split puts %d duplicate groups (%d images) on more than one side; "
                           "it is kept as the publisher ships it (use_official=False makes a duplicate-aware "
                           "split)", dataset.name, len(straddling), sum(len(g) for g in straddling))
    return SplitPlan(splits, method, duplicates, excluded)


#: Keys of a ``splits.json`` record that describe the data it was written for, not how the split was made: a run
#: that reuses the file records its own.
_DATA_KEYS = ("format", "dataset", "root", "num_items", "classes", "counts", "splits", "duplicates", "dedupe",
              "source")


def _split_file_settings(split_file: str | os.PathLike[str], dedupe: bool, duplicates: DuplicateGroups | None,
                         dataset: LabeledDataset) -> dict[str, Any]:
    """How a reused split was made (from the file), with this run's duplicate setting and statistics."""
    record = json.loads(Path(split_file).read_text(encoding="utf-8"))
    settings = {k: v for k, v in record.items() if k not in _DATA_KEYS}
    settings["source"] = str(split_file)
    settings["dedupe"] = bool(dedupe)
    if duplicates is not None:
        settings["duplicates"] = duplicates.record(dataset.ids)
    return settings


def check_split_file_groups(split_file: str | os.PathLike[str], dataset: LabeledDataset, splits: Splits,
                            duplicates: DuplicateGroups) -> None:
    """Refuse a split file that puts images of one duplicate group of ``dataset`` on different sides.

    A group the publisher's own split already divides (an official split kept as shipped) is a warning, as for
    :func:`plan_splits`; any other divided group would leak test images into training, and is an error.

    Raises:
        DatasetError: naming the file, how many groups straddle, and the first pairs (id and side of each).
    """
    side = {i: name for name, part in splits.items() for i in part}
    official = dataset.official_splits
    leaking, shipped = [], []
    for group in duplicates.groups:
        sides = {side[i] for i in group if i in side}
        if len(sides) < 2:
            continue
        as_shipped = official is not None and len({official[i] for i in group if i in side}) > 1
        (shipped if as_shipped else leaking).append(group)

    def pairs(groups: list[list[int]]) -> str:
        shown = []
        for group in groups[:5]:
            placed = [i for i in group if i in side]
            first = placed[0]
            other = next(i for i in placed if side[i] != side[first])
            shown.append(f"{dataset.ids[first]!r} ({side[first]}) ~ {dataset.ids[other]!r} ({side[other]})")
        return "; ".join(shown) + (f"; ... ({len(groups)} groups in all)" if len(groups) > 5 else "")

    if shipped:
        logger.warning("split file %s: %d duplicate groups that %s's official split divides stay divided: %s",
                       split_file, len(shipped), dataset.name, pairs(shipped))
    if leaking:
        raise DatasetError(
            f"split file {str(split_file)!r}: expected every duplicate group of {dataset.name} "
            f"({dataset.root or 'generated'}) on one side, received a split that divides {len(leaking)} groups "
            f"({sum(len(g) for g in leaking)} images), so a model would be evaluated on near-copies of its training "
            f"images: "
            f"{pairs(leaking)}. Make a new split (drop --split-file), or pass --dedupe off to use it as it is "
            f"(a leaky protocol, on purpose)"
        )


def split_counts(dataset: LabeledDataset, splits: Splits) -> dict[str, dict[str, int]]:
    """Items per class in each split: ``{"train": {"benign": 306, ...}, ...}`` (every class listed)."""
    result = {}
    for name, indices in splits.items():
        counts = Counter(dataset.targets[i] for i in indices)
        result[name] = {cls: counts.get(label, 0) for label, cls in enumerate(dataset.classes)}
    return result


def save_splits(path: str | os.PathLike[str], dataset: LabeledDataset, splits: Splits,
                settings: dict[str, Any] | None = None) -> None:
    """Write ``splits`` as a ``splits.json`` record (ids, counts, settings), atomically."""
    record = {"format": FORMAT, "dataset": dataset.name, "root": dataset.root, "num_items": len(dataset),
              "classes": list(dataset.classes), **(settings or {}),
              "counts": split_counts(dataset, splits),
              "splits": {name: [dataset.ids[i] for i in indices] for name, indices in splits.items()}}
    atomic_write_json(Path(path), record)


def _skipped_ids(dataset: LabeledDataset) -> set[str]:
    if dataset.root is None:
        return set()
    return {item_id(s.path, dataset.root) for s in dataset.skipped}


def load_splits(path: str | os.PathLike[str], dataset: LabeledDataset) -> Splits:
    """Read a ``splits.json`` and map its ids onto ``dataset``.

    Ids of files that this dataset skipped (corrupt) are dropped with a warning; items of the dataset that
    the file does not mention are left out with a warning.

    Raises:
        DatasetNotFoundError: The file does not exist.
        DatasetError: Not a split file, other classes than the dataset's, overlapping splits, or ids the
            dataset does not have.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(
            f"split_file (--split-file): expected a splits.json file, received {str(path)!r}, {describe_path(path)}"
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"split file {str(path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("splits"), dict):
        raise DatasetError(f"split file {str(path)!r}: expected format {FORMAT!r} with a 'splits' object")
    if record.get("classes") != list(dataset.classes):
        raise DatasetError(
            f"split file {str(path)!r} was made for classes {record.get('classes')}, but dataset {dataset.name!r} "
            f"has classes {dataset.classes}; labels would not mean the same"
        )
    position = {item: i for i, item in enumerate(dataset.ids)}
    skipped = _skipped_ids(dataset)
    splits: Splits = {}
    seen: dict[int, str] = {}
    for name in SPLIT_NAMES:
        ids = record["splits"].get(name, [])
        unknown = [i for i in ids if i not in position and i not in skipped]
        if unknown:
            raise DatasetError(
                f"split file {str(path)!r}: {len(unknown)} {name} ids are not in dataset {dataset.name!r} "
                f"(root {dataset.root!r}), e.g. {unknown[:5]}"
            )
        dropped = [i for i in ids if i in skipped]
        if dropped:
            logger.warning("split file %s: %d %s items were skipped as unreadable and are dropped, e.g. %s",
                           path, len(dropped), name, dropped[:3])
        indices = sorted(position[i] for i in ids if i in position)
        for index in indices:
            if index in seen:
                raise DatasetError(f"split file {str(path)!r}: item {dataset.ids[index]!r} is in both "
                                   f"{seen[index]!r} and {name!r}")
            seen[index] = name
        splits[name] = indices
    recorded = {i for items in (record.get("excluded") or {}).values() for i in items}
    unused = len([i for i in range(len(dataset)) if i not in seen and dataset.ids[i] not in recorded])
    if recorded:
        logger.info("split file %s excludes %d items (%s)", path, len(recorded),
                    ", ".join(f"{k}: {len(v)}" for k, v in record["excluded"].items()))
    if unused:
        logger.warning("split file %s does not mention %d items of %s; they are left out", path, unused, dataset.name)
    return splits
