"""Near-duplicate images: found by a perceptual hash, confirmed by thumbnail correlation, joined into groups.

Medical datasets are full of copies: the same scan saved twice, re-encoded, resized or re-cropped by a few pixels
(BUSI holds 235 duplicated images by a published audit). A split that puts one copy in training and another in
testing inflates every test metric, so every split medens makes keeps each *duplicate group* on one side (see
:mod:`medens.data.splits`).

How two images are judged copies, each step measured on the real BUSI images and on generated copies of them
(``benchmarks/RESULTS.md``, "Duplicate detection"):

1. Each image is reduced once to a **signature**: its grey levels, cropped to the central 90% (so a border added
   or trimmed by a shift does not count), box-filtered to a 16 x 16 thumbnail. The thumbnail is cached on disk,
   keyed by the file's content (see :class:`SignatureCache`), so a second run decodes nothing.
2. **Candidates**: the 64-bit difference hash (dHash, from the ``imagehash`` library, of the thumbnail) of the two
   images differ in at most ``threshold`` bits (default :data:`DEFAULT_THRESHOLD` = 12). dHash compares
   neighbouring cells, so it ignores brightness and contrast changes, resizing and re-encoding: on 150 BUSI
   images, copies resized, JPEG re-encoded at quality 30, brightened or darkened by 20% stay within 6 bits,
   content shifted by 2 px within 8, re-cropped by 2-4 px within 11; a 4 px shift with a black border reaches 14.
3. **Confirmation**: the Pearson correlation of the two thumbnails is at least ``min_correlation`` (default
   :data:`DEFAULT_MIN_CORRELATION` = 0.93; every copy kind above measured >= 0.956 except the black-bordered
   4 px shift, >= 0.883). dHash alone is not enough for images that share one layout: on 1500 chest X-rays
   (PneumoniaMNIST, 28 px) 4545 pairs are within 4 bits and 272990 within 12, while the correlation test keeps
   94. On BUSI the confirmed pairs level off (205 at 8 bits, 218 at 12, 225 at 16) where the raw counts climb.

Pairs that pass both are joined transitively (connected components, :func:`scipy.sparse.csgraph.connected_components`)
into groups, together with the groups a dataset already knows (ISIC/HAM10000 ``lesion_id``). A group whose images
carry different labels is a **label conflict**: the splits exclude its images by default and say so.

We write the thumbnail and the pair search ourselves (a few lines of numpy) because no library offers a cached,
chunked all-pairs Hamming search with a second test; the hash itself is ``imagehash``'s.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from medens.engine.atomic import atomic_path, remove_stale_temporaries

from .base import LabeledDataset
from .errors import CorruptImageError, DatasetError

logger = logging.getLogger(__name__)

#: Hamming distance (bits of the 64-bit dHash) up to which two images are candidate copies.
DEFAULT_THRESHOLD = 12
#: Thumbnail correlation from which a candidate pair is a copy.
DEFAULT_MIN_CORRELATION = 0.93
#: Side of the grey thumbnail every signature is made of.
THUMBNAIL_SIDE = 16
#: Share of each side kept around the centre before the thumbnail is made.
CENTRAL_SHARE = 0.9
#: Bits of the difference hash.
HASH_BITS = 64
#: The file in a cache folder that holds the signatures.
SIGNATURE_CACHE_FILE = "image-signatures.npz"
#: Identifies how signatures are made; a change in the recipe makes a new cache entry.
SIGNATURE_FORMAT = f"medens.signature/1:grey-centre{CENTRAL_SHARE}-box{THUMBNAIL_SIDE}"
_PAIR_CHUNK = 2048


def thumbnail(image: Image.Image) -> np.ndarray:
    """The signature of an image: its central 90%, grey, box-filtered to a 16 x 16 uint8 array."""
    grey = image.convert("L")
    width, height = grey.size
    dx, dy = round(width * (1 - CENTRAL_SHARE) / 2), round(height * (1 - CENTRAL_SHARE) / 2)
    if width - 2 * dx >= THUMBNAIL_SIDE and height - 2 * dy >= THUMBNAIL_SIDE:
        grey = grey.crop((dx, dy, width - dx, height - dy))
    small = grey.resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.uint8).copy()


def difference_hash(thumbnails: np.ndarray) -> np.ndarray:
    """64-bit dHash of each thumbnail, as uint64: ``(N, 16, 16) uint8 -> (N,)``."""
    import imagehash

    out = np.zeros(len(thumbnails), dtype=np.uint64)
    for i, thumb in enumerate(thumbnails):
        bits = imagehash.dhash(Image.fromarray(thumb), hash_size=8).hash.ravel()
        out[i] = np.packbits(bits).view(">u8")[0]
    return out


def _standardized(thumbnails: np.ndarray) -> np.ndarray:
    flat = thumbnails.reshape(len(thumbnails), -1).astype(np.float32)
    flat -= flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    return flat / np.maximum(norms, 1e-6)


def hamming_pairs(hashes: np.ndarray, threshold: int) -> np.ndarray:
    """Every pair ``(i, j)``, ``i < j``, of 64-bit hashes at most ``threshold`` bits apart: ``(P, 2)`` int64."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    found = []
    for start in range(0, len(hashes), _PAIR_CHUNK):
        block = hashes[start:start + _PAIR_CHUNK]
        distance = np.bitwise_count(block[:, None] ^ hashes[None, :])
        rows, cols = np.nonzero(distance <= threshold)
        rows = rows + start
        keep = rows < cols
        found.append(np.stack([rows[keep], cols[keep]], axis=1))
    return np.concatenate(found) if found else np.zeros((0, 2), dtype=np.int64)


