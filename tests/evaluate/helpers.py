"""Shared helpers for the evaluation tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from medens.evaluate.predictions import Predictions, write_predictions
from medens.layout import CONFIG_NAME, PREDICTIONS_NAME, VAL_PREDICTIONS_NAME


def write_member(
    directory: str | os.PathLike[str],
    config: dict[str, Any],
    test: Predictions,
    val: Predictions | None = None,
) -> Path:
    """Write a member folder as a fine-tuning run leaves it, from predictions made up by a test.

    Args:
        directory: folder to write ``config.yaml``, ``predictions.csv`` and, with ``val``, ``val_predictions.csv``.
        config: at least ``classes``; ``init``, ``split_hash`` and ``dataset`` as a fine-tuning run records them.
        test: test-split predictions.
        val: validation-split predictions, needed for ``--calibrate`` and ``--method weighted``.

    Returns:
        ``directory``.

    Raises:
        ValueError: if the predictions' classes differ from ``config``'s (a mistake in the test itself).
    """
    directory = Path(directory)
    classes = config.get("classes")
    for split, preds in (("test", test), ("val", val)):
        if preds is not None and list(preds.classes) != list(classes or []):
            raise ValueError(f"{split}: expected class columns {classes} from config, received {preds.classes}")
    directory.mkdir(parents=True, exist_ok=True)
    write_predictions(directory / PREDICTIONS_NAME, test)
    if val is not None:
        write_predictions(directory / VAL_PREDICTIONS_NAME, val)
    (directory / CONFIG_NAME).write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return directory
