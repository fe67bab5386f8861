"""Decode image files into 8-bit RGB, whatever mode they were saved in, and spot corrupt files cheaply.

Every dataset in :mod:`medens.data` returns images as :class:`PIL.Image.Image` in mode ``"RGB"`` (uint8),
made by :func:`to_rgb8`:

- grayscale (``L``, ``1``) is copied into the three channels;
- palette (``P``, ``PA``) is expanded through its palette (honouring transparency);
- alpha (``RGBA``, ``LA``, ``PA``) is composited over black, the background of ultrasound, X-ray and
  endoscopy frames;
- 16-bit (``I;16*``, and ``I`` whose values fit 0..65535) is *scaled* to 0..255, never clipped:
  ``high_bit_depth="full"`` maps 0..65535 linearly (keeps intensities comparable across images),
  ``"minmax"`` stretches each image's own range (for 12-bit data stored in 16-bit files);
- floating point (``F``) is stretched over its own range;
- EXIF orientation is applied, so phone photos are upright.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO, Literal, NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import CorruptImageError

HighBitDepth = Literal["full", "minmax"]
HIGH_BIT_DEPTH_MODES: tuple[str, ...] = ("full", "minmax")

# Pillow raises these for files that are not images, truncated, or malformed.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError)
_EXIF_ORIENTATION = 0x0112
# How far from the end of a file its end marker may sit (some cameras append padding or metadata).
_TAIL_BYTES = 4096


class ImageInfo(NamedTuple):
    """What a header read reveals about an image file."""

    width: int
    height: int
    mode: str
    format: str


def _scale_16bit(values: np.ndarray, high_bit_depth: HighBitDepth) -> np.ndarray:
    """Scale integer intensities in 0..65535 to uint8 without clipping (rounding to nearest)."""
    if high_bit_depth == "minmax":
        return _stretch(values)
    wide = values.astype(np.uint32)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def _stretch(values: np.ndarray) -> np.ndarray:
    """Map an array's own [min, max] linearly onto 0..255 (a constant image maps to 0)."""
    values = values.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, np.uint8)
    low, high = float(values[finite].min()), float(values[finite].max())
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    out = (np.where(finite, values, low) - low) * (255.0 / (high - low))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _composite_over_black(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb8(image: Image.Image, high_bit_depth: HighBitDepth = "full") -> Image.Image:
    """Convert a decoded image of any Pillow mode to a new 8-bit RGB image.

    Args:
        image: A loaded Pillow image (any mode).
        high_bit_depth: How 16-bit images are brought to 8 bits: ``"full"`` (0..65535 -> 0..255) or
            ``"minmax"`` (each image's own range -> 0..255).

    Returns:
        A new image of mode ``"RGB"``, size unchanged.

    Raises:
        ValueError: ``high_bit_depth`` is not one of :data:`HIGH_BIT_DEPTH_MODES`.
    """
    if high_bit_depth not in HIGH_BIT_DEPTH_MODES:
        raise ValueError(f"high_bit_depth must be one of {HIGH_BIT_DEPTH_MODES}, got {high_bit_depth!r}")
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image)
        if mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            gray = _stretch(values)
        else:
            gray = _scale_16bit(values, high_bit_depth)
        return Image.fromarray(gray).convert("RGB")
    if mode == "F":
        return Image.fromarray(_stretch(np.asarray(image))).convert("RGB")
    if mode == "P":
        has_alpha = "transparency" in image.info
        return _composite_over_black(image) if has_alpha else image.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _composite_over_black(image)
    return image.convert("RGB")


def _orient(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag, if the file has one other than 'normal'."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except _DECODE_ERRORS:
        return image
    if orientation in (None, 1):
        return image
    return ImageOps.exif_transpose(image)


def _not_regular(mode: int) -> str:
    kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a folder" if stat.S_ISDIR(mode) else "a device")
    return f"not a regular file but {kind}; skipped without reading it"


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open a regular file for reading, without ever blocking on a named pipe or a device.

    The file is opened non-blocking and checked on its open descriptor, so what is read is what was checked.

    Raises:
        CorruptImageError: the path is a named pipe, socket, device or folder; a broken symbolic link; or a file
            that vanished (the reason says which).
        OSError: another failure to open (e.g. no permission).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError as exc:
        if os.path.islink(path):
            raise CorruptImageError(str(path), f"a broken symbolic link: its target {os.readlink(path)} does not "
                                               "exist") from exc
        raise CorruptImageError(str(path), "file disappeared after the dataset was listed") from exc
    except IsADirectoryError as exc:
        raise CorruptImageError(str(path), _not_regular(stat.S_IFDIR)) from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise CorruptImageError(str(path), _not_regular(mode))
        os.set_blocking(fd, True)
        return open(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise


def read_image(path: str | os.PathLike[str], high_bit_depth: HighBitDepth = "full") -> Image.Image:
    """Decode an image file into 8-bit RGB (see the module docstring for the conversions).

    Args:
        path: Image file.
        high_bit_depth: See :func:`to_rgb8`.

    Returns:
        A new ``"RGB"`` image, independent of the (closed) file.

    Raises:
        CorruptImageError: The file is empty, truncated, not an image Pillow can decode, or not a regular file
            (a named pipe is never opened for reading, so it cannot block).
    """
    try:
        with open_regular(path) as handle, Image.open(handle) as image:
            image.load()
            return to_rgb8(_orient(image), high_bit_depth)
    except CorruptImageError:
        raise
    except _DECODE_ERRORS as exc:
        raise CorruptImageError(str(path), _reason(exc)) from exc


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def _tail_looks_complete(path: Path, fmt: str) -> bool:
    """Cheap truncation test: does the file end with its format's end marker (JPEG EOI, PNG IEND)?"""
    marker = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}.get(fmt)
    if marker is None:
        return True
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - _TAIL_BYTES))
        return marker in handle.read()


def probe_image(path: str | os.PathLike[str], *, full: bool = False) -> ImageInfo:
    """Read an image's header and check the file is whole, without decoding it where possible.

    A JPEG or PNG whose end marker is missing is decoded to confirm the suspicion, so a file is only ever
    reported corrupt when Pillow indeed fails on it.

    Args:
        path: Image file.
        full: Decode every file, not only suspects (slower; catches corrupt data in whole files too).

    Returns:
        The image's width, height, Pillow mode and format.

    Raises:
        CorruptImageError: Empty, unreadable header, or failed decode.
    """
    path = Path(path)
    try:
        with open_regular(path) as handle:
            if os.fstat(handle.fileno()).st_size == 0:
                raise CorruptImageError(str(path), "empty file (0 bytes)")
            with Image.open(handle) as image:
                info = ImageInfo(image.width, image.height, image.mode, image.format or "")
                if full or not _tail_looks_complete(path, info.format):
                    image.load()
    except CorruptImageError:
        raise
    except _DECODE_ERRORS as exc:
        raise CorruptImageError(str(path), _reason(exc)) from exc
    return info
