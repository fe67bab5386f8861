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
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .base import SPLIT_NAMES, LabeledDataset
from .errors import DatasetError, DatasetNotFoundError
from .files import require_root

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


def _labels(raw: np.ndarray, flag: str, key: str) -> np.ndarray:
    if raw.ndim == 2 and raw.shape[1] > 1:
        raise DatasetError(
            f"medmnist:{flag}: {key} has shape {raw.shape}: multi-label data, but every item here needs exactly "
            f"one class (expected shape (N,) or (N, 1))"
        )
    if raw.ndim not in (1, 2):
        raise DatasetError(f"medmnist:{flag}: {key} must have shape (N,) or (N, 1), got {raw.shape}")
    return raw.reshape(-1).astype(np.int64)


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
        with np.load(self.file) as npz:
            missing = [f"{s}_{k}" for s in SPLIT_NAMES for k in ("images", "labels") if f"{s}_{k}" not in npz]
            if missing:
                raise DatasetError(f"{self.name}: {str(self.file)!r} lacks keys {missing}; has {sorted(npz.files)}")
            for split in SPLIT_NAMES:
                array = npz[f"{split}_images"]
                if array.ndim not in (3, 4) or (array.ndim == 4 and array.shape[-1] not in (1, 3)):
                    raise DatasetError(f"{self.name}: {split}_images must be (N, H, W) or (N, H, W, 3) (2D data); "
                                       f"got shape {array.shape}")
                labels = _labels(npz[f"{split}_labels"], flag, f"{split}_labels")
                if len(labels) != len(array):
                    raise DatasetError(f"{self.name}: {len(array)} {split} images but {len(labels)} labels")
                images.append(array)
                targets.extend(labels.tolist())
                splits.extend([split] * len(array))
                ids.extend(f"{flag}/{split}/{i:06d}" for i in range(len(array)))
        self._images = np.concatenate(images).astype(np.uint8, copy=False)
        num_classes = max(targets) + 1 if targets else 0
        self.classes = list(LABELS.get(flag, [str(i) for i in range(num_classes)]))
        if flag not in LABELS:
            logger.info("%s: no label names known for this flag; using %s", self.name, self.classes)
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
