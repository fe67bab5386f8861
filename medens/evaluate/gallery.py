"""The ensemble report's gallery and lesion scores: where the members and the ensemble look on the test images.

- **Gallery**: every misclassified test image, the most confident errors first, up to a limit, then the
  least-confident correct ones; each a PNG ``gallery-*.png`` beside the report with the image, each member's map and the ensemble's
  (:mod:`medens.evaluate.explain`), captioned with the true class, the prediction and the probabilities.
- **Lesion scores**, where the dataset ships lesion masks (:mod:`medens.data.masks`): per model (each member, the
  ensemble and a baseline beside it) the share of its map's energy inside the lesion and the pointing-game hit rate
  over the test images that have a mask, with bootstrap intervals (:mod:`medens.evaluate.lesion`). Maps explain
  the class each model predicts, as in the gallery.

Both go into ``metrics.json`` (``gallery``, ``lesion``) and the report.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from medens.evaluate.bootstrap import DEFAULT_CONFIDENCE, DEFAULT_N_BOOT
from medens.evaluate.cam import DEFAULT_CAM_METHOD, class_activation_maps
from medens.evaluate.explain import caption_of, display_geometry, explain_images
from medens.evaluate.lesion import LESION_SCORE_TITLES, energy_inside, lesion_summary, pointing_hits
from medens.evaluate.overlays import Panel, save_explanation
from medens.io import markdown_table
from medens.layout import GALLERY_PREFIX

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_GALLERY_ERRORS",
    "DEFAULT_GALLERY_CORRECT",
    "select_gallery",
    "explain_test_split",
    "gallery_markdown",
]

#: Most misclassified test images shown (the most confident errors first).
DEFAULT_GALLERY_ERRORS = 12
#: Least-confident correct test images shown.
DEFAULT_GALLERY_CORRECT = 4
_MAP_BATCH = 16


def select_gallery(labels: np.ndarray, probs: np.ndarray, max_errors: int, max_correct: int) -> tuple[list[int], list[int]]:
    """The gallery's test images: errors by decreasing confidence, correct ones by increasing confidence.

    Args:
        labels: ``(N,)`` true classes.
        probs: ``(N, K)`` the ensemble's probabilities.
        max_errors: most errors kept.
        max_correct: most correct images kept.

    Returns:
        ``(error indices, correct indices)``; ties keep the test order.
    """
    confidence = np.asarray(probs).max(axis=1)
    correct = np.asarray(probs).argmax(axis=1) == np.asarray(labels)
    errors = [int(i) for i in np.argsort(-confidence, kind="stable") if not correct[i]][:max_errors]
    right = [int(i) for i in np.argsort(confidence, kind="stable") if correct[i]][:max_correct]
    return errors, right


def _safe_stem(text: str) -> str:
    stem = Path(text).stem
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:40] or "image"


def explain_test_split(
    member_models: Sequence[Any],
    dataset: Any,
    paths: Sequence[str],
    labels: np.ndarray,
    classes: Sequence[str],
    probs: Mapping[str, np.ndarray],
    out_dir: str | os.PathLike[str],
    *,
    ensemble_name: str = "ensemble",
    labels_by_name: Mapping[str, str] | None = None,
    weights: Sequence[float] | None = None,
    baseline_model: Any | None = None,
    baseline_name: str = "baseline",
    max_errors: int = DEFAULT_GALLERY_ERRORS,
    max_correct: int = DEFAULT_GALLERY_CORRECT,
    layers: str | Sequence[str] | None = None,
    method: str = DEFAULT_CAM_METHOD,
    n_boot: int = DEFAULT_N_BOOT,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
    tta: bool = False,
) -> dict[str, Any]:
    """Write the gallery's PNGs and score the maps against lesion masks.

    Args:
        member_models: each member's :class:`medens.inference.MemberModel`, in the ensemble's order.
        dataset: the dataset the test images come from (its ``ids`` name them).
        paths: ``N`` test image ids, as in the predictions.
        labels: ``(N,)`` true classes.
        classes: the ``K`` class names.
        probs: model name -> ``(N, K)`` probabilities as evaluated: each member, ``ensemble_name`` and, with a
            baseline, ``baseline_name``.
        out_dir: the ensemble's folder (the PNGs go beside the report; those of an earlier evaluation are removed).
        ensemble_name: the ensemble's key in ``probs``.
        labels_by_name: model name -> its title.
        weights: the ensemble's member weights (``None``: the plain mean).
        baseline_model: the baseline's model, scored against the masks beside the others.
        baseline_name: the baseline's key in ``probs``.
        max_errors, max_correct: the gallery's limits (0 and 0: no gallery).
        layers, method: as in :func:`medens.evaluate.cam.class_activation_maps`.
        n_boot, confidence, seed: the bootstrap of the lesion scores.
        tta: the probabilities are flip-averaged; so are the maps (:func:`medens.evaluate.cam.class_activation_maps`).

    Returns:
        ``{"gallery": {...}, "lesion": {...} or None}`` for ``metrics.json``.

    Raises:
        ValueError: if a test image is not in ``dataset``.
    """
    from medens.data.masks import has_lesion_masks

    titles = dict(labels_by_name or {})
    position = {item: i for i, item in enumerate(dataset.ids)}
    missing = [p for p in paths if p not in position]
    if missing:
        raise ValueError(f"dataset: expected the test images of the predictions, received {len(missing)} missing "
                         f"(e.g. {missing[0]})")
    ens = np.asarray(probs[ensemble_name])
    errors, right = select_gallery(labels, ens, max_errors, max_correct)
    out = Path(out_dir)
    entries: list[dict[str, Any]] = []
    chosen = [(i, "error") for i in errors] + [(i, "correct") for i in right]
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"{GALLERY_PREFIX}*.png"):
        old.unlink()
    for start in tqdm(range(0, len(chosen), _MAP_BATCH), desc="gallery", leave=False, unit="batch"):
        part = chosen[start:start + _MAP_BATCH]
        idx = [i for i, _ in part]
        images = [dataset[position[paths[i]]][0] for i in idx]
        batch = explain_images(member_models, images, ens[idx].argmax(axis=1), weights=weights, layers=layers,
                               method=method, tta=tta)
        for j, (i, kind) in enumerate(part):
            panels = []
            for mm in member_models:
                name = mm.member.name
                t = int(batch.member_targets[name][j])
                panels.append(Panel(f"{titles.get(name, name)}: {classes[t]} {probs[name][i, t]:.2f}",
                                    batch.members[name][j]))
            t = int(batch.ensemble_targets[j])
            panels.append(Panel(f"ensemble: {classes[t]} {ens[i, t]:.2f}", batch.ensemble[j]))
            file = f"{GALLERY_PREFIX}{len(entries):03d}-{kind}-{_safe_stem(paths[i])}.png"
            caption = f"true: {classes[int(labels[i])]}; " + caption_of(classes, ens[i])
            save_explanation(out / file, batch.views[j], panels, caption, title=Path(paths[i]).name)
            entries.append({
                "file": file, "path": paths[i], "kind": kind, "label": classes[int(labels[i])],
                "prediction": classes[t], "confidence": float(ens[i].max()),
            })
    gallery = {
        "errors": sum(e["kind"] == "error" for e in entries),
        "errors_total": int((ens.argmax(axis=1) != labels).sum()),
        "correct": sum(e["kind"] == "correct" for e in entries),
        "max_errors": max_errors,
        "max_correct": max_correct,
        "method": method,
        "layers": layers,
        "tta": tta,
        "images": entries,
    }
    lesion = None
    if has_lesion_masks(dataset):
        lesion = _lesion_scores(member_models, dataset, paths, position, ens, weights, baseline_model,
                                baseline_name, ensemble_name, layers, method, n_boot, confidence, seed, tta)
    return {"gallery": gallery, "lesion": lesion}


def _lesion_scores(
    member_models: Sequence[Any], dataset: Any, paths: Sequence[str], position: Mapping[str, int],
    ens: np.ndarray, weights: Sequence[float] | None, baseline_model: Any | None, baseline_name: str,
    ensemble_name: str, layers: Any, method: str, n_boot: int, confidence: float, seed: int, tta: bool = False,
) -> dict[str, Any] | None:
    """Energy inside the lesion and pointing-game hits of every model over the test images with a mask."""
    import torch
    from torch.nn import functional as F

    from medens.data.masks import lesion_mask, mask_view

    masked = [(i, m) for i in range(len(paths)) if (m := lesion_mask(dataset, position[paths[i]])) is not None]
    if not masked:
        return {"n_images": 0, "models": {}}
    geometry = display_geometry(member_models, interpolation="nearest")
    names = [mm.member.name for mm in member_models] + [ensemble_name]
    if baseline_model is not None:
        names.append(baseline_name)
    energy: dict[str, list[np.ndarray]] = {n: [] for n in names}
    hits: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for start in tqdm(range(0, len(masked), _MAP_BATCH), desc="lesion maps", leave=False, unit="batch"):
        part = masked[start:start + _MAP_BATCH]
        idx = [i for i, _ in part]
        images = [dataset[position[paths[i]]][0] for i in idx]
        masks = np.stack([mask_view(m, geometry) for _, m in part])
        batch = explain_images(member_models, images, ens[idx].argmax(axis=1), weights=weights, layers=layers,
                               method=method, tta=tta)
        maps = {**batch.members, ensemble_name: batch.ensemble}
        if baseline_model is not None:
            x = torch.stack([baseline_model.transform(img) for img in images]).to(baseline_model.device)
            cams = class_activation_maps(baseline_model.model, x, layers=None, method=method, tta=tta).maps
            maps[baseline_name] = F.interpolate(cams[:, None].cpu(), size=masks.shape[-2:], mode="bilinear",
                                                align_corners=False)[:, 0].clamp(0, 1).numpy()
        for n in names:
            energy[n].append(energy_inside(maps[n], masks))
            hits[n].append(pointing_hits(maps[n], masks))
    scores = {n: {"energy_inside": np.concatenate(energy[n]), "pointing_game": np.concatenate(hits[n])}
              for n in names}
    area = float(np.mean([mask_view(m, geometry).mean() for _, m in masked]))
    return {
        "n_images": len(masked),
        "lesion_area": area,
        "method": method,
        "tta": tta,
        "models": lesion_summary(scores, n_boot=n_boot, confidence=confidence, seed=seed),
    }


def _ci(value: float | None, ci: Sequence[float] | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def gallery_markdown(results: Mapping[str, Any]) -> list[str]:
    """The report's sections on where the models look: the lesion scores (when scored) and the gallery (when made),
    or a line saying why there is none. Empty when the evaluation made no maps."""
    out: list[str] = []
    models = results.get("models", {})
    level = round(100 * results["bootstrap"]["confidence"])
    lesion = results.get("lesion")
    if lesion:
        out += ["## Does it look at the lesion?", ""]
        if not lesion.get("n_images"):
            out += ["The dataset ships lesion masks, but no test image has one (no score).", ""]
        else:
            headers = ["Model"] + [f"{t} [{level}% CI]" for t in LESION_SCORE_TITLES.values()]
            rows = [[models.get(n, {}).get("label", n)] + [_ci(s.get(k), s.get(f"{k}_ci")) for k in LESION_SCORE_TITLES]
                    for n, s in lesion["models"].items()]
            out += [markdown_table(headers, rows), "",
                    f"Over the {lesion['n_images']} test images with a lesion mask (images without one, and normal "
                    "images, are not scored). Energy inside lesion: the share of each class-activation map's total "
                    "inside the mask (a map spread evenly would score the lesion's share of the image, "
                    f"{lesion['lesion_area']:.3f} here). Pointing-game hits: the share of maps whose maximum lies in "
                    "the lesion. Maps explain the class each model predicts; low values mean the model decides from "
                    "somewhere else (calipers, text, the edge of the field).", ""]
    gallery = results.get("gallery")
    note = results.get("gallery_note")
    if gallery or note:
        out += ["## Gallery", ""]
    if note and not gallery:
        out += [f"No gallery: {note}.", ""]
    if gallery:
        out += [f"{gallery['errors']} of the {gallery['errors_total']} misclassified test images (the most confident "
                f"errors first), then the {gallery['correct']} least-confident correct ones; each with the members' "
                f"and the ensemble's class-activation maps ({gallery['method']}"
                f"{', flip-averaged as the probabilities' if gallery.get('tta') else ''}) for the class each "
                "predicts.", ""]
        for e in gallery["images"]:
            what = "error" if e["kind"] == "error" else "correct"
            out += [f"![{what}: {e['path']}]({e['file']})", "",
                    f"*{what}*: `{e['path']}`: true {e['label']}, predicted {e['prediction']} "
                    f"({e['confidence']:.2f})", ""]
    return out


def run_gallery_lines(root: str | os.PathLike[str], folds: int, seeds: Sequence[int]) -> list[str]:
    """A study report's section linking every run's ensemble report and gallery (each ensemble folder found in
    ``<root>/fold-<k>/seed-<s>/``, variants included), with the number of errors shown and, where scored, the
    ensemble's energy inside the lesion. Empty when no run has an ensemble."""
    import json

    from medens.layout import ENSEMBLE_DIR, HTML_REPORT_NAME, METRICS_NAME, REPORT_NAME, study_run_folder

    root = Path(root)
    rows = []
    for fold in range(folds):
        for seed in seeds:
            run = study_run_folder(root, fold, seed)
            if not run.is_dir():
                continue
            for folder in sorted(run.iterdir()):
                if not (folder.name == ENSEMBLE_DIR or folder.name.startswith(ENSEMBLE_DIR + "-")):
                    continue
                try:
                    results = json.loads((folder / METRICS_NAME).read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    continue
                rel = folder.relative_to(root).as_posix()
                gallery = results.get("gallery")
                shown = (f"[{gallery['errors']} of {gallery['errors_total']} errors]({rel}/{HTML_REPORT_NAME}#gallery)"
                         if gallery else (results.get("gallery_note") or "no maps"))
                lesion = results.get("lesion") or {}
                ens = (lesion.get("models") or {}).get("ensemble") or {}
                energy = _ci(ens.get("energy_inside"), ens.get("energy_inside_ci")) if ens else "not scored"
                rows.append([str(fold), str(seed), f"`{folder.name}`",
                             f"[html]({rel}/{HTML_REPORT_NAME}) / [md]({rel}/{REPORT_NAME})", shown, energy])
    if not rows:
        return []
    return ["## Galleries of each run", "",
            "Each run's ensemble report shows its misclassified test images with the members' and the ensemble's "
            "class-activation maps.", "",
            markdown_table(["fold", "seed", "ensemble", "report", "gallery", "ensemble energy inside lesion"], rows),
            ""]