class SignatureCache:
    """Signatures on disk, keyed by what identifies an image's pixels, so a second run decodes nothing.

    The key is the SHA-256 of the recipe (:data:`SIGNATURE_FORMAT`) and of the file's bytes, for items read from
    a file; for generated or in-memory items (synthetic, MedMNIST) it is the dataset's fingerprint and the item's
    id. One ``image-signatures.npz`` per folder holds every entry; it is rewritten atomically.
    """

    def __init__(self, folder: str | os.PathLike[str] | None):
        self.path = Path(folder) / SIGNATURE_CACHE_FILE if folder is not None else None
        self._entries: dict[str, np.ndarray] = {}
        self._dirty = False
        if folder is not None:
            remove_stale_temporaries(folder, target=SIGNATURE_CACHE_FILE)  # left by a killed save
        if self.path is not None and self.path.is_file():
            try:
                with open(self.path, "rb") as handle, np.load(handle, allow_pickle=False) as data:  # closed on failure
                    self._entries = dict(zip(data["keys"].tolist(), data["thumbnails"], strict=True))
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # random bytes, truncation
                logger.warning("signature cache %s is unreadable (%s); it will be rebuilt", self.path, exc)

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
                    np.savez(f, keys=keys, thumbnails=values)
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
        ``(thumbnails (N, 16, 16) uint8, readable (N,) bool)``; an item that cannot be decoded gets a zero
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


@dataclass
class DuplicateGroups:
    """The duplicate groups of a dataset and the settings that found them.

    Attributes:
        threshold: Hamming threshold used (None when duplicate detection was off).
        min_correlation: Thumbnail correlation used.
        groups: Groups of two or more items (sorted indices), largest first; known groups (lesions) included.
        conflicts: The groups whose items carry more than one label.
        num_pairs: Image pairs judged copies.
    """

    threshold: int | None
    min_correlation: float | None
    groups: list[list[int]] = field(default_factory=list)
    conflicts: list[list[int]] = field(default_factory=list)
    num_pairs: int = 0

    @property
    def images_in_groups(self) -> int:
        return sum(len(g) for g in self.groups)

    def conflicting_items(self) -> list[int]:
        """Indices of every item in a label conflict, sorted."""
        return sorted(i for group in self.conflicts for i in group)

    def group_ids(self, count: int) -> list[str | None]:
        """One group name per item (None for items in no group), as :mod:`medens.data.partition` takes them."""
        names: list[str | None] = [None] * count
        for number, group in enumerate(self.groups):
            for index in group:
                names[index] = f"dup{number}"
        return names

    def record(self, ids: Sequence[str]) -> dict[str, Any]:
        """A JSON-ready description naming items by id (what ``splits.json`` and ``--duplicates --json`` hold)."""
        return {
            "threshold": self.threshold,
            "min_correlation": self.min_correlation,
            "num_pairs": self.num_pairs,
            "images_in_groups": self.images_in_groups,
            "groups": [[ids[i] for i in group] for group in self.groups],
            "conflicts": [[ids[i] for i in group] for group in self.conflicts],
        }


