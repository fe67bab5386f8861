"""Grad-CAM++ against its closed form on a model whose gradients are known, and maps under flip test-time
augmentation: the mean of the image's map and the mirrored image's map mirrored back."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch import nn

from medens.data import build_transforms
from medens.evaluate.cam import class_activation_maps, ensemble_activation_maps
from medens.evaluate.explain import explain_images
from medens.models.arch import norm_kwargs

SIZE = 32


class GapNet(nn.Module):
    """A convolution, global average pooling and a linear head: the logit is linear in the convolution's output,
    so its gradient there is the head's weight over the number of positions, the same at every position."""

    def __init__(self, seed: int = 0, symmetric: bool = False) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Conv2d(3, 5, 3, padding=1)
        self.head = nn.Linear(5, 3)
        if symmetric:  # kernels equal to their mirror: the features of a mirrored image are the mirrored features
            with torch.no_grad():
                self.features.weight.copy_((self.features.weight + self.features.weight.flip(-1)) / 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


@pytest.fixture()
def images() -> torch.Tensor:
    return torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))


def _scaled(maps: torch.Tensor) -> torch.Tensor:
    return maps / maps.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]


def test_gradcampp_equals_the_closed_form_on_a_linear_head(images) -> None:
    model = GapNet().eval()
    with torch.no_grad():  # activations and weights large enough that sum_hw(A) g weighs beside the 2 g^2
        model.features.bias.copy_(torch.tensor([6.0, -4.0, 9.0, 1.0, 3.0]))
        model.head.weight.mul_(4)
    out = class_activation_maps(model, images, layers="features", method="gradcampp")
    # Independently, in float64: g = v_tk / (h w) everywhere, so alpha_k = 1 / (2 + sum_hw(A_k) g_k) and
    # w_k = h w alpha_k relu(g_k) = relu(v_tk) / (2 + mean_hw(A_k) v_tk).
    with torch.no_grad():
        acts = model.features(images).double().numpy()                        # (B, C, h, w), h w = SIZE^2
    head = model.head.weight.detach().double().numpy()                        # (K, C)
    expected = []
    for b, t in enumerate(out.targets.tolist()):
        v = head[t]
        denom = 2 + acts[b].mean(axis=(1, 2)) * v
        assert np.all(np.abs(denom[v > 0]) > 0.1)  # the toy's denominators are far from 0
        w = np.maximum(v, 0) / denom
        m = np.maximum(np.tensordot(w, acts[b], axes=1), 0)
        expected.append(m / m.max())
    # the feature map has the input's size, so the upsampling is the identity
    np.testing.assert_allclose(out.maps.numpy(), np.stack(expected), rtol=1e-4, atol=1e-5)
    plain = class_activation_maps(model, images, layers="features", method="gradcam")
    assert not torch.allclose(plain.maps, out.maps, atol=1e-3)  # Grad-CAM keeps the negative channel weights


def test_gradcampp_leaves_the_model_as_it_was(images) -> None:
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", num_classes=3, **norm_kwargs("convnext_atto", "batch")).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out = class_activation_maps(model, images, method="gradcampp")
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks for m in model.modules())
    assert float(out.maps.max()) == pytest.approx(1.0)


def test_ensemble_gradcampp_map_is_the_mean_of_member_maps(images) -> None:
    models = {"a": GapNet(0).eval(), "b": GapNet(1).eval()}
    out = ensemble_activation_maps(models, images, layers="features", method="gradcampp")
    for_class = [class_activation_maps(m, images, out.ensemble.targets, layers="features", method="gradcampp").maps
                 for m in models.values()]
    torch.testing.assert_close(out.ensemble.maps, _scaled((for_class[0] + for_class[1]) / 2))


@pytest.mark.parametrize("method", ["gradcam", "gradcampp"])
def test_tta_map_of_a_mirror_symmetric_model_is_the_plain_map(method, images) -> None:
    model = GapNet(symmetric=True).eval()
    plain = class_activation_maps(model, images, layers="features", method=method)
    tta = class_activation_maps(model, images, layers="features", method=method, tta=True)
    torch.testing.assert_close(tta.probs, plain.probs)
    assert torch.equal(tta.targets, plain.targets)
    torch.testing.assert_close(tta.maps, plain.maps, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["gradcam", "gradcampp"])
def test_tta_map_is_the_mean_of_the_map_and_the_mirrored_back_map_of_the_mirror(method, images) -> None:
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", num_classes=3).eval()
    out = class_activation_maps(model, images, method=method, tta=True)
    mirror = images.flip(-1)
    with torch.no_grad():
        probs = (model(images).softmax(1) + model(mirror).softmax(1)) / 2  # the TTA probability rule
    torch.testing.assert_close(out.probs, probs)
    assert torch.equal(out.targets, probs.argmax(1))
    own = class_activation_maps(model, images, out.targets, method=method).maps
    back = class_activation_maps(model, mirror, out.targets, method=method).maps.flip(-1)
    torch.testing.assert_close(out.maps, _scaled((own + back) / 2))
    assert not torch.allclose(own, back, atol=1e-2)  # the input is not symmetric: the average is not a no-op


def test_tta_reaches_the_ensemble_and_explain_images() -> None:
    models = {"a": GapNet(0).eval(), "b": GapNet(1).eval()}
    pil = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
           for i in range(3)]
    transform = build_transforms(SIZE, train=False, crop_pct=1.0)
    x = torch.stack([transform(img) for img in pil])
    ens = ensemble_activation_maps(models, x, layers="features", tta=True)
    member = {n: class_activation_maps(m, x, layers="features", tta=True) for n, m in models.items()}
    torch.testing.assert_close(ens.ensemble.probs, (member["a"].probs + member["b"].probs) / 2)
    mms = [SimpleNamespace(member=SimpleNamespace(name=n, config={"image_size": SIZE, "crop_pct": 1.0}),
                           model=m, transform=transform, device="cpu") for n, m in models.items()]
    batch = explain_images(mms, pil, ens.ensemble.targets.numpy(), layers="features", tta=True)
    for n in models:
        np.testing.assert_allclose(batch.members[n], member[n].maps.numpy(), atol=1e-6)
    np.testing.assert_allclose(batch.ensemble, ens.ensemble.maps.numpy(), atol=1e-6)
    plain = explain_images(mms, pil, ens.ensemble.targets.numpy(), layers="features")
    assert not np.allclose(plain.ensemble, batch.ensemble, atol=1e-3)
