"""Class-activation maps of ensemble members on images: the step shared by ``predict --explain`` and the report's
gallery and lesion scores.

Each member reads an image through its own evaluation transform; its map is then resized to one **display frame**,
the first member's view of the image (its resize and centre crop, without normalisation), where the ensemble's map
is combined (:func:`medens.evaluate.cam.combine_maps`) and where lesion masks are put for scoring. Members of a
pipeline share the image size and crop, so their frames coincide; members with another crop share are logged once.

Shapes: ``B`` images, ``h x w`` the display frame.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from medens.evaluate.cam import DEFAULT_CAM_METHOD, class_activation_maps, combine_maps

logger = logging.getLogger(__name__)

__all__ = ["ExplainedBatch", "display_geometry", "explain_images"]


@dataclass(frozen=True)
class ExplainedBatch:
    """Maps of a batch in the display frame.

    Attributes:
        views: ``uint8 (B, h, w, 3)``: what the first member saw, for display.
        members: member name -> ``float32 (B, h, w)`` its map for its own predicted class (or the named class).
        member_targets: member name -> ``int64 (B,)`` the class its map explains.
        ensemble: ``float32 (B, h, w)`` the ensemble's map, for ``ensemble_targets``.
        ensemble_targets: ``int64 (B,)``.
    """

    views: np.ndarray
    members: dict[str, np.ndarray]
    member_targets: dict[str, np.ndarray]
    ensemble: np.ndarray
    ensemble_targets: np.ndarray


def _config_of(mm: Any) -> tuple[int, float]:
    from medens.data import DEFAULT_CROP_PCT

    config = mm.member.config
    return int(config["image_size"]), float(config.get("crop_pct", DEFAULT_CROP_PCT))


def display_geometry(member_models: Sequence[Any], interpolation: str = "bilinear") -> Any:
    """The first member's evaluation geometry (resize and centre crop, values in [0, 1]) as a transform:
    PIL image -> ``float32 (3, h, w)``; ``interpolation="nearest"`` for masks."""
    from medens.data import build_transforms

    size, crop = _config_of(member_models[0])
    return build_transforms(size, train=False, normalize=False, crop_pct=crop, interpolation=interpolation)


def explain_images(
    member_models: Sequence[Any],
    images: Sequence[Any],
    ensemble_targets: Sequence[int] | np.ndarray,
    *,
    weights: Sequence[float] | None = None,
    target: int | None = None,
    layers: str | Sequence[str] | None = None,
    method: str = DEFAULT_CAM_METHOD,
    tta: bool = False,
) -> ExplainedBatch:
    """Maps of every member and of the ensemble for a batch of PIL images.

    Args:
        member_models: :class:`medens.inference.MemberModel` of each member (model, transform, device).
        images: ``B`` PIL RGB images.
        ensemble_targets: ``(B,)`` the class the ensemble predicts (or the named class) for each image.
        weights: the ensemble's member weights; ``None``: the plain mean.
        target: a class every member's own map explains; ``None``: the class each member predicts.
        layers: layer names for every member (``None``: each architecture's default).
        method: one of :data:`medens.evaluate.cam.CAM_METHODS`.
        tta: flip test-time augmentation, as the probabilities were computed (the maps are the mean of the image's
            and the mirrored image's mirrored back; see :func:`medens.evaluate.cam.class_activation_maps`).

    Returns:
        :class:`ExplainedBatch`.
    """
    view = display_geometry(member_models)
    views = torch.stack([view(img) for img in images])
    frame = tuple(views.shape[-2:])
    crops = {_config_of(mm)[1] for mm in member_models}
    if len(crops) > 1:
        logger.warning("members crop differently (crop_pct %s); their maps are shown in the first member's frame",
                       sorted(crops))
    ens_t = torch.as_tensor(np.asarray(ensemble_targets), dtype=torch.int64)
    own: dict[str, np.ndarray] = {}
    own_t: dict[str, np.ndarray] = {}
    for_ensemble: list[torch.Tensor] = []
    for mm in member_models:
        x = torch.stack([mm.transform(img) for img in images]).to(mm.device)
        out = class_activation_maps(mm.model, x, target, layers=layers, method=method, tta=tta)
        maps = out.maps
        differ = (out.targets.cpu() != ens_t).nonzero().flatten()
        if len(differ):
            again = class_activation_maps(mm.model, x[differ], ens_t[differ].to(mm.device), layers=layers,
                                          method=method, tta=tta)
            ens_maps = maps.clone()
            ens_maps[differ.to(maps.device)] = again.maps
        else:
            ens_maps = maps
        resize = (lambda m: F.interpolate(m[:, None].float().cpu(), size=frame, mode="bilinear",
                                          align_corners=False)[:, 0].clamp(0, 1))
        own[mm.member.name] = resize(maps).numpy()
        own_t[mm.member.name] = out.targets.cpu().numpy()
        for_ensemble.append(resize(ens_maps))
    ensemble = combine_maps(for_ensemble, weights).numpy()
    pixels = (views.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return ExplainedBatch(views=pixels, members=own, member_targets=own_t, ensemble=ensemble,
                          ensemble_targets=ens_t.numpy())


def caption_of(classes: Sequence[str], probs: np.ndarray, who: str = "ensemble") -> str:
    """``"ensemble: benign (benign 0.81, malignant 0.12, normal 0.07)"``: the predicted class and every
    probability."""
    row = np.asarray(probs, dtype=np.float64)
    shown = ", ".join(f"{c} {p:.2f}" for c, p in zip(classes, row, strict=True))
    return f"{who}: {classes[int(np.argmax(row))]} ({shown})"


def write_explanations(
    member_models: Sequence[Any],
    files: Sequence[Any],
    names: Sequence[str],
    out_dir: Any,
    classes: Sequence[str],
    probs: np.ndarray,
    member_probs: dict[str, np.ndarray],
    *,
    weights: Sequence[float] | None = None,
    target: int | None = None,
    layers: str | Sequence[str] | None = None,
    method: str = DEFAULT_CAM_METHOD,
    tta: bool = False,
    batch_size: int = 16,
    labels: dict[str, str] | None = None,
) -> list[Any]:
    """One PNG per image in ``out_dir``: the image, each member's overlay and (with two or more members) the
    ensemble's, captioned with the prediction and the probabilities.

    Args:
        member_models: the members' :class:`medens.inference.MemberModel`.
        files: ``N`` readable image files.
        names: ``N`` PNG file names.
        out_dir: the folder to write into (made if missing).
        classes: the ``K`` class names.
        probs: ``(N, K)`` the probabilities reported for each image (the ensemble's, or the single member's).
        member_probs: member name -> ``(N, K)`` its probabilities, for the panel titles.
        weights, target, layers, method, tta: as in :func:`explain_images`.
        batch_size: images per map pass.
        labels: member name -> its title in the picture (default: the name).

    Returns:
        The PNG paths, in the order of ``files``.
    """
    from pathlib import Path

    from tqdm.auto import tqdm

    from medens.data import read_image
    from medens.evaluate.overlays import Panel, save_explanation

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = labels or {}
    ens_targets = np.full(len(files), target) if target is not None else np.asarray(probs).argmax(axis=1)
    written = []
    for start in tqdm(range(0, len(files), batch_size), desc="maps", leave=False, unit="batch"):
        chunk = slice(start, start + batch_size)
        pil = [read_image(f) for f in files[chunk]]
        batch = explain_images(member_models, pil, ens_targets[chunk], weights=weights, target=target,
                               layers=layers, method=method, tta=tta)
        for j in range(len(pil)):
            i = start + j
            panels = []
            for mm in member_models:
                name = mm.member.name
                t = int(batch.member_targets[name][j])
                title = f"{labels.get(name, name)}: {classes[t]} {member_probs[name][i, t]:.2f}"
                panels.append(Panel(title, batch.members[name][j]))
            if len(member_models) > 1:
                t = int(batch.ensemble_targets[j])
                panels.append(Panel(f"ensemble: {classes[t]} {probs[i, t]:.2f}", batch.ensemble[j]))
            who = "ensemble" if len(member_models) > 1 else labels.get(member_models[0].member.name, "model")
            caption = caption_of(classes, probs[i], who)
            if target is not None:
                caption += f"; maps for class {classes[target]}"
            written.append(save_explanation(out / names[i], batch.views[j], panels, caption,
                                            title=Path(str(files[i])).name))
    return written