def _check_settings(threshold: int, min_correlation: float) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, np.integer)):
        raise DatasetError(f"argument 'threshold' must be an int (bits of a {HASH_BITS}-bit hash), "
                           f"got {type(threshold).__name__} {threshold!r}")
    if not 0 <= threshold <= HASH_BITS:
        raise DatasetError(f"argument 'threshold' must be in 0..{HASH_BITS}, got {threshold}")
    if not -1.0 <= float(min_correlation) <= 1.0:
        raise DatasetError(f"argument 'min_correlation' must be in [-1, 1], got {min_correlation}")


def join_groups(count: int, pairs: np.ndarray, known: Sequence[str | None] | None,
                labels: Sequence[int]) -> DuplicateGroups:
    """Join ``pairs`` (and items sharing a ``known`` group name) transitively; find the label conflicts.

    Returns:
        A :class:`DuplicateGroups` without settings (the caller fills them in).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows, cols = list(pairs[:, 0]), list(pairs[:, 1])
    if known is not None:
        first: dict[str, int] = {}
        for index, name in enumerate(known):
            if name is None:
                continue
            anchor = first.setdefault(name, index)
            if anchor != index:
                rows.append(anchor)
                cols.append(index)
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(count, count))
    _, component = connected_components(graph, directed=False)
    members: dict[int, list[int]] = {}
    for index, comp in enumerate(component):
        members.setdefault(int(comp), []).append(index)
    groups = sorted((g for g in members.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))
    conflicts = [g for g in groups if len({labels[i] for i in g}) > 1]
    return DuplicateGroups(None, None, groups, conflicts, int(len(pairs)))


def find_duplicates(dataset: LabeledDataset, *, threshold: int = DEFAULT_THRESHOLD,
                    min_correlation: float = DEFAULT_MIN_CORRELATION,
                    cache_dir: str | os.PathLike[str] | None = None, progress: bool = True,
                    known_groups: bool = True) -> DuplicateGroups:
    """Find the duplicate groups of ``dataset`` (see the module docstring for the rule).

    Args:
        dataset: Any :class:`LabeledDataset`.
        threshold: Candidates differ in at most this many of the dHash's 64 bits.
        min_correlation: Candidates are copies when their thumbnails correlate at least this much.
        cache_dir: Folder of the signature cache (None: :func:`default_cache_folder`).
        progress: Show a bar while decoding images that are not cached yet.
        known_groups: Merge the groups the dataset knows (``dataset.groups``, e.g. lesions) into the result.

    Raises:
        DatasetError: ``threshold`` or ``min_correlation`` out of range.
    """
    _check_settings(threshold, min_correlation)
    thumbs, readable = image_signatures(dataset, cache_dir, progress=progress)
    candidates = hamming_pairs(difference_hash(thumbs), int(threshold))
    if len(candidates):
        unit = _standardized(thumbs)
        correlation = np.einsum("ij,ij->i", unit[candidates[:, 0]], unit[candidates[:, 1]])
        both_readable = readable[candidates[:, 0]] & readable[candidates[:, 1]]
        candidates = candidates[(correlation >= float(min_correlation)) & both_readable]
    result = join_groups(len(dataset), candidates, dataset.groups if known_groups else None, dataset.targets)
    result.threshold, result.min_correlation = int(threshold), float(min_correlation)
    logger.info("%s: %d duplicate pairs -> %d groups holding %d images, %d label conflicts", dataset.name,
                result.num_pairs, len(result.groups), result.images_in_groups, len(result.conflicts))
    return result
