"""The two measures the duplicate detector compares images by (see :mod:`medens.data.duplicates` for the rule).

- Hash distances: Hamming distances between 256-bit perceptual hashes, all pairs within a threshold
  (:func:`hamming_pairs`) or each hash's k nearest (:func:`nearest_neighbours`), chunked numpy over 64-bit words.
- Aligned similarity: the correlation of two thumbnails' detail at the best of a grid of subpixel shifts
  (:func:`aligned_similarity`), evaluated from their Fourier transforms; :class:`PairSimilarity` adds the
  whole-thumbnail veto and is what the detector decides on.
"""

from __future__ import annotations

import numpy as np

from .signatures import THUMBNAIL_SIDE

#: Sigma (thumbnail pixels) of the Gaussian blur subtracted to leave the detail.
DETAIL_SIGMA = 1.5
#: Aligned correlation of the whole thumbnails (layout included) a copy must also reach: the veto that keeps
#: apart tiny images (8 x 8) whose few pixels share their finest detail by chance.
MIN_GLOBAL_CORRELATION = 0.88
# Pairs whose detail correlates below this are too unlike for the global veto to matter (it is not computed).
_GLOBAL_FLOOR = 0.5
#: Largest shift (thumbnail pixels, each axis) tried when aligning two details, and the step between shifts.
MAX_SHIFT = 1.0
SHIFT_STEP = 0.5
_ROW_CHUNK = 512
_PAIR_CHUNK = 16384


# --------------------------------------------------------------------------------------------- hash distances

def _as_words(hashes: np.ndarray) -> np.ndarray:
    hashes = np.asarray(hashes, dtype=np.uint64)
    return hashes[:, None] if hashes.ndim == 1 else hashes


class _DistanceRows:
    """Hamming distances of blocks of rows to every row, in reused buffers (no 100 MB allocation per block)."""

    def __init__(self, words: np.ndarray, rows: int):
        self.words = words
        self.columns = [np.ascontiguousarray(words[:, w]) for w in range(words.shape[1])]
        self._xor = np.empty((rows, len(words)), dtype=np.uint64)
        self._bits = np.empty((rows, len(words)), dtype=np.uint8)
        self._sum = np.empty((rows, len(words)), dtype=np.int16)

    def __call__(self, start: int, stop: int) -> np.ndarray:
        """``(stop - start, N)`` int16 distances of rows ``start:stop`` (a view into a reused buffer)."""
        block = self.words[start:stop]
        n = len(block)
        xor, bits, total = self._xor[:n], self._bits[:n], self._sum[:n]
        total[:] = 0
        for w, column in enumerate(self.columns):
            np.bitwise_xor(block[:, w, None], column[None, :], out=xor)
            np.bitwise_count(xor, out=bits)
            np.add(total, bits, out=total, casting="unsafe")
        return total


def hamming_pairs(hashes: np.ndarray, threshold: int) -> np.ndarray:
    """Every pair ``(i, j)``, ``i < j``, of hashes at most ``threshold`` bits apart: ``(P, 2)`` int64.

    ``hashes``: ``(N,)`` uint64 (64-bit hashes) or ``(N, W)`` uint64 (``64 W``-bit hashes).
    """
    words = _as_words(hashes)
    distances = _DistanceRows(words, min(_ROW_CHUNK, len(words)))
    found = [np.zeros((0, 2), dtype=np.int64)]
    for start in range(0, len(words), _ROW_CHUNK):
        rows, cols = np.nonzero(distances(start, start + _ROW_CHUNK) <= threshold)
        rows = rows + start
        keep = rows < cols
        found.append(np.stack([rows[keep], cols[keep]], axis=1).astype(np.int64))
    return np.concatenate(found)


