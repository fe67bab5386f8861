"""Class-activation maps per second for one member, beside plain prediction, at 96 and 224 px.

A member as the presets train it (ConvNeXt-Atto with BatchNorm, 3 classes), a batch of 16 images; maps with the
default layers (the last three stages, one Grad-CAM pass each), the last two, the last stage alone, and Grad-CAM++
with the default layers. Run with
``pytest benchmarks/test_bench_cam.py --benchmark``; images per second are in ``extra_info``.
"""

from __future__ import annotations

import pytest
import timm
import torch

from medens.evaluate.cam import class_activation_maps
from medens.models.arch import norm_kwargs

BATCH = 16


def _member() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("convnext_atto", num_classes=3, **norm_kwargs("convnext_atto", "batch")).eval()


@pytest.mark.benchmark
@pytest.mark.parametrize("size", [96, 224])
@pytest.mark.parametrize("what", ["predict", "maps-default", "maps-last-two", "maps-last-stage", "maps-gradcampp"])
def test_bench_cam_member(benchmark, size: int, what: str) -> None:
    model = _member()
    images = torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))
    if what == "predict":
        def step() -> torch.Tensor:
            with torch.no_grad():
                return model(images).softmax(1)
    else:
        layers = {"maps-default": None, "maps-gradcampp": None, "maps-last-two": ["stages.2", "stages.3"]}.get(
            what, ["stages.3"])
        method = "gradcampp" if what == "maps-gradcampp" else "gradcam"

        def step() -> torch.Tensor:
            return class_activation_maps(model, images, layers=layers, method=method).maps
    out = benchmark.pedantic(step, rounds=5, warmup_rounds=1)
    assert out.shape[0] == BATCH
    benchmark.extra_info.update({
        "what": what, "size": size, "batch": BATCH, "threads": torch.get_num_threads(),
        "images_per_s": BATCH / benchmark.stats.stats.median,
    })
