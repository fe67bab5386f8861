"""The linear and k-NN probes of a frozen encoder: scores, grouping, skips, and the features of a timm encoder."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from medens.evaluate.probe import (
    ProbeSkipped,
    encoder_features,
    fold_count,
    probe_groups,
    probe_record,
    probe_scores,
)


def _blobs(n_per_class: int, classes: int, separation: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n_per_class)
    centres = rng.normal(size=(classes, 16)) * separation
    return centres[labels] + rng.normal(size=(len(labels), 16)), labels


def test_separable_features_score_high_and_noise_scores_chance() -> None:
    features, labels = _blobs(40, 3, separation=4.0)
    good = probe_scores(features, labels)
    noise = probe_scores(np.random.default_rng(1).normal(size=features.shape), labels)
    for probe in ("linear", "knn"):
        assert good[probe]["balanced_accuracy"] > 0.9
        assert noise[probe]["balanced_accuracy"] < 0.55  # chance is 1/3
        assert 0.0 <= noise[probe]["accuracy"] <= 1.0


def test_groups_keep_copies_on_one_side_of_every_fold() -> None:
    """Labels drawn per group, each group five exact copies: only a leak across folds lets the 1-NN probe score."""
    rng = np.random.default_rng(0)
    group_features = rng.normal(size=(60, 8))
    group_labels = rng.integers(0, 2, size=60)
    features = np.repeat(group_features, 5, axis=0)
    labels = np.repeat(group_labels, 5)
    groups = np.repeat(np.arange(60), 5)
    leaky = probe_scores(features, labels, None, neighbours=1)
    grouped = probe_scores(features, labels, groups, neighbours=1)
    assert leaky["knn"]["accuracy"] == 1.0
    assert grouped["knn"]["balanced_accuracy"] < 0.7


def test_one_class_or_too_few_groups_skip_with_a_reason() -> None:
    features = np.zeros((10, 4))
    with pytest.raises(ProbeSkipped, match="1 class"):
        probe_scores(features, np.zeros(10, dtype=int))
    labels = np.array([0] * 5 + [1] * 5)
    with pytest.raises(ProbeSkipped, match="fewer than two groups"):
        probe_scores(features, labels, np.array([0] * 5 + [1] * 5))
    assert fold_count(labels, np.arange(10)) == 5
    assert fold_count(labels, np.array([0, 0, 1, 1, 2, 3, 3, 4, 4, 5])) == 3  # class 0 spans groups 0, 1, 2


def test_mismatched_lengths_name_the_argument() -> None:
    with pytest.raises(ValueError, match=r"features: expected an \(N, C\) array with one row per label \(3\)"):
        probe_scores(np.zeros((4, 2)), [0, 1, 0])


def test_probe_groups_join_duplicates_and_dataset_groups() -> None:
    ids = ["a", "b", "c", "d", "e"]
    groups = probe_groups(ids, ["L1", None, "L1", None, None], [["b", "d"], ["d", "x-not-probed"]])
    assert groups[0] == groups[2] and groups[1] == groups[3]
    assert len({groups[0], groups[1], groups[4]}) == 3
    assert list(probe_groups(ids, None, None)) == [0, 1, 2, 3, 4]


def test_record_has_every_key_and_the_gain_is_the_difference() -> None:
    features, labels = _blobs(30, 2, separation=3.0)
    noise = np.random.default_rng(2).normal(size=features.shape)
    record = probe_record(features, noise, labels, None, mask_grid=(6, 6))
    assert record["mask_grid"] == [6, 6] and record["num_images"] == 60 and record["num_classes"] == 2
    for who in ("encoder", "random_init"):
        for probe in ("linear", "knn"):
            for metric in ("accuracy", "balanced_accuracy"):
                assert 0.0 <= record[who][probe][metric] <= 1.0
    for probe in ("linear", "knn"):
        gain = record["gain"][probe]["balanced_accuracy"]
        expected = record["encoder"][probe]["balanced_accuracy"] - record["random_init"][probe]["balanced_accuracy"]
        assert gain == pytest.approx(expected) and gain > 0.2


def test_encoder_features_pool_the_final_map_and_leave_the_model_as_it_was() -> None:
    torch.manual_seed(0)
    encoder = timm.create_model("convnext_atto", num_classes=0).train()
    images = [(torch.rand(3, 32, 32), 0) for _ in range(5)]
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    features = encoder_features(encoder, images, batch_size=2)
    assert features.shape == (5, encoder.num_features) and features.dtype == np.float64
    assert encoder.training  # mode restored
    with torch.no_grad():
        expected = encoder.eval().forward_features(torch.stack([x for x, _ in images])).mean(dim=(-2, -1))
    np.testing.assert_allclose(features, expected.double().numpy(), rtol=1e-5, atol=1e-6)
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_refreshed_batchnorm_statistics_are_those_of_the_images_and_the_encoder_is_not_changed() -> None:
    torch.manual_seed(0)
    encoder = timm.create_model("convnext_atto", num_classes=0, conv_mlp=True, norm_layer=torch.nn.BatchNorm2d)
    with torch.no_grad():  # statistics far from those of the images, as after masked pre-training
        for module in encoder.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.fill_(3.0)
                module.running_var.fill_(0.01)
    images = [(torch.rand(3, 32, 32), 0) for _ in range(6)]
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    stale = encoder_features(encoder, images, batch_size=3)
    fresh = encoder_features(encoder, images, batch_size=3, refresh_batchnorm=True)
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, before[key]), key
    stem_norm = encoder.stem[1]
    reference = timm.create_model("convnext_atto", num_classes=0, conv_mlp=True, norm_layer=torch.nn.BatchNorm2d)
    reference.load_state_dict(before)
    from medens.engine import recompute_batchnorm_statistics

    class Features(torch.nn.Module):
        def forward(self, x):
            return reference.forward_features(x)

    wrapper = Features()
    wrapper.add_module("reference", reference)
    recompute_batchnorm_statistics(wrapper, images, batch_size=3)
    assert not torch.equal(reference.stem[1].running_mean, stem_norm.running_mean)
    with torch.no_grad():
        expected = reference.eval().forward_features(torch.stack([x for x, _ in images])).mean(dim=(-2, -1))
    np.testing.assert_allclose(fresh, expected.double().numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(fresh, stale)
