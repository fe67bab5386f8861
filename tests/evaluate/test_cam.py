"""Class-activation maps (medens.evaluate.cam): shapes, range, determinism, untouched model state, the ensemble's
rule, layer choice and bad arguments; and the lesion scores (medens.evaluate.lesion) on made-up maps."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from medens.evaluate.cam import (
    CAM_METHODS,
    class_activation_maps,
    combine_maps,
    default_cam_layers,
    ensemble_activation_maps,
    resolve_cam_layers,
)
from medens.evaluate.lesion import energy_inside, lesion_summary, pointing_hits
from medens.models.arch import norm_kwargs

SIZE = 64
#: The architectures the maps must work for: ConvNeXt with LayerNorm and BatchNorm, and a plain timm CNN.
ARCHS = [("convnext_atto", "layer"), ("convnext_atto", "batch"), ("resnet18", None)]


def _model(arch: str, norm: str | None, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(arch, num_classes=3, **(norm_kwargs(arch, norm) if norm else {}))


@pytest.fixture()
def images() -> torch.Tensor:
    return torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(("arch", "norm"), ARCHS)
@pytest.mark.parametrize("method", CAM_METHODS)
def test_maps_shape_range_and_determinism(arch, norm, method, images) -> None:
    model = _model(arch, norm).eval()
    first = class_activation_maps(model, images, method=method)
    again = class_activation_maps(model, images, method=method)
    assert first.maps.shape == (3, SIZE, SIZE) and first.maps.dtype == torch.float32
    assert float(first.maps.min()) >= 0.0 and float(first.maps.max()) <= 1.0
    # each image's map is scaled to a maximum of 1 (or is all zero when nothing speaks for the class)
    tops = first.maps.flatten(1).amax(1)
    assert all(abs(float(t) - 1.0) < 1e-5 or float(t) == 0.0 for t in tops)
    assert torch.equal(first.maps, again.maps)
    with torch.no_grad():
        expected = model(images).softmax(1)
    torch.testing.assert_close(first.probs, expected)
    assert torch.equal(first.targets, expected.argmax(1))


@pytest.mark.parametrize(("arch", "norm"), ARCHS)
def test_model_state_is_left_as_it_was(arch, norm, images) -> None:
    model = _model(arch, norm)
    model.train()  # left in training mode on purpose: maps are taken in eval mode, the flag restored
    frozen = next(iter(model.parameters()))
    frozen.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    with torch.no_grad():
        before = model(images)
    model.train()
    class_activation_maps(model, images)
    assert model.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # BatchNorm statistics too
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert not images.requires_grad and images.grad is None
    assert not model._forward_hooks and all(not m._forward_hooks for m in model.modules())
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(images), before)


def test_fully_frozen_model_still_gives_maps(images) -> None:
    model = _model("convnext_atto", "batch").eval().requires_grad_(False)
    out = class_activation_maps(model, images)
    assert float(out.maps.max()) > 0 and all(not p.requires_grad for p in model.parameters())


def test_named_class_and_layers(images) -> None:
    model = _model("convnext_atto", "layer").eval()
    out = class_activation_maps(model, images, target=2, layers="stages.1")
    assert out.targets.tolist() == [2, 2, 2]
    per_image = class_activation_maps(model, images, target=[0, 1, 2], layers=["stages.3"])
    assert per_image.targets.tolist() == [0, 1, 2]
    assert not torch.equal(out.maps, class_activation_maps(model, images, target=2).maps)


def test_default_layers_per_architecture() -> None:
    assert default_cam_layers(_model("convnext_atto", "layer")) == ["stages.1", "stages.2", "stages.3"]
    assert default_cam_layers(_model("convnext_atto", "batch")) == ["stages.1", "stages.2", "stages.3"]
    assert default_cam_layers(_model("resnet18", None)) == ["layer2", "layer3", "layer4"]


def test_bad_arguments_name_themselves(images) -> None:
    model = _model("convnext_atto", "layer").eval()
    with pytest.raises(ValueError, match=r"cam-layer.*stages\.3.*\['stage9'\]"):
        resolve_cam_layers(model, "stages.3,stage9", argument="--cam-layer")
    with pytest.raises(ValueError, match=r"target: expected one class index in 0\.\.2"):
        class_activation_maps(model, images, target=3)
    with pytest.raises(ValueError, match="method: expected one of"):
        class_activation_maps(model, images, method="magic")
    with pytest.raises(TypeError, match=r"images: expected a float tensor \(B, C, H, W\)"):
        class_activation_maps(model, images[0])


def test_ensemble_map_is_the_mean_of_member_maps_for_the_ensemble_class(images) -> None:
    models = {"a": _model("convnext_atto", "batch", 0).eval(), "b": _model("resnet18", None, 1).eval()}
    out = ensemble_activation_maps(models, images)
    probs = sum(class_activation_maps(m, images).probs for m in models.values()) / 2
    torch.testing.assert_close(out.ensemble.probs, probs)
    assert torch.equal(out.ensemble.targets, probs.argmax(1))
    for name, m in models.items():
        assert torch.equal(out.members[name].maps, class_activation_maps(m, images).maps)
    for_class = [class_activation_maps(m, images, out.ensemble.targets).maps for m in models.values()]
    mean = (for_class[0] + for_class[1]) / 2
    expected = mean / mean.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    torch.testing.assert_close(out.ensemble.maps, expected)
    weighted = ensemble_activation_maps(models, images, weights=[1.0, 0.0])
    torch.testing.assert_close(weighted.ensemble.maps, class_activation_maps(models["a"], images,
                                                                           weighted.ensemble.targets).maps)


def test_combine_maps_checks_its_input() -> None:
    with pytest.raises(ValueError, match="same"):
        combine_maps([torch.zeros(1, 4, 4), torch.zeros(1, 5, 5)])
    with pytest.raises(ValueError, match="weights"):
        combine_maps([torch.zeros(1, 4, 4)], weights=[-1.0])


def test_energy_inside_and_pointing_game() -> None:
    maps = np.zeros((3, 4, 4))
    masks = np.zeros((3, 4, 4), bool)
    masks[:, :2, :2] = True
    maps[0, 0, 0], maps[0, 3, 3] = 3.0, 1.0  # 3/4 of the energy inside; the maximum inside
    maps[1, 3, 3] = 1.0  # all outside
    # image 2: an empty map has no score
    np.testing.assert_allclose(energy_inside(maps, masks)[:2], [0.75, 0.0])
    assert np.isnan(energy_inside(maps, masks)[2])
    np.testing.assert_array_equal(pointing_hits(maps, masks)[:2], [1.0, 0.0])
    assert np.isnan(pointing_hits(maps, masks)[2])
    summary = lesion_summary({"m": {"energy_inside": energy_inside(maps, masks),
                                    "pointing_game": pointing_hits(maps, masks)}}, n_boot=200)
    assert summary["m"]["n_images"] == 2
    assert summary["m"]["energy_inside"] == pytest.approx(0.375)
    low, high = summary["m"]["energy_inside_ci"]
    assert 0.0 <= low <= 0.375 <= high <= 0.75
    assert lesion_summary({"m": {"energy_inside": [np.nan], "pointing_game": [np.nan]}})["m"]["energy_inside"] is None
    with pytest.raises(ValueError, match="same"):
        energy_inside(maps, masks[:, :2])
