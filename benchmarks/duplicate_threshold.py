"""How the duplicate detector's defaults were chosen: copies it must catch, pairs it must not join.

Run on the real images in ``../shared/data`` (BUSI; PneumoniaMNIST as a set of distinct chest X-rays that share
one layout)::

    python benchmarks/duplicate_threshold.py --busi ../shared/data/busi --medmnist ../shared/data/medmnist

Prints, for each generated kind of copy of 150 BUSI images (resized, JPEG re-encoded, shifted, re-cropped,
brightened, darkened), the largest dHash distance and the smallest thumbnail correlation to the original; then
how many pairs each data set has per threshold, with and without the correlation test.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from medens.data.duplicates import (
    DEFAULT_MIN_CORRELATION,
    DEFAULT_THRESHOLD,
    _standardized,
    difference_hash,
    hamming_pairs,
    thumbnail,
)


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


def _shift(image: Image.Image, pixels: int) -> Image.Image:
    """Content moved right and down by ``pixels``, the uncovered border black (the frame keeps its size)."""
    array = np.asarray(image)
    moved = np.zeros_like(array)
    moved[pixels:, pixels:] = array[:-pixels, :-pixels]
    return Image.fromarray(moved)


def copies(image: Image.Image) -> dict[str, Image.Image]:
    """The kinds of copy the detector must catch."""
    width, height = image.size
    return {
        "resized to half": image.resize((width // 2, height // 2), Image.Resampling.BILINEAR),
        "resized x1.7": image.resize((int(width * 1.7), int(height * 1.7)), Image.Resampling.BICUBIC),
        "JPEG q75": _jpeg(image, 75),
        "JPEG q30": _jpeg(image, 30),
        "shifted 2 px": _shift(image, 2),
        "shifted 4 px": _shift(image, 4),
        "re-cropped 2 px": image.crop((2, 2, width, height)),
        "re-cropped 4 px": image.crop((4, 4, width, height)),
        "brightness +20%": ImageEnhance.Brightness(image).enhance(1.2),
        "brightness -20%": ImageEnhance.Brightness(image).enhance(0.8),
    }


def _pair_counts(name: str, thumbs: np.ndarray) -> None:
    hashes = difference_hash(thumbs)
    unit = _standardized(thumbs)
    print(f"\n{name}: {len(thumbs)} images; pairs within the threshold (and also correlating >= "
          f"{DEFAULT_MIN_CORRELATION})")
    for threshold in (2, 4, 6, 8, 10, 12, 14, 16):
        pairs = hamming_pairs(hashes, threshold)
        corr = np.einsum("ij,ij->i", unit[pairs[:, 0]], unit[pairs[:, 1]]) if len(pairs) else np.zeros(0)
        mark = "  <- default" if threshold == DEFAULT_THRESHOLD else ""
        print(f"  <= {threshold:2d} bits: {len(pairs):7d} pairs, {(corr >= DEFAULT_MIN_CORRELATION).sum():5d} "
              f"confirmed{mark}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busi", type=Path, required=True, help="folder holding Dataset_BUSI_with_GT")
    parser.add_argument("--medmnist", type=Path, help="folder holding pneumoniamnist.npz")
    parser.add_argument("--copies-of", type=int, default=150, help="BUSI images to make copies of")
    args = parser.parse_args()
    files = sorted((args.busi / "Dataset_BUSI_with_GT").glob("*/*.png"))
    images = [Image.open(f).convert("L") for f in files]
    rng = np.random.default_rng(0)
    chosen = rng.choice(len(images), min(args.copies_of, len(images)), replace=False)
    worst: dict[str, list[tuple[int, float]]] = {}
    for index in chosen:
        original = thumbnail(images[index])
        for kind, copy in copies(images[index]).items():
            pair = np.stack([original, thumbnail(copy)])
            bits = int(np.bitwise_count(np.bitwise_xor(*difference_hash(pair))))
            unit = _standardized(pair)
            worst.setdefault(kind, []).append((bits, float(unit[0] @ unit[1])))
    print(f"copies of {len(chosen)} BUSI images: largest distance (bits), smallest correlation, share caught by "
          f"the defaults ({DEFAULT_THRESHOLD} bits, {DEFAULT_MIN_CORRELATION})")
    for kind, values in worst.items():
        bits = np.array([v[0] for v in values])
        corr = np.array([v[1] for v in values])
        caught = ((bits <= DEFAULT_THRESHOLD) & (corr >= DEFAULT_MIN_CORRELATION)).mean()
        print(f"  {kind:16s} {bits.max():3d} bits  {corr.min():.3f}  {caught:6.1%}")
    _pair_counts("BUSI", np.stack([thumbnail(im) for im in images]))
    if args.medmnist is not None:
        with np.load(args.medmnist / "pneumoniamnist.npz") as data:
            xrays = data["train_images"][:1500]
        _pair_counts("PneumoniaMNIST (first 1500 training images, 28 px)",
                     np.stack([thumbnail(Image.fromarray(x)) for x in xrays]))


if __name__ == "__main__":
    main()
