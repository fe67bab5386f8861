"""ConvNeXt classifiers for fine-tuning, initialised from ImageNet, from a medens MAE encoder, or at random.

``init`` is one of:

- ``"imagenet"``: timm's pretrained weights for ``arch`` (``convnext_tiny.fb_in1k`` picks a tag; a bare name takes
  timm's default tag). They come from a local file when ``pretrained_file`` is given (timm's own
  ``pretrained_cfg_overlay=dict(file=...)``), else from the Hugging Face cache, else from the hub. Offline and
  without a cached copy, :class:`PretrainedWeightsUnavailable` says how to supply a file; no hub stack trace and
  no minute of retries. With ``allow_random_fallback`` the model starts at random instead and the init is
  reported as ``"imagenet-unavailable-random-init"``.
- ``"mae:PATH"``: an ``encoder.safetensors`` exported by ``medens.train pretrain``; another architecture's
  encoder is refused.
- ``"scratch"``: random initialisation.

``norm`` (``"layer"`` or ``"batch"``, :mod:`medens.models.arch`) is the normalisation of a ConvNeXt that starts
from random weights; other architectures keep their own. A model that starts from weights has the normalisation
they were trained with, whatever ``norm`` says (:func:`classifier_norm`): LayerNorm for ImageNet weights (their
random fallback takes ``norm``), the norm an MAE encoder records for it. Likewise the total stride
(:func:`classifier_stride`): a classifier from an MAE encoder is built with the ``output_stride`` the encoder was
pre-trained with (32, the published ConvNeXt, for encoders written before the option), so it is built exactly like
its encoder; every other classifier takes ``output_stride`` (32 unless a resumed run recorded another).
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import socket
from pathlib import Path
from urllib.parse import urlparse

import timm
from safetensors import SafetensorError
from torch import nn

from medens.errors import UserError
from medens.layout import ENCODER_NAME
from medens.models.arch import (
    DEFAULT_NORM,
    ENCODER_STRIDE,
    check_arch,
    check_norm,
    check_output_stride,
    check_timm_arch,
    convnext_archs,
    norm_kwargs,
    split_arch,
    stride_kwargs,
)
from medens.models.weights import load_encoder_into, read_metadata

__all__ = [
    "INIT_RANDOM_FALLBACK",
    "PretrainedWeightsUnavailable",
    "classifier_norm",
    "classifier_stride",
    "create_classifier",
    "parse_init",
]

_logger = logging.getLogger(__name__)

#: How a run records an ImageNet init that fell back to random weights.
INIT_RANDOM_FALLBACK = "imagenet-unavailable-random-init"
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")
#: What reading a weights file that is empty, truncated, corrupt or of another model raises (safetensors, torch's
#: unpickler, zip reader, timm's state-dict loading). Garbage read by torch's weights-only unpickler raises
#: UnpicklingError, IndexError, UnicodeDecodeError or KeyError (3,000 random 512-byte files: 92%, 6%, 1%, 1%).
_UNREADABLE_WEIGHTS = (RuntimeError, KeyError, IndexError, ValueError, OSError, EOFError, pickle.UnpicklingError,
                       SafetensorError)


class PretrainedWeightsUnavailable(UserError, RuntimeError):
    """ImageNet weights could not be had (offline, no cache, no file); the message says how to supply them."""


def parse_init(init: str) -> tuple[str, Path | None]:
    """Split an ``init`` option into its kind and, for ``mae:PATH``, the path.

    Raises:
        ValueError: for anything other than ``imagenet``, ``scratch`` or ``mae:PATH``.
    """
    if init in ("imagenet", "scratch"):
        return init, None
    if isinstance(init, str) and init.startswith("mae:") and len(init) > 4:
        return "mae", Path(init[4:]).expanduser()
    raise ValueError(
        f"init: expected 'imagenet', 'scratch' or 'mae:PATH' (an {ENCODER_NAME}), received {init!r}"
    )


def check_arch_for_init(arch: str, init_kind: str) -> str:
    """The bare architecture of ``arch``: any timm model from random weights, else a timm ConvNeXt.

    An MAE encoder is a ConvNeXt, and the ImageNet member is the paper's ConvNeXt; a model trained from
    ``scratch`` (the plain baseline member) may be any architecture timm builds.

    Raises:
        ValueError: an unknown architecture, or one that is not a ConvNeXt for ``imagenet`` or ``mae``.
    """
    return check_timm_arch(arch) if init_kind == "scratch" else check_arch(arch)


def classifier_norm(init_used: str, norm: str) -> str:
    """The normalisation of a ConvNeXt classifier initialised by ``init_used`` when ``norm`` was asked for.

    LayerNorm for ImageNet weights, an MAE encoder's own (recorded in its metadata; ``layer`` for encoders written
    before the option), else ``norm``.
    """
    check_norm(norm)
    if init_used == "imagenet":
        return DEFAULT_NORM
    if init_used.startswith("mae:"):
        _, mae_path = parse_init(init_used)
        return check_norm(str(read_metadata(mae_path).get("norm", DEFAULT_NORM)), argument=f"norm of {mae_path}")
    return norm


def classifier_stride(init_used: str, output_stride: int = ENCODER_STRIDE) -> int:
    """The total stride of a ConvNeXt classifier initialised by ``init_used``.

    An MAE encoder's own (recorded in its metadata; 32 for encoders written before the option), else
    ``output_stride``.
    """
    if init_used.startswith("mae:"):
        _, mae_path = parse_init(init_used)
        recorded = read_metadata(mae_path).get("output_stride", ENCODER_STRIDE)
        return check_output_stride(recorded, argument=f"output_stride of {mae_path}")
    return check_output_stride(output_stride)


def pixel_normalisation(model: nn.Module) -> tuple[list[float], list[float]]:
    """The per-channel ``(mean, std)`` (RGB, 3 values each) a timm model's inputs are normalised with: its
    ``pretrained_cfg``'s, else timm's ImageNet constants."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = cfg.get("mean", timm.data.IMAGENET_DEFAULT_MEAN)
    std = cfg.get("std", timm.data.IMAGENET_DEFAULT_STD)
    return [float(v) for v in mean], [float(v) for v in std]


