"""Which timm architectures medens can use as a ConvNeXt encoder, and how their names are checked.

One place for the facts every model factory needs: the default architecture, the small ones suited to a CPU,
how an ``arch[.tag]`` name splits, and the error a user sees for a name timm does not know. The method's models
are ConvNeXts (:func:`check_arch`); a classifier trained from random weights, such as the plain baseline member
a pipeline or study may add (``--baseline resnet18``), may be any timm architecture (:func:`check_timm_arch`).

A ConvNeXt's total stride is 32 as published. With ``output_stride`` 16 or 8 (timm's own keyword) its last stage, or
its last two, keep their input's resolution and dilate their depthwise convolutions instead of downsampling; the
weights keep their shapes. Masked pre-training uses it to hide patches on a grid finer than 32 px (a 6 x 6 grid
of 16 px patches at 96 px) with exact sparse semantics, and the MAE member is then built with the same stride.

A ConvNeXt normalises with LayerNorm as published (``norm="layer"``; timm's ImageNet weights are for it) or with
BatchNorm (``norm="batch"``: timm's ``conv_mlp=True, norm_layer=BatchNorm2d``), which learns much better from random
weights on a few hundred images (BUSI, random init, ``--preset small``, 2026-12-02: ConvNeXt-Atto 0.476 mean test
accuracy over five folds with LayerNorm, 0.602 with BatchNorm; in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import difflib
import functools
from typing import Any

import timm
from torch import nn

__all__ = [
    "DEFAULT_ARCH",
    "SMALL_ARCHS",
    "ENCODER_STRIDE",
    "OUTPUT_STRIDE_CHOICES",
    "check_output_stride",
    "stride_kwargs",
    "split_arch",
    "check_arch",
    "check_timm_arch",
    "convnext_archs",
    "NORM_CHOICES",
    "DEFAULT_NORM",
    "check_norm",
    "convnext_norm_kwargs",
    "norm_kwargs",
    "check_input_size",
]

#: The paper's encoder.
DEFAULT_ARCH = "convnext_tiny"
#: Architectures small enough for a laptop or a CPU-only test.
SMALL_ARCHS = ("convnext_atto", "convnext_femto", "convnext_pico", "convnext_nano")
#: Total stride of every ConvNeXt (stem 4, then three 2x downsamplings); the masking patch size is a multiple of it.
ENCODER_STRIDE = 32
#: The total strides a ConvNeXt can be built with (timm's ``output_stride``; below 32 the last stages dilate).
OUTPUT_STRIDE_CHOICES = (32, 16, 8)
#: How a ConvNeXt normalises: ``layer`` (LayerNorm, as published) or ``batch`` (BatchNorm2d with a conv MLP).
NORM_CHOICES = ("layer", "batch")
DEFAULT_NORM = "layer"


def convnext_archs() -> list[str]:
    """Every timm architecture built on timm's ConvNeXt class (ConvNeXt V1 and V2 families)."""
    return sorted(set(timm.list_models(["convnext_*", "convnextv2_*"])))


def split_arch(name: str) -> tuple[str, str]:
    """Split ``"convnext_tiny.fb_in1k"`` into ``("convnext_tiny", "fb_in1k")``; the tag is ``""`` when absent."""
    arch, _, tag = name.partition(".")
    return arch, tag


def check_arch(name: str, *, argument: str = "arch") -> str:
    """Check that ``name`` (optionally ``arch.tag``) names a timm ConvNeXt and return the bare architecture.

    Args:
        name: a timm model name such as ``convnext_tiny`` or ``convnext_tiny.fb_in1k``.
        argument: the option name to quote in the error message.

    Returns:
        The architecture without its pretrained tag.

    Raises:
        ValueError: when ``name`` is not a ConvNeXt known to timm; the message lists close matches and the
            small architectures.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"{argument}: expected a timm ConvNeXt name such as '{DEFAULT_ARCH}', received {name!r}"
        )
    arch, _ = split_arch(name)
    known = convnext_archs()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"{argument}: expected a timm ConvNeXt architecture (e.g. '{DEFAULT_ARCH}', or for small machines "
            f"{', '.join(SMALL_ARCHS)}), received {name!r}.{hint}"
        )
    return arch


def check_timm_arch(name: str, *, argument: str = "arch") -> str:
    """Check that ``name`` (optionally ``arch.tag``) names any timm architecture and return the bare name.

    Raises:
        ValueError: when timm does not know ``name``; the message lists close matches.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"{argument}: expected a timm architecture name such as 'resnet18', received {name!r}")
    arch, _ = split_arch(name)
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"{argument}: expected a timm architecture (e.g. 'resnet18'), received {name!r}.{hint}")
    return arch


