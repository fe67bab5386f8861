"""The embedded synthetic dataset: deterministic, lazy, configurable, learnable but not trivial."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

import medens.data.synthetic as synthetic
from medens.data import SYNTHETIC_CLASSES, DatasetError, load_dataset


def test_same_seed_and_index_give_the_same_pixels():
    a = load_dataset("synthetic", None, num_images=20, image_size=32, seed=5)
    b = load_dataset("synthetic", None, num_images=20, image_size=32, seed=5)
    assert a.targets == b.targets
    np.testing.assert_array_equal(np.asarray(a[7][0]), np.asarray(b[7][0]))
    np.testing.assert_array_equal(np.asarray(a[7][0]), np.asarray(a[7][0]))  # and on every access


def test_other_seed_or_index_gives_other_pixels():
    a = load_dataset("synthetic", None, num_images=20, image_size=32, seed=5)
    b = load_dataset("synthetic", None, num_images=20, image_size=32, seed=6)
    assert not np.array_equal(np.asarray(a[3][0]), np.asarray(b[3][0]))
    assert not np.array_equal(np.asarray(a[3][0]), np.asarray(a[4][0]))


@pytest.mark.parametrize("num_classes", [2, 3, 8])
def test_classes_balanced_and_named(num_classes):
    ds = load_dataset("synthetic", None, num_images=10 * num_classes, image_size=16, num_classes=num_classes)
    assert ds.classes == SYNTHETIC_CLASSES[:num_classes]
    assert [ds.targets.count(c) for c in range(num_classes)] == [10] * num_classes
    assert ds.ids[123 % len(ds)] == f"synthetic/{123 % len(ds):06d}"
    for c in range(num_classes):  # every painter runs
        image, label = ds[ds.targets.index(c)]
        assert label == c and image.mode == "RGB" and image.size == (16, 16)


def test_default_classes_are_busi_like():
    assert load_dataset("synthetic", None, num_images=3).classes == ["normal", "benign", "malignant"]


def test_non_square_size():
    ds = load_dataset("synthetic", None, num_images=4, image_size=(24, 40))
    assert ds[0][0].size == (40, 24) and ds.image_size(0) == (40, 24)


def test_images_are_generated_only_when_asked_for(monkeypatch):
    calls = []
    real_render = synthetic.render
    monkeypatch.setattr(synthetic, "render", lambda *args: calls.append(args[0]) or real_render(*args))
    ds = load_dataset("synthetic", None, num_images=200_000, image_size=8)
    assert len(ds) == 200_000 and len(ds.targets) == 200_000 and calls == []
    ds[123_456]
    assert calls == [ds.targets[123_456]]


@pytest.mark.parametrize("options, match", [
    ({"num_classes": 9}, "num_classes"), ({"num_classes": 1}, "num_classes"),
    ({"num_images": 2, "num_classes": 3}, "num_images"), ({"image_size": 4}, "image_size"),
    ({"seed": -1}, "seed"),
])
def test_bad_options_are_named(options, match):
    with pytest.raises(DatasetError, match=match):
        load_dataset("synthetic", None, **options)


def test_learnable_but_not_trivial():
    """A linear model on 8x8 thumbnails clearly beats chance (1/3) but is far from perfect."""
    ds = load_dataset("synthetic", None, num_images=600, image_size=32, seed=0)
    x = np.stack([np.asarray(ds[i][0])[..., 0] for i in range(len(ds))]).astype(np.float32) / 255
    x = x.reshape(len(x), 8, 4, 8, 4).mean((2, 4)).reshape(len(x), -1)
    y = np.array(ds.targets)
    model = LogisticRegression(max_iter=2000).fit(x[:400], y[:400])
    accuracy = model.score(x[400:], y[400:])
    assert 0.45 < accuracy < 0.95, accuracy
