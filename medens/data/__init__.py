"""Medical image datasets in the layouts their publishers ship, with reproducible splits, transforms and a
decode cache.

Typical use (what the trainers do)::

    from medens.data import load_dataset, make_splits, build_transforms, SplitDataset

    ds = load_dataset("busi", "/data/Dataset_BUSI_with_GT")               # or "synthetic", None, num_images=...
    splits = make_splits(ds, seed=0, val_fraction=0.1, test_fraction=0.2, out_dir=run_dir)  # writes splits.json
    train_set = SplitDataset(ds, splits["train"], transform=build_transforms(224, train=True))
    test_set = SplitDataset(ds, splits["test"], transform=build_transforms(224, train=False))
    test_set.ids            # names for predictions.csv, e.g. "benign/benign (12).png" or "synthetic/000123"

Public API:

- :func:`load_dataset` ``(name, root=None, **options) -> LabeledDataset``: open ``busi``, ``isic2018``,
  ``kvasir``, ``covid``, ``medmnist:<flag>``, ``folder`` or ``synthetic``; ``cache_dir=`` adds the decode cache.
- :func:`list_datasets` ``() -> dict[str, str]``: registered names and descriptions.
- :func:`open_dataset` ``(config) -> LabeledDataset``: the dataset a run's configuration names (``dataset``,
  ``data_root``, ``dataset_options``, ``cache_dir``).
- :class:`LabeledDataset`: items ``(PIL RGB image, int)``; ``classes``, ``targets``, ``ids``, ``paths``,
  ``official_splits``, ``groups``, ``skipped``, ``image_size(i)``.
- :func:`make_splits` ``(dataset, *, seed, val_fraction, test_fraction, folds, fold, use_official, grouped,
  out_dir, split_file, dedupe, dedupe_threshold, keep_conflicts) -> {"train", "val", "test"}``: index lists; writes/reads ``splits.json``.
- :func:`find_duplicates` ``(dataset, *, threshold, min_correlation, cache_dir) -> DuplicateGroups``: near-duplicate
  groups and label conflicts (every split keeps a group on one side; ``dedupe=False`` turns it off).
- :func:`plan_splits`: :func:`make_splits` without files, returning a :class:`SplitPlan` (splits, method,
  duplicate groups, excluded items).
- :func:`load_splits` ``(path, dataset)``, :func:`save_splits` ``(path, dataset, splits)``,
  :func:`split_counts` ``(dataset, splits)``.
- :class:`SplitDataset` ``(dataset, indices, transform=None)``: what a DataLoader iterates.
- :func:`build_transforms` ``(image_size=224, train=False, *, normalize=True, ...)``: PIL -> float32 (3, H, W);
  ``normalize=False`` gives [0, 1] for the masked autoencoder.
- :class:`CachedDataset` ``(dataset, cache_dir, size=256)`` / :func:`cache_dataset`: decode once, then serve
  uint8 pixels from a memory-mapped file.
- :func:`read_image` ``(path, high_bit_depth="full") -> PIL RGB``: any mode, 16-bit scaled.
- :func:`summarize` / :func:`format_summary`: what ``python -m medens.data`` prints.
- Errors: :class:`DatasetError`, :class:`DatasetNotFoundError`, :class:`CorruptImageError`.

Class names per dataset, in label order (one place each: the ``CLASSES`` constant of each module):
busi ``benign, malignant, normal``; isic2018 ``MEL, NV, BCC, AKIEC, BKL, DF, VASC``; kvasir the eight folder
names, alphabetical; covid those present of ``COVID, Lung_Opacity, Normal, Viral Pneumonia``; medmnist
MedMNIST's label names; folder the sorted folder names; synthetic the first ``num_classes`` of
``normal, benign, malignant, cyst, calcified, multifocal, septated, diffuse``.
"""

from .base import SPLIT_NAMES, LabeledDataset, Skipped
from .cache import CachedDataset, cache_dataset
from .duplicates import DuplicateGroups, find_duplicates
from .errors import CorruptImageError, DatasetError, DatasetNotFoundError
from .filedataset import ImageDataset, Sample
from .imageio import read_image, to_rgb8
from .options import open_dataset
from .registry import list_datasets, load_dataset, register_dataset
from .splits import (
    SplitPlan,
    load_splits,
    make_splits,
    plan_splits,
    save_splits,
    split_counts,
)
from .subset import SplitDataset
from .summary import format_summary, summarize
from .synthetic import CLASS_NAMES as SYNTHETIC_CLASSES
from .synthetic import SyntheticDataset
from .transforms import DEFAULT_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD, build_transforms

__all__ = [
    "DEFAULT_CROP_PCT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SPLIT_NAMES",
    "SYNTHETIC_CLASSES",
    "CachedDataset",
    "CorruptImageError",
    "DatasetError",
    "DatasetNotFoundError",
    "ImageDataset",
    "LabeledDataset",
    "Sample",
    "Skipped",
    "SplitDataset",
    "SyntheticDataset",
    "build_transforms",
    "cache_dataset",
    "plan_splits",
    "SplitPlan",
    "find_duplicates",
    "DuplicateGroups",
    "format_summary",
    "list_datasets",
    "load_dataset",
    "open_dataset",
    "load_splits",
    "make_splits",
    "read_image",
    "register_dataset",
    "save_splits",
    "split_counts",
    "summarize",
    "to_rgb8",
]
