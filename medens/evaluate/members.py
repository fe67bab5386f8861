"""Ensemble members: a fine-tuning run's folder, read and checked against the other members.

A member folder holds ``config.yaml`` (with at least ``classes``; ``init`` and ``split_hash`` when written by
``python -m medens.train finetune``), ``predictions.csv`` for the test split and, for the validation-tuned
options, ``val_predictions.csv``. Members are only combined when they were trained for the same classes on the same
split and predict the same test images with the same labels.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from medens.errors import UsageError
from medens.evaluate.predictions import Predictions, read_predictions
from medens.layout import CONFIG_NAME, PREDICTIONS_NAME, PROBE_NAME, VAL_PREDICTIONS_NAME

logger = logging.getLogger(__name__)


#: Name (used in file columns) and label (used in tables) of a member, by its ``init`` in config.yaml. A member
#: whose ImageNet weights could not be had was trained from random weights, and is named so everywhere.
INIT_NAMES: dict[str, tuple[str, str]] = {
    "imagenet": ("imagenet-init", "ImageNet-init"),
    "imagenet-unavailable-random-init": (
        "random-init-imagenet-unavailable",
        "Random-init (ImageNet weights unavailable)",
    ),
    "mae": ("mae-init", "MAE-init"),
    "scratch": ("scratch-init", "Scratch (random init)"),
}


class IncompatibleMembersError(ValueError):
    """Members that cannot be ensembled: different classes, splits or test images."""


@dataclass
class Member:
    """One fine-tuned model's outputs.

    Attributes:
        name: identifier used in file columns (``<name>:<class>``), derived from the member's initialisation.
        label: name shown in tables and plots.
        directory: the member's folder.
        config: the parsed ``config.yaml``.
        test: test-split predictions.
        val: validation-split predictions, or None when the folder has none.
    """

    name: str
    label: str
    directory: Path
    config: dict[str, Any]
    test: Predictions
    val: Predictions | None

    @property
    def classes(self) -> list[str]:
        """Class names in the order of the member's config."""
        return list(self.config["classes"])

    @property
    def split_hash(self) -> str | None:
        """The hash of the split the member was trained on, if recorded."""
        value = self.config.get("split_hash")
        return None if value is None else str(value)


