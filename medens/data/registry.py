"""Dataset names -> readers, and :func:`load_dataset`, the one entry point users and trainers call."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import LabeledDataset
from .busi import load_busi
from .cache import CachedDataset
from .covid import load_covid
from .errors import DatasetError, DatasetUsageError
from .filedataset import VERIFY_MODES
from .folder import load_folder
from .imageio import HIGH_BIT_DEPTH_MODES
from .isic import load_isic2018
from .kvasir import load_kvasir
from .masks import match_mask_dir
from .medmnist import load_medmnist
from .synthetic import load_synthetic

# Options every reader of image files accepts (see ImageDataset).
FILE_OPTIONS: tuple[str, ...] = ("strict", "verify", "high_bit_depth")
# Options load_dataset handles itself, for any dataset.
CACHE_OPTIONS: tuple[str, ...] = ("cache_dir", "cache_size", "cache_workers")
# Options load_dataset handles itself, for the readers of image files that list them: lesion masks released
# apart from the images (medens.data.masks.match_mask_dir).
MASK_OPTIONS: tuple[str, ...] = ("mask_dir",)


def _integer(value: Any, low: int | None = None) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and (low is None or value >= low)


def _side(value: Any, low: int) -> bool:
    """A side in pixels, or a ``[height, width]`` pair of them."""
    if isinstance(value, (list, tuple)):
        return len(value) == 2 and all(_integer(v, low) for v in value)
    return _integer(value, low)


#: What each reader option takes: (what the message says is expected, the test a value must pass). Checked by
#: :func:`load_dataset` before a reader runs, so a wrong type is named by its option instead of failing inside.
OPTION_VALUES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "strict": ("true or false", lambda v: isinstance(v, bool)),
    "verify": (f"one of {list(VERIFY_MODES)}", lambda v: v in VERIFY_MODES),
    "high_bit_depth": (f"one of {list(HIGH_BIT_DEPTH_MODES)}", lambda v: v in HIGH_BIT_DEPTH_MODES),
    "layout": ("a layout name (a string)", lambda v: isinstance(v, str)),
    "size": ("an image side in pixels such as 28, 64, 128 or 224", lambda v: v is None or _integer(v, 1)),
    "num_images": ("an integer >= 1", lambda v: _integer(v, 1)),
    "image_size": ("a side in pixels (at least 8) or [height, width]", lambda v: _side(v, 8)),
    "num_classes": ("an integer >= 2", lambda v: _integer(v, 2)),
    "seed": ("an integer >= 0", lambda v: _integer(v, 0)),
    "cache_dir": ("a folder path", lambda v: v is None or isinstance(v, (str, os.PathLike))),
    "mask_dir": ("a folder of lesion masks", lambda v: v is None or isinstance(v, (str, os.PathLike))),
    "cache_size": ("a side in pixels or [height, width]", lambda v: _side(v, 1)),
    "cache_workers": ("an integer >= 1 or null", lambda v: v is None or _integer(v, 1)),
}


def check_options(name: str, options: dict[str, Any]) -> None:
    """Refuse a reader option whose value has the wrong type or range (see :data:`OPTION_VALUES`).

    Raises:
        DatasetUsageError: naming the option (as ``--dataset-option KEY``), what it takes and what it received.
    """
    for key, value in options.items():
        expected, valid = OPTION_VALUES.get(key, ("", lambda v: True))
        if not valid(value):
            raise DatasetUsageError(f"{name}: --dataset-option {key}: expected {expected}, received {value!r}")


@dataclass(frozen=True)
class DatasetEntry:
    """A registered reader: ``loader(root, **options)`` and the option names it accepts."""

    loader: Callable[..., LabeledDataset]
    options: tuple[str, ...]
    summary: str


_REGISTRY: dict[str, DatasetEntry] = {}


def register_dataset(name: str, loader: Callable[..., LabeledDataset], options: tuple[str, ...],
                     summary: str = "") -> None:
    """Make ``load_dataset(name, root, **options)`` call ``loader(root, **options)``.

    Raises:
        DatasetError: ``name`` is taken or contains ``":"`` (reserved for ``medmnist:<flag>``).
    """
    if name in _REGISTRY or ":" in name:
        raise DatasetError(f"argument 'name': {name!r} is already registered or contains ':'")
    _REGISTRY[name] = DatasetEntry(loader, tuple(options), summary)


def list_datasets() -> dict[str, str]:
    """Registered names and a one-line description of each."""
    return {name: entry.summary for name, entry in sorted(_REGISTRY.items())}


#: Registered names that take a part after a colon, as ``--help`` spells them.
_NAME_FORMS = {"medmnist": "medmnist:<flag>"}


def dataset_names() -> str:
    """The registered dataset names as ``--help`` lists them: ``busi, covid, ..., medmnist:<flag> or synthetic``."""
    names = [_NAME_FORMS.get(name, name) for name in sorted(_REGISTRY)]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else "".join(names)


def load_dataset(name: str, root: str | os.PathLike[str] | None = None, **options) -> LabeledDataset:
    """Open a dataset as its publisher distributes it.

    Args:
        name: ``busi``, ``isic2018``, ``kvasir``, ``covid``, ``medmnist:<flag>`` (e.g. ``medmnist:breastmnist``),
            ``folder`` or ``synthetic`` (see :func:`list_datasets`).
        root: Where the data was unpacked (None for ``synthetic``).
        **options: Reader options, e.g. ``strict=True`` (a corrupt image is an error), ``verify="full"``,
            ``high_bit_depth="minmax"``; ``layout=`` for isic2018; ``size=`` for medmnist;
            ``num_images=``, ``image_size=``, ``num_classes=``, ``seed=`` for synthetic. And, for any dataset,
            ``cache_dir=`` (serve images from a decode cache there, see :class:`CachedDataset`),
            ``cache_size=`` (stored size, default 256) and ``cache_workers=``. For the datasets of image files
            (all but ``medmnist`` and ``synthetic``), ``mask_dir=``: lesion masks released apart from the images,
            matched to them by image id (:func:`medens.data.masks.match_mask_dir`).

    Returns:
        A :class:`LabeledDataset` (a :class:`CachedDataset` when ``cache_dir`` is given).

    Raises:
        DatasetUsageError: Unknown name or option, or an option value of the wrong type or range.
        DatasetError: A layout problem (the message says what was expected,
            what was found, and where).
        DatasetNotFoundError: ``root`` does not exist.
        CorruptImageError: ``strict=True`` and an image cannot be decoded.
    """
    key, _, flag = name.partition(":")
    entry = _REGISTRY.get(key.strip().lower())
    if entry is None:
        raise DatasetUsageError(f"argument 'name': unknown dataset {name!r}; expected one of {sorted(_REGISTRY)} "
                           f"(MedMNIST as 'medmnist:<flag>')")
    cache = {k: options.pop(k) for k in CACHE_OPTIONS if k in options}
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        raise DatasetUsageError(f"{name}: unknown option(s) {unknown}; this dataset accepts "
                           f"{sorted(entry.options + CACHE_OPTIONS)}")
    check_options(name, {**options, **cache})
    mask_dir = options.pop("mask_dir", None)
    if flag:
        options["flag"] = flag.strip().lower()
    dataset = entry.loader(root, **options)
    if mask_dir is not None:
        dataset.mask_files = match_mask_dir(dataset, mask_dir)
    if cache.get("cache_dir") is not None:
        dataset = CachedDataset(dataset, cache["cache_dir"], cache.get("cache_size", 256),
                                num_workers=cache.get("cache_workers"))
    return dataset


register_dataset("busi", load_busi, FILE_OPTIONS + MASK_OPTIONS, "BUSI breast ultrasound: Dataset_BUSI_with_GT/{benign,malignant,normal}")
register_dataset("isic2018", load_isic2018, FILE_OPTIONS + MASK_OPTIONS + ("layout",),
                 "ISIC 2018 Task 3 (official splits, lesion groups) or HAM10000 dermoscopy")
register_dataset("kvasir", load_kvasir, FILE_OPTIONS + MASK_OPTIONS, "Kvasir v2 endoscopy: eight class folders")
register_dataset("covid", load_covid, FILE_OPTIONS + MASK_OPTIONS, "COVID-19 Radiography Database (current and older releases)")
register_dataset("medmnist", load_medmnist, ("flag", "size", "strict"),
                 "MedMNIST 2D .npz files: 'medmnist:<flag>', official splits")
register_dataset("folder", load_folder, FILE_OPTIONS + MASK_OPTIONS, "one sub-folder per class (optionally under train/val/test)")
register_dataset("synthetic", load_synthetic, ("num_images", "image_size", "num_classes", "seed", "caliper", "strict"),
                 "generated ultrasound-like images, no files (the default)")
