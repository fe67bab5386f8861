"""Class-activation maps: where each member, and the ensemble, looks when it predicts a class.

**The library: Captum** (``captum.attr.LayerGradCam``, ``LayerGradientXActivation``), chosen over pytorch-grad-cam
(the ``grad-cam`` package) for three reasons that matter here:

- it takes gradients with ``torch.autograd.grad`` with respect to the hooked layer's output, so nothing is left in
  the parameters' ``.grad`` (pytorch-grad-cam calls ``loss.backward()``, which writes every parameter's ``.grad``
  and would have to be undone by hand); with the model in evaluation mode no model state changes;
- it depends on PyTorch and numpy only, where ``grad-cam`` pulls in OpenCV (``opencv-python``, which needs the
  system's libGL on a headless Debian machine);
- it is maintained by the PyTorch organisation and explains per-sample targets in one pass.

Two more methods at the same cost as Grad-CAM (one forward and backward pass per layer): ``gradxact`` through
Captum (the gradient times the activation, summed over channels, then ReLU: LayerCAM's map without its gradient
ReLU), which keeps finer detail than Grad-CAM's channel-averaged gradient; and ``gradcampp``, Grad-CAM++, which
Captum lacks: computed here (:func:`gradcam_plus_plus`) from the layer's activations and gradients as Captum captures
them for its Grad-CAM (``captum._utils.gradient.compute_layer_gradients_and_eval``, what ``LayerGradCam`` calls;
a helper outside Captum's public API, so the closed-form test of Grad-CAM++ is what catches a change in it).

**The layers.** A map is computed at each named layer (a module name of the model, e.g. ``stages.2``), upsampled
bilinearly to the input's size, scaled so its maximum is 1, and the layers' maps are averaged. The default, per
architecture, is the last three stages that timm's ``feature_info`` lists (``stages.1`` to ``stages.3`` of a
ConvNeXt, with LayerNorm or BatchNorm alike; ``layer2`` to ``layer4`` of a ResNet): a ConvNeXt's last stage is only
3 x 3 at 96 px, too coarse to tell a lesion from its rim. Measured on models trained on the synthetic images at
96 px (``benchmarks/cam_layers.py --size 96 --steps 100``, 84 held-out images with a lesion, 2026-12-06; in
``benchmarks/RESULTS.md``), the last stage alone put no more of the map on the lesion than a uniform map would
(0.045 of its energy inside the lesion against 0.050 for a BatchNorm ConvNeXt-Atto), and the last three stages did
best or second best on both lesion scores for a BatchNorm ConvNeXt (0.066 energy, 0.39 pointing-game hits) and a
ResNet-18; each layer costs one forward and backward pass. ``layers=`` (and
``--cam-layer``) overrides it; :func:`cam_layer_choices` lists the candidates.

**Model state.** Maps are computed in evaluation mode; the model's ``training`` flag, its parameters (with their
``requires_grad`` flags and ``.grad``), its buffers (BatchNorm statistics) and its hooks are as they were
afterwards, so predictions with and without maps are identical.

**The ensemble's map** combines the members' maps with the ensemble's rule: the (weighted) mean of the members'
maps *for the class the ensemble predicts*, as the ensemble's probabilities are the (weighted) mean of theirs.

**Test-time augmentation** (``tta=True``, ``--tta``): as a prediction's probabilities are the mean of those of the
image and of its horizontal mirror, its map is the mean of the image's map and of the mirrored image's map mirrored
back, both for the class the flip-averaged probabilities predict.

Shapes: ``B`` images, ``K`` classes, ``H x W`` the input's size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "CAM_METHODS",
    "DEFAULT_CAM_METHOD",
    "DEFAULT_CAM_STAGES",
    "CamOutput",
    "EnsembleCams",
    "cam_layer_choices",
    "default_cam_layers",
    "resolve_cam_layers",
    "class_activation_maps",
    "combine_maps",
    "ensemble_activation_maps",
    "gradcam_plus_plus",
]

#: Map methods: ``gradcam`` (Grad-CAM) and ``gradxact`` (gradient x activation) through Captum, ``gradcampp``
#: (Grad-CAM++, :func:`gradcam_plus_plus`).
CAM_METHODS: tuple[str, ...] = ("gradcam", "gradxact", "gradcampp")
DEFAULT_CAM_METHOD = "gradcam"
#: How many of the last feature stages the default map averages (benchmarks/cam_layers.py: see "The layers" above).
DEFAULT_CAM_STAGES = 3


@dataclass(frozen=True)
class CamOutput:
    """The maps of one model (or the ensemble) for a batch.

    Attributes:
        maps: ``float32 (B, H, W)`` in [0, 1], each image's map scaled so its maximum is 1 (all zeros when the
            model's gradient gives the class no positive evidence anywhere).
        targets: ``int64 (B,)`` the class each map explains.
        probs: ``float32 (B, K)`` the model's softmax probabilities for the batch.
    """

    maps: torch.Tensor
    targets: torch.Tensor
    probs: torch.Tensor


@dataclass(frozen=True)
class EnsembleCams:
    """Every member's maps and the ensemble's for one batch.

    Attributes:
        members: member name -> its maps, each for the class that member predicts (or the named class).
        ensemble: the combined maps, for the class the ensemble predicts (or the named class), with the
            ensemble's probabilities.
    """

    members: dict[str, CamOutput]
    ensemble: CamOutput


def cam_layer_choices(model: nn.Module) -> list[str]:
    """The module names a map can be taken at, shallow to deep: timm's ``feature_info`` stages when the model
    has them, else every convolution's name."""
    info = getattr(model, "feature_info", None)
    names = [str(item["module"]) for item in info] if isinstance(info, list) and info else []
    modules = dict(model.named_modules())
    names = [n for n in names if n in modules]
    if names:
        return names
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def default_cam_layers(model: nn.Module) -> list[str]:
    """The default layers of ``model``: its last :data:`DEFAULT_CAM_STAGES` feature stages (module names).

    Raises:
        ValueError: if the model has no convolutional layer to take a map at.
    """
    choices = cam_layer_choices(model)
    if not choices:
        raise ValueError(
            f"model: expected a convolutional network (timm feature stages or Conv2d layers) for class-activation "
            f"maps, received {type(model).__name__} without any"
        )
    return choices[-DEFAULT_CAM_STAGES:]


