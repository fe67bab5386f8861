"""The embedded synthetic dataset: ultrasound-like images generated on the fly, no files needed.

Each image is a B-mode-like breast ultrasound frame: tissue layers (skin, subcutaneous fat, glandular tissue,
chest wall) with wavy boundaries, depth attenuation, multiplicative speckle and a random gain, plus the
structure of its class:

======  ================  ==================================================================================
label   class             what the image shows
======  ================  ==================================================================================
0       ``normal``        tissue only; sometimes a faint flat fat lobule (a look-alike of a benign lesion)
1       ``benign``        a smooth, wider-than-tall, homogeneous dark oval; slight brightening behind it
2       ``malignant``     an irregular, spiculated, heterogeneous dark mass, often taller than wide; shadow
3       ``cyst``          a round, nearly black (anechoic) area with a sharp rim; strong brightening behind
4       ``calcified``     a cluster of small bright dots, inside a faint mass or none
5       ``multifocal``    two to four small smooth dark ovals
6       ``septated``      a dark cyst crossed by thin bright walls
7       ``diffuse``       no focal lesion; coarse, blotchy tissue texture
======  ================  ==================================================================================

``num_classes=K`` uses the first ``K`` rows (2 <= K <= 8); the default, 3, gives BUSI's classes in the order
``normal, benign, malignant``. Lesion size, contrast, position, irregularity and image gain vary per image, and
the class ranges overlap (a faint benign oval and a mildly irregular malignant mass look alike), so a small
model learns the task well above chance but not perfectly in a few epochs.

Items are generated lazily and deterministically from ``(seed, index)``; labels are balanced and shuffled by
``seed``. Ids read ``synthetic/000123``. Opening the dataset costs one permutation of ``num_images`` labels.

The generator knows where it painted each lesion: :meth:`SyntheticDataset.lesion_mask` (for the lesion-overlap
scores of :mod:`medens.data.masks`). ``caliper=<class>`` draws a bright caliper cross on every image of that class,
away from the lesion: a shortcut that gives the class away, for checking that class-activation maps expose it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from PIL import Image

from .base import LabeledDataset
from .errors import DatasetUsageError

logger = logging.getLogger(__name__)

NAME = "synthetic"
CLASS_NAMES: list[str] = ["normal", "benign", "malignant", "cyst", "calcified", "multifocal", "septated",
                          "diffuse"]
# Bump when the generator changes, so decode caches of old images are not reused.
GENERATOR_VERSION = 1


# --------------------------------------------------------------------------------------------- building blocks
def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Zero-mean, unit-ish smooth random field of ``shape``: ``cells`` x ``cells`` Gaussian noise, upsampled."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    field = Image.fromarray(coarse).resize((shape[1], shape[0]), Image.Resampling.BICUBIC)
    return np.asarray(field, dtype=np.float32)


def _speckle(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Multiplicative Rayleigh speckle with mean 1 and a grain of about two pixels."""
    grain = (max(2, shape[0] // 2), max(2, shape[1] // 2))
    raw = rng.rayleigh(scale=np.sqrt(2 / np.pi), size=grain).astype(np.float32)
    up = Image.fromarray(raw).resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.asarray(up, dtype=np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))


class _Canvas:
    """Normalised coordinates (0..1 in both axes) and the echogenicity map being painted."""

    def __init__(self, rng: np.random.Generator, height: int, width: int) -> None:
        self.rng = rng
        self.shape = (height, width)
        self.y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
        self.x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
        self.fat_depth = rng.uniform(0.15, 0.28)
        self.wall_depth = rng.uniform(0.72, 0.85)
        self.tissue = self._layers()
        self.after = np.ones(self.shape, np.float32)  # posterior shadowing / enhancement, applied last
        self.lesion = np.zeros(self.shape, bool)  # where a lesion was painted (the lesion mask)

    def mark_lesion(self, soft: np.ndarray) -> None:
        """Add the pixels where a soft lesion mask exceeds one half to :attr:`lesion` (draws no randomness)."""
        self.lesion |= soft > 0.5

    def _boundary(self, depth: float) -> np.ndarray:
        amp, freq, phase = self.rng.uniform(0.005, 0.03), self.rng.uniform(0.5, 2.5), self.rng.uniform(0, 6.3)
        return depth + amp * np.sin(2 * np.pi * freq * self.x + phase)

    def _layers(self) -> np.ndarray:
        rng, y = self.rng, self.y
        skin = 0.9 * np.exp(-(((y - rng.uniform(0.02, 0.05)) / 0.012) ** 2))
        in_gland = _sigmoid((y - self._boundary(self.fat_depth)) / 0.015)
        in_wall = _sigmoid((y - self._boundary(self.wall_depth)) / 0.015)
        fat, gland, wall = rng.uniform(0.35, 0.5), rng.uniform(0.6, 0.85), rng.uniform(0.4, 0.55)
        base = fat + (gland - fat) * in_gland + (wall - gland) * in_wall
        striation = 1 + 0.25 * in_wall * np.sin(2 * np.pi * (y * rng.uniform(25, 40)))
        texture = 1 + rng.uniform(0.05, 0.15) * _smooth_noise(rng, self.shape, 5)
        return ((base + skin) * striation * texture).astype(np.float32)

    def gland_center(self, half_height: float) -> tuple[float, float]:
        top, bottom = self.fat_depth + half_height + 0.03, self.wall_depth - half_height - 0.03
        cy = self.rng.uniform(top, max(top, bottom))
        return self.rng.uniform(0.25, 0.75), cy

    def blob(self, cx: float, cy: float, a: float, b: float, *, edge: float, irregularity: float = 0.0,
             spikes: int = 0) -> np.ndarray:
        """Soft mask (0..1) of an ellipse with semi-axes a (across) and b (down), rotated slightly, whose
        radius is perturbed by random harmonics of total amplitude ``irregularity`` and ``spikes`` sharp lobes."""
        rng = self.rng
        angle = rng.uniform(-0.35, 0.35)
        dx, dy = self.x - cx, self.y - cy
        u = (dx * np.cos(angle) + dy * np.sin(angle)) / a
        v = (-dx * np.sin(angle) + dy * np.cos(angle)) / b
        rho, phi = np.sqrt(u * u + v * v), np.arctan2(v, u)
        radius = np.ones_like(phi)
        if irregularity > 0:
            weights = rng.uniform(0.3, 1.0, size=6)
            weights *= irregularity / weights.sum()
            for k, w in zip(range(3, 9), weights, strict=True):
                radius = radius + w * np.cos(k * phi + rng.uniform(0, 6.3))
        if spikes:
            lobes = rng.uniform(0, 6.3, size=spikes)
            for centre in lobes:
                gap = np.angle(np.exp(1j * (phi - centre)))
                radius = radius + rng.uniform(0.15, 0.45) * np.exp(-((gap / 0.12) ** 2))
        return _sigmoid((radius - rho) / edge).astype(np.float32)

    def posterior(self, cx: float, cy: float, a: float, b: float, strength: float) -> None:
        """Shadow (strength < 0) or enhancement (> 0) in the columns below a lesion."""
        columns = np.exp(-(((self.x - cx) / (0.8 * a)) ** 2))
        below = _sigmoid((self.y - (cy + 0.6 * b)) / 0.02)
        self.after *= (1 + strength * columns * below).astype(np.float32)

    def darken(self, mask: np.ndarray, contrast: float, heterogeneity: float = 0.0, cells: int = 8) -> None:
        inside = 1 - contrast * mask
        if heterogeneity:
            inside = inside * (1 + heterogeneity * mask * _smooth_noise(self.rng, self.shape, cells))
        self.tissue = self.tissue * np.clip(inside, 0.02, None)

    def dots(self, cx: float, cy: float, spread: float, count: int) -> None:
        sigma = 0.006 + 0.006 * self.rng.random()
        for _ in range(count):
            px, py = cx + spread * self.rng.standard_normal(), cy + spread * self.rng.standard_normal()
            bump = np.exp(-(((self.x - px) ** 2 + (self.y - py) ** 2) / (2 * sigma**2)))
            self.lesion |= bump > 0.1
            self.tissue = self.tissue + self.rng.uniform(1.0, 2.5) * bump


# --------------------------------------------------------------------------------------------- the classes
def _lesion_axes(rng: np.random.Generator, wide: bool) -> tuple[float, float]:
    size = rng.uniform(0.08, 0.17)
    ratio = rng.uniform(1.2, 1.9) if wide else rng.uniform(0.75, 1.35)
    return size * np.sqrt(ratio), size / np.sqrt(ratio)


def _paint_normal(c: _Canvas) -> None:
    if c.rng.random() < 0.3:  # a flat fat lobule: faint, thin, smooth
        a, b = c.rng.uniform(0.08, 0.16), c.rng.uniform(0.025, 0.045)
        cx, cy = c.gland_center(b)
        c.darken(c.blob(cx, cy, a, b, edge=0.12), c.rng.uniform(0.1, 0.2))


def _paint_benign(c: _Canvas) -> None:
    a, b = _lesion_axes(c.rng, wide=True)
    cx, cy = c.gland_center(b)
    mask = c.blob(cx, cy, a, b, edge=c.rng.uniform(0.03, 0.08), irregularity=c.rng.uniform(0.0, 0.12))
    c.mark_lesion(mask)
    c.darken(mask, c.rng.uniform(0.3, 0.75), heterogeneity=c.rng.uniform(0.0, 0.15))
    c.posterior(cx, cy, a, b, c.rng.uniform(0.0, 0.25))


def _paint_malignant(c: _Canvas) -> None:
    a, b = _lesion_axes(c.rng, wide=c.rng.random() < 0.35)
    cx, cy = c.gland_center(b)
    mask = c.blob(cx, cy, a, b, edge=c.rng.uniform(0.03, 0.1), irregularity=c.rng.uniform(0.15, 0.5),
                  spikes=int(c.rng.integers(0, 7)))
    c.mark_lesion(mask)
    c.darken(mask, c.rng.uniform(0.3, 0.75), heterogeneity=c.rng.uniform(0.1, 0.5))
    c.posterior(cx, cy, a, b, -c.rng.uniform(0.0, 0.45))


def _paint_cyst(c: _Canvas) -> np.ndarray:
    size = c.rng.uniform(0.06, 0.14)
    a, b = size * c.rng.uniform(1.0, 1.4), size
    cx, cy = c.gland_center(b)
    mask = c.blob(cx, cy, a, b, edge=c.rng.uniform(0.02, 0.05))
    c.mark_lesion(mask)
    c.darken(mask, c.rng.uniform(0.6, 0.9))
    c.posterior(cx, cy, a, b, c.rng.uniform(0.15, 0.6))
    return mask


def _paint_calcified(c: _Canvas) -> None:
    cx, cy = c.gland_center(0.08)
    if c.rng.random() < 0.5:
        a, b = _lesion_axes(c.rng, wide=True)
        mask = c.blob(cx, cy, a, b, edge=0.1)
        c.mark_lesion(mask)
        c.darken(mask, c.rng.uniform(0.1, 0.35))
    c.dots(cx, cy, c.rng.uniform(0.015, 0.05), int(c.rng.integers(3, 12)))


def _paint_multifocal(c: _Canvas) -> None:
    for _ in range(int(c.rng.integers(2, 5))):
        size = c.rng.uniform(0.035, 0.07)
        a, b = size * c.rng.uniform(1.1, 1.6), size
        cx, cy = c.gland_center(b)
        mask = c.blob(cx, cy, a, b, edge=0.06)
        c.mark_lesion(mask)
        c.darken(mask, c.rng.uniform(0.25, 0.6))


def _paint_septated(c: _Canvas) -> None:
    mask = _paint_cyst(c)
    for _ in range(int(c.rng.integers(1, 4))):
        angle, offset = c.rng.uniform(0, np.pi), c.rng.uniform(-0.05, 0.05)
        distance = c.x * np.cos(angle) + c.y * np.sin(angle) - offset
        centre = float((c.x * np.cos(angle) + c.y * np.sin(angle))[mask > 0.5].mean()) if (mask > 0.5).any() else 0
        wall = np.exp(-(((distance - centre) / 0.006) ** 2))
        c.tissue = c.tissue + c.rng.uniform(0.4, 0.9) * wall * mask


def _paint_diffuse(c: _Canvas) -> None:
    blotches = _smooth_noise(c.rng, c.shape, int(c.rng.integers(8, 16)))
    c.tissue = c.tissue * np.clip(1 + c.rng.uniform(0.15, 0.45) * blotches, 0.1, None)


_PAINTERS = [_paint_normal, _paint_benign, _paint_malignant, _paint_cyst, _paint_calcified, _paint_multifocal,
             _paint_septated, _paint_diffuse]


def render_with_lesion(label: int, rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image of class ``label`` and say where its lesion is.

    Args:
        label: Index into :data:`CLASS_NAMES`.
        rng: Source of all randomness for this image.
        height: Rows.
        width: Columns.

    Returns:
        ``(image, lesion)``: grayscale ``uint8 (height, width)`` and ``bool (height, width)``, True where a lesion
        was painted (all False for ``normal`` and ``diffuse``, which have no focal lesion).
    """
    canvas = _Canvas(rng, height, width)
    _PAINTERS[label](canvas)
    attenuation = np.exp(-rng.uniform(0.3, 1.2) * canvas.y)
    speckle = _speckle(rng, canvas.shape) ** rng.uniform(0.5, 0.8)
    echo = canvas.tissue * canvas.after * attenuation * speckle * rng.uniform(0.7, 1.3)
    return np.clip(np.rint(255 * np.tanh(0.9 * echo)), 0, 255).astype(np.uint8), canvas.lesion


def render(label: int, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Draw one image of class ``label``: the image of :func:`render_with_lesion`, grayscale ``uint8 (H, W)``."""
    return render_with_lesion(label, rng, height, width)[0]


def caliper_mark(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Where a bright caliper cross ("+") is drawn: ``bool (height, width)``.

    Its centre lies in the superficial layers (the top fifth, below the skin line), away from every lesion, which
    the generator places in the glandular layer; its arms are about 6% of the image's side, at least a pixel thick.
    """
    cy, cx = rng.uniform(0.08, 0.18) * height, rng.uniform(0.15, 0.85) * width
    arm, half = max(2.0, 0.06 * min(height, width)), max(0.5, 0.008 * min(height, width))
    y, x = np.arange(height)[:, None] + 0.5, np.arange(width)[None, :] + 0.5
    across = (np.abs(y - cy) <= half) & (np.abs(x - cx) <= arm)
    down = (np.abs(x - cx) <= half) & (np.abs(y - cy) <= arm)
    return across | down


class SyntheticDataset(LabeledDataset):
    """Ultrasound-like images generated per index (see the module docstring for the classes).

    Args:
        num_images: Number of items (>= num_classes).
        image_size: Side of the square images, or ``(height, width)``.
        num_classes: 2 to 8; the classes are the first ``num_classes`` of :data:`CLASS_NAMES`.
        seed: Fixes the labels and every image.
        caliper: A class name whose images all get a bright caliper mark (:func:`caliper_mark`), a shortcut
            that gives the class away (as calipers and text drawn on BUSI's images can); ``None``: no mark.
            The other pixels are unchanged.
        strict: Kept for interface symmetry (generated images are never corrupt).

    Raises:
        DatasetError: An argument is out of range.
    """

    def __init__(self, num_images: int = 1000, image_size: int | tuple[int, int] = 224, num_classes: int = 3,
                 seed: int = 0, caliper: str | None = None, *, strict: bool = False) -> None:
        self.name = NAME
        self.root = None
        self.strict = strict
        self.skipped = []
        if not 2 <= int(num_classes) <= len(CLASS_NAMES):
            raise DatasetUsageError(f"{NAME}: option 'num_classes' (--dataset-option num_classes=...) must be in "
                                    f"2..{len(CLASS_NAMES)}, got {num_classes}")
        if int(num_images) < int(num_classes):
            raise DatasetUsageError(
                f"{NAME}: option 'num_images' (--dataset-option num_images=...) must be at least num_classes "
                f"({num_classes}), got {num_images}"
            )
        height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if min(height, width) < 8:
            raise DatasetUsageError(f"{NAME}: option 'image_size' (--dataset-option image_size=...) must be at least "
                                    f"8 pixels, got {image_size}")
        if int(seed) < 0:
            raise DatasetUsageError(f"{NAME}: option 'seed' (--dataset-option seed=...) must be a non-negative "
                                    f"integer, got {seed}")
        self.seed, self.num_classes = int(seed), int(num_classes)
        self.height, self.width = int(height), int(width)
        self.classes = CLASS_NAMES[: self.num_classes]
        if caliper in ("", "none"):
            caliper = None
        if caliper is not None and caliper not in self.classes:
            raise DatasetUsageError(f"{NAME}: option 'caliper' (--dataset-option caliper=...) must be one of {self.classes} or none, got {caliper!r}")
        self.caliper = caliper
        order = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(0,))).permutation(int(num_images))
        targets = (order % self.num_classes).tolist()
        self._init_items(targets, [f"{NAME}/{i:06d}" for i in range(int(num_images))])

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(1, index)))

    def load_image(self, index: int) -> Image.Image:
        """Generate item ``index`` (the same pixels every time for the same seed) as an RGB image."""
        image = render(self.targets[index], self._rng(index), self.height, self.width)
        mark = self.caliper_mask(index)
        if mark is not None:
            image = np.where(mark, np.uint8(255), image)
        return Image.fromarray(image).convert("RGB")

    def lesion_mask(self, index: int) -> np.ndarray | None:
        """Where item ``index``'s lesion is, ``bool (height, width)``; ``None`` for an image without one."""
        lesion = render_with_lesion(self.targets[index], self._rng(index), self.height, self.width)[1]
        return lesion if lesion.any() else None

    def caliper_mask(self, index: int) -> np.ndarray | None:
        """Where item ``index``'s caliper mark is, ``bool (height, width)``; ``None`` for an image without one."""
        if self.caliper is None or self.classes[self.targets[index]] != self.caliper:
            return None
        # A stream of its own, so the image beneath is the one drawn without the option.
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(2, index)))
        return caliper_mark(rng, self.height, self.width)

    def image_size(self, index: int) -> tuple[int, int]:
        """(width, height), the same for every item."""
        return self.width, self.height

    def fingerprint(self) -> dict[str, Any]:
        """Generator version and parameters: the pixels are a pure function of them."""
        found = {"dataset": NAME, "version": GENERATOR_VERSION, "seed": self.seed, "num_images": len(self),
                 "size": [self.height, self.width], "num_classes": self.num_classes}
        if self.caliper is not None:
            found["caliper"] = self.caliper
        return found


def load_synthetic(root: object = None, *, num_images: int = 1000, image_size: int | tuple[int, int] = 224,
                   num_classes: int = 3, seed: int = 0, caliper: str | None = None,
                   strict: bool = False) -> SyntheticDataset:
    """Make the synthetic dataset; ``root`` is ignored (a warning is logged if one is given)."""
    if root not in (None, ""):
        logger.warning("%s: the synthetic dataset reads no files; root=%r is ignored", NAME, root)
    return SyntheticDataset(num_images, image_size, num_classes, seed, caliper, strict=strict)
