"""MedMNIST v2 / MedMNIST+ 2D datasets (Yang et al., 2023), read from the ``.npz`` files the ``medmnist``
package downloads, without the ``medmnist`` package and without the network.

Files: ``<root>/<flag>.npz`` (28 x 28) or ``<root>/<flag>_<size>.npz`` (MedMNIST+, 64/128/224), holding
``{train,val,test}_images`` (``(N, H, W)`` grayscale or ``(N, H, W, 3)`` RGB, uint8) and
``{train,val,test}_labels`` (``(N,)`` or ``(N, 1)``). The three parts are the official splits. Item ids read
``<flag>/<split>/<index>``, e.g. ``breastmnist/test/000012``.

Class names come from MedMNIST's own label dictionaries, in label order (see :data:`LABELS`); for a flag not
listed there the names are the label values as strings. Multi-label flags (``chestmnist``) and 3D flags are
refused with an explanation, since every item here carries exactly one class.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .base import SPLIT_NAMES, LabeledDataset
from .errors import DatasetError, DatasetNotFoundError
from .files import require_root
from .imageio import open_regular

logger = logging.getLogger(__name__)

_ORGAN = ["bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver",
          "lung-left", "lung-right", "pancreas", "spleen"]
# MedMNIST v2 label names per 2D flag, in label order (from the MedMNIST INFO dictionary).
LABELS: dict[str, list[str]] = {
    "pathmnist": ["adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
                  "normal colon mucosa", "cancer-associated stroma", "colorectal adenocarcinoma epithelium"],
    "dermamnist": ["actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
                   "benign keratosis-like lesions", "dermatofibroma", "melanoma", "melanocytic nevi",
                   "vascular lesions"],
    "octmnist": ["choroidal neovascularization", "diabetic macular edema", "drusen", "normal"],
    "pneumoniamnist": ["normal", "pneumonia"],
    "retinamnist": ["0", "1", "2", "3", "4"],
    "breastmnist": ["malignant", "normal, benign"],
    "bloodmnist": ["basophil", "eosinophil", "erythroblast",
                   "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)", "lymphocyte",
                   "monocyte", "neutrophil", "platelet"],
    "tissuemnist": ["Collecting Duct, Connecting Tubule", "Distal Convoluted Tubule",
                    "Glomerular endothelial cells", "Interstitial endothelial cells", "Leukocytes", "Podocytes",
                    "Proximal Tubule Segments", "Thick Ascending Limb"],
    "organamnist": _ORGAN,
    "organcmnist": _ORGAN,
    "organsmnist": _ORGAN,
}
MULTI_LABEL = frozenset({"chestmnist"})


def find_npz(root: Path, flag: str, size: int | None) -> Path:
    """The file for ``flag`` at ``size`` (None: ``<flag>.npz``, else the only ``<flag>_<size>.npz`` present)."""
    if size is not None and size != 28:
        path = root / f"{flag}_{size}.npz"
        if path.is_file():
            return path
    else:
        path = root / f"{flag}.npz"
        if path.is_file():
            return path
    sized = sorted(root.glob(f"{flag}_*.npz"))
    if size is None and len(sized) == 1:
        return sized[0]
    others = sorted(p.name for p in root.glob("*.npz"))
    hint = " (several sizes present: pass size=)" if size is None and sized else ""
    raise DatasetNotFoundError(
        f"medmnist:{flag}: expected {path.name} in {str(root)!r}{hint}; found .npz files {others or 'none'}"
    )


def _pixels(array: np.ndarray, name: str, key: str, file: Path) -> np.ndarray:
    """``array`` as uint8 pixels: uint8 as it is, other integers and floats in [0, 255] rounded, and floats in
    [0, 1] (as some converters write them) scaled by 255 first.

    Raises:
        DatasetError: naming the file and key, for another dtype or values outside those ranges (NaN included).
    """
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise DatasetError(f"{name}: {str(file)!r} {key}: expected uint8 (or integer/float) pixels, received dtype "
                           f"{array.dtype}")
    if array.size == 0:
        return array.astype(np.uint8)
    low, high = float(np.min(array)), float(np.max(array))
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite([low, high]).all():
        raise DatasetError(f"{name}: {str(file)!r} {key}: expected finite pixel values, received NaN or inf")
    if not (low >= 0 and high <= 255):
        raise DatasetError(f"{name}: {str(file)!r} {key}: expected pixel values in [0, 255] (or [0, 1] for floats), "
                           f"received values in [{low}, {high}]")
    if np.issubdtype(array.dtype, np.floating) and high <= 1.0:
        logger.info("%s: %s holds %s pixels in [0, 1]; scaled to [0, 255]", name, key, array.dtype)
        array = array * 255.0
    return np.rint(array).astype(np.uint8)


def _labels(raw: np.ndarray, flag: str, key: str, file: Path | None = None) -> np.ndarray:
    where = f"{str(file)!r} " if file is not None else ""
    if raw.ndim == 2 and raw.shape[1] > 1:
        raise DatasetError(
            f"medmnist:{flag}: {key} has shape {raw.shape}: multi-label data, but every item here needs exactly "
            f"one class (expected shape (N,) or (N, 1))"
        )
    if raw.ndim not in (1, 2):
        raise DatasetError(f"medmnist:{flag}: {key} must have shape (N,) or (N, 1), got {raw.shape}")
    flat = raw.reshape(-1)
    if not (np.issubdtype(flat.dtype, np.integer) or np.issubdtype(flat.dtype, np.floating)) or flat.dtype == np.bool_:
        raise DatasetError(f"medmnist:{flag}: {where}{key}: expected integer class labels, received dtype {flat.dtype}")
    if np.issubdtype(flat.dtype, np.floating):
        bad = flat[~np.isfinite(flat) | (flat != np.round(flat))]
        if bad.size:
            raise DatasetError(f"medmnist:{flag}: {where}{key}: expected integer class labels, received "
                               f"{float(bad[0])!r} (and {bad.size - 1} more)")
    labels = flat.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise DatasetError(f"medmnist:{flag}: {where}{key}: expected labels >= 0, received {int(labels.min())}")
    return labels


class MedMNISTDataset(LabeledDataset):
    """One 2D MedMNIST dataset, all three official splits, held in memory as uint8 arrays.

    Args:
        root: Folder with the ``.npz`` files.
        flag: MedMNIST flag, e.g. ``"breastmnist"``.
        size: Image size of the file to read (28, 64, 128, 224); None reads ``<flag>.npz`` (or the only size).
        strict: Kept for interface symmetry (array data cannot be corrupt per item).

    Raises:
        DatasetNotFoundError: ``root`` or the ``.npz`` file is missing.
        DatasetError: Missing keys, 3D or multi-label data, labels outside the class list.
    """

    def __init__(self, root: str | os.PathLike[str], flag: str, *, size: int | None = None,
                 strict: bool = False) -> None:
        flag = flag.lower()
        self.name = f"medmnist:{flag}"
        if flag in MULTI_LABEL:
            raise DatasetError(f"{self.name}: multi-label (14 findings per image); expected a single-label 2D flag "
                               f"such as {sorted(LABELS)}")
        base = require_root(root, self.name)
        self.root = str(base)
        self.file = find_npz(base, flag, size)
        self.strict = strict
        self.skipped = []
        images, targets, splits, ids = [], [], [], []
        try:
            with open_regular(self.file) as handle:  # closed even when numpy fails half-way; never a pipe
                npz = np.load(handle, allow_pickle=False)
                if not isinstance(npz, np.lib.npyio.NpzFile):
                    raise DatasetError(f"{self.name}: {str(self.file)!r}: expected an .npz archive of arrays, received a "
                                       f"single .npy array")
                with npz:
                    missing = [f"{s}_{k}" for s in SPLIT_NAMES for k in ("images", "labels") if f"{s}_{k}" not in npz]
                    if missing:
                        raise DatasetError(f"{self.name}: {str(self.file)!r} lacks keys {missing}; has {sorted(npz.files)}")
                    for split in SPLIT_NAMES:
                        array = npz[f"{split}_images"]
                        if array.ndim not in (3, 4) or (array.ndim == 4 and array.shape[-1] not in (1, 3)):
                            raise DatasetError(f"{self.name}: {split}_images must be (N, H, W) or (N, H, W, 3) (2D data); "
                                               f"got shape {array.shape}")
                        array = _pixels(array, self.name, f"{split}_images", self.file)
                        labels = _labels(npz[f"{split}_labels"], flag, f"{split}_labels", self.file)
                        if len(labels) != len(array):
                            raise DatasetError(f"{self.name}: {len(array)} {split} images but {len(labels)} labels")
                        images.append(array)
                        targets.extend(labels.tolist())
                        splits.extend([split] * len(array))
                        ids.extend(f"{flag}/{split}/{i:06d}" for i in range(len(array)))
        except DatasetError:
            raise
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as err:
            # np.load calls any non-zip file "pickled data"; say what the file is not instead.
            raise DatasetError(f"{self.name}: {str(self.file)!r}: expected a MedMNIST .npz archive of plain arrays, "
                               f"received a file numpy cannot read that way ({type(err).__name__}: {err})") from None
        self._images = np.concatenate(images).astype(np.uint8, copy=False)
        num_classes = max(targets) + 1 if targets else 0
        self.classes = list(LABELS.get(flag, [str(i) for i in range(num_classes)]))
        if flag not in LABELS:
            logger.info("%s: no label names known for this flag; using %s", self.name, self.classes)
        present = set(targets)
        empty = [c for i, c in enumerate(self.classes) if i not in present]
        if empty:
            logger.warning("%s: %s has no image of class %s in any split; a model trained on it cannot predict "
                           "that class, and per-class metrics for it are undefined", self.name, self.file,
                           ", ".join(repr(c) for c in empty))
        self._init_items(targets, ids, splits)

    def load_image(self, index: int) -> Image.Image:
        """Item ``index`` as an 8-bit RGB image at the file's resolution."""
        pixels = self._images[index]
        if pixels.ndim == 3 and pixels.shape[-1] == 1:
            pixels = pixels[..., 0]
        return Image.fromarray(np.ascontiguousarray(pixels)).convert("RGB")

    def image_size(self, index: int) -> tuple[int, int]:
        """(width, height) of every item (all items of a MedMNIST file share one size)."""
        return int(self._images.shape[2]), int(self._images.shape[1])

    def fingerprint(self) -> dict[str, Any]:
        """Name, file path, size, mtime and a hash of the first bytes of the file."""
        stat = os.stat(self.file)
        with open(self.file, "rb") as handle:
            head = hashlib.sha256(handle.read(1 << 20)).hexdigest()
        return {"dataset": self.name, "files": [[str(self.file), stat.st_size, stat.st_mtime_ns]], "head": head}


def load_medmnist(root: str | os.PathLike[str], flag: str | None = None, *, size: int | None = None,
                  strict: bool = False) -> MedMNISTDataset:
    """Read the MedMNIST ``flag`` (e.g. ``"breastmnist"``) from ``root``; see :class:`MedMNISTDataset`."""
    if not flag:
        raise DatasetError("medmnist: a flag is required, e.g. load_dataset('medmnist:breastmnist', root); got none")
    return MedMNISTDataset(root, flag, size=size, strict=strict)