def nearest_neighbours(hashes: np.ndarray, k: int, usable: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest other hashes of each hash (ties in any order).

    Args:
        hashes: ``(N,)`` or ``(N, W)`` uint64.
        k: Neighbours per item (at most ``N - 1``).
        usable: ``(N,)`` bool; items marked False are nobody's neighbour (default: all usable).

    Returns:
        ``(indices (N, k) int64, distances (N, k) int32)``, nearest first; an unusable item or a missing
        neighbour has distance ``2**30``.
    """
    import torch

    words = _as_words(hashes)
    count = len(words)
    k = max(0, min(int(k), count - 1))
    far = np.iinfo(np.int16).max
    indices = np.zeros((count, k), dtype=np.int64)
    distances = np.full((count, k), 2**30, dtype=np.int32)
    if k == 0:
        return indices, distances
    masked = None if usable is None or usable.all() else ~np.asarray(usable, dtype=bool)
    rows_of = _DistanceRows(words, min(_ROW_CHUNK, count))
    for start in range(0, count, _ROW_CHUNK):
        distance = rows_of(start, start + _ROW_CHUNK)
        rows = np.arange(len(distance))
        distance[rows, rows + start] = far  # not one's own neighbour
        if masked is not None:
            distance[:, masked] = far
        values, found = torch.topk(torch.from_numpy(distance), k, dim=1, largest=False, sorted=True)
        values = values.numpy().astype(np.int32)
        indices[start:start + len(distance)] = found.numpy()
        distances[start:start + len(distance)] = np.where(values >= far, 2**30, values)
    if usable is not None:
        distances[~usable] = 2**30
    return indices, distances


# ------------------------------------------------------------------------------------------ aligned similarity

def detail_spectra(thumbnails: np.ndarray, sigma: float | None = DETAIL_SIGMA) -> np.ndarray:
    """Fourier transforms of the unit-norm detail of each thumbnail: ``(N, S, S) -> (N, S * (S // 2 + 1))`` c64.

    The detail is the thumbnail minus its Gaussian blur (``sigma`` px; None: the whole thumbnail), less its mean,
    scaled to unit norm.
    """
    from scipy.fft import rfft2
    from scipy.ndimage import gaussian_filter

    pixels = np.asarray(thumbnails, dtype=np.float32)
    detail = pixels - gaussian_filter(pixels, (0, sigma, sigma), mode="nearest") if sigma is not None \
        else pixels.copy()
    detail -= detail.mean(axis=(1, 2), keepdims=True)
    detail /= np.maximum(np.sqrt((detail ** 2).sum(axis=(1, 2), keepdims=True)), 1e-6)
    side = pixels.shape[1] if pixels.ndim == 3 else THUMBNAIL_SIDE
    return rfft2(detail).reshape(len(pixels), side * (side // 2 + 1)).astype(np.complex64, copy=False)


def _shift_basis(side: int, max_shift: float, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Real and imaginary parts of the phase factors that evaluate a cross-correlation at each shift."""
    shifts = np.arange(-max_shift, max_shift + step / 2, step)
    ky = np.fft.fftfreq(side)[:, None]
    kx = np.fft.rfftfreq(side)[None, :]
    weight = np.full((side, side // 2 + 1), 2.0)  # the half spectrum stands for its mirror image too
    weight[:, 0] = 1.0
    if side % 2 == 0:
        weight[:, -1] = 1.0
    basis = np.stack([(weight * np.exp(2j * np.pi * (ky * dy + kx * dx))).ravel()
                      for dy in shifts for dx in shifts], axis=1) / (side * side)
    return basis.real.astype(np.float32), basis.imag.astype(np.float32)


def aligned_similarity(spectra: np.ndarray, pairs: np.ndarray, *, side: int = THUMBNAIL_SIDE,
                       max_shift: float = MAX_SHIFT, step: float = SHIFT_STEP) -> np.ndarray:
    """Correlation of the details of each pair at the best shift: ``(P, 2) -> (P,)`` float32 in [-1, 1].

    Args:
        spectra: :func:`detail_spectra` of every thumbnail.
        pairs: Index pairs into ``spectra``.
        side: Thumbnail side the spectra were made from.
        max_shift, step: Shifts tried, in thumbnail pixels along each axis (``-max_shift .. max_shift``).
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    real, imag = _shift_basis(side, max_shift, step)
    out = np.empty(len(pairs), dtype=np.float32)
    for start in range(0, len(pairs), _PAIR_CHUNK):
        chunk = pairs[start:start + _PAIR_CHUNK]
        cross = spectra[chunk[:, 0]] * np.conj(spectra[chunk[:, 1]])
        out[start:start + len(chunk)] = (cross.real @ real - cross.imag @ imag).max(axis=1)
    return np.clip(out, -1.0, 1.0)


class PairSimilarity:
    """The similarity the detector decides on, for any pair of a set of thumbnails.

    ``detail``, the aligned detail correlation, where ``whole``, the aligned correlation of the whole thumbnails,
    reaches :data:`MIN_GLOBAL_CORRELATION`; else ``min(detail, whole - (MIN_GLOBAL_CORRELATION -
    min_correlation))``, which is below ``min_correlation``. So a pair reaches ``min_correlation`` exactly when
    its detail does and its whole thumbnails reach :data:`MIN_GLOBAL_CORRELATION`. (Where the detail is below
    0.5 the whole is not computed: the similarity is the detail's.)
    """

    def __init__(self, thumbnails: np.ndarray, min_correlation: float):
        self.detail = detail_spectra(thumbnails)
        self.whole = detail_spectra(thumbnails, sigma=None)
        self.margin = MIN_GLOBAL_CORRELATION - float(min_correlation)

    def __call__(self, pairs: np.ndarray) -> np.ndarray:
        """``(P, 2)`` index pairs -> ``(P,)`` float32 similarities."""
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        similarity = aligned_similarity(self.detail, pairs)
        check = similarity >= _GLOBAL_FLOOR
        if check.any():
            whole = aligned_similarity(self.whole, pairs[check])
            vetoed = np.minimum(similarity[check], whole - self.margin)
            similarity[check] = np.where(whole >= MIN_GLOBAL_CORRELATION, similarity[check], vetoed)
        return similarity
