"""Pictures of class-activation maps: a map laid over its image, and one PNG per image with every model's map.

Drawn with matplotlib's Agg canvas (no display) and saved atomically, as :mod:`medens.evaluate.plots` does.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medens.io import atomic_path

__all__ = ["CAM_COLORMAP", "Panel", "overlay", "save_explanation"]

#: The colour map of every overlay (perceptually uniform, readable in grey print).
CAM_COLORMAP = "inferno"
_PANEL_INCHES = 2.4
_DPI = 100
#: Characters of a 9-point title that fit across one panel (about 13 an inch); longer titles wrap.
_TITLE_CHARS = int(_PANEL_INCHES * 13)


@dataclass(frozen=True)
class Panel:
    """One model's map in a picture.

    Attributes:
        title: the model's name and what its map explains, e.g. ``"ImageNet-init: benign 0.81"``.
        cam: ``float (H, W)`` in [0, 1], in the frame of the picture's image.
    """

    title: str
    cam: np.ndarray


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """A map laid over its image.

    Args:
        image: ``uint8 (H, W, 3)`` or ``(H, W)``.
        cam: ``float (H, W)`` in [0, 1] (values outside are clipped).
        alpha: the map's opacity where it is 1; it fades with the map's value, so the image shows where the map
            is low.

    Returns:
        ``uint8 (H, W, 3)``.

    Raises:
        ValueError: when the shapes differ or ``alpha`` is outside [0, 1].
    """
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    cam = np.clip(np.asarray(cam, dtype=np.float32), 0, 1)
    if img.shape[:2] != cam.shape or img.shape[2] != 3:
        raise ValueError(f"image, cam: expected (H, W, 3) and (H, W), received {img.shape} and {cam.shape}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha: expected a value in [0, 1], received {alpha}")
    colour = colormaps[CAM_COLORMAP](cam)[..., :3]
    weight = (alpha * np.sqrt(cam))[..., None]
    mixed = (1 - weight) * (img.astype(np.float32) / 255) + weight * colour
    return np.clip(np.rint(mixed * 255), 0, 255).astype(np.uint8)


def _wrapped(title: str) -> str:
    """``title`` in lines that fit over one panel, so that neighbouring titles never overlap."""
    return textwrap.fill(title, _TITLE_CHARS) or title


def save_explanation(
    path: str | os.PathLike[str], image: np.ndarray, panels: Sequence[Panel], caption: str, title: str = "image"
) -> Path:
    """One PNG: the image, then each panel's overlay, side by side, with a caption underneath.

    Args:
        path: the PNG to write (atomically).
        image: ``uint8 (H, W, 3)``, what the models saw (after resizing and cropping).
        panels: the maps, in the frame of ``image``.
        caption: the line under the pictures (the prediction and the probabilities).
        title: the first picture's title.

    Returns:
        ``path``.
    """
    n = 1 + len(panels)
    fig = Figure(figsize=(_PANEL_INCHES * n, _PANEL_INCHES + 0.7), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, squeeze=False)[0]
    axes[0].imshow(image)
    axes[0].set_title(_wrapped(title), fontsize=9)
    for ax, panel in zip(axes[1:], panels, strict=True):
        ax.imshow(overlay(image, panel.cam))
        ax.set_title(_wrapped(panel.title), fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    fig.supxlabel(caption, fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)
