"""How the duplicate detector's defaults were chosen, and the check to run on any dataset medens reads.

For each dataset: generated copies (:mod:`medens.data.nearcopies`: resized, JPEG re-encoded, shifted and
re-cropped by 2-4 px, brighter, darker) of ``--originals`` random images are hidden among all its images and the
detector runs on the lot. Printed: the recall on the copies per kind, the copies joined without their original
(false matches), the groups found among the dataset's own images, the two humps (each image's best aligned
detail correlation with its candidates, copies against distinct images), and the same for other settings::

    python benchmarks/duplicate_threshold.py --dataset busi=../shared/data/busi \\
        --dataset medmnist:pneumoniamnist=../shared/data/medmnist --dataset medmnist:breastmnist=../shared/data/medmnist

Run it on a dataset of your own (``--dataset covid=~/data/COVID-19_Radiography_Dataset``, ``isic2018=...``)
before trusting the defaults there; add ``--json`` for one JSON object per dataset.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from medens.data import load_dataset
from medens.data.duplicates import (
    DEFAULT_MIN_CORRELATION,
    DEFAULT_THRESHOLD,
    PairSimilarity,
    detect,
)
from medens.data.nearcopies import COPY_KINDS, make_injection, score_injection
from medens.data.signatures import image_signatures

SWEEP = [(DEFAULT_THRESHOLD, c) for c in (0.7, 0.75, 0.8, 0.85, 0.9)] + \
        [(t, DEFAULT_MIN_CORRELATION) for t in (48, 64, 80, 112)]


def _dataset(text: str):
    name, sep, root = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=ROOT (e.g. busi=../shared/data/busi), received {text!r}")
    return name, str(Path(root).expanduser())


def check(name: str, root: str, *, originals: int, seed: int, cache_dir: str | None) -> dict:
    """Measure the detector on ``name`` (read from ``root``) with generated copies hidden in it."""
    dataset = load_dataset(name, root)
    thumbs, readable = image_signatures(dataset, cache_dir, progress=False)
    start = time.perf_counter()
    groups, facts = detect(thumbs, readable)
    seconds = time.perf_counter() - start
    conflicts = [g for g in groups if len({dataset.targets[i] for i in g}) > 1]
    copies, source = make_injection(lambda i: dataset.load_image(i), len(dataset), originals=originals, seed=seed)
    default = score_injection(thumbs, copies, source)
    # The two humps: each dataset image's best similarity with its candidates, and each copy's with its original.
    measure = PairSimilarity(np.concatenate([thumbs, copies]), DEFAULT_MIN_CORRELATION)
    own = measure(np.array([(len(thumbs) + c, s[0]) for c, s in enumerate(source)]))
    grouped = {i for g in groups for i in g}
    lonely = np.array([i for i in range(len(thumbs)) if i not in grouped and readable[i]])
    distinct = facts["nearest_similarity"][lonely] if len(lonely) else np.zeros(0)
    sweep = []
    for threshold, min_correlation in SWEEP:
        result = score_injection(thumbs, copies, source, threshold=threshold, min_correlation=min_correlation)
        sweep.append({"threshold": threshold, "min_correlation": min_correlation, **result.summary()})
    return {
        "dataset": name, "num_images": len(dataset), "seconds_detect": round(seconds, 2),
        "groups": len(groups), "images_in_groups": sum(len(g) for g in groups),
        "largest_group": max((len(g) for g in groups), default=0), "label_conflicts": len(conflicts),
        "images_in_conflicts": sum(len(g) for g in conflicts),
        "injection": default.summary(),
        "copy_similarity": {kind: round(float(own[[k == kind for _, k in source]].min()), 3) for kind in COPY_KINDS},
        "distinct_nearest_similarity": {q: round(float(np.nanquantile(distinct, q)), 3)
                                        for q in (0.5, 0.9, 0.99, 1.0)} if len(distinct) else {},
        "sweep": sweep,
    }


def _print(report: dict) -> None:
    print(f"\n{report['dataset']}: {report['num_images']} images; defaults ({DEFAULT_THRESHOLD} bits, correlation "
          f">= {DEFAULT_MIN_CORRELATION}): {report['groups']} groups holding {report['images_in_groups']} images "
          f"(largest {report['largest_group']}), {report['label_conflicts']} label conflicts "
          f"({report['images_in_conflicts']} images); detection {report['seconds_detect']} s")
    inj = report["injection"]
    print(f"  copies of {inj['num_originals']} images hidden among them: recall {inj['overall_recall']:.1%}, "
          f"{inj['false_matches']} copies joined without their original")
    for kind, value in inj["recall"].items():
        print(f"    {kind:16s} recall {value:6.1%}   lowest similarity to its original "
              f"{report['copy_similarity'][kind]:.3f}")
    print(f"  distinct images (in no group): best similarity with a candidate, quantiles "
          f"{report['distinct_nearest_similarity']}")
    print("  other settings: threshold bits, min_correlation -> recall, false matches, groups among the dataset's "
          "own images (images, largest)")
    for row in report["sweep"]:
        print(f"    {row['threshold']:3d} {row['min_correlation']:.2f} -> {row['overall_recall']:.1%}, "
              f"{row['false_matches']}, {row['dataset_groups']} ({row['dataset_images_in_groups']}, "
              f"{row['dataset_largest_group']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=_dataset, action="append", required=True, metavar="NAME=ROOT",
                        help="a dataset medens reads and the folder it is in (repeatable)")
    parser.add_argument("--originals", type=int, default=100, help="images to make copies of (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="chooses the images copied")
    parser.add_argument("--cache-dir", default=None, help="signature cache (default: the user cache)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per dataset")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for name, root in args.dataset:
        report = check(name, root, originals=args.originals, seed=args.seed, cache_dir=args.cache_dir)
        if args.json:
            print(json.dumps(report))
        else:
            _print(report)


if __name__ == "__main__":
    main()
