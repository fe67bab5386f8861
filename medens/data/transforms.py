"""Train and eval transforms: PIL RGB image in, ``float32`` tensor ``(3, H, W)`` out.

- train: random resized crop, horizontal flip (vertical off by default: ultrasound and X-ray have an
  up), a small rotation, mild brightness/contrast/saturation jitter;
- eval: resize to ``image_size / crop_pct`` and centre crop to ``image_size``.

Resizing stretches to the target shape (aspect ratio is not kept), the same way the decode cache stores
images, so cached and uncached runs see the same geometry. Values are ImageNet-normalised by default;
``normalize=False`` leaves them in [0, 1] (for the masked autoencoder, which normalises internally).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import InterpolationMode, v2

#: ImageNet's channel statistics, timm's ``IMAGENET_DEFAULT_MEAN``/``STD`` (the models take theirs from timm): written
#: here so that the data package does not import timm, which costs a second at start-up; a test holds them equal.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: Evaluation: the share of the resized image the centre crop keeps (timm's default for ConvNeXt).
DEFAULT_CROP_PCT = 0.875
_INTERPOLATIONS = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
                   "nearest": InterpolationMode.NEAREST}


def _pair(image_size: int | Sequence[int]) -> tuple[int, int]:
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"argument 'image_size' must be a positive int or (height, width), got {image_size!r}")
    return size  # type: ignore[return-value]


def _probability(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"argument {name!r} must be a probability in [0, 1], got {value}")
    return value


def build_transforms(
    image_size: int | Sequence[int] = 224,
    train: bool = False,
    *,
    normalize: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    crop_pct: float = DEFAULT_CROP_PCT,
    scale: tuple[float, float] = (0.75, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    vflip: float = 0.0,
    rotation: float = 10.0,
    color_jitter: tuple[float, float, float] = (0.1, 0.1, 0.05),
    interpolation: str = "bilinear",
) -> Callable[[object], torch.Tensor]:
    """Build the transform for training (``train=True``) or evaluation.

    Args:
        image_size: Output side, or ``(height, width)``.
        train: Augment (True) or resize and centre-crop deterministically (False).
        normalize: Subtract ``mean`` and divide by ``std``; False leaves values in [0, 1].
        mean: Per-channel mean, RGB order (ImageNet's by default).
        std: Per-channel standard deviation, RGB order.
        crop_pct: Eval only: share of the resized image kept by the centre crop (1.0: resize only).
        scale: Train only: range of the crop's area, as a share of the image.
        ratio: Train only: range of the crop's aspect ratio.
        hflip: Train only: probability of a horizontal flip.
        vflip: Train only: probability of a vertical flip.
        rotation: Train only: maximum rotation in degrees (either way); 0 disables it.
        color_jitter: Train only: maximum (brightness, contrast, saturation) change; zeros disable it.
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"``.

    Returns:
        A callable taking a PIL image (or uint8 tensor ``(C, H, W)``) and returning ``float32 (3, H, W)``.

    Raises:
        ValueError: An argument is out of range.
    """
    height, width = _pair(image_size)
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"argument 'interpolation' must be one of {sorted(_INTERPOLATIONS)}, got {interpolation!r}")
    mode = _INTERPOLATIONS[interpolation]
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"argument 'crop_pct' must be in (0, 1], got {crop_pct}")
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"arguments 'mean'/'std' must have 3 values with std > 0, got {mean}, {std}")
    if not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise ValueError(f"argument 'scale' must satisfy 0 < low <= high <= 1, got {scale}")
    if not 0.0 < ratio[0] <= ratio[1]:
        raise ValueError(f"argument 'ratio' must satisfy 0 < low <= high, got {ratio}")
    _probability("hflip", hflip)
    _probability("vflip", vflip)
    if rotation < 0:
        raise ValueError(f"argument 'rotation' must be >= 0 degrees, got {rotation}")
    if len(color_jitter) != 3 or min(color_jitter) < 0:
        raise ValueError(f"argument 'color_jitter' must be 3 non-negative numbers, got {color_jitter}")
    steps: list[Callable] = []
    if train:
        steps.append(v2.RandomResizedCrop((height, width), scale=scale, ratio=ratio, interpolation=mode,
                                          antialias=True))
        if hflip > 0:
            steps.append(v2.RandomHorizontalFlip(hflip))
        if vflip > 0:
            steps.append(v2.RandomVerticalFlip(vflip))
        if rotation > 0:
            steps.append(v2.RandomRotation(rotation, interpolation=mode))
        if any(color_jitter):
            brightness, contrast, saturation = color_jitter
            steps.append(v2.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation))
    else:
        resized = (round(height / crop_pct), round(width / crop_pct))
        steps.append(v2.Resize(resized, interpolation=mode, antialias=True))
        if resized != (height, width):
            steps.append(v2.CenterCrop((height, width)))
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if normalize:
        steps.append(v2.Normalize(list(mean), list(std)))
    steps.append(v2.ToPureTensor())
    return v2.Compose(steps)
