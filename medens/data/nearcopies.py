"""Generated near-copies of images, and the check that measures a duplicate detector with them.

:func:`near_copies` makes the kinds of copy a dataset holds by accident: resized, JPEG re-encoded, shifted or
re-cropped by a few pixels, brighter or darker. :func:`injection_check` hides such copies of some images of a
real dataset among all its images, runs the detector (:func:`medens.data.duplicates.detect`) on the lot, and
measures what matters: the share of copies joined to their own original (recall), and how many images are
joined to an image that is not their copy (false matches). The tests, ``benchmarks/duplicate_threshold.py`` and
anyone checking the detector on their own data use these.

Small images (MedMNIST's 28 x 28) are copied at their source resolution: enlarged to about 224 px, copied, and
reduced back, as a copy in the source data would reach the 28 px release; a shift of 4 px there is half a
pixel at 28 px.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from .signatures import thumbnail

#: Images smaller than this (pixels, shorter side) are copied at :data:`SOURCE_SIDE` and reduced back.
SMALL_SIDE = 128
SOURCE_SIDE = 224


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert(image.mode if image.mode in ("L", "RGB") else "RGB")


def _shifted(image: Image.Image, pixels: int) -> Image.Image:
    """Content moved right and down by ``pixels``, the uncovered border black (the frame keeps its size)."""
    array = np.asarray(image)
    moved = np.zeros_like(array)
    moved[pixels:, pixels:] = array[:-pixels, :-pixels]
    return Image.fromarray(moved)


#: Kind of copy -> how it is made from the original.
COPY_KINDS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "resized to half": lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.BILINEAR),
    "resized x1.5": lambda im: im.resize((im.width * 3 // 2, im.height * 3 // 2), Image.Resampling.BICUBIC),
    "JPEG q75": lambda im: _jpeg(im, 75),
    "JPEG q30": lambda im: _jpeg(im, 30),
    "shifted 2 px": lambda im: _shifted(im, 2),
    "shifted 4 px": lambda im: _shifted(im, 4),
    "re-cropped 2 px": lambda im: im.crop((2, 2, im.width, im.height)),
    "re-cropped 4 px": lambda im: im.crop((4, 4, im.width, im.height)),
    "brightness +20%": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
    "brightness -20%": lambda im: ImageEnhance.Brightness(im).enhance(0.8),
}


def near_copies(image: Image.Image, kinds: Sequence[str] | None = None) -> dict[str, Image.Image]:
    """Copies of ``image``, one per kind (default every kind of :data:`COPY_KINDS`).

    Raises:
        ValueError: An unknown kind (the message lists the known ones).
    """
    kinds = list(COPY_KINDS) if kinds is None else list(kinds)
    unknown = [k for k in kinds if k not in COPY_KINDS]
    if unknown:
        raise ValueError(f"argument 'kinds': expected some of {list(COPY_KINDS)}, received {unknown}")
    small = min(image.size) < SMALL_SIDE
    source = image
    if small:
        factor = -(-SOURCE_SIDE // min(image.size))
        source = image.resize((image.width * factor, image.height * factor), Image.Resampling.BICUBIC)
    out = {}
    for kind in kinds:
        copy = COPY_KINDS[kind](source)
        out[kind] = copy.resize(image.size, Image.Resampling.BOX) if small else copy
    return out


@dataclass
class InjectionResult:
    """What :func:`injection_check` measured.

    Attributes:
        num_images: Images of the dataset (copies not counted).
        num_originals: Images that were copied.
        recall: Kind -> share of copies put in a group with their own original.
        false_matches: Copies put in a group without their original (joined to an image they are no copy of).
        dataset_groups: Groups found among the dataset's own images (real duplicates, or false matches: look).
        groups: The groups found (indices: ``< num_images`` dataset images, then copies in order).
        details: Per copy: ``(original, kind, joined)``.
    """

    num_images: int
    num_originals: int
    recall: dict[str, float] = field(default_factory=dict)
    false_matches: int = 0
    dataset_groups: list[list[int]] = field(default_factory=list)
    groups: list[list[int]] = field(default_factory=list)
    details: list[tuple[int, str, bool]] = field(default_factory=list)

    @property
    def overall_recall(self) -> float:
        joined = [d[2] for d in self.details]
        return float(np.mean(joined)) if joined else float("nan")

    def summary(self) -> dict[str, Any]:
        return {"num_images": self.num_images, "num_originals": self.num_originals,
                "recall": {k: round(v, 4) for k, v in self.recall.items()},
                "overall_recall": round(self.overall_recall, 4), "false_matches": self.false_matches,
                "dataset_groups": len(self.dataset_groups),
                "dataset_images_in_groups": sum(len(g) for g in self.dataset_groups),
                "dataset_largest_group": max((len(g) for g in self.dataset_groups), default=0)}


def make_injection(images: Sequence[Image.Image] | Callable[[int], Image.Image], count: int, *,
                   originals: int = 50, kinds: Sequence[str] | None = None,
                   seed: int = 0) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Thumbnails of copies of ``originals`` random images (every kind each).

    Args:
        images: The dataset's images, as a sequence or as ``load(index) -> PIL image``.
        count: Number of images.
        originals: How many images get copies.
        kinds: Kinds of copy (default every kind of :data:`COPY_KINDS`).
        seed: Chooses the originals.

    Returns:
        ``(thumbnails (C, 32, 32) uint8, source)``: ``source[c]`` is ``(original index, kind)`` of copy ``c``.
    """
    load = images if callable(images) else images.__getitem__
    chosen = np.sort(np.random.default_rng(seed).choice(count, min(originals, count), replace=False))
    thumbs, source = [], []
    for index in chosen.tolist():
        for kind, copy in near_copies(load(index), kinds).items():
            thumbs.append(thumbnail(copy))
            source.append((index, kind))
    side = thumbnail(Image.new("L", (1, 1))).shape
    return (np.stack(thumbs) if thumbs else np.zeros((0, *side), dtype=np.uint8)), source


