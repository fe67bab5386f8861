"""Training checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint holds the model, optimiser, gradient scaler, schedule and EMA states, the epoch and step counters,
the per-epoch history, the resolved configuration, and the random-number state of Python, numpy, torch (CPU and
CUDA) of every rank. It contains only tensors and plain Python values, so :func:`load_checkpoint` reads it with
``torch.load(weights_only=True)``: loading a checkpoint never runs code from the file. It is written atomically.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medens.io import atomic_torch_save
from medens.layout import CHECKPOINT_NAME

__all__ = [
    "preserved_rng",
    "CHECKPOINT_NAME",
    "capture_rng_state",
    "restore_rng_state",
    "save_checkpoint",
    "load_checkpoint",
    "check_checkpoint",
    "CorruptCheckpointError",
    "checkpoint_path",
]

_logger = logging.getLogger(__name__)



def checkpoint_path(out_dir: str | os.PathLike) -> Path:
    """Where a run in ``out_dir`` keeps its last checkpoint."""
    return Path(out_dir) / CHECKPOINT_NAME


def capture_rng_state() -> dict[str, Any]:
    """This process's random state (Python, numpy, torch CPU and every CUDA device) as tensors and plain values."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [
            np_name,
            torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            int(np_pos),
            int(np_has_gauss),
            float(np_gauss),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng_state`."""
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            _logger.warning(
                "CUDA RNG state saved for %d devices, %d present: not restored",
                len(cuda_states),
                torch.cuda.device_count(),
            )


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block (an evaluation during training, say) without changing any random state of this process."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically (temporary file, fsync, rename)."""
    return atomic_torch_save(state, path)


class CorruptCheckpointError(RuntimeError, ValueError):
    """A checkpoint file that cannot be read (truncated, foreign, not a checkpoint); the message names it.

    A ``RuntimeError`` as before, and a ``ValueError`` so that the commands report it as a bad file, not a bug.
    """


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)`` onto the CPU.

    Raises:
        FileNotFoundError: when there is no checkpoint at ``path``.
        CorruptCheckpointError: (a RuntimeError) when the file is not a readable checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"resume: no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for a bad file
        # The first line says what is wrong; torch's advice that follows (load with weights_only=False) would run
        # code from an unknown file, so it is not repeated.
        first = (str(err).strip().splitlines() or [""])[0]
        raise CorruptCheckpointError(
            f"resume: {path} is not a readable medens checkpoint ({type(err).__name__}: {first}); delete it to "
            f"start the run again, or choose another --out"
        ) from None


def check_checkpoint(state: Any, path: str | os.PathLike, expected_format: str) -> dict[str, Any]:
    """``state`` (what :func:`load_checkpoint` read from ``path``) when it is a checkpoint of ``expected_format``.

    Raises:
        CorruptCheckpointError: a readable torch file of another program (no medens keys, or another format).
    """
    if not isinstance(state, dict) or state.get("format") != expected_format:
        kind = f"format {state.get('format')!r}" if isinstance(state, dict) and "format" in state else "no medens keys"
        raise CorruptCheckpointError(
            f"resume: {path} is not a medens training checkpoint (a torch file with {kind}: another program's?); "
            f"delete it to start the run again, or choose another --out"
        )
    return state