def _stride_kwargs(arch: str, output_stride: int) -> dict:
    """:func:`stride_kwargs` for a ConvNeXt; a stride other than 32 for another architecture is refused."""
    if split_arch(arch)[0] in convnext_archs():
        return stride_kwargs(output_stride)
    if check_output_stride(output_stride) != ENCODER_STRIDE:
        raise ValueError(f"output_stride: only a ConvNeXt takes an output stride, received {output_stride} for {arch!r}")
    return {}


def create_classifier(
    arch: str,
    num_classes: int,
    *,
    init: str = "imagenet",
    pretrained_file: str | os.PathLike | None = None,
    allow_random_fallback: bool = False,
    drop_path_rate: float = 0.0,
    drop_rate: float = 0.0,
    allow_partial: bool = False,
    norm: str = DEFAULT_NORM,
    output_stride: int = ENCODER_STRIDE,
) -> tuple[nn.Module, str]:
    """Build ``timm.create_model(arch, num_classes=num_classes)`` and initialise it.

    Args:
        arch: timm ConvNeXt name, optionally with a pretrained tag (``convnext_tiny.fb_in1k``); with ``init``
            ``"scratch"`` any timm architecture (a plain baseline such as ``resnet18``).
        num_classes: classifier outputs.
        init: ``"imagenet"``, ``"mae:PATH"`` or ``"scratch"``.
        pretrained_file: local ImageNet weights (safetensors, .pth or .bin as published by timm) for ``imagenet``.
        allow_random_fallback: when ImageNet weights cannot be had, start at random instead of failing.
        drop_path_rate: stochastic depth.
        drop_rate: dropout before the classifier.
        allow_partial: accept a ``pretrained_file`` that lacks some of the model's tensors (besides the classifier,
            which is always new): they stay random, with a warning naming them. Off: such a file is refused.
        norm: a ConvNeXt's normalisation, ``"layer"`` or ``"batch"``, for random weights (``scratch`` and the
            ImageNet fallback); ImageNet weights bring LayerNorm, an MAE encoder its own. Other architectures
            ignore it.
        output_stride: a ConvNeXt's total stride (32, 16 or 8) for random weights; an MAE encoder brings its own.

    Returns:
        ``(model, init_used)`` where ``init_used`` is ``"imagenet"``, ``"imagenet-unavailable-random-init"``,
        ``"mae:PATH"`` or ``"scratch"``.

    Raises:
        ValueError: bad arch, tag, init or class count; a ``pretrained_file`` that misses tensors of the model
            (unless ``allow_partial``).
        FileNotFoundError: a ``pretrained_file`` or MAE encoder that does not exist.
        PretrainedWeightsUnavailable: ImageNet weights unavailable and no fallback allowed.
        medens.models.weights.WeightsMismatchError: an MAE encoder of another architecture.
    """
    kind, mae_path = parse_init(init)
    base = check_arch_for_init(arch, kind)  # without the pretrained tag
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes: expected an integer >= 2, received {num_classes!r}")
    base_kwargs = dict(num_classes=num_classes, drop_path_rate=drop_path_rate, drop_rate=drop_rate)
    kwargs = {**base_kwargs, **norm_kwargs(base, norm), **_stride_kwargs(base, output_stride)}
    if pretrained_file is not None and kind != "imagenet":
        raise ValueError(f"pretrained_file: only used with init 'imagenet', received init {init!r}")

    if kind == "scratch":
        return timm.create_model(base, pretrained=False, **kwargs), "scratch"
    if kind == "mae":
        if mae_path.is_dir():
            hint = mae_path / ENCODER_NAME
            raise FileNotFoundError(
                f"init: expected mae:PATH to name an {ENCODER_NAME} file, received the folder {mae_path}"
                + (f"; did you mean mae:{hint}?" if hint.is_file() else "")
            )
        if not mae_path.is_file():
            raise FileNotFoundError(
                f"init: expected mae:PATH to name an {ENCODER_NAME} written by 'medens.train pretrain', "
                f"but {mae_path} does not exist"
            )
        encoder_norm = classifier_norm(init, norm)
        if encoder_norm != norm:
            _logger.info("norm: %s, as the encoder %s was pre-trained (%s asked for)", encoder_norm, mae_path, norm)
        encoder_stride = classifier_stride(init)
        model = timm.create_model(
            base,
            pretrained=False,
            **base_kwargs,
            **norm_kwargs(base, encoder_norm),
            **stride_kwargs(encoder_stride),
        )
        load_encoder_into(model, mae_path, arch, norm=encoder_norm)
        return model, f"mae:{mae_path}"

    try:
        imagenet_kwargs = {**base_kwargs, **_stride_kwargs(base, output_stride)}
        return _create_imagenet(arch, pretrained_file, imagenet_kwargs, allow_partial), "imagenet"
    except PretrainedWeightsUnavailable as err:
        if not allow_random_fallback:
            raise
        _logger.warning(
            "%s\nContinuing with random weights, as allowed (init: %s).", err, INIT_RANDOM_FALLBACK
        )
        return timm.create_model(base, pretrained=False, **kwargs), INIT_RANDOM_FALLBACK


