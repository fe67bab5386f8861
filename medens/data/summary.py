"""What a dataset holds, before any training: classes, counts per class and split, image sizes, skipped files."""

from __future__ import annotations

from collections import Counter
from typing import Any

from medens.io import text_table

from .base import LabeledDataset
from .splits import Splits, plan_splits, split_counts

_MAX_SIZES = 12


def summarize(dataset: LabeledDataset, splits: Splits | None = None, *, seed: int = 0, val_fraction: float = 0.1,
              test_fraction: float = 0.2, **dedupe_options: Any) -> dict[str, Any]:
    """Describe ``dataset`` as a JSON-ready dict.

    Args:
        dataset: Any :class:`LabeledDataset`.
        splits: The split to count; None makes the default one (official splits where the dataset has them,
            else stratified from ``seed`` with ``val_fraction`` and ``test_fraction``).
        seed: Seed of the default split.
        val_fraction, test_fraction: Shares of the images the default split gives validation and testing.
        **dedupe_options: Duplicate handling of the default split (``dedupe``, ``dedupe_threshold``,
            ``keep_conflicts``, ``hash_cache_dir``; see :func:`~medens.data.splits.plan_splits`).

    Returns:
        ``{"dataset", "root", "num_images", "classes", "per_class", "split_method", "per_split",
        "image_sizes" ("WxH" -> count, most common first), "num_skipped", "skipped" ([{"path", "reason"}]),
        "duplicate_groups", "images_in_duplicate_groups", "label_conflicts", "num_excluded"}`` (the duplicate
        counts are None for a given split or with ``dedupe=False``).
    """
    duplicates, excluded = None, 0
    if splits is None:
        plan = plan_splits(dataset, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction,
                           **dedupe_options)
        splits, method, duplicates = plan.splits, plan.method, plan.duplicates
        excluded = sum(len(v) for v in plan.excluded.values())
        if not method.startswith("official"):
            shares = (1 - val_fraction - test_fraction, val_fraction, test_fraction)
            method = f"{method} {'/'.join(f'{100 * f:.3g}' for f in shares)}, seed {seed} (default; official splits: none)"
    else:
        method = "given"
    per_class = Counter(dataset.targets)
    sizes = Counter(dataset.image_size(i) for i in range(len(dataset)))
    ordered = sorted(sizes.items(), key=lambda kv: (-kv[1], str(kv[0])))
    shown = {(f"{s[0]}x{s[1]}" if s else "unknown"): n for s, n in ordered[:_MAX_SIZES]}
    if len(ordered) > _MAX_SIZES:
        shown[f"{len(ordered) - _MAX_SIZES} other sizes"] = sum(n for _, n in ordered[_MAX_SIZES:])
    return {
        "dataset": dataset.name,
        "root": dataset.root,
        "num_images": len(dataset),
        "classes": list(dataset.classes),
        "per_class": {cls: per_class.get(i, 0) for i, cls in enumerate(dataset.classes)},
        "split_method": method,
        "per_split": split_counts(dataset, splits),
        "image_sizes": shown,
        "num_skipped": len(dataset.skipped),
        "skipped": [{"path": s.path, "reason": s.reason} for s in dataset.skipped],
        "duplicate_groups": len(duplicates.groups) if duplicates is not None else None,
        "images_in_duplicate_groups": duplicates.images_in_groups if duplicates is not None else None,
        "label_conflicts": len(duplicates.conflicts) if duplicates is not None else None,
        "num_excluded": excluded,
        "dedupe": duplicates is not None,
    }


def format_summary(summary: dict[str, Any], max_skipped: int = 20) -> str:
    """Render :func:`summarize`'s dict as plain-text tables."""
    splits = list(summary["per_split"])
    rows = [[cls, str(summary["per_class"][cls]), *(str(summary["per_split"][s][cls]) for s in splits)]
            for cls in summary["classes"]]
    totals = ["total", str(summary["num_images"]), *(str(sum(summary["per_split"][s].values())) for s in splits)]
    parts = [
        f"dataset {summary['dataset']}  root {summary['root']}",
        f"{summary['num_images']} images, {len(summary['classes'])} classes; split: {summary['split_method']}",
        "",
        text_table(["class", "images", *splits], [*rows, totals]),
        "",
        text_table(["image size (WxH)", "images"], [[k, str(v)] for k, v in summary["image_sizes"].items()]),
        "",
        f"skipped files: {summary['num_skipped']}",
    ]
    if summary.get("duplicate_groups") is not None:
        parts.insert(len(parts) - 1, f"duplicate groups: {summary['duplicate_groups']} holding "
                        f"{summary['images_in_duplicate_groups']} images; label conflicts: "
                        f"{summary['label_conflicts']} ({summary['num_excluded']} images excluded)")
    for item in summary["skipped"][:max_skipped]:
        parts.append(f"  {item['path']}: {item['reason']}")
    if summary["num_skipped"] > max_skipped:
        parts.append(f"  ... and {summary['num_skipped'] - max_skipped} more (use --json for the full list)")
    return "\n".join(parts)
