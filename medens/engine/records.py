"""What a run leaves behind as it goes: the log file, the per-epoch CSV and (when installed) TensorBoard events.

The CSV is rewritten atomically from the run's whole history each epoch, so a resumed run's ``log.csv`` has one row
per epoch, however often it was interrupted.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from medens.io import atomic_write_text
from medens.layout import TRAIN_LOG_NAME

__all__ = ["setup_logging", "logging_to", "write_csv_log", "TensorBoardLogger", "TqdmHandler"]


class TqdmHandler(logging.StreamHandler):
    """A stderr handler that writes through ``tqdm.write`` so log lines do not tear progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def setup_logging(
    out_dir: str | os.PathLike | None = None, *, rank: int = 0, level: int = logging.INFO
) -> None:
    """Log ``medens.*`` to stderr (rank 0 at ``level``, other ranks warnings only) and to ``out_dir/train.log``.

    Calling it again replaces the handlers it installed before. For a scoped change that is undone afterwards
    (what the Python entry points use), see :func:`logging_to`.
    """
    logger = logging.getLogger("medens")
    for handler in [h for h in logger.handlers if getattr(h, "_medens", False)]:
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    stream = TqdmHandler()
    stream.setLevel(level if rank == 0 else logging.WARNING)
    stream.setFormatter(fmt)
    stream._medens = True  # type: ignore[attr-defined]
    logger.addHandler(stream)
    if out_dir is not None and rank == 0:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(Path(out_dir) / TRAIN_LOG_NAME, encoding="utf-8")
        file_handler.setFormatter(fmt)
        file_handler._medens = True  # type: ignore[attr-defined]
        logger.addHandler(file_handler)
    logger.setLevel(min(level, logging.INFO))
    logger.propagate = False


@contextlib.contextmanager
def logging_to(
    out_dir: str | os.PathLike | None = None, *, rank: int = 0, level: int = logging.INFO
) -> Iterator[None]:
    """:func:`setup_logging` for the duration of a block; the ``medens`` logger is restored afterwards.

    A training run called from Python (a notebook, the pipeline, a test) must not leave its handlers, its log
    file or a changed ``propagate`` behind.
    """
    logger = logging.getLogger("medens")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    for handler in saved[0]:
        logger.removeHandler(handler)
    try:
        setup_logging(out_dir, rank=rank, level=level)
        yield
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            if getattr(handler, "_medens", False):
                handler.close()
        for handler in saved[0]:
            logger.addHandler(handler)
        logger.setLevel(saved[1])
        logger.propagate = saved[2]


def write_csv_log(path: str | os.PathLike, history: Sequence[Mapping[str, Any]]) -> Path:
    """Write one row per epoch; the columns are the union of the rows' keys in first-seen order."""
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: _fmt(v) for k, v in row.items()})
    return atomic_write_text(path, buf.getvalue())


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


class TensorBoardLogger:
    """Scalars to TensorBoard under ``out_dir/tb`` when ``tensorboard`` is installed; silently nothing otherwise.

    Args:
        out_dir: the run folder.
        enabled: ``"auto"`` (when installed), True (warn when missing) or False.
    """

    def __init__(self, out_dir: str | os.PathLike, enabled: bool | str = "auto") -> None:
        self.writer = None
        if enabled is False:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            if enabled is True:
                logging.getLogger(__name__).warning("tensorboard is not installed: pip install tensorboard")
            return
        self.writer = SummaryWriter(log_dir=str(Path(out_dir) / "tb"))

    def log(self, row: Mapping[str, Any], step: int) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and key not in ("epoch", "step")
            ):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