def _create_imagenet(
    arch: str, pretrained_file: str | os.PathLike | None, kwargs: dict, allow_partial: bool = False
) -> nn.Module:
    """ImageNet-initialised classifier, from a file, the local cache, or the hub (in that order)."""
    try:
        cfg = timm.models.get_pretrained_cfg(arch)
    except RuntimeError as err:  # timm: "Invalid pretrained tag (x) for arch."
        base = split_arch(arch)[0]
        tags = timm.list_pretrained(f"{base}.*")
        raise ValueError(f"arch: {err} Known pretrained names: {', '.join(tags) or 'none'}") from None
    if cfg is None:
        raise PretrainedWeightsUnavailable(
            f"timm publishes no pretrained weights for {arch!r}; use init 'scratch'"
        )
    name = arch if "." in arch or not cfg.tag else f"{arch}.{cfg.tag}"

    if pretrained_file is None:
        pretrained_file = _cached_hub_file(cfg)
        if pretrained_file is not None:
            _logger.info("ImageNet weights for %s from the local cache: %s", name, pretrained_file)
    if pretrained_file is not None:
        path = Path(pretrained_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"pretrained_file: expected an existing weights file, received {path}")
        try:
            model = timm.create_model(
                arch, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs
            )
            missing = _missing_tensors(path, model, cfg.classifier)
        except _UNREADABLE_WEIGHTS as err:
            raise ValueError(
                f"pretrained_file: {path} does not hold ImageNet weights for {name!r} ({_first_line(err)})"
            ) from None
        if missing:
            shown = ", ".join(missing[:5]) + (f", ... ({len(missing)} in all)" if len(missing) > 5 else "")
            if not allow_partial:
                raise ValueError(
                    f"pretrained_file: expected every tensor of {name!r} in {path}, received a file without "
                    f"{len(missing)} of them ({shown}); pass --allow-partial to start those at random"
                )
            _logger.warning(
                "pretrained_file: %s lacks %d tensors of %r (%s); they start at random, as --allow-partial allows",
                path, len(missing), name, shown,
            )
        return model

    reason = _offline_reason(cfg)
    if reason is None:
        try:
            return timm.create_model(arch, pretrained=True, **kwargs)
        except Exception as err:  # the hub client raises many types (OSError, HTTP errors, ...)
            reason = _first_line(err)
    raise PretrainedWeightsUnavailable(_unavailable_message(name, cfg, reason))