def check_norm(norm: str, *, argument: str = "norm") -> str:
    """Check that ``norm`` is one of :data:`NORM_CHOICES` and return it.

    Raises:
        ValueError: naming ``argument``, the choices and the value received.
    """
    if norm not in NORM_CHOICES:
        raise ValueError(f"{argument}: expected one of {list(NORM_CHOICES)}, received {norm!r}")
    return norm


def check_output_stride(output_stride: int, *, argument: str = "output_stride") -> int:
    """Check that ``output_stride`` is one of :data:`OUTPUT_STRIDE_CHOICES` and return it as an int.

    Raises:
        ValueError: naming ``argument``, the choices and the value received.
    """
    if isinstance(output_stride, bool) or output_stride not in OUTPUT_STRIDE_CHOICES:
        raise ValueError(f"{argument}: expected one of {list(OUTPUT_STRIDE_CHOICES)}, received {output_stride!r}")
    return int(output_stride)


def stride_kwargs(output_stride: int) -> dict[str, Any]:
    """The ``timm.create_model`` keywords for a ConvNeXt of total stride ``output_stride`` (none for 32).

    Raises:
        ValueError: a stride that is not one of :data:`OUTPUT_STRIDE_CHOICES`.
    """
    stride = check_output_stride(output_stride)
    return {} if stride == ENCODER_STRIDE else {"output_stride": stride}


def convnext_norm_kwargs(norm: str, batch_norm: type[nn.Module] = nn.BatchNorm2d) -> dict[str, Any]:
    """The ``timm.create_model`` keywords that give a ConvNeXt the normalisation ``norm``.

    ``layer`` needs none (timm's default); ``batch`` puts ``batch_norm`` (``nn.BatchNorm2d`` or a subclass with the
    same state dict) everywhere timm puts a LayerNorm, which timm allows only with a convolutional MLP.

    Raises:
        ValueError: an unknown ``norm``.
    """
    if check_norm(norm) == "layer":
        return {}
    return {"conv_mlp": True, "norm_layer": batch_norm}


def norm_kwargs(arch: str, norm: str) -> dict[str, Any]:
    """:func:`convnext_norm_kwargs` for a ConvNeXt ``arch``; none for another architecture, which keeps its own."""
    check_norm(norm)
    return convnext_norm_kwargs(norm) if split_arch(arch)[0] in convnext_archs() else {}


def check_input_size(arch: str, image_size: int, *, num_classes: int = 2, norm: str = DEFAULT_NORM,
                     argument: str = "image_size") -> None:
    """Refuse an input side that ``arch`` cannot take (a ViT or Swin built for 224 px given 64 px images).

    The model is built on the meta device (no memory, no weights) and one ``(1, 3, image_size, image_size)`` batch
    goes through it, so every architecture's own rule applies (a fixed patch grid, windows, a too-small input).

    Raises:
        ValueError: naming ``argument``, the architecture, the size received and, where timm records one, the
            size the model was built for.
    """
    bare, _ = split_arch(arch)
    problem = _input_size_problem(bare, int(image_size), int(num_classes), norm)
    if problem is not None:
        raise ValueError(f"{argument}: expected an input side that {bare} can take, received {image_size} ({problem})")


@functools.lru_cache(maxsize=64)
def _input_size_problem(arch: str, image_size: int, num_classes: int, norm: str) -> str | None:
    """Why ``arch`` cannot take ``image_size`` inputs (None: it can); cached, as a study asks once per run."""
    import torch

    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes, **norm_kwargs(arch, norm))
    try:
        with torch.no_grad():
            model.eval()(torch.empty(1, 3, image_size, image_size, device="meta"))
    except Exception as err:  # an architecture's own checks raise AssertionError, RuntimeError, ValueError, ...
        built = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return first + (f"; it was built for {built[-1]} px (--image-size {built[-1]})" if built else "")
    return None