def score_injection(thumbnails: np.ndarray, copies: np.ndarray, source: Sequence[tuple[int, str]],
                    **detect_options: Any) -> InjectionResult:
    """Run the detector on the dataset's ``thumbnails`` with the ``copies`` of :func:`make_injection` among them."""
    from .duplicates import detect

    count = len(thumbnails)
    everything = np.concatenate([thumbnails, copies])
    groups, _ = detect(everything, **detect_options)
    group_of = {i: g for g, members in enumerate(groups) for i in members}
    origin = np.arange(len(everything))
    origin[count:] = [index for index, _ in source]
    details = []
    for offset, (index, kind) in enumerate(source):
        copy = count + offset
        details.append((index, kind, copy in group_of and group_of.get(index) == group_of[copy]))
    false = sum(1 for copy in range(count, len(everything))
                if copy in group_of and group_of.get(int(origin[copy])) != group_of[copy])
    own = [[i for i in members if i < count] for members in groups]
    kinds = list(dict.fromkeys(kind for _, kind in source))
    recall = {kind: float(np.mean([d[2] for d in details if d[1] == kind])) for kind in kinds}
    return InjectionResult(count, len({index for index, _ in source}), recall, false,
                           [g for g in own if len(g) > 1], groups, details)


def injection_check(images: Sequence[Image.Image] | Callable[[int], Image.Image], count: int, *,
                    originals: int = 50, kinds: Sequence[str] | None = None, seed: int = 0,
                    thumbnails: np.ndarray | None = None, **detect_options: Any) -> InjectionResult:
    """Hide copies of ``originals`` random images among all ``count`` images and measure the detector on them.

    Args:
        images: The dataset's images, as a sequence or as ``load(index) -> PIL image``.
        count: Number of images.
        originals, kinds, seed: As :func:`make_injection`.
        thumbnails: The images' thumbnails, if already made (``(count, 32, 32)`` uint8).
        **detect_options: Settings of :func:`medens.data.duplicates.detect` (``threshold``, ...).

    Returns:
        An :class:`InjectionResult`.
    """
    load = images if callable(images) else images.__getitem__
    if thumbnails is None:
        thumbnails = np.stack([thumbnail(load(i)) for i in range(count)])
    copies, source = make_injection(load, count, originals=originals, kinds=kinds, seed=seed)
    return score_injection(thumbnails, copies, source, **detect_options)
