"""Inference with fine-tuned classifiers: loading a run's model, and class probabilities over a dataset.

Shared by fine-tuning (scoring the validation and test splits on every rank), the ensemble (``--tta``) and
``predict``:

- :func:`load_model`: the classifier of a fine-tuning run folder (``config.yaml`` + ``model.safetensors``);
- :func:`load_member_model`: the same for an ensemble member, with its evaluation transform;
- :func:`sharded_probs`: probabilities of a dataset, each rank an interleaved shard, gathered on every rank;
- :func:`member_probs`: probabilities of a member's model, optionally with flip test-time augmentation (TTA);
- :func:`with_tta_predictions`: a member whose prediction files are recomputed with TTA.

TTA averages the softmax probabilities of the image and its horizontal mirror; vertical flips are left out because
ultrasound, X-ray and endoscopy images have an up (skin or patient orientation), matching the fine-tuning
augmentation.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from medens.engine.distributed import DistContext
from medens.engine.loader import resolve_num_workers
from medens.engine.precision import Precision
from medens.engine.signals import ignore_stop_signals
from medens.evaluate.members import IncompatibleMembersError, Member
from medens.evaluate.predictions import Predictions
from medens.layout import CONFIG_NAME, MODEL_NAME

__all__ = [
    "load_model",
    "MemberModel",
    "load_member_model",
    "sharded_probs",
    "member_probs",
    "with_tta_predictions",
    "ImageFiles",
]


def load_model(
    out_dir: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """The fine-tuned classifier of a finished run, in eval mode, and the run's ``config.yaml``.

    The config holds what predicting needs: ``classes``, ``image_size``, ``crop_pct`` and, in
    ``run.mean``/``run.std``, the input normalisation.

    Raises:
        FileNotFoundError: when ``out_dir`` lacks ``model.safetensors`` or ``config.yaml``.
    """
    import timm

    from medens.engine import load_yaml
    from medens.models import DEFAULT_NORM, load_weights, split_arch
    from medens.models.arch import ENCODER_STRIDE, norm_kwargs, stride_kwargs

    out = Path(out_dir)
    if not (out / CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"out_dir: expected a fine-tuning run folder with {CONFIG_NAME}, received {out}"
        )
    config = load_yaml(out / CONFIG_NAME)
    state, meta = load_weights(out / MODEL_NAME)
    arch, _ = split_arch(str(meta.get("arch") or config["arch"]))
    norm = str(meta.get("norm", DEFAULT_NORM))  # models saved before the option are LayerNorm ConvNeXts
    # Models saved before the output_stride option have the published stride, 32.
    stride = stride_kwargs(int(meta.get("output_stride", ENCODER_STRIDE)))
    model = timm.create_model(
        arch, pretrained=False, num_classes=len(config["classes"]), **norm_kwargs(arch, norm), **stride
    )
    model.load_state_dict(state)
    return model.to(device).eval(), config


@torch.no_grad()
def sharded_probs(
    model: nn.Module,
    dataset: Any,
    *,
    batch_size: int,
    dist: DistContext,
    precision: Precision,
    channels_last: bool = False,
    num_workers: int | None = 0,
) -> np.ndarray:
    """Class probabilities ``(N, K)`` float64 for every item of ``dataset``, in order, on every rank.

    Each rank predicts an interleaved shard; the shards are gathered so all ranks hold the full result.
    """
    positions = list(range(dist.rank, len(dataset), dist.world_size))
    workers = resolve_num_workers(num_workers)
    loader = DataLoader(
        Subset(dataset, positions), batch_size=batch_size, shuffle=False, num_workers=workers,
        worker_init_fn=ignore_stop_signals if workers else None,
    )
    was_training = model.training
    model.eval()
    chunks = []
    for images, _ in loader:
        images = images.to(dist.device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with precision.autocast():
            logits = model(images)
        chunks.append(torch.softmax(logits.double(), dim=-1).cpu().numpy())
    model.train(was_training)
    local = np.concatenate(chunks) if chunks else np.zeros((0, 0))
    gathered = dist.all_gather_object((positions, local))
    num_classes = max(part[1].shape[1] for part in gathered if part[1].size) if len(dataset) else 0
    probs = np.zeros((len(dataset), num_classes))
    for idx, part in gathered:
        if len(idx):
            probs[idx] = part
    return probs


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
    from medens.data import DEFAULT_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD, build_transforms
    from medens.engine import resolve_device

    if not (member.directory / MODEL_NAME).is_file():
        raise FileNotFoundError(
            f"members: expected {MODEL_NAME} in {member.directory} to run its model, received a folder without it"
        )
    config = member.config
    if config.get("image_size") is None:
        raise ValueError(
            f"{member.directory / CONFIG_NAME}: expected key 'image_size' to rebuild the model input"
        )
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    model, _ = load_model(member.directory, dev)
    run = config.get("run") or {}
    transform = build_transforms(
        int(config["image_size"]),
        train=False,
        mean=run.get("mean") or IMAGENET_MEAN,
        std=run.get("std") or IMAGENET_STD,
        crop_pct=float(config.get("crop_pct", DEFAULT_CROP_PCT)),
    )
    return MemberModel(member=member, model=model, transform=transform, device=dev)


@torch.no_grad()
def member_probs(
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
    from medens.data import SplitDataset, open_dataset

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
        probs=member_probs(mm, _split_dataset(mm, member.test), True, batch_size, f"TTA {member.name} test"),
    )
    new_val = member.val
    if val and member.val is not None:
        new_val = replace(
            member.val,
            probs=member_probs(
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
