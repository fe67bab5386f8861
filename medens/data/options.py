"""The data options of every command: which dataset, where, its decode cache, and how it is split.

Each key is declared once here, as a :class:`medens.flags.Option` with its help text, and with its default in
:data:`DATA_DEFAULTS`. The training stages' option table (:mod:`medens.train.options`) takes them from here, and the
commands that share the data flags (``pretrain``, ``finetune``, ``pipeline``, ``study`` and ``medens data``) add
them with :func:`add_data_flags`, so each flag reads the same everywhere. :func:`open_dataset` turns a run's
configuration into its dataset.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from typing import Any

from medens.flags import Option, add_flag, optional_int, optional_str

from .duplicates import DEFAULT_MIN_CORRELATION, DEFAULT_THRESHOLD, HASH_BITS
from .registry import dataset_names, load_dataset

__all__ = ["DEFAULT_DATASET", "DATA_OPTIONS", "DATA_DEFAULTS", "SHARED_DATA_KEYS", "add_data_flags", "open_dataset"]

#: The dataset of a command run without ``--dataset``: generated images, no files.
DEFAULT_DATASET = "synthetic"


#: Every data option, with its help text.
DATA_OPTIONS: dict[str, Option] = {
    "dataset": Option(f"dataset name: {dataset_names()}", metavar="NAME"),
    "data_root": Option(
        "folder the dataset was unpacked in; synthetic needs none", optional_str, metavar="PATH"
    ),
    "dataset_options": Option(
        "reader option of medens.data.load_dataset as KEY=VALUE, repeatable (e.g. num_images=300 for synthetic, "
        "size=64 for medmnist)",
        metavar="KEY=VALUE",
        flag="--dataset-option",
        repeated=True,
    ),
    "cache_dir": Option(
        "cache folder of the images decoded once for training (memory-mapped) and of the duplicate search's image "
        "signatures (none: no decode cache, signatures in $MEDENS_CACHE_DIR or ~/.cache/medens)",
        optional_str,
        metavar="DIR",
    ),
    "split_seed": Option("seed of the train/val/test split", int, minimum=0),
    "val_fraction": Option(
        "share of images for validation (when the dataset has no official split)", float, minimum=0, maximum=1,
        below=True,
    ),
    "test_fraction": Option(
        "share of images for testing (when the dataset has no official split)", float, minimum=0, maximum=1,
        below=True,
    ),
    "folds": Option("k-fold cross-validation: number of folds", optional_int, metavar="K"),
    "fold": Option(
        "k-fold cross-validation: which fold (0-based) is the test split", optional_int, metavar="I"
    ),
    "use_official_split": Option("keep the publisher's split where the dataset ships one", bool),
    "split_file": Option("reuse the split recorded in this splits.json", optional_str, metavar="FILE"),
    "dedupe": Option(
        "keep near-duplicate images on one side of every split (off: plain stratified splits, a leaky protocol)",
        choices=("on", "off"),
        allowed=("on", "off", True, False),
    ),
    "dedupe_threshold": Option(
        f"perceptual-hash bits (of {HASH_BITS}) up to which two images are candidate copies (a candidate is a copy "
        f"when its aligned detail correlates >= {DEFAULT_MIN_CORRELATION})",
        int,
        metavar="BITS",
        minimum=0,
        maximum=HASH_BITS,
    ),
    "keep_conflicts": Option("keep the images of duplicate groups whose labels disagree, instead of excluding them", bool),
    "num_workers": Option(
        "data-loading worker processes per rank (none: one per core this process may use, at most 4)",
        optional_int,
        minimum=0,
    ),
}

#: The data options' defaults (the training stages' too).
DATA_DEFAULTS: dict[str, Any] = {
    "dataset": DEFAULT_DATASET,
    "data_root": None,
    "dataset_options": {},
    "cache_dir": None,
    "split_seed": 0,
    "val_fraction": 0.1,
    "test_fraction": 0.2,
    "folds": None,
    "fold": None,
    "use_official_split": True,
    "split_file": None,
    "dedupe": "on",
    "dedupe_threshold": DEFAULT_THRESHOLD,
    "keep_conflicts": False,
    "num_workers": None,  # medens.engine.loader.default_num_workers()
}

#: The data flags ``pipeline``, ``study`` and ``medens data`` share with the training stages, in help order.
SHARED_DATA_KEYS: tuple[str, ...] = (
    "dataset",
    "data_root",
    "dataset_options",
    "cache_dir",
    "split_seed",
    "val_fraction",
    "test_fraction",
    "dedupe",
    "dedupe_threshold",
    "keep_conflicts",
)


def add_data_flags(
    parser: argparse.ArgumentParser | Any, keys: Iterable[str] = SHARED_DATA_KEYS, *,
    defaults: Mapping[str, Any] = DATA_DEFAULTS, values: Mapping[str, Any] | None = None,
) -> None:
    """Add the flags of the data ``keys`` to ``parser`` (or an argument group), each with its one help text.

    Args:
        parser: the parser or group.
        keys: the data keys.
        defaults: the defaults the help shows (a training stage's own).
        values: what the namespace holds for a flag not given, by key (default: nothing, so that only the flags
            the user typed override a YAML file and the defaults).
    """
    for key in keys:
        if values is not None and key in values:
            add_flag(parser, key, DATA_OPTIONS[key], defaults[key], value=values[key])
        else:
            add_flag(parser, key, DATA_OPTIONS[key], defaults[key])


def open_dataset(config: Mapping[str, Any]) -> Any:
    """The dataset a run's configuration names (``dataset``, ``data_root``, ``dataset_options``, ``cache_dir``).

    Returns:
        A :class:`~medens.data.LabeledDataset` (served from the decode cache when ``cache_dir`` is set).

    Raises:
        medens.data.DatasetError: unknown dataset, bad options, missing files.
    """
    options = dict(config.get("dataset_options") or {})
    if config.get("cache_dir"):
        options["cache_dir"] = config["cache_dir"]
    return load_dataset(config["dataset"], config.get("data_root"), **options)