def prediction_fingerprint(directory: str | os.PathLike[str]) -> str:
    """SHA-256 of a member's prediction files (test, then validation when present).

    An evaluation records it per member, so a member that was retrained since is noticed.
    """
    digest = hashlib.sha256()
    for name in (PREDICTIONS_NAME, VAL_PREDICTIONS_NAME):
        path = Path(directory) / name
        if path.is_file():
            digest.update(name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def init_kind(init: str | None) -> str | None:
    """The kind of an ``init`` value: ``mae:/runs/x`` is ``mae``; others are returned unchanged."""
    if init is None:
        return None
    return "mae" if str(init).startswith("mae:") or str(init) == "mae" else str(init)


def encoder_probe(config: dict[str, Any]) -> dict[str, Any] | None:
    """The probe of the encoder an MAE member was fine-tuned from (``probe.json`` beside its encoder), if written.

    None for other members, for encoders pre-trained before probes were written, and for an unreadable file.
    """
    init = config.get("init")
    if init_kind(init) != "mae" or not str(init).startswith("mae:"):
        return None
    path = Path(str(init)[len("mae:"):]).expanduser().parent / PROBE_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        if path.exists():
            logger.warning("probe: %s cannot be read (%s); the report goes without it", path, err)
        return None


def member_name_and_label(config: dict[str, Any], directory: Path) -> tuple[str, str]:
    """Column name and table label of a member from its config, falling back to the folder name."""
    kind = init_kind(config.get("init"))
    if kind in INIT_NAMES:
        return INIT_NAMES[kind]
    return directory.name, directory.name


def load_member(directory: str | os.PathLike[str]) -> Member:
    """Read a member folder.

    Args:
        directory: a fine-tuning run's output folder.

    Returns:
        The member, with its class columns in the order of its config's ``classes``.

    Raises:
        FileNotFoundError: if ``config.yaml`` or ``predictions.csv`` is missing.
        ValueError: if the config has no class list or the predictions' classes differ from it.
    """
    directory = Path(directory)
    if not directory.expanduser().is_dir():
        raise UsageError(f"members: expected fine-tuning run folders, received {directory}, which does not exist")
    config_path = directory / CONFIG_NAME
    test_path = directory / PREDICTIONS_NAME
    for required in (config_path, test_path):
        if not required.is_file():
            raise FileNotFoundError(
                f"members: expected {required.name} in member folder {directory}, received a folder without it"
            )
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    if not isinstance(config, dict) or not isinstance(config.get("classes"), list) or not config["classes"]:
        raise ValueError(f"{config_path}: expected a non-empty 'classes' list, received {config!r:.200}")
    classes = [str(c) for c in config["classes"]]
    config["classes"] = classes

    def _read(path: Path) -> Predictions:
        preds = read_predictions(path)
        if sorted(preds.classes) != sorted(classes):
            raise IncompatibleMembersError(
                f"{path}: expected class columns {classes} as in {CONFIG_NAME}, received {preds.classes}"
            )
        return preds.reorder(preds.paths, classes)

    val_path = directory / VAL_PREDICTIONS_NAME
    name, label = member_name_and_label(config, directory)
    return Member(
        name=name,
        label=label,
        directory=directory,
        config=config,
        test=_read(test_path),
        val=_read(val_path) if val_path.is_file() else None,
    )


def _unique_names(members: Sequence[Member]) -> list[Member]:
    """Members whose names repeat get their folder name appended, so columns stay distinct."""
    counts = Counter(m.name for m in members)
    out = []
    seen: set[str] = set()
    for m in members:
        name, label = m.name, m.label
        if counts[m.name] > 1:
            name, label = f"{m.name}@{m.directory.name}", f"{m.label} [{m.directory.name}]"
        if name in seen:
            raise IncompatibleMembersError(
                f"members: expected distinct member folders, received {m.directory} twice"
            )
        seen.add(name)
        out.append(replace(m, name=name, label=label))
    return out


def _check_same_rows(members: Sequence[Member], split: str) -> None:
    first = members[0]
    ref: Predictions = getattr(first, split)
    ref_labels = dict(zip(ref.paths, ref.label_names, strict=True))
    for m in members[1:]:
        preds: Predictions = getattr(m, split)
        paths = set(preds.paths)
        if paths != set(ref_labels):
            only_ref = len(set(ref_labels) - paths)
            only_m = len(paths - set(ref_labels))
            raise IncompatibleMembersError(
                f"members: expected the same {split} images in every member, received {only_ref} images only in "
                f"{first.directory} and {only_m} only in {m.directory}"
            )
        differing = [p for p, lab in zip(preds.paths, preds.label_names, strict=True) if ref_labels[p] != lab]
        if differing:
            raise IncompatibleMembersError(
                f"members: expected the same labels for the same {split} images, received {len(differing)} "
                f"differing between {first.directory} and {m.directory} (e.g. {differing[0]})"
            )


def align_members(members: Sequence[Member], require_val: bool = False) -> list[Member]:
    """Check members can be ensembled and put their rows and columns in one order.

    Args:
        members: at least two loaded members.
        require_val: also require (and align) validation predictions.

    Returns:
        The members with unique names, classes in the first member's order and test (and validation) rows in the
        first member's order.

    Raises:
        IncompatibleMembersError: on fewer than two members, different class lists, different split hashes,
            different test images or labels, or missing validation predictions when required.
    """
    if len(members) < 2:
        raise IncompatibleMembersError(
            f"members: expected at least 2 member folders, received {len(members)}"
        )
    first = members[0]
    for m in members[1:]:
        if sorted(m.classes) != sorted(first.classes):
            raise IncompatibleMembersError(
                f"members: expected the same classes in every member, received {first.classes} in "
                f"{first.directory} and {m.classes} in {m.directory}"
            )
    hashes = {m.directory: m.split_hash for m in members}
    known = {h for h in hashes.values() if h is not None}
    if len(known) > 1:
        listing = ", ".join(f"{d}: {h}" for d, h in hashes.items())
        raise IncompatibleMembersError(
            f"members: expected members trained on the same split (one split_hash), received {listing}"
        )
    if None in hashes.values():
        missing = [str(d) for d, h in hashes.items() if h is None]
        logger.warning("no split_hash in %s; checking only that the test images and labels agree", missing)
    if require_val:
        missing_val = [str(m.directory) for m in members if m.val is None]
        if missing_val:
            raise IncompatibleMembersError(
                f"members: expected {VAL_PREDICTIONS_NAME} in every member for validation-tuned options, "
                f"received none in {missing_val}"
            )
    _check_same_rows(members, "test")
    has_val = all(m.val is not None for m in members)
    if has_val:
        _check_same_rows(members, "val")
    classes = first.classes
    aligned = []
    for m in members:
        test = m.test.reorder(first.test.paths, classes)
        # Validation predictions are used only when every member has them, so drop partial ones.
        val = m.val.reorder(first.val.paths, classes) if has_val and m.val and first.val else None
        aligned.append(replace(m, test=test, val=val))
    return _unique_names(aligned)
