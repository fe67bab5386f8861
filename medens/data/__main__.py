"""``python -m medens.data``: look at a dataset before training on it.

Prints the classes, the images per class and split, the image sizes seen, and the files skipped and why::

    python -m medens.data --dataset busi --data-root ~/data/Dataset_BUSI_with_GT
    python -m medens.data --dataset medmnist:breastmnist --data-root ~/.medmnist --json
    python -m medens.data --dataset synthetic --dataset-option num_images=300 --dataset-option image_size=64
    python -m medens.data --dataset busi --data-root ~/data/BUSI --duplicates      # groups, conflicts, evidence

``medens data ...`` is the same command. Exit status: 0 on success, 2 for a usage error (an unknown option or
dataset name, an option value of the wrong type or range, a ``--sheet`` over the data), 1 when the dataset cannot
be read (the message says why).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medens.cli import config_file_argument, config_file_exit_code, run_command
from medens.engine.config import parse_overrides
from medens.errors import UsageError
from medens.flags import flag_name

from .duplicates import HASH_BITS, find_duplicates
from .filedataset import VERIFY_MODES
from .options import DATA_DEFAULTS, DATA_OPTIONS, SHARED_DATA_KEYS, add_data_flags
from .registry import load_dataset
from .summary import format_summary, summarize


class _DeprecatedAlias(argparse.Action):
    """An old spelling of a flag: works as before, with a deprecation note on stderr."""

    def __init__(self, *args: Any, new: str, **kwargs: Any) -> None:
        self.new = new
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        sys.stderr.write(f"{parser.prog}: note: {option_string} is deprecated; use {self.new}\n")
        if self.dest == "dataset_options":
            setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), values])
        else:
            setattr(namespace, self.dest, values)


def build_parser(prog: str = "python -m medens.data") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Look at a dataset before training on it: its classes, images per class and split, "
                    "image sizes, and the files skipped and why.",
        epilog="\n".join(line.strip() for line in __doc__.splitlines() if line.startswith("    python")),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    # The data flags of every command, with their one help text (medens.data.options).
    add_data_flags(parser, ("dataset", "data_root", "dataset_options", "split_seed", "val_fraction",
                            "test_fraction"), values={**DATA_DEFAULTS, "dataset_options": []})
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of tables")
    parser.add_argument("--strict", action="store_true", help="fail on the first corrupt image instead of skipping it")
    parser.add_argument("--verify", choices=VERIFY_MODES, default=None,
                        help="how image files are checked (default header; full decodes every file)")
    parser.add_argument("--seed", dest="split_seed", type=int, action=_DeprecatedAlias, new="--split-seed",
                        help=argparse.SUPPRESS)
    parser.add_argument("--option", dest="dataset_options", action=_DeprecatedAlias, new="--dataset-option",
                        help=argparse.SUPPRESS)
    config_file_argument(parser)
    dup = parser.add_argument_group("duplicates")
    dup.add_argument("--duplicates", action="store_true",
                     help="report the near-duplicate groups and label conflicts, draw them in a PNG contact sheet "
                          "(file, class, distance and similarity of every image) and plot each image's "
                          "nearest-neighbour distance and similarity with the thresholds (with --json: one JSON "
                          "object with images_in_groups, groups, conflicts, threshold, method, parameters)")
    add_data_flags(dup, ("dedupe", "dedupe_threshold", "keep_conflicts", "cache_dir"), values=DATA_DEFAULTS)
    dup.add_argument("--sheet", default=None, metavar="PNG",
                     help="where --duplicates draws the contact sheet (default: duplicates-<dataset>.png here); never "
                          "a file of the dataset, a folder of its images, or another file in its folder")
    dup.add_argument("--plot", default=None, metavar="PNG",
                     help="where --duplicates plots the nearest-neighbour distances (default: "
                          "duplicates-<dataset>-distances.png here); never over the data, as --sheet")
    return parser


def _checked(args: argparse.Namespace) -> dict[str, Any]:
    """The reader options of ``--dataset-option``, after checking every data flag's value against its limits.

    Raises:
        UsageError: an ill-formed ``--dataset-option`` item, or a value outside its flag's limits (named by the flag).
    """
    for key in SHARED_DATA_KEYS:
        option = DATA_OPTIONS[key]
        value = getattr(args, key)
        if value is not None and not option.repeated:
            try:
                option.check(flag_name(key, option), value)
            except ValueError as err:
                raise UsageError(str(err)) from None
    options: dict[str, Any] = {}
    for item in args.dataset_options:  # KEY=VALUE from the command line; a --config file may give a mapping
        if isinstance(item, dict):
            options.update(item)
            continue
        try:
            options.update(parse_overrides([str(item)], option="--dataset-option"))
        except ValueError as err:
            raise UsageError(str(err)) from None
    return options


def _listing(dataset, group: list[int], most: int = 8) -> str:
    shown = ", ".join(f"{dataset.ids[i]} [{dataset.classes[dataset.targets[i]]}]" for i in group[:most])
    return shown + (f", ... and {len(group) - most} more" if len(group) > most else "")


def _duplicates(args: argparse.Namespace, dataset) -> int:
    from .sheet import check_sheet_path, distance_plot, duplicate_sheet

    stem = f"duplicates-{dataset.name.replace(':', '-')}"
    sheet = Path(args.sheet or f"{stem}.png")
    plot = Path(args.plot or f"{stem}-distances.png")
    check_sheet_path(dataset, sheet)  # before the hashing: neither PNG ever overwrites or joins the data
    check_sheet_path(dataset, plot, option="--plot")
    found = find_duplicates(dataset, threshold=args.dedupe_threshold, cache_dir=args.cache_dir)
    duplicate_sheet(dataset, found, sheet)
    distance_plot(dataset.name, found, plot)
    record = {"dataset": dataset.name, "num_images": len(dataset), **found.record(dataset.ids),
              "num_groups": len(found.groups), "num_conflicting_images": len(found.conflicting_items()),
              "sheet": str(sheet), "plot": str(plot)}
    if args.json:
        print(json.dumps(record, indent=1))
        return 0
    print(f"dataset {dataset.name}: {len(dataset)} images; candidates within {found.threshold} bits of a "
          f"{HASH_BITS}-bit perceptual hash (nearest {found.neighbours}), copies when their aligned detail "
          f"correlates >= {found.min_correlation}")
    print(f"{found.num_pairs} near-identical pairs -> {len(found.groups)} groups holding {found.images_in_groups} "
          f"images (largest: {found.largest_group})")
    print(f"label conflicts: {len(found.conflicts)} groups, {len(found.conflicting_items())} images "
          f"({'kept' if args.keep_conflicts else 'excluded'} by the splits)")
    for group in found.conflicts[:20]:
        print("  " + _listing(dataset, group))
    print(f"contact sheet: {sheet}")
    print(f"nearest-neighbour distances: {plot}")
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "python -m medens.data") -> int:
    """Run the command on ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(prog)
    code = config_file_exit_code(prog, parser, argv)
    if code is not None:
        return code
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return run_command(prog, lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    options = _checked(args)
    if args.strict:
        options["strict"] = True
    if args.verify is not None:
        options["verify"] = args.verify
    dataset = load_dataset(args.dataset, args.data_root, **options)
    if args.duplicates:
        return _duplicates(args, dataset)
    summary = summarize(dataset, seed=args.split_seed, val_fraction=args.val_fraction,
                        test_fraction=args.test_fraction, dedupe=args.dedupe == "on",
                        dedupe_threshold=args.dedupe_threshold, keep_conflicts=bool(args.keep_conflicts),
                        hash_cache_dir=args.cache_dir)
    print(json.dumps(summary, indent=1) if args.json else format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
