"""Fine-tuning's end of epoch (``BestEpochEvaluator``): the best epoch by the selection metric, its weights saved,
NaN never selected, precise BatchNorm, and its state checkpointed with the run."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from medens.engine import DistContext, resolve_precision
from medens.models import load_weights
from medens.train.evaluator import BestEpochEvaluator, InferenceSettings, precise_bn_applies


class _Images(Dataset):
    """``n`` seeded 3x4x4 images with targets ``i % 2`` (items ``(image, target)``, ``targets`` listed)."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(n)
        self.images = torch.randn(n, 3, 4, 4, generator=g)
        self.targets = [i % 2 for i in range(n)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.images[i], self.targets[i]


class _Fixed(nn.Module):
    """The same logits (a parameter, set by the test) for every image, after a BatchNorm layer that the images pass
    through (so precise BatchNorm has statistics to recompute) but that does not change the output."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.logits = nn.Parameter(torch.zeros(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x).mean(dim=(1, 2, 3), keepdim=False)[:, None] * 0 + self.logits


def _trainer(model: nn.Module, epoch: int = 0) -> SimpleNamespace:
    return SimpleNamespace(eval_module=model, precision=resolve_precision("off", torch.device("cpu")), epoch=epoch)


def _evaluator(tmp_path: Path, metric: str = "accuracy", bn_set=None) -> BestEpochEvaluator:
    return BestEpochEvaluator(_Images(6), select_metric=metric, model_path=tmp_path / "model.safetensors",
                              metadata={"arch": "fixed"}, dist=DistContext(),
                              inference=InferenceSettings(batch_size=4), bn_set=bn_set)


def test_the_best_epoch_is_kept_saved_and_checkpointed(tmp_path: Path) -> None:
    model = _Fixed()
    evaluator = _evaluator(tmp_path)  # accuracy: zero logits predict class 0 everywhere, right for half the images
    logged = evaluator(0, _trainer(model))
    assert set(logged) == {"val_accuracy", "val_macro_f1", "val_auroc_macro", "val_nll", "best_epoch"}
    assert logged["best_epoch"] == 1 and evaluator.epoch == 1 and evaluator.score == logged["val_accuracy"]
    state, metadata = load_weights(tmp_path / "model.safetensors")
    assert metadata["epoch"] == 1 and metadata["arch"] == "fixed"

    with torch.no_grad():
        model.logits.copy_(torch.tensor([5.0, 0.0]))  # the same accuracy (half the images): no improvement
    assert evaluator(1, _trainer(model))["best_epoch"] == 1
    assert load_weights(tmp_path / "model.safetensors")[1]["epoch"] == 1
    saved = evaluator.state_dict()
    resumed = _evaluator(tmp_path)
    resumed.load_state_dict(saved)
    assert (resumed.score, resumed.epoch) == (evaluator.score, 1)

    # The best weights come back into the model, not the last ones.
    evaluator.restore_best(_trainer(model, epoch=2))
    assert torch.equal(model.logits.detach(), torch.zeros(2))


def test_nan_never_improves_and_the_last_weights_are_kept(tmp_path: Path) -> None:
    evaluator = _evaluator(tmp_path, metric="auroc_macro")
    evaluator.val_set = _Images(6)
    evaluator.val_set.targets = [0] * 6  # one class: AUROC is undefined (NaN)
    model = _Fixed()
    assert evaluator(0, _trainer(model))["best_epoch"] == -1
    assert evaluator.score == -math.inf and not (tmp_path / "model.safetensors").exists()
    evaluator.restore_best(_trainer(model, epoch=3))
    assert load_weights(tmp_path / "model.safetensors")[1]["epoch"] == 3


def test_precise_batchnorm_recomputes_the_statistics_over_the_given_set(tmp_path: Path) -> None:
    bn_set = _Images(8)
    model = _Fixed()
    _evaluator(tmp_path, bn_set=bn_set)(0, _trainer(model))
    expected = bn_set.images.mean(dim=(0, 2, 3))
    torch.testing.assert_close(model.bn.running_mean, expected)
    assert precise_bn_applies(True, model) and not precise_bn_applies(False, model)


def test_precise_batchnorm_is_not_applied_without_batchnorm(caplog: pytest.LogCaptureFixture) -> None:
    assert not precise_bn_applies(True, nn.Linear(2, 2))
    assert "no BatchNorm layer" in caplog.text


def test_precise_batchnorm_leaves_out_a_last_batch_of_one_image() -> None:
    """A BatchNorm after global pooling refuses a batch of one in training mode; 5 images in batches of 4 must
    not fail, and the statistics are those of the first 4."""
    from medens.engine import recompute_batchnorm_statistics

    images = _Images(5)
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(3))
    assert recompute_batchnorm_statistics(model, images, batch_size=4)
    expected = images.images[:4].mean(dim=(2, 3)).mean(dim=0)
    torch.testing.assert_close(model[2].running_mean, expected)
