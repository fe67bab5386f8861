"""``python -m medens.train predict``: the ensemble's class probabilities for new images.

``--images`` is an image file or a folder (searched recursively); ``--out`` receives a CSV with ``path``,
``prediction`` (the most probable class) and one probability column per class, named by the class. The members
are combined as ``ensemble`` combines them (``--method``, ``--calibrate``, ``--tta``); one member gives its own
probabilities. An image that cannot be decoded gets a row with empty prediction and probability cells, and is listed on the
terminal and logged; every readable image is predicted. The models run through :mod:`medens.inference`.

``--explain`` also writes, into the folder ``<CSV stem>_explain/`` beside the CSV, one PNG per readable image: the
image as the models saw it, each member's class-activation map over it and the ensemble's, captioned with the
predicted class and the probabilities; the CSV gains the column ``explanation`` with the PNG's path relative to the
CSV (empty for an unreadable image, which gets no PNG). ``--cam-layer``, ``--cam-class`` and ``--cam-method`` choose
the layers, the class and the method (:mod:`medens.evaluate.cam`). The probabilities are the same with and without
``--explain``; with ``--tta`` the captions show the flip-averaged probabilities and each map is, by the same rule, the
mean of the image's map and of its mirror's map mirrored back.
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
from medens.errors import UsageError
from medens.evaluate.cam import CAM_METHODS, DEFAULT_CAM_METHOD, resolve_cam_layers
from medens.evaluate.combine import ENSEMBLE_METHODS, fit_rule
from medens.evaluate.explain import write_explanations
from medens.evaluate.members import IncompatibleMembersError, align_members, load_member
from medens.evaluate.predictions import write_class_predictions
from medens.inference import ImageFiles, load_member_model, member_probs, with_tta_predictions
from medens.io import remove_stale_temporaries, text_table
from medens.layout import VAL_PREDICTIONS_NAME
from medens.train.guards import positive_int, refuse_output_over_inputs

if TYPE_CHECKING:
    from medens.data.base import Skipped

logger = logging.getLogger(__name__)

#: Rows of the prediction table printed to the terminal; the CSV has them all.
PRINTED_ROWS = 20
#: The CSV column naming each image's PNG under ``--explain``.
EXPLANATION_COLUMN = "explanation"


def explain_folder(out: str | os.PathLike[str]) -> Path:
    """Where ``--explain`` writes its PNGs: ``<CSV stem>_explain/`` beside the CSV."""
    out = Path(out).expanduser()
    return out.parent / f"{out.stem}_explain"


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
    explain: bool = False,
    cam_layer: str | Sequence[str] | None = None,
    cam_class: str | None = None,
    cam_method: str = DEFAULT_CAM_METHOD,
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
        explain: write one PNG of class-activation maps per readable image into :func:`explain_folder` and the
            column ``explanation`` into the CSV.
        cam_layer: layers of the maps (module names, comma-separated or a list); default per architecture.
        cam_class: the class every map explains; default: the class each model (and the ensemble) predicts.
        cam_method: one of :data:`medens.evaluate.cam.CAM_METHODS`.

    Returns:
        ``(image paths, classes, (N, K) probabilities)`` of the readable images.

    Raises:
        OverwritesInputError: if ``out`` is one of the images, ``images`` itself, or lies inside a member folder;
            with ``explain``, if the PNG folder is an input or lies inside the images' folder or a member folder
            (checked before any work).
        UsageError: on an unknown ``cam_class``, ``cam_layer`` or ``cam_method``.
    """
    files = collect_images(images)
    refuse_output_over_inputs("out", out, folders=member_dirs, files=[images, *files])
    if explain:
        if cam_method not in CAM_METHODS:
            raise UsageError(f"--cam-method: expected one of {list(CAM_METHODS)}, received {cam_method!r}")
        image_folders = [images] if Path(images).expanduser().is_dir() else []
        refuse_output_over_inputs("out", explain_folder(out), folders=[*member_dirs, *image_folders],
                                  files=[images, *files])
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
    if explain and cam_class is not None and cam_class not in classes:
        raise UsageError(f"--cam-class: expected one of the members' classes {classes}, received {cam_class!r}")
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
    kept = []
    for m in members:
        mm = load_member_model(m, device)
        if explain:
            try:
                resolve_cam_layers(mm.model, cam_layer, argument="--cam-layer")
            except ValueError as err:
                raise UsageError(str(err)) from None
            kept.append(mm)
        raw[m.name] = member_probs(mm, ImageFiles(files, mm.transform), tta, batch_size, f"predict {m.name}")
    calibrated, ensemble = rule.apply(raw)
    probs = ensemble if len(members) > 1 else calibrated[members[0].name]
    paths = [str(p) for p in files]
    extra = None
    if explain:
        folder = explain_folder(out)
        width = len(str(len(files)))
        names = [f"{i:0{width}d}-{f.stem}.png" for i, f in enumerate(files)]
        write_explanations(
            kept, files, names, folder, classes, probs, calibrated,
            weights=rule.weights if len(members) > 1 else None,
            target=None if cam_class is None else classes.index(cam_class),
            layers=cam_layer, method=cam_method, tta=tta, batch_size=batch_size,
            labels={m.name: m.label for m in members},
        )
        extra = {EXPLANATION_COLUMN: [f"{folder.name}/{n}" for n in names]}
    write_class_predictions(out, paths, classes, probs, skipped=[item.path for item in skipped], extra=extra)
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
    cam = p.add_argument_group("class-activation maps")
    cam.add_argument("--explain", action="store_true",
                     help="also write one PNG per image (each member's and the ensemble's map over it) into "
                          "<CSV stem>_explain/ beside the CSV, named in the CSV's 'explanation' column")
    cam.add_argument("--cam-layer", action="append", metavar="NAME",
                     help="module(s) to take the maps at, e.g. stages.3 (repeat or comma-separate; default: the "
                          "last three feature stages of each architecture)")
    cam.add_argument("--cam-class", metavar="CLASS", help="the class every map explains (default: the predicted one)")
    cam.add_argument("--cam-method", choices=CAM_METHODS, default=DEFAULT_CAM_METHOD,
                     help="gradcam (Grad-CAM), gradxact (gradient x activation) or gradcampp (Grad-CAM++)")
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
        explain=args.explain,
        cam_layer=args.cam_layer,
        cam_class=args.cam_class,
        cam_method=args.cam_method,
    )
    rows = [
        [p, classes[int(np.argmax(row))], f"{float(np.max(row)):.3f}"]
        for p, row in zip(paths[:PRINTED_ROWS], probs[:PRINTED_ROWS], strict=True)
    ]
    print(text_table(["Image", "Prediction", "Probability"], rows))
    if len(paths) > PRINTED_ROWS:
        print(f"... and {len(paths) - PRINTED_ROWS} more")
    print(f"\n{len(paths)} images; probabilities of every class: {args.out}")
    if args.explain:
        print(f"class-activation maps, one PNG per image: {explain_folder(args.out)}")
    if skipped:
        print(f"{len(skipped)} skipped (cannot be decoded; their rows in the CSV are empty):")
        for item in skipped:
            print(f"  {item.path}: {item.reason}")
    return 0
