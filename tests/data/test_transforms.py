"""Transforms: float32 (3, H, W) for any size; ImageNet normalisation or [0, 1]; random only when training."""

import numpy as np
import pytest
import torch
from PIL import Image

from medens.data import IMAGENET_MEAN, IMAGENET_STD, build_transforms


def _photo(width=50, height=40, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("size, shape", [(32, (32, 32)), ((24, 40), (24, 40)), (7, (7, 7))])
def test_output_is_float32_of_the_asked_size(train, size, shape):
    out = build_transforms(size, train=train)(_photo())
    assert type(out) is torch.Tensor and out.dtype == torch.float32 and tuple(out.shape) == (3, *shape)


def test_without_normalisation_values_are_in_unit_range():
    out = build_transforms(32, train=True, normalize=False)(_photo())
    assert out.min() >= 0 and out.max() <= 1 and out.max() > 0.5


def test_normalisation_uses_imagenet_statistics():
    flat = Image.new("RGB", (16, 16), (255, 128, 0))
    out = build_transforms(16, crop_pct=1.0)(flat)
    expected = (torch.tensor([255, 128, 0]) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(out[:, 8, 8], expected, atol=1e-5, rtol=0)


def test_eval_is_a_deterministic_resize_and_centre_crop():
    photo = _photo(64, 64)
    transform = build_transforms(28, normalize=False, crop_pct=0.875)
    torch.testing.assert_close(transform(photo), transform(photo))
    resized = np.asarray(photo.resize((32, 32), Image.Resampling.BILINEAR)).astype(np.float32) / 255
    np.testing.assert_allclose(transform(photo).permute(1, 2, 0).numpy(), resized[2:30, 2:30], atol=2 / 255)


def test_train_is_random_but_repeatable_under_a_seed():
    transform = build_transforms(32, train=True)
    photo = _photo()
    torch.manual_seed(0)
    a = transform(photo)
    b = transform(photo)
    torch.manual_seed(0)
    assert not torch.equal(a, b)
    torch.testing.assert_close(transform(photo), a)


def test_augmentation_switches():
    photo = _photo(32, 32)
    plain = build_transforms(32, train=True, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, rotation=0.0,
                             color_jitter=(0.0, 0.0, 0.0), normalize=False)
    torch.testing.assert_close(plain(photo), build_transforms(32, crop_pct=1.0, normalize=False)(photo))
    always_flip = build_transforms(32, train=True, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=1.0, rotation=0.0,
                                   color_jitter=(0.0, 0.0, 0.0), normalize=False)
    torch.testing.assert_close(always_flip(photo), plain(photo).flip(-1))


@pytest.mark.parametrize("options, match", [
    ({"image_size": 0}, "image_size"), ({"crop_pct": 0}, "crop_pct"), ({"hflip": 2.0}, "hflip"),
    ({"train": True, "scale": (0.5, 0.2)}, "scale"), ({"interpolation": "lanczos"}, "interpolation"),
    ({"train": True, "rotation": -5}, "rotation"), ({"std": (1, 1, 0)}, "std"),
])
def test_bad_arguments_are_named(options, match):
    with pytest.raises(ValueError, match=match):
        build_transforms(**options)


def test_the_imagenet_statistics_are_timms() -> None:
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    assert (IMAGENET_MEAN, IMAGENET_STD) == (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
