"""Reading and writing prediction tables (CSV).

A member's ``predictions.csv`` / ``val_predictions.csv`` has the columns ``path``, ``label`` (the class name; empty
for images without a label) and one probability column per class, named by the class. The ensemble's
``predictions.csv`` has ``path``, ``label`` and then ``<model>:<class>`` columns for each model.

An image of the split that could not be decoded has a row with its path and label and every probability cell
empty: it is listed, and it is in no metric. Readers return such rows in :attr:`Predictions.skipped`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medens.io import atomic_path

#: Columns that precede the probability columns.
KEY_COLUMNS: tuple[str, ...] = ("path", "label")
#: How far a row of probabilities read from a CSV may sum from 1 (files written with 4 decimals still pass).
PROB_SUM_TOL = 1e-3


@dataclass
class Predictions:
    """One model's class probabilities for a list of images.

    Attributes:
        paths: N image paths, as written by the model's run.
        label_names: N class names (``""`` where unknown).
        classes: the K class names, in column order.
        probs: ``(N, K)`` float64 probabilities.
        skipped: images of the split that could not be decoded (path to class name, ``""`` where unknown):
            listed in the file, in none of ``paths`` and no metric.
    """

    paths: list[str]
    label_names: list[str]
    classes: list[str]
    probs: np.ndarray
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def labels(self) -> np.ndarray:
        """``(N,)`` int64 class indices of ``label_names``.

        Raises:
            ValueError: if a label is empty or not one of ``classes``.
        """
        index = {c: i for i, c in enumerate(self.classes)}
        unknown = sorted({name for name in self.label_names if name not in index})
        if unknown:
            raise ValueError(f"label: expected class names from {self.classes}, received {unknown}")
        return np.array([index[name] for name in self.label_names], dtype=np.int64)

    def reorder(self, paths: Sequence[str], classes: Sequence[str]) -> Predictions:
        """The same predictions with rows in the order of ``paths`` and columns in the order of ``classes``.

        Raises:
            ValueError: if ``paths`` or ``classes`` are not exactly this table's paths or classes.
        """
        row = {p: i for i, p in enumerate(self.paths)}
        col = {c: i for i, c in enumerate(self.classes)}
        if len(paths) != len(row) or set(paths) != set(row):
            raise ValueError(
                "paths: expected the same image paths as the predictions, received a different set"
            )
        if len(classes) != len(col) or set(classes) != set(col):
            raise ValueError(f"classes: expected {self.classes} in any order, received {list(classes)}")
        rows = [row[p] for p in paths]
        cols = [col[c] for c in classes]
        return Predictions(
            paths=list(paths),
            label_names=[self.label_names[i] for i in rows],
            classes=list(classes),
            probs=self.probs[np.ix_(rows, cols)],
            skipped=dict(self.skipped),
        )


def _format_prob(x: float) -> str:
    return repr(float(x))  # shortest text that reads back as the same float64


def read_predictions(path: str | os.PathLike[str]) -> Predictions:
    """Read a member's prediction CSV.

    Args:
        path: CSV with columns ``path``, ``label``, then one column per class.

    Returns:
        The predictions.

    Raises:
        FileNotFoundError: if the file is missing.
        ValueError: if the file is not UTF-8 CSV, has no predicted rows, the header or a row is malformed, a path
            repeats, or a row's probabilities are outside [0, 1] or do not sum to 1 within :data:`PROB_SUM_TOL` (the
            message names the file and line).
    """
    table = _read_table(Path(path), "path,label,<class>,<class>[,...]", min_values=2)
    classes = table.header[len(KEY_COLUMNS):]
    if len(set(classes)) != len(classes):
        raise ValueError(f"{table.path}: expected distinct class columns, received {classes}")
    table.check_probabilities(range(len(classes)))
    return Predictions(paths=table.paths, label_names=table.labels, classes=classes, probs=table.values,
                       skipped=table.skipped)


def read_prediction_table(
    path: str | os.PathLike[str],
) -> tuple[list[str], list[str], dict[str, np.ndarray], dict[str, str]]:
    """Read a table written by :func:`write_prediction_table` (an ensemble's ``predictions.csv``).

    Returns:
        ``(paths, label_names, {model: (N, K) probabilities}, skipped)``: the ``<model>:<class>`` columns grouped
        by model, in file order; ``skipped`` maps the rows without probabilities (images that could not be
        decoded) to their labels, and they are in none of the others.

    Raises:
        ValueError: as :func:`read_predictions`, for each model's columns.
    """
    table = _read_table(Path(path), "path,label,<model>:<class>,...", min_values=1)
    columns: dict[str, list[int]] = {}
    for col, name in enumerate(table.header[len(KEY_COLUMNS):]):
        columns.setdefault(name.rsplit(":", 1)[0] if ":" in name else "", []).append(col)
    for cols in columns.values():
        table.check_probabilities(cols)
    return table.paths, table.labels, {m: table.values[:, cols] for m, cols in columns.items()}, table.skipped


@dataclass
class _Table:
    """The rows of a prediction CSV: key columns, the numbers after them, and the rows without numbers."""

    path: Path
    header: list[str]
    paths: list[str]
    labels: list[str]
    values: np.ndarray  # (N, columns after the key columns)
    lines: list[int]  # the file line of each row of ``values``
    skipped: dict[str, str]

    def check_probabilities(self, cols: Sequence[int]) -> None:
        """Refuse a row whose ``cols`` are not a distribution: each in [0, 1], the sum 1 within a tolerance."""
        block = self.values[:, list(cols)]
        for line_no, row in zip(self.lines, block, strict=True):
            bad = [v for v in row.tolist() if not 0.0 <= v <= 1.0]  # also catches nan
            if bad:
                raise ValueError(f"{self.path}:{line_no}: expected probabilities in [0, 1], received {bad[0]!r}")
            total = float(np.sum(row))
            if abs(total - 1.0) > PROB_SUM_TOL:
                raise ValueError(
                    f"{self.path}:{line_no}: expected probabilities summing to 1 (within {PROB_SUM_TOL}), "
                    f"received a sum of {total!r}"
                )


def _read_table(path: Path, expected_header: str, min_values: int) -> _Table:
    """Parse a prediction CSV: the header, numeric rows, rows without numbers (unreadable images), unique paths.

    Raises:
        FileNotFoundError: if the file is missing.
        ValueError: not UTF-8 CSV, a bad header, a row of the wrong length or with a cell that is not a number, a
            repeated path, or no row with numbers (naming the file and line).
    """
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: expected a UTF-8 text CSV, received bytes that are not ({err.reason})") from None
    except csv.Error as err:
        raise ValueError(f"{path}: expected a CSV file, received one the csv reader refuses ({err})") from None
    header = rows[0] if rows else None
    if header is None or tuple(header[: len(KEY_COLUMNS)]) != KEY_COLUMNS or len(header) < 2 + min_values:
        raise ValueError(f"{path}: expected a header '{expected_header}', received {header!r}")
    paths: list[str] = []
    labels: list[str] = []
    values: list[list[float]] = []
    lines: list[int] = []
    skipped: dict[str, str] = {}
    seen: dict[str, int] = {}
    for line_no, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise ValueError(f"{path}:{line_no}: expected {len(header)} fields, received {len(row)}")
        if row[0] in seen:
            raise ValueError(f"{path}:{line_no}: expected each image path once, received {row[0]!r} again "
                             f"(first on line {seen[row[0]]})")
        seen[row[0]] = line_no
        cells = row[len(KEY_COLUMNS):]
        if not any(cells):  # an image that could not be decoded: listed, not scored
            skipped[row[0]] = row[1]
            continue
        try:
            values.append([float(v) for v in cells])
        except ValueError:
            raise ValueError(f"{path}:{line_no}: expected probabilities, received {cells}") from None
        paths.append(row[0])
        labels.append(row[1])
        lines.append(line_no)
    if not values:
        what = f"only {len(skipped)} rows of images that could not be decoded" if skipped else "none"
        raise ValueError(f"{path}: expected at least one prediction row after the header, received {what}")
    array = np.array(values, dtype=np.float64).reshape(len(values), len(header) - len(KEY_COLUMNS))
    return _Table(path, header, paths, labels, array, lines, skipped)


def write_predictions(path: str | os.PathLike[str], predictions: Predictions) -> Path:
    """Write one model's predictions in the member CSV layout (skipped images last), atomically."""
    return write_prediction_table(
        path,
        predictions.paths,
        predictions.label_names,
        predictions.classes,
        {"": predictions.probs},
        skipped=predictions.skipped,
    )


def write_prediction_table(
    path: str | os.PathLike[str],
    paths: Sequence[str],
    label_names: Sequence[str],
    classes: Sequence[str],
    probs_by_model: Mapping[str, np.ndarray],
    skipped: Mapping[str, str] | None = None,
) -> Path:
    """Write probabilities of one or more models side by side, atomically.

    Args:
        path: the CSV to write.
        paths: N image paths.
        label_names: N class names (``""`` where unknown).
        classes: the K class names.
        probs_by_model: model name to ``(N, K)`` probabilities. Columns are named ``<model>:<class>``; a model
            named ``""`` gets plain ``<class>`` columns (the member layout).
        skipped: images that could not be decoded (path to class name): written last, probability cells empty.

    Returns:
        ``path``.
    """
    header = list(KEY_COLUMNS)
    blocks = []
    for name, probs in probs_by_model.items():
        probs = np.asarray(probs, dtype=np.float64)
        if probs.shape != (len(paths), len(classes)):
            raise ValueError(
                f"probs_by_model[{name!r}]: expected shape ({len(paths)}, {len(classes)}), received {probs.shape}"
            )
        header += [f"{name}:{c}" if name else c for c in classes]
        blocks.append(probs)
    if len(label_names) != len(paths):
        raise ValueError(f"label_names: expected {len(paths)} entries, received {len(label_names)}")
    table = np.concatenate(blocks, axis=1) if blocks else np.empty((len(paths), 0))
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for p, label, row in zip(paths, label_names, table, strict=True):
            writer.writerow([p, label, *(_format_prob(x) for x in row)])
        for p, label in (skipped or {}).items():
            writer.writerow([p, label, *([""] * table.shape[1])])
    return Path(path)


def write_class_predictions(
    path: str | os.PathLike[str],
    paths: Sequence[str],
    classes: Sequence[str],
    probs: np.ndarray,
    skipped: Sequence[str] = (),
    extra: Mapping[str, Sequence[str]] | None = None,
) -> Path:
    """Write predictions for unlabelled images: ``path``, ``prediction`` (the arg-max class), one column per class.

    Args:
        path: the CSV to write (atomically).
        paths: N image paths.
        classes: the K class names.
        probs: ``(N, K)`` probabilities.
        skipped: images that could not be decoded: written last, with empty prediction and probability cells.
        extra: more columns after the probabilities, name -> N cells (empty for the skipped rows), e.g.
            ``predict --explain``'s ``explanation``.

    Returns:
        ``path``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (len(paths), len(classes)):
        raise ValueError(f"probs: expected shape ({len(paths)}, {len(classes)}), received {probs.shape}")
    extra = dict(extra or {})
    for name, cells in extra.items():
        if len(cells) != len(paths):
            raise ValueError(f"extra: expected {len(paths)} cells in column {name!r}, received {len(cells)}")
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "prediction", *classes, *extra])
        for i, (p, row) in enumerate(zip(paths, probs, strict=True)):
            writer.writerow([p, classes[int(np.argmax(row))], *(_format_prob(x) for x in row),
                             *(cells[i] for cells in extra.values())])
        for p in skipped:
            writer.writerow([p, "", *([""] * len(classes)), *([""] * len(extra))])
    return Path(path)
