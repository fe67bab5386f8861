"""Does a model look at the lesion? Two scores of class-activation maps against lesion masks.

- **Energy inside the lesion** (the energy-based pointing game of Score-CAM, Wang et al. 2020): the share of a
  map's total value that lies inside the lesion mask, ``sum(map * mask) / sum(map)``, in [0, 1]. A map spread
  evenly over the image scores the lesion's share of the image's area.
- **Pointing game** (Zhang et al. 2016): a hit when the map's maximum lies inside the lesion; the hit rate over
  images.

Only images with a lesion mask are scored (no mask is no score, never a zero; see :mod:`medens.data.masks`), and
a map without any positive value gives no energy share. Per model: the mean share and the hit rate with
percentile bootstrap intervals over the scored images, the models on the same resamples.

Shapes: ``N`` images, ``H x W`` the map's frame (the mask in the same frame).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from medens.evaluate.bootstrap import DEFAULT_CONFIDENCE, DEFAULT_N_BOOT, bootstrap_indices

__all__ = ["energy_inside", "pointing_hits", "lesion_summary", "LESION_SCORE_TITLES"]

#: Score key to table title.
LESION_SCORE_TITLES = {"energy_inside": "Energy inside lesion", "pointing_game": "Pointing-game hits"}


def _check(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    maps, masks = np.asarray(maps, dtype=np.float64), np.asarray(masks, dtype=bool)
    if maps.ndim != 3 or maps.shape != masks.shape:
        raise ValueError(f"maps, masks: expected the same (N, H, W) shape, received {maps.shape} and {masks.shape}")
    return np.clip(maps, 0, None), masks


def energy_inside(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Share of each map's energy inside its mask.

    Args:
        maps: ``(N, H, W)`` non-negative maps (negative values count as 0).
        masks: ``bool (N, H, W)`` lesion masks.

    Returns:
        ``float64 (N,)`` in [0, 1]; NaN where a map has no positive value.
    """
    maps, masks = _check(maps, masks)
    total = maps.sum(axis=(1, 2))
    inside = (maps * masks).sum(axis=(1, 2))
    return np.divide(inside, total, out=np.full(total.shape, np.nan), where=total > 0)


def pointing_hits(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Whether each map's maximum lies inside its mask (the first maximum in row-major order on ties).

    Returns:
        ``float64 (N,)``: 1.0 hit, 0.0 miss, NaN where a map has no positive value.
    """
    maps, masks = _check(maps, masks)
    flat = maps.reshape(len(maps), -1)
    top = flat.argmax(axis=1)
    hits = masks.reshape(len(masks), -1)[np.arange(len(maps)), top].astype(np.float64)
    hits[flat.max(axis=1, initial=0.0) <= 0] = np.nan
    return hits


def lesion_summary(
    scores: Mapping[str, Mapping[str, np.ndarray]],
    *,
    n_boot: int = DEFAULT_N_BOOT,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> dict[str, dict[str, object]]:
    """Mean of each score per model, with paired percentile bootstrap intervals over the scored images.

    Args:
        scores: model name -> {"energy_inside": (N,), "pointing_game": (N,)}, NaN where an image has no score;
            every array over the same N images.
        n_boot: bootstrap resamples.
        confidence: two-sided coverage.
        seed: seed of the resampling.

    Returns:
        model name -> {"n_images": scored images, "energy_inside": mean, "energy_inside_ci": [low, high],
        "pointing_game": hit rate, "pointing_game_ci": [low, high]} (None where nothing was scored).
    """
    alpha = (1 - confidence) / 2
    out: dict[str, dict[str, object]] = {}
    for model, per_score in scores.items():
        entry: dict[str, object] = {}
        for key in LESION_SCORE_TITLES:
            values = np.asarray(per_score[key], dtype=np.float64)
            values = values[np.isfinite(values)]
            entry.setdefault("n_images", int(values.size))
            if values.size == 0:
                entry[key], entry[f"{key}_ci"] = None, None
                continue
            draws = values[bootstrap_indices(values.size, n_boot, seed)].mean(axis=1)
            entry[key] = float(values.mean())
            entry[f"{key}_ci"] = [float(np.quantile(draws, alpha)), float(np.quantile(draws, 1 - alpha))]
        out[model] = entry
    return out
