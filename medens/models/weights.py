"""Saving and loading weights as safetensors, with the facts needed to check them on load.

An exported encoder (``encoder.safetensors``) carries its architecture and pre-training geometry in the safetensors
metadata, so fine-tuning can refuse an encoder of the wrong architecture with a clear message instead of a wall of
shape mismatches. Files are written atomically: a temporary file in the same folder, then a rename.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from medens.io import atomic_path
from medens.models.arch import DEFAULT_NORM, ENCODER_STRIDE, split_arch

__all__ = [
    "ENCODER_FORMAT",
    "MODEL_FORMAT",
    "save_weights",
    "load_weights",
    "read_metadata",
    "load_encoder_into",
    "WeightsMismatchError",
]

#: ``format`` metadata of an encoder exported by pre-training.
ENCODER_FORMAT = "medens-encoder"
#: ``format`` metadata of a fine-tuned classifier.
MODEL_FORMAT = "medens-classifier"


class WeightsMismatchError(ValueError):
    """Weights do not fit the model they are loaded into (wrong architecture, shapes or keys)."""


def save_weights(
    path: str | os.PathLike, state_dict: dict[str, torch.Tensor], metadata: dict[str, Any]
) -> Path:
    """Write ``state_dict`` as safetensors, atomically, with ``metadata`` (values JSON-encoded).

    Args:
        path: destination file.
        state_dict: tensors to save (moved to CPU and made contiguous; shared storage is copied).
        metadata: small facts about the weights (arch, image size, ...); any JSON-serialisable values.

    Returns:
        The path written.
    """
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    meta = {str(k): json.dumps(v) for k, v in metadata.items()}
    with atomic_path(path) as tmp:
        # Written through the temporary file's own inode (save_file would re-create it), so the lock that marks a
        # live write holds; the bytes are the same.
        tmp.write_bytes(safetensors_bytes(tensors, metadata=meta))
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata written by :func:`save_weights` (JSON-decoded); ``{}`` for files without any.

    Raises:
        ValueError: a file that is not a readable safetensors file.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except Exception as err:  # safetensors' SafetensorError (header, truncation), OSError
        raise _unreadable(path, err) from None
    out: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            out[k] = json.loads(v)
        except (TypeError, ValueError):
            out[k] = v
    return out


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a safetensors file: ``(state_dict on CPU, metadata)``.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu"), read_metadata(path)
    except ValueError:
        raise
    except Exception as err:  # safetensors' SafetensorError (header, truncation), OSError
        raise _unreadable(path, err) from None


def _unreadable(path: str | os.PathLike, err: Exception) -> ValueError:
    return ValueError(
        f"{path}: expected a safetensors weights file, received one that cannot be read ({type(err).__name__}: {err})"
    )


def load_encoder_into(
    model: nn.Module, path: str | os.PathLike, arch: str, *, argument: str = "init", norm: str = DEFAULT_NORM
) -> dict[str, Any]:
    """Load an exported encoder into a timm ConvNeXt classifier, leaving its head as initialised.

    Args:
        model: ``timm.create_model(arch, num_classes=k)``.
        path: an ``encoder.safetensors`` written by pre-training.
        arch: the classifier's architecture (a pretrained tag is ignored).
        argument: the option to name in error messages.
        norm: the classifier's normalisation (``layer`` or ``batch``); an encoder records its own (``layer`` when
            it predates the option).

    Returns:
        The encoder's metadata (arch, image size, patch size, masking settings).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        WeightsMismatchError: when the encoder was pre-trained for another architecture or normalisation, or its
            tensors do not fit.
    """
    state, meta = load_weights(path)
    want, _ = split_arch(arch)
    have = meta.get("arch")
    if have is not None and split_arch(str(have))[0] != want:
        raise WeightsMismatchError(
            f"{argument}: the encoder in {path} was pre-trained as {have!r} but the model is {want!r}; "
            f"fine-tune with --arch {have} or pre-train a {want} encoder"
        )
    have_stride = int(meta.get("output_stride", ENCODER_STRIDE))
    model_stride = _total_stride(model)
    if model_stride is not None and have_stride != model_stride:
        raise WeightsMismatchError(
            f"output_stride: the encoder in {path} was pre-trained with output stride {have_stride} but the model "
            f"has {model_stride}; build the model with output_stride {have_stride} (create_classifier takes it from "
            f"the encoder)"
        )
    have_norm = str(meta.get("norm", DEFAULT_NORM))
    if have_norm != norm:
        raise WeightsMismatchError(
            f"norm: the encoder in {path} was pre-trained with norm {have_norm!r} but the model has norm {norm!r}; "
            f"build the model with norm {have_norm!r} (create_classifier takes it from the encoder)"
        )
    if meta.get("format") not in (None, ENCODER_FORMAT):
        raise WeightsMismatchError(
            f"{argument}: expected an encoder exported by 'medens.train pretrain' (format {ENCODER_FORMAT!r}), "
            f"received a file of format {meta.get('format')!r}: {path}"
        )
    own = model.state_dict()
    wrong_shape = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state and not k.startswith("head.")]
    if wrong_shape or unexpected or missing:
        details = []
        if wrong_shape:
            k = wrong_shape[0]
            details.append(
                f"{len(wrong_shape)} tensors of the wrong shape (e.g. {k}: expected {tuple(own[k].shape)}, "
                f"received {tuple(state[k].shape)})"
            )
        if unexpected:
            details.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
        if missing:
            details.append(f"{len(missing)} missing encoder tensors (e.g. {missing[0]})")
        raise WeightsMismatchError(
            f"{argument}: the encoder in {path} does not fit {want!r}: {'; '.join(details)}. "
            f"Was it pre-trained with another --arch?"
        )
    model.load_state_dict(state, strict=False)
    return meta


def _total_stride(model: nn.Module) -> int | None:
    """The total stride of a timm model (its last feature's reduction), or None when it does not say."""
    info = getattr(model, "feature_info", None)
    if not info:
        return None
    last = info[-1] if isinstance(info, list) else None
    return int(last["reduction"]) if isinstance(last, dict) and "reduction" in last else None
