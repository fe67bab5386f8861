"""Image signatures for duplicate detection: a grey thumbnail per image, its perceptual hash, and a disk cache.

The signature of an image is its central 90% (so a border added or trimmed by a shift does not count), grey,
reduced with an antialiasing (Lanczos) filter to a :data:`THUMBNAIL_SIDE` x :data:`THUMBNAIL_SIDE` uint8
thumbnail. Everything :mod:`medens.data.duplicates` compares is computed from it: the 256-bit DCT perceptual
hash (:func:`perceptual_hash`) and the detail image (:func:`detail_spectra`). Thumbnails are kept in
``image-signatures.npz``, keyed by the file's content (see :class:`SignatureCache`), so a second run decodes
nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from medens.io import atomic_path, remove_stale_temporaries

from .base import LabeledDataset
from .errors import CorruptImageError

logger = logging.getLogger(__name__)

#: Side of the grey thumbnail every signature is made of.
THUMBNAIL_SIDE = 32
#: Share of each side kept around the centre before the thumbnail is made.
CENTRAL_SHARE = 0.9
# Large images are first box-reduced by an integer factor to at least twice the thumbnail, then Lanczos-filtered
# (PIL's ``reducing_gap``): 14 times faster on 512 x 384 images than Lanczos alone, and the same recall and
# groups on BUSI (the box stage's aliases fall where its own response is near zero, outside the detail band).
_REDUCING_GAP = 2.0
#: Side of the block of low DCT frequencies the perceptual hash keeps (16 x 16 = 256 bits).
HASH_SIDE = 16
#: Bits of the perceptual hash.
HASH_BITS = HASH_SIDE * HASH_SIDE
#: The file in a cache folder that holds the signatures.
SIGNATURE_CACHE_FILE = "image-signatures.npz"
#: Identifies how signatures are made; a change in the recipe makes a new cache entry (and a new file format).
SIGNATURE_FORMAT = f"medens.signature/2:grey-centre{CENTRAL_SHARE}-lanczos{THUMBNAIL_SIDE}-gap{_REDUCING_GAP}"
# The array names of the cache file. Version 1 stored "thumbnails" (16 x 16); version 2 stores "signatures" and
# "format", so each version reads the other's file as foreign and rebuilds it instead of mixing shapes.
_ARRAYS = ("format", "keys", "signatures")


def thumbnail(image: Image.Image) -> np.ndarray:
    """The signature of an image: its central 90%, grey, reduced (antialiased) to a ``(32, 32)`` uint8 array."""
    grey = image.convert("L")
    width, height = grey.size
    dx, dy = round(width * (1 - CENTRAL_SHARE) / 2), round(height * (1 - CENTRAL_SHARE) / 2)
    if (dx or dy) and width > 2 * dx and height > 2 * dy:
        grey = grey.crop((dx, dy, width - dx, height - dy))
    small = grey.resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS, reducing_gap=_REDUCING_GAP)
    return np.asarray(small, dtype=np.uint8).copy()


def perceptual_hash(thumbnails: np.ndarray) -> np.ndarray:
    """The 256-bit DCT perceptual hash of each thumbnail: ``(N, 32, 32) uint8 -> (N, 4) uint64``.

    The same bits as ``imagehash.phash(Image.fromarray(t), hash_size=16, highfreq_factor=2)`` (the 16 x 16
    lowest frequencies of the thumbnail's 2-D DCT-II, each compared with their median), computed for the whole
    batch at once; bit ``8 * w + b`` of the row-major 16 x 16 block is bit ``b`` (from the top) of byte ``w``.
    """
    from scipy.fft import dct

    pixels = np.asarray(thumbnails, dtype=np.float64)
    coefficients = dct(dct(pixels, axis=1), axis=2)[:, :HASH_SIDE, :HASH_SIDE].reshape(len(pixels), HASH_BITS)
    bits = coefficients > np.median(coefficients, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").astype(np.uint64).reshape(len(pixels), HASH_BITS // 64)


def difference_hash(thumbnails: np.ndarray) -> np.ndarray:
    """64-bit difference hash (``imagehash.dhash``) of each thumbnail: ``(N, S, S) uint8 -> (N,)`` uint64.

    The candidate hash of earlier medens versions, kept for callers; the detector now uses
    :func:`perceptual_hash`.
    """
    import imagehash

    out = np.zeros(len(thumbnails), dtype=np.uint64)
    for i, thumb in enumerate(thumbnails):
        bits = imagehash.dhash(Image.fromarray(thumb), hash_size=8).hash.ravel()
        out[i] = np.packbits(bits).view(">u8")[0]
    return out


class SignatureCache:
    """Signatures on disk, keyed by what identifies an image's pixels, so a second run decodes nothing.

    The key is the SHA-256 of the recipe (:data:`SIGNATURE_FORMAT`) and of the file's bytes, for items read from
    a file; for generated or in-memory items (synthetic, MedMNIST) it is the dataset's fingerprint and the item's
    id. One ``image-signatures.npz`` per folder holds every entry; it is rewritten atomically. A file written by
    another version of the recipe (or unreadable) is ignored, and replaced at the next save.
    """

    def __init__(self, folder: str | os.PathLike[str] | None):
        self.path = Path(folder) / SIGNATURE_CACHE_FILE if folder is not None else None
        self._entries: dict[str, np.ndarray] = {}
        self._dirty = False
        if folder is not None:
            remove_stale_temporaries(folder, target=SIGNATURE_CACHE_FILE)  # left by a killed save
        if self.path is not None and self.path.is_file():
            self._entries = self._read(self.path)

    @staticmethod
    def _read(path: Path) -> dict[str, np.ndarray]:
        try:
            with open(path, "rb") as file:
                archive = np.load(file, allow_pickle=False)
                if not isinstance(archive, np.lib.npyio.NpzFile):
                    raise ValueError("not an .npz archive")
                with archive as data:
                    if "format" not in data.files or str(data["format"]) != SIGNATURE_FORMAT:
                        logger.info("signature cache %s was written by another recipe; it will be rebuilt", path)
                        return {}
                    keys, values = data["keys"], data["signatures"]
                    if values.ndim != 3 or values.shape[1:] != (THUMBNAIL_SIDE, THUMBNAIL_SIDE) \
                            or len(keys) != len(values):
                        raise ValueError(f"signatures of shape {values.shape} for {len(keys)} keys")
                    return dict(zip(keys.tolist(), values.astype(np.uint8), strict=True))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            logger.warning("signature cache %s is unreadable (%s); it will be rebuilt", path, exc)
            return {}

    def get(self, key: str) -> np.ndarray | None:
        return self._entries.get(key)

    def put(self, key: str, value: np.ndarray) -> None:
        self._entries[key] = value
        self._dirty = True

    def save(self) -> None:
        """Write the entries (atomically), if any were added and the cache has a folder."""
        if self.path is None or not self._dirty:
            return
        keys = np.array(sorted(self._entries))
        values = np.stack([self._entries[k] for k in keys.tolist()])
        try:
            with atomic_path(self.path, fsync=False) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, format=np.array(SIGNATURE_FORMAT), keys=keys, signatures=values)
        except OSError as exc:
            logger.warning("could not write the signature cache %s: %s", self.path, exc)
            return
        self._dirty = False


def default_cache_folder() -> Path:
    """Where signatures are kept when no ``cache_dir`` is given: ``$MEDENS_CACHE_DIR``, else the user cache."""
    if os.environ.get("MEDENS_CACHE_DIR"):
        return Path(os.environ["MEDENS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "medens"


def _item_keys(dataset: LabeledDataset) -> list[str]:
    paths = dataset.paths
    identity = None
    keys = []
    for index, path in enumerate(paths):
        digest = hashlib.sha256(SIGNATURE_FORMAT.encode())
        if os.path.isfile(path):
            with open(path, "rb") as f:
                digest.update(f.read())
        else:
            if identity is None:
                identity = json.dumps(dataset.fingerprint(), sort_keys=True, default=str).encode()
            digest.update(identity)
            digest.update(dataset.ids[index].encode())
        keys.append(digest.hexdigest())
    return keys


def image_signatures(dataset: LabeledDataset, cache_dir: str | os.PathLike[str] | None = None, *,
                     progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The thumbnail of every item, from the cache where it has them.

    Args:
        dataset: Any :class:`LabeledDataset`.
        cache_dir: Folder of the signature cache (None: :func:`default_cache_folder`).
        progress: Show a bar while decoding.

    Returns:
        ``(thumbnails (N, 32, 32) uint8, readable (N,) bool)``; an item that cannot be decoded gets a zero
        thumbnail, ``readable`` False, and is never joined to another.
    """
    cache = SignatureCache(cache_dir if cache_dir is not None else default_cache_folder())
    keys = _item_keys(dataset)
    thumbs = np.zeros((len(dataset), THUMBNAIL_SIDE, THUMBNAIL_SIDE), dtype=np.uint8)
    readable = np.ones(len(dataset), dtype=bool)
    missing = []
    for index, key in enumerate(keys):
        found = cache.get(key)
        if found is None:
            missing.append(index)
        else:
            thumbs[index] = found
    for index in tqdm(missing, desc=f"hashing {dataset.name}", unit="img", disable=not progress or not missing,
                      leave=False):
        try:
            thumbs[index] = thumbnail(dataset.load_image(index))
        except CorruptImageError as exc:
            logger.warning("duplicates: %s cannot be decoded (%s); it is compared with no other image",
                           dataset.ids[index], exc)
            readable[index] = False
            continue
        cache.put(keys[index], thumbs[index])
    cache.save()
    return thumbs, readable
