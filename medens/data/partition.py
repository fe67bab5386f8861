"""Reproducible partitioning of labelled items: stratified by class, and grouped where groups are known.

Pure functions over label and group lists; :mod:`medens.data.splits` turns them into train/val/test splits.
The unit that is assigned is a *group* (all items sharing a group id); items without a group are their own
unit. A group's class is its most common label, so strata are kept even for grouped data.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np


def _units(labels: Sequence[int], groups: Sequence[str | None] | None) -> dict[int, list[list[int]]]:
    """Units (lists of item indices) per class, in a fixed order (by first item)."""
    members: dict[object, list[int]] = {}
    for index in range(len(labels)):
        group = groups[index] if groups is not None else None
        key = ("group", group) if group is not None else ("item", index)
        members.setdefault(key, []).append(index)
    per_class: dict[int, list[list[int]]] = defaultdict(list)
    for items in members.values():
        counts = Counter(labels[i] for i in items)
        label = min(counts, key=lambda c: (-counts[c], c))
        per_class[label].append(items)
    return dict(sorted(per_class.items()))


def _shuffled_by_size(units: list[list[int]], rng: np.random.Generator) -> list[list[int]]:
    """Random order, then largest units first (stable), so big groups are placed while room is left."""
    order = rng.permutation(len(units))
    shuffled = [units[i] for i in order]
    return sorted(shuffled, key=len, reverse=True)


def _largest_remainder(total: int, fractions: np.ndarray) -> np.ndarray:
    """Integers summing to ``total``, each the floor of ``total * fraction`` plus one for the largest remainders."""
    exact = total * fractions
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def _quotas(class_sizes: list[int], fractions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Integer items per (class, part): rows sum to the class sizes, columns to the rounded part sizes.

    Each quota is the floor of ``fraction * class size``; the items left over go, largest fractional part
    first (random order among equal ones), to parts still below their overall target.
    """
    sizes = np.asarray(class_sizes)
    exact = sizes[:, None] * fractions[None, :]
    quotas = np.floor(exact).astype(int)
    class_left = sizes - quotas.sum(1)
    part_left = _largest_remainder(int(sizes.sum()), fractions) - quotas.sum(0)
    cells = [(c, p) for c in range(len(sizes)) for p in range(len(fractions))]
    tiebreak = rng.random(len(cells))
    cells = [cell for _, _, cell in sorted(
        ((-(exact[c, p] - quotas[c, p]), tiebreak[k], (c, p)) for k, (c, p) in enumerate(cells)))]
    for c, p in cells:
        if class_left[c] > 0 and part_left[p] > 0 and exact[c, p] > quotas[c, p]:
            quotas[c, p] += 1
            class_left[c] -= 1
            part_left[p] -= 1
    for c in np.flatnonzero(class_left):  # leftovers the rule above could not place: largest share first
        for p in np.argsort(-fractions, kind="stable"):
            if class_left[c] == 0:
                break
            take = min(class_left[c], max(part_left[p], 0)) or (class_left[c] if fractions[p] > 0 else 0)
            quotas[c, p] += take
            class_left[c] -= take
            part_left[p] -= take
    return quotas


def _placement_key(quota: int, filled: int, total: int, overall: int, size: int, position: int) -> tuple:
    """Sort key (smallest wins) for giving a unit of ``size`` items to a part.

    First, how much the placement changes the distance to the class's quota plus half the change in the
    distance to the part's overall size (so a single item always goes where its class is short, and a group
    too big for any gap goes where it overshoots least, overall too); then the share of the class quota still
    missing, the items missing, and the part's position.
    """
    class_change = abs(filled + size - quota) - abs(filled - quota)
    overall_change = abs(overall + size - total) - abs(overall - total)
    missing_share = (quota - filled) / quota if quota > 0 else -np.inf
    return (class_change + 0.5 * overall_change, -missing_share, -(quota - filled), position)


def stratified_partition(
    labels: Sequence[int],
    fractions: dict[str, float],
    rng: np.random.Generator,
    groups: Sequence[str | None] | None = None,
) -> dict[str, list[int]]:
    """Split items into parts of the given fractions, per class, keeping each group in one part.

    Each class gets an integer quota of items per part (fractions of the class, rounded so that the parts'
    overall sizes match the fractions of all items, so small classes still feed the small parts). Within a
    class, units (groups, or single items) are shuffled, largest first, and each goes where it brings the
    class's and the parts' counts closest to their quotas (see :func:`_placement_key`). Without groups the
    quotas are met exactly; with groups, counts are as close as whole groups allow.

    Args:
        labels: Class of each item, length N.
        fractions: Part name -> fraction of items (non-negative, summing to 1), e.g. ``{"train": .7, ...}``.
        rng: Source of the shuffle (seeded by the caller).
        groups: Group of each item (None entries are singletons), or None.

    Returns:
        Part name -> sorted item indices; every item in exactly one part.
    """
    names = list(fractions)
    shares = np.array([fractions[n] for n in names], dtype=float)
    shares = shares / shares.sum()
    per_class = _units(labels, groups)
    sizes = [sum(len(u) for u in units) for units in per_class.values()]
    quotas = _quotas(sizes, shares, rng)
    totals = quotas.sum(0)
    overall = np.zeros(len(names), dtype=int)
    parts: dict[str, list[int]] = {name: [] for name in names}
    for row, units in enumerate(per_class.values()):
        filled = np.zeros(len(names), dtype=int)
        for unit in _shuffled_by_size(units, rng):
            best = min(range(len(names)), key=lambda p: _placement_key(
                quotas[row, p], filled[p], totals[p], overall[p], len(unit), p))
            parts[names[best]].extend(unit)
            filled[best] += len(unit)
            overall[best] += len(unit)
    return {name: sorted(items) for name, items in parts.items()}


def kfold_partition(
    labels: Sequence[int],
    folds: int,
    rng: np.random.Generator,
    groups: Sequence[str | None] | None = None,
) -> list[list[int]]:
    """Split items into ``folds`` folds of near-equal size and class mix, keeping each group in one fold.

    Within each class, units are shuffled (largest first) and each goes to the fold holding the fewest items
    of that class, ties to the fold with the fewest items overall, then the lowest fold number.

    Returns:
        ``folds`` sorted lists of item indices; every item in exactly one.
    """
    result: list[list[int]] = [[] for _ in range(folds)]
    for units in _units(labels, groups).values():
        in_class = [0] * folds
        for unit in _shuffled_by_size(units, rng):
            target = min(range(folds), key=lambda f: (in_class[f], len(result[f]), f))
            result[target].extend(unit)
            in_class[target] += len(unit)
    return [sorted(fold) for fold in result]
