"""``python -m medens.data``: look at a dataset before training on it.

Prints the classes, the images per class and split, the image sizes seen, and the files skipped and why::

    python -m medens.data --dataset busi --data-root ~/data/Dataset_BUSI_with_GT
    python -m medens.data --dataset medmnist:breastmnist --data-root ~/.medmnist --json
    python -m medens.data --dataset synthetic --option num_images=300 --option image_size=64

Exit status: 0 on success, 2 when the dataset cannot be read (the message says why).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from .errors import DatasetError
from .filedataset import VERIFY_MODES
from .registry import list_datasets, load_dataset
from .summary import format_summary, summarize


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), yaml.safe_load(value)


def build_parser() -> argparse.ArgumentParser:
    names = ", ".join(list_datasets()) + ", medmnist:<flag>"
    parser = argparse.ArgumentParser(
        prog="python -m medens.data",
        description="Look at a dataset before training on it: its classes, images per class and split, "
                    "image sizes, and the files skipped and why.",
        epilog="\n".join(line.strip() for line in __doc__.splitlines() if line.startswith("    python")),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help=f"dataset name: {names}")
    parser.add_argument("--data-root", default=None, help="folder the dataset was unpacked into (not for synthetic)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of tables")
    parser.add_argument("--strict", action="store_true", help="fail on the first corrupt image instead of skipping it")
    parser.add_argument("--verify", choices=VERIFY_MODES, default=None,
                        help="how image files are checked (default header; full decodes every file)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the default split shown (default 0)")
    parser.add_argument("--option", action="append", type=_option, default=[], metavar="KEY=VALUE",
                        help="extra reader option, e.g. size=64 (medmnist) or num_images=300 (synthetic)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    options = dict(args.option)
    if args.strict:
        options["strict"] = True
    if args.verify is not None:
        options["verify"] = args.verify
    try:
        dataset = load_dataset(args.dataset, args.data_root, **options)
        summary = summarize(dataset, seed=args.seed)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1) if args.json else format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