def resolve_cam_layers(
    model: nn.Module, layers: str | Sequence[str] | None = None, *, argument: str = "layers"
) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of each layer to take a map at: ``layers`` (names, or one comma-separated string), or
    the default (:func:`default_cam_layers`).

    Raises:
        ValueError: naming ``argument``, when a name is not a module of the model (the message lists the
            stages it has).
    """
    if layers is None or (not isinstance(layers, str) and len(layers) == 0):
        names = default_cam_layers(model)
    else:
        raw = [layers] if isinstance(layers, str) else list(layers)
        names = [part.strip() for item in raw for part in str(item).split(",") if part.strip()]
        if not names:
            raise ValueError(f"{argument}: expected one or more module names, received {layers!r}")
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise ValueError(
            f"{argument}: expected module names of {type(model).__name__} such as "
            f"{cam_layer_choices(model)}, received {unknown}"
        )
    return [(n, modules[n]) for n in names]


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise TypeError(f"images: expected a float tensor (B, C, H, W), received {shape}")


def _check_targets(targets: int | torch.Tensor | Sequence[int] | None, batch: int, classes: int) -> torch.Tensor | None:
    if targets is None:
        return None
    t = torch.as_tensor(targets, dtype=torch.int64).flatten()
    if t.numel() == 1:
        t = t.expand(batch)
    if t.numel() != batch or bool(((t < 0) | (t >= classes)).any()):
        raise ValueError(
            f"target: expected one class index in 0..{classes - 1}, or one per image ({batch}), "
            f"received {t.tolist()}"
        )
    return t.clone()


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    """Scale each ``(B, H, W)`` map so its maximum is 1 (a map without positive values stays zero)."""
    top = maps.flatten(1).amax(dim=1).clamp_min(1e-12)
    return maps / top[:, None, None]


def _check_spatial(output: torch.Tensor, layer: nn.Module) -> None:
    if output.ndim != 4:
        raise ValueError(
            f"layers: expected a layer with a spatial output (B, C, h, w), received output of shape "
            f"{tuple(output.shape)} from {type(layer).__name__}"
        )


def gradcam_plus_plus(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ of one layer from its activations and the gradient of the class's logit with respect to them.

    Grad-CAM++: Chattopadhay, Sarkar, Howlader and Balasubramanian, "Grad-CAM++: Generalized Gradient-Based Visual
    Explanations for Deep Convolutional Networks", WACV 2018 (arXiv:1710.11063). With ``A`` the activations,
    ``g = dS/dA`` the gradient of the class's logit ``S`` and the class score taken as ``exp(S)``, the second and
    third derivatives of the score are ``exp(S) g^2`` and ``exp(S) g^3`` (a network of ReLUs, max-pools and linear
    layers has no higher derivatives of ``S`` itself), which gives the paper's closed form of the pixel weights::

        alpha = g^2 / (2 g^2 + sum_hw(A) g^3)          (0 where the denominator is 0)
        w_c   = sum_hw(alpha * relu(g))                 (channel weights)
        map   = relu(sum_c w_c A_c)

    The factor ``exp(S)`` of the score's gradient scales every channel weight of an image alike and is left out:
    maps are scaled to a maximum of 1 anyway.

    Args:
        activations: ``(B, C, h, w)`` the layer's output.
        gradients: ``(B, C, h, w)`` the gradient of each image's class logit with respect to it.

    Returns:
        ``(B, h, w)`` non-negative, un-normalised.
    """
    g2 = gradients.pow(2)
    denom = 2 * g2 + activations.sum(dim=(2, 3), keepdim=True) * gradients.pow(3)
    nonzero = denom != 0
    alpha = torch.where(nonzero, g2 / torch.where(nonzero, denom, torch.ones_like(denom)), torch.zeros_like(denom))
    weights = (alpha * gradients.clamp_min(0)).sum(dim=(2, 3), keepdim=True)
    return (weights * activations).sum(dim=1).clamp_min(0)