def _missing_tensors(path: Path, model: nn.Module, classifier: str | None) -> list[str]:
    """The model's tensors, other than the classifier's, that the weights file at ``path`` does not provide.

    timm loads a file non-strictly when the class count differs from ImageNet's, so it cannot tell us; the file's
    keys are read here (after timm's remapping of original FB checkpoints), without running code from it.
    """
    import torch
    from safetensors import safe_open

    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
        state: dict = dict.fromkeys(keys)
        if "head.norm.weight" not in state and "norm_pre.weight" not in state:  # FB layout: remap with values
            from safetensors.torch import load_file

            state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    filter_fn = getattr(importlib.import_module(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None and not ("head.norm.weight" in state or "norm_pre.weight" in state):
        state = filter_fn(state, model)
    have = set(state)
    head = f"{classifier}." if classifier else None
    return sorted(k for k in model.state_dict() if k not in have and not (head and k.startswith(head)))


def _cached_hub_file(cfg) -> str | None:
    """Path of the weights in the Hugging Face cache, when timm downloaded them before."""
    if not cfg.hf_hub_id:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub is a timm dependency
        return None
    filenames = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else _HUB_FILES
    for filename in filenames:
        found = try_to_load_from_cache(cfg.hf_hub_id, filename)
        if isinstance(found, str):
            return found
    return None


def _offline_reason(cfg) -> str | None:
    """Why the hub cannot be reached now (offline mode, no route), or None when it answers; checks in seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    try:
        from huggingface_hub import constants

        if getattr(constants, "HF_HUB_OFFLINE", False):
            return "HF_HUB_OFFLINE is set"
        endpoint = constants.ENDPOINT
    except ImportError:  # pragma: no cover
        endpoint = "https://huggingface.co"
    url = urlparse(endpoint if cfg.hf_hub_id else (cfg.url or endpoint))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=5):
            return None
    except OSError as err:
        return f"cannot reach {host}: {err}"


def _unavailable_message(name: str, cfg, reason: str) -> str:
    source = f"https://huggingface.co/{cfg.hf_hub_id}" if cfg.hf_hub_id else (cfg.url or "the timm model hub")
    return (
        f"ImageNet weights for {name!r} are not available here ({reason}). Supply them in one of these ways:\n"
        f"  1. download model.safetensors from {source} on a machine with internet, copy it here and pass "
        f"--pretrained-file PATH/model.safetensors;\n"
        f"  2. run `python -c \"import timm; timm.create_model('{name}', pretrained=True)\"` with internet, "
        f"which fills the Hugging Face cache (~/.cache/huggingface, or $HF_HOME) that medens reads offline;\n"
        f"  3. pass --allow-random-imagenet-fallback to train from random weights instead (recorded as "
        f"'{INIT_RANDOM_FALLBACK}'), or --init scratch / --init mae:ENCODER."
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"
