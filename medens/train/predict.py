"""``python -m medens.train predict``: the ensemble's class probabilities for new images.

``--images`` is an image file or a folder (searched recursively); ``--out`` receives a CSV with ``path``,
``prediction`` (the most probable class) and one probability column per class, named by the class. The members
are combined as ``ensemble`` combines them (``--method``, ``--calibrate``, ``--tta``); one member gives its own
probabilities.

Also the model side of the ensemble: rebuilding a member's classifier from its folder (``config.yaml`` +
``model.safetensors``) and running it, optionally with test-time augmentation (TTA). TTA averages the softmax
probabilities of the image and its horizontal mirror; vertical flips are left out because ultrasound, X-ray and
endoscopy images have an up (skin or patient orientation), matching the fine-tuning augmentation.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from medens.engine.atomic import remove_stale_temporaries
from medens.evaluate.combine import ENSEMBLE_METHODS, fit_rule
from medens.evaluate.members import IncompatibleMembersError, Member, align_members, load_member
from medens.evaluate.predictions import Predictions, write_class_predictions
from medens.evaluate.tables import text_table
from medens.train.guards import OverwritesInputError, refuse_output_over_inputs

if TYPE_CHECKING:
    from medens.data.base import Skipped

logger = logging.getLogger(__name__)

HELP = "class probabilities of the ensemble (or one member) for new images"
MODEL_FILE = "model.safetensors"
#: Rows of the prediction table printed to the terminal; the CSV has them all.
PRINTED_ROWS = 20


@dataclass
class MemberModel:
    """A member's classifier, ready for inference.

    Attributes:
        member: the member's folder contents.
        model: the classifier in eval mode, on ``device``.
        transform: PIL image to normalised ``float32 (3, H, W)``, as fine-tuning evaluated.
        device: where the model runs.
    """

    member: Member
    model: nn.Module
    transform: Callable[[Any], torch.Tensor]
    device: torch.device


def load_member_model(member: Member, device: str | torch.device = "auto") -> MemberModel:
    """Rebuild a member's classifier (``model.safetensors``) and its evaluation transform (``config.yaml``).

    The transform repeats fine-tuning's: resize and centre-crop to ``image_size`` with ``crop_pct``, normalised
    with the ``run.mean``/``run.std`` the run recorded (ImageNet's when absent).

    Args:
        member: a loaded member.
        device: ``auto``, ``cpu``, ``cuda``, ...

    Returns:
        The model in eval mode with the member's evaluation transform.

    Raises:
        FileNotFoundError: if the folder has no ``model.safetensors``.
        ValueError: if the config lacks ``image_size``.
    """
    from medens.data import IMAGENET_MEAN, IMAGENET_STD, build_transforms
    from medens.engine import resolve_device
    from medens.train.finetune import load_model

    if not (member.directory / MODEL_FILE).is_file():
        raise FileNotFoundError(
            f"members: expected {MODEL_FILE} in {member.directory} to run its model, received a folder without it"
        )
    config = member.config
    if config.get("image_size") is None:
        raise ValueError(
            f"{member.directory / 'config.yaml'}: expected key 'image_size' to rebuild the model input"
        )
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    model, _ = load_model(member.directory, dev)
    run = config.get("run") or {}
    transform = build_transforms(
        int(config["image_size"]),
        train=False,
        mean=run.get("mean") or IMAGENET_MEAN,
        std=run.get("std") or IMAGENET_STD,
        crop_pct=float(config.get("crop_pct", 0.875)),
    )
    return MemberModel(member=member, model=model, transform=transform, device=dev)


@torch.no_grad()
def predict_probs(
    mm: MemberModel, dataset: Dataset, tta: bool = False, batch_size: int = 32, desc: str = "predict"
) -> np.ndarray:
    """Softmax probabilities of a member's model over a dataset of ``(image tensor, label)`` items.

    Args:
        mm: the member's model.
        dataset: items ``(float32 (3, H, W), anything)``, e.g. a :class:`medens.data.SplitDataset` with the
            member's transform.
        tta: average the probabilities of each image and its horizontal mirror.
        batch_size: images per forward pass.
        desc: progress-bar label.

    Returns:
        ``(N, K)`` float64 probabilities, in dataset order.
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    out = []
    for images, _ in tqdm(loader, desc=desc, leave=False, unit="batch"):
        x = images.to(mm.device)
        probs = mm.model(x).float().softmax(dim=1)
        if tta:
            probs = (probs + mm.model(torch.flip(x, dims=[3])).float().softmax(dim=1)) / 2
        out.append(probs.double().cpu().numpy())
    k = len(mm.member.classes)
    return np.concatenate(out) if out else np.empty((0, k))


def _split_dataset(mm: MemberModel, preds: Predictions) -> Dataset:
    """The member's dataset items named by ``preds.paths``, with its evaluation transform."""
    from medens.data import SplitDataset
    from medens.train.common import open_dataset

    config = mm.member.config
    dataset = open_dataset(config)
    position = {item: i for i, item in enumerate(dataset.ids)}
    missing = [p for p in preds.paths if p not in position]
    if missing:
        raise IncompatibleMembersError(
            f"members: expected the images of {mm.member.directory}'s predictions in dataset {config['dataset']!r} "
            f"at {config.get('data_root')}, received {len(missing)} missing (e.g. {missing[0]})"
        )
    return SplitDataset(dataset, [position[p] for p in preds.paths], transform=mm.transform)


def with_tta_predictions(
    member: Member, val: bool = False, device: str = "auto", batch_size: int = 32
) -> Member:
    """The member with its test (and, with ``val``, validation) probabilities recomputed with TTA.

    The images are found again through the member's ``config.yaml`` (dataset, data_root, options), by the ids in
    its prediction files.
    """
    mm = load_member_model(member, device)
    test = replace(
        member.test,
        probs=predict_probs(mm, _split_dataset(mm, member.test), True, batch_size, f"TTA {member.name} test"),
    )
    new_val = member.val
    if val and member.val is not None:
        new_val = replace(
            member.val,
            probs=predict_probs(
                mm, _split_dataset(mm, member.val), True, batch_size, f"TTA {member.name} val"
            ),
        )
    return replace(member, test=test, val=new_val)


class ImageFiles(Dataset):
    """Image files as ``(tensor, -1)`` items through a transform (decoded with :func:`medens.data.read_image`)."""

    def __init__(self, paths: Sequence[Path], transform: Callable[[Any], torch.Tensor]) -> None:
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from medens.data import read_image

        return self.transform(read_image(self.paths[index])), -1


def collect_images(path: str | os.PathLike[str]) -> list[Path]:
    """An image file, or every image under a folder (recursively, sorted).

    Raises:
        FileNotFoundError: if ``path`` does not exist or a folder holds no image.
    """
    from medens.data.files import list_images

    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(
            f"images: expected an image file or a folder of images, received {str(path)!r}"
        )
    found = list_images(path, recursive=True)
    if not found:
        raise FileNotFoundError(f"images: expected image files in {path}, received a folder without any")
    return found


def run_predict(
    member_dirs: Sequence[str | os.PathLike[str]],
    images: str | os.PathLike[str],
    out: str | os.PathLike[str],
    method: str = "mean",
    calibrate: bool = False,
    tta: bool = False,
    device: str = "auto",
    batch_size: int = 32,
    skipped_out: list[Skipped] | None = None,
) -> tuple[list[str], list[str], np.ndarray]:
    """Predict new images with each member's model and combine as ``ensemble`` would.

    An image that cannot be decoded is left out of the CSV (never given another image's prediction) and, when
    ``skipped_out`` is a list, appended to it with its reason; every readable image is predicted.

    Temperatures and weights (``calibrate``, ``weighted``) are fitted on the members' validation predictions,
    recomputed with TTA when ``tta`` is on so that the fitted rule matches the probabilities it is applied to.

    Args:
        member_dirs: one or more member folders (one member: its own probabilities, no combination).
        images: an image file or a folder.
        out: CSV to write (``path``, ``prediction``, one column per class).
        method: combination rule.
        calibrate: temperature scaling fitted on validation predictions.
        tta: flip test-time augmentation.
        device: inference device.
        batch_size: images per forward pass.
        skipped_out: receives the unreadable images (path, reason).

    Returns:
        ``(image paths, classes, (N, K) probabilities)`` of the readable images.

    Raises:
        OverwritesInputError: if ``out`` is one of the images, ``images`` itself, or lies inside a member folder
            (checked before any work).
    """
    files = collect_images(images)
    refuse_output_over_inputs("out", out, folders=member_dirs, files=[images, *files])
    remove_stale_temporaries(Path(out).expanduser().parent, target=Path(out).name)
    members = [load_member(d) for d in member_dirs]
    needs_val = calibrate or method == "weighted"
    if len(members) > 1:
        members = align_members(members, require_val=needs_val)
    elif needs_val and members[0].val is None:
        raise IncompatibleMembersError(
            f"members: expected val_predictions.csv in {members[0].directory} to calibrate"
        )
    if tta and needs_val:
        members = [with_tta_predictions(m, val=True, device=device, batch_size=batch_size) for m in members]
    classes = members[0].classes
    val_labels = members[0].val.labels if needs_val else None
    val_probs = {m.name: m.val.probs for m in members} if needs_val else None
    rule = fit_rule(
        val_probs, val_labels, method=method, calibrate=calibrate, members=[m.name for m in members]
    )
    files, skipped = readable_images(files)
    if not files:
        raise ValueError(f"images: expected at least one readable image in {images}, received {len(skipped)} "
                         f"that cannot be decoded (e.g. {skipped[0].path}: {skipped[0].reason})")
    raw = {}
    for m in members:
        mm = load_member_model(m, device)
        raw[m.name] = predict_probs(mm, ImageFiles(files, mm.transform), tta, batch_size, f"predict {m.name}")
    calibrated, ensemble = rule.apply(raw)
    probs = ensemble if len(members) > 1 else calibrated[members[0].name]
    paths = [str(p) for p in files]
    write_class_predictions(out, paths, classes, probs)
    if skipped_out is not None:
        skipped_out.extend(skipped)
    return paths, classes, probs


def readable_images(files: Sequence[Path]) -> tuple[list[Path], list[Skipped]]:
    """Split ``files`` into those that decode and those that do not (with the reason, logged as a warning)."""
    from medens.data import CorruptImageError, Skipped, read_image

    good: list[Path] = []
    bad: list[Skipped] = []
    for path in files:
        try:
            read_image(path)
        except CorruptImageError as err:
            logger.warning("%s; skipped (not in the predictions)", err)
            bad.append(Skipped(str(path), err.reason))
            continue
        good.append(path)
    return good, bad


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``predict`` subcommand and return its parser."""
    p = subparsers.add_parser("predict", help=HELP, description=HELP)
    p.add_argument("--members", nargs="+", required=True, metavar="DIR", help="fine-tuning output folders")
    p.add_argument(
        "--images", required=True, metavar="PATH_OR_FOLDER", help="an image file or a folder of images"
    )
    p.add_argument("--out", required=True, metavar="CSV", help="where to write the predictions")
    p.add_argument("--method", choices=ENSEMBLE_METHODS, default=ENSEMBLE_METHODS[0], help="combination rule")
    p.add_argument(
        "--calibrate", action="store_true", help="temperature scaling fitted on the validation split"
    )
    p.add_argument("--tta", action="store_true", help="average each image with its horizontal mirror")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    """Run the subcommand and print the first predictions as a table.

    Returns 0; 2 on bad input; 1 when ``--out`` would overwrite an input.
    """
    from medens.train.common import cli_logging

    with cli_logging():
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    skipped: list[Skipped] = []
    try:
        paths, classes, probs = run_predict(
            args.members,
            args.images,
            args.out,
            method=args.method,
            calibrate=args.calibrate,
            tta=args.tta,
            device=args.device,
            batch_size=args.batch_size,
            skipped_out=skipped,
        )
    except OverwritesInputError as err:
        logger.error("predict refused: %s", err)
        return 1
    except (IncompatibleMembersError, FileNotFoundError, ValueError) as err:
        logger.error("predict refused: %s", err)
        return 2
    rows = [
        [p, classes[int(np.argmax(row))], f"{float(np.max(row)):.3f}"]
        for p, row in zip(paths[:PRINTED_ROWS], probs[:PRINTED_ROWS], strict=True)
    ]
    print(text_table(["Image", "Prediction", "Probability"], rows))
    if len(paths) > PRINTED_ROWS:
        print(f"... and {len(paths) - PRINTED_ROWS} more")
    print(f"\n{len(paths)} images; probabilities of every class: {args.out}")
    if skipped:
        print(f"{len(skipped)} skipped (cannot be decoded, not in the CSV):")
        for item in skipped:
            print(f"  {item.path}: {item.reason}")
    return 0