def _layer_map(model: nn.Module, layer: nn.Module, x: torch.Tensor, targets: torch.Tensor, method: str) -> torch.Tensor:
    """Un-normalised ``(B, h, w)`` map of one layer, through Captum."""
    from captum._utils.gradient import compute_layer_gradients_and_eval
    from captum.attr import LayerGradCam, LayerGradientXActivation

    if method == "gradcampp":
        (gradients,), (activations,) = compute_layer_gradients_and_eval(model, layer, x, targets)
        _check_spatial(activations, layer)
        return gradcam_plus_plus(activations.detach(), gradients.detach())
    if method == "gradcam":
        attr = LayerGradCam(model, layer).attribute(x, target=targets, relu_attributions=True)
    else:
        attr = LayerGradientXActivation(model, layer).attribute(x, target=targets).sum(dim=1, keepdim=True)
        attr = attr.clamp_min(0)
    _check_spatial(attr, layer)
    return attr[:, 0].detach()


def _mean_layer_map(model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                    named: Sequence[tuple[str, nn.Module]], method: str) -> torch.Tensor:
    """``(B, H, W)`` the mean over ``named`` layers of each layer's map, upsampled to the input and scaled to a
    maximum of 1; the result scaled so again."""
    size = images.shape[-2:]
    total = torch.zeros(images.shape[0], *size, device=images.device)
    with torch.enable_grad():
        for _, layer in named:
            # A fresh leaf: Captum may set requires_grad on its input; the caller's tensor is never touched.
            x = images.detach().clone()
            raw = _layer_map(model, layer, x, targets, method)
            up = F.interpolate(raw[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
            total += _normalise(up.clamp_min(0))
    return _normalise(total / len(named))


def _mirror(images: torch.Tensor) -> torch.Tensor:
    """The horizontal mirror of ``(..., W)`` images or maps (the flip of test-time augmentation)."""
    return torch.flip(images, dims=[-1])


def class_activation_maps(
    model: nn.Module,
    images: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor | None = None,
    *,
    layers: str | Sequence[str] | None = None,
    method: str = DEFAULT_CAM_METHOD,
    tta: bool = False,
) -> CamOutput:
    """Class-activation maps of one classifier for one batch.

    Args:
        model: a classifier returning logits ``(B, K)`` (any mode; it is evaluated in eval mode and left as it
            was).
        images: ``float (B, C, H, W)``, normalised as the model expects, on the model's device.
        target: the class to explain: ``None`` (each image's predicted class), one index, or one per image.
        layers: module names to take the map at (one comma-separated string or a list); default
            :func:`default_cam_layers`.
        method: one of :data:`CAM_METHODS`.
        tta: flip test-time augmentation: the probabilities are the mean of the image's and its mirror's, the map
            the mean of the image's map and the mirror's map mirrored back (for the class the mean predicts).

    Returns:
        The maps ``(B, H, W)`` in [0, 1], the explained classes and the probabilities.

    Raises:
        TypeError: if ``images`` is not a 4-D float tensor.
        ValueError: on an unknown method, layer or target.
    """
    _check_images(images)
    if method not in CAM_METHODS:
        raise ValueError(f"method: expected one of {list(CAM_METHODS)}, received {method!r}")
    named = resolve_cam_layers(model, layers)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            probs = model(images).float().softmax(dim=1)
            if tta:
                probs = (probs + model(_mirror(images)).float().softmax(dim=1)) / 2
        chosen = _check_targets(target, images.shape[0], probs.shape[1])
        targets = probs.argmax(dim=1) if chosen is None else chosen.to(probs.device)
        maps = _mean_layer_map(model, images, targets, named, method)
        if tta:
            mirrored = _mean_layer_map(model, _mirror(images), targets, named, method)
            maps = _normalise((maps + _mirror(mirrored)) / 2)
    finally:
        model.train(was_training)
    return CamOutput(maps=maps.float(), targets=targets, probs=probs)


def combine_maps(maps: Sequence[torch.Tensor], weights: Sequence[float] | None = None) -> torch.Tensor:
    """The ensemble's map: the (weighted) mean of the members' maps, rescaled so each image's maximum is 1.

    Args:
        maps: one ``(B, H, W)`` tensor per member, for the same class.
        weights: one non-negative weight per member (the ensemble's weights); ``None``: equal weights.

    Returns:
        ``float32 (B, H, W)`` in [0, 1].

    Raises:
        ValueError: on no maps, differing shapes or a wrong number of weights.
    """
    if not maps:
        raise ValueError("maps: expected one map tensor per member, received none")
    shapes = {tuple(m.shape) for m in maps}
    if len(shapes) != 1:
        raise ValueError(f"maps: expected the same (B, H, W) shape for every member, received {sorted(shapes)}")
    w = torch.ones(len(maps)) if weights is None else torch.as_tensor(list(weights), dtype=torch.float32)
    if w.numel() != len(maps) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError(f"weights: expected {len(maps)} non-negative weights with a positive sum, received "
                         f"{list(weights) if weights is not None else None}")
    w = (w / w.sum()).to(maps[0].device)
    stacked = torch.stack([m.float() for m in maps])
    return _normalise((stacked * w[:, None, None, None]).sum(dim=0))


def ensemble_activation_maps(
    models: Mapping[str, nn.Module],
    images: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor | None = None,
    *,
    weights: Sequence[float] | None = None,
    layers: Mapping[str, str | Sequence[str] | None] | str | Sequence[str] | None = None,
    method: str = DEFAULT_CAM_METHOD,
    tta: bool = False,
) -> EnsembleCams:
    """Each member's maps and the ensemble's, for one batch every member reads as it is.

    The ensemble's probabilities are the (weighted) mean of the members'; its map is :func:`combine_maps` of
    the members' maps for the ensemble's class. Each member's own map explains the class that member predicts
    (the named ``target`` when given); where it predicts another class than the ensemble, its map for the
    ensemble's class is computed too, for the combination.

    Args:
        models: member name -> classifier, all taking ``images`` as they are and giving ``K`` logits.
        images: ``float (B, C, H, W)``.
        target: as in :func:`class_activation_maps`.
        weights: the ensemble's member weights (``None``: the plain mean).
        layers: one setting for every member, or member name -> its layers.
        method: one of :data:`CAM_METHODS`.
        tta: as in :func:`class_activation_maps` (every member's probabilities and maps flip-averaged).

    Returns:
        :class:`EnsembleCams`.
    """
    if not models:
        raise ValueError("models: expected at least one member, received none")
    names = list(models)

    def layers_of(name: str) -> str | Sequence[str] | None:
        return layers.get(name) if isinstance(layers, Mapping) else layers

    own = {n: class_activation_maps(models[n], images, target, layers=layers_of(n), method=method, tta=tta)
           for n in names}
    w = torch.ones(len(names)) if weights is None else torch.as_tensor(list(weights), dtype=torch.float32)
    if w.numel() != len(names):
        raise ValueError(f"weights: expected {len(names)} weights, received {list(weights or [])}")
    w = w / w.sum()
    probs = sum(float(wi) * own[n].probs for wi, n in zip(w, names, strict=True))
    ens_targets = probs.argmax(dim=1) if target is None else own[names[0]].targets
    for_ensemble = []
    for n in names:
        maps = own[n].maps
        differ = own[n].targets != ens_targets
        if bool(differ.any()):
            idx = differ.nonzero().flatten()
            again = class_activation_maps(
                models[n], images[idx], ens_targets[idx], layers=layers_of(n), method=method, tta=tta
            )
            maps = maps.clone()
            maps[idx] = again.maps
        for_ensemble.append(maps)
    ensemble = CamOutput(maps=combine_maps(for_ensemble, w.tolist()), targets=ens_targets, probs=probs)
    return EnsembleCams(members=own, ensemble=ensemble)
