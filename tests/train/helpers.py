"""What the tests of ``predict``, ``ensemble --tta`` and the explanations share: tiny member folders with real
models, an image folder with an undecodable file, and a command runner."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from medens.data import SplitDataset, build_transforms, load_dataset
from medens.evaluate.predictions import Predictions
from medens.models import create_classifier
from medens.models.weights import save_weights
from tests.evaluate.helpers import write_member

SIZE = 32
DATASET_OPTIONS = {"num_images": 18, "image_size": SIZE, "num_classes": 3}
TEST, VAL = list(range(0, 10)), list(range(10, 18))


def model_probs(model: torch.nn.Module, batch: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(batch).softmax(1).double().numpy()


def make_member(root: Path, name: str, init: str, seed: int, *, dataset: str = "synthetic",
                data_root: Path | None = None, dataset_options: dict | None = None,
                test: list[int] = TEST, val: list[int] = VAL) -> tuple[Path, torch.nn.Module]:
    """A member folder with a random convnext_atto and its (non-TTA) predictions on ``test`` and ``val`` of a
    dataset (the synthetic set by default)."""
    dataset_options = DATASET_OPTIONS if dataset == "synthetic" and dataset_options is None else dataset_options
    torch.manual_seed(seed)
    ds = load_dataset(dataset, data_root, **(dataset_options or {}))
    model, _ = create_classifier("convnext_atto", len(ds.classes), init="scratch")
    model.eval()
    transform = build_transforms(SIZE, train=False)
    config = {
        "dataset": dataset,
        "data_root": None if data_root is None else str(data_root),
        "dataset_options": dataset_options or {},
        "classes": ds.classes,
        "arch": "convnext_atto",
        "image_size": SIZE,
        "init": init,
        "split_hash": "tiny",
    }

    def preds(indices: list[int]) -> Predictions:
        split = SplitDataset(ds, indices, transform)
        batch = torch.stack([split[i][0] for i in range(len(split))])
        return Predictions(
            split.ids, [ds.classes[t] for t in split.targets], ds.classes, model_probs(model, batch)
        )

    directory = write_member(root / name, config, preds(test), preds(val))
    save_weights(directory / "model.safetensors", model.state_dict(), {"arch": "convnext_atto"})
    return directory, model


#: Stage options that make a pipeline run in seconds (``stages.preset_configs`` patched to return them).
TINY_FINETUNE = {
    "arch": "convnext_atto",
    "image_size": 64,
    "epochs": 1,
    "warmup_epochs": 0,
    "batch_size": 8,
    "lr": 1e-3,
    "num_workers": 0,
    "progress": False,
}
TINY_PRETRAIN = {**TINY_FINETUNE, "decoder_dim": 32}


def parse_pipeline(argv: list[str]) -> argparse.Namespace:
    """``medens pipeline ARGV`` parsed as the command parses it."""
    from medens.train import pipeline

    parser = argparse.ArgumentParser(prog="medens.train")
    pipeline.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["pipeline", *argv])


def run_cli(module, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="medens.train")
    module.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)




def write_image_folder(root: Path) -> Path:
    """``root/imgs``: three synthetic images, ``img1.png`` truncated (it cannot be decoded), and ``notes.txt``,
    which is not an image."""
    ds = load_dataset("synthetic", None, **DATASET_OPTIONS)
    folder = root / "imgs"
    folder.mkdir()
    for i in range(3):
        ds[i][0].save(folder / f"img{i}.png")
    data = (folder / "img1.png").read_bytes()
    (folder / "img1.png").write_bytes(data[: len(data) // 2])
    (folder / "notes.txt").write_text("not an image")
    return folder
