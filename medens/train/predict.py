"""``python -m medens.train predict``: the ensemble's class probabilities for new images.

``--images`` is an image file or a folder (searched recursively); ``--out`` receives a CSV with ``path``,
``prediction`` (the most probable class) and one probability column per class, named by the class. The members
are combined as ``ensemble`` combines them (``--method``, ``--calibrate``, ``--tta``); one member gives its own
probabilities. An image that cannot be decoded gets a row with empty prediction and probability cells, and is listed on the
terminal and logged; every readable image is predicted. The models run through :mod:`medens.inference`.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medens.cli import command, command_help, config_file_argument
from medens.engine.atomic import remove_stale_temporaries
from medens.evaluate.combine import ENSEMBLE_METHODS, fit_rule
from medens.evaluate.members import IncompatibleMembersError, align_members, load_member
from medens.evaluate.predictions import write_class_predictions
from medens.evaluate.tables import text_table
from medens.inference import ImageFiles, load_member_model, member_probs, with_tta_predictions
from medens.layout import VAL_PREDICTIONS_NAME
from medens.train.guards import positive_int, refuse_output_over_inputs

if TYPE_CHECKING:
    from medens.data.base import Skipped

logger = logging.getLogger(__name__)

#: Rows of the prediction table printed to the terminal; the CSV has them all.
PRINTED_ROWS = 20


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
        from medens.errors import describe_path

        raise FileNotFoundError(
            f"images: expected an image file or a folder of images, received {str(path)!r}, {describe_path(path)}"
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

    An image that cannot be decoded is never given another image's prediction: its row in the CSV has empty
    prediction and probability cells and, when ``skipped_out`` is a list, it is appended to it with its reason;
    every readable image is predicted.

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
            f"members: expected {VAL_PREDICTIONS_NAME} in {members[0].directory} to calibrate"
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
        raw[m.name] = member_probs(mm, ImageFiles(files, mm.transform), tta, batch_size, f"predict {m.name}")
    calibrated, ensemble = rule.apply(raw)
    probs = ensemble if len(members) > 1 else calibrated[members[0].name]
    paths = [str(p) for p in files]
    write_class_predictions(out, paths, classes, probs, skipped=[item.path for item in skipped])
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
            logger.warning("%s; skipped (a row without a prediction)", err)
            bad.append(Skipped(str(path), err.reason))
            continue
        good.append(path)
    return good, bad


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``predict`` subcommand and return its parser."""
    p = subparsers.add_parser("predict", help=command_help("predict"), description=__doc__.split("\n\n")[1])
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
    p.add_argument("--batch-size", type=positive_int, default=32, metavar="N", help="images per forward pass")
    config_file_argument(p)
    p.set_defaults(func=main)
    return p


@command("predict")
def main(args: argparse.Namespace) -> int:
    """Run the subcommand and print the first predictions as a table.

    Returns 0; 2 for a usage error; 1 for another error (an unreadable member, ``--out`` over an input, ...).
    """
    skipped: list[Skipped] = []
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
    rows = [
        [p, classes[int(np.argmax(row))], f"{float(np.max(row)):.3f}"]
        for p, row in zip(paths[:PRINTED_ROWS], probs[:PRINTED_ROWS], strict=True)
    ]
    print(text_table(["Image", "Prediction", "Probability"], rows))
    if len(paths) > PRINTED_ROWS:
        print(f"... and {len(paths) - PRINTED_ROWS} more")
    print(f"\n{len(paths)} images; probabilities of every class: {args.out}")
    if skipped:
        print(f"{len(skipped)} skipped (cannot be decoded; their rows in the CSV are empty):")
        for item in skipped:
            print(f"  {item.path}: {item.reason}")
    return 0
