"""Maps of trained models on the synthetic images, whose lesions (and caliper marks) are known: a trained model's
maps fall on the lesion far more than an untrained one's, and a model trained where a bright caliper mark gives the
class away looks at the mark, which the lesion score exposes.

A small CNN trains in seconds on one CPU thread at 48 px; the maps come from the same code as every member's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from medens.data import SplitDataset, build_transforms, load_dataset
from medens.data.masks import lesion_mask
from medens.evaluate.cam import class_activation_maps
from medens.evaluate.lesion import energy_inside, pointing_hits

SIZE = 48
N_TRAIN, N_TEST = 480, 80
LAYERS = ["features.6"]  # the last convolution block's output, 12 x 12
BENIGN = 1  # the class every map explains: the lesion's


class SmallCNN(nn.Module):
    """Three convolution blocks (48 -> 24 -> 12 px), global average pooling, a linear head."""

    def __init__(self, classes: int) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(*block(3, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2),
                                      nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def _data(caliper: str | None) -> tuple:
    """``normal`` and ``benign`` images: the training tensors and labels, the test images with a lesion."""
    ds = load_dataset("synthetic", None, num_images=N_TRAIN + N_TEST, image_size=SIZE, num_classes=2, seed=3,
                      caliper=caliper)
    transform = build_transforms(SIZE, train=False, crop_pct=1.0)
    train = SplitDataset(ds, list(range(N_TRAIN)), transform)
    x = torch.stack([train[i][0] for i in range(len(train))])
    y = torch.tensor(train.targets)
    test_idx = [i for i in range(N_TRAIN, N_TRAIN + N_TEST) if lesion_mask(ds, i) is not None]
    test_x = torch.stack([transform(ds[i][0]) for i in test_idx])
    return ds, x, y, test_idx, test_x


def _train(x: torch.Tensor, y: torch.Tensor, epochs: int) -> nn.Module:
    torch.manual_seed(0)
    model = SmallCNN(2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=g).split(32):
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def _scores(model: nn.Module, x: torch.Tensor, masks: np.ndarray, method: str) -> tuple[float, float]:
    """Mean energy inside ``masks`` and pointing-game hit rate of the maps for the benign class."""
    maps = class_activation_maps(model, x, BENIGN, layers=LAYERS, method=method).maps.numpy()
    return float(np.nanmean(energy_inside(maps, masks))), float(np.nanmean(pointing_hits(maps, masks)))


@pytest.fixture(scope="module")
def clean() -> tuple:
    """The data without marks, a model trained on it, and the same network untrained."""
    ds, x, y, test_idx, test_x = _data(None)
    masks = np.stack([lesion_mask(ds, i) for i in test_idx])
    return _train(x, y, epochs=8), _train(x, y, epochs=0), test_x, masks, test_idx


@pytest.mark.slow
# Grad-CAM++ weighs every channel that speaks for the class, and so spreads its maps wider: a smaller energy margin.
@pytest.mark.parametrize(("method", "energy_ratio", "hit_gain"),
                         [("gradcam", 1.6, 0.25), ("gradxact", 1.6, 0.25), ("gradcampp", 1.3, 0.25)])
def test_trained_maps_fall_on_the_lesion_far_more_than_untrained_ones(clean, method, energy_ratio, hit_gain) -> None:
    trained, untrained, test_x, masks, _ = clean
    energy_u, hits_u = _scores(untrained, test_x, masks, method)
    energy_t, hits_t = _scores(trained, test_x, masks, method)
    assert energy_t > energy_ratio * energy_u
    assert hits_t > hits_u + hit_gain


@pytest.mark.slow
def test_a_caliper_shortcut_draws_the_maps_away_from_the_lesion(clean) -> None:
    trained, _, test_x, masks, test_idx = clean
    marked_ds, mx, my, _, marked_x = _data("benign")
    shortcut = _train(mx, my, epochs=4)
    # The mark's neighbourhood: a map cell of the last block covers 4 x 4 pixels.
    marks = np.stack([ndimage.binary_dilation(marked_ds.caliper_mask(i), iterations=4) for i in test_idx])
    energy_mark, hits_mark = _scores(shortcut, marked_x, marks, "gradcam")
    energy_lesion, hits_lesion = _scores(shortcut, marked_x, masks, "gradcam")
    assert hits_mark > 0.8 and hits_mark > hits_lesion + 0.5  # it looks at the mark, not the lesion
    energy_clean, _ = _scores(trained, test_x, masks, "gradcam")
    assert energy_lesion < 0.6 * energy_clean  # and the lesion score says so
