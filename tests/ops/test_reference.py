"""The reference against cases whose answers are known."""

from __future__ import annotations

import math

import pytest
import torch

from medens.ops import reference as R


def test_constant_patch_has_zero_entropy():
    images = torch.full((2, 1, 16, 16), 0.5)
    assert torch.equal(R.patch_entropy(images, 8), torch.zeros(2, 4))


def test_patch_with_every_grey_level_equally_often_has_entropy_8():
    levels = torch.arange(256, dtype=torch.uint8).repeat(4).reshape(1, 1, 32, 32)  # each level 4 times
    assert R.patch_entropy(levels, 32).item() == pytest.approx(8.0, abs=1e-6)


def test_two_equal_halves_give_one_bit():
    images = torch.zeros(1, 1, 4, 4)
    images[..., 2:] = 0.9
    assert R.patch_entropy(images, 4).item() == pytest.approx(1.0, abs=1e-6)


def test_uint8_default_bins_are_the_grey_levels_themselves():
    levels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    bins = R.grey_bins(R.grey_levels(levels), 256, R.default_value_range(torch.uint8))
    assert torch.equal(bins.flatten(), torch.arange(256))


def test_binning_clamps_and_sends_nan_to_bin_zero():
    grey = torch.tensor([-1.0, 0.0, 0.5, 0.999, 1.0, 7.0, float("nan"), float("inf"), -float("inf")])
    assert R.grey_bins(grey, 4, (0.0, 1.0)).tolist() == [0, 0, 2, 3, 3, 3, 0, 3, 0]


def test_binning_constants_are_float32_rounded_as_torch_rounds_them():
    generator = torch.Generator().manual_seed(3)
    values = torch.randn(2000, 2, generator=generator, dtype=torch.float64) * 10.0 ** torch.randint(
        -38, 39, (2000, 2), generator=generator)
    ranges = [tuple(v) for v in values.tolist()] + [(0.0, 1.0), (0.1, 0.7), (-1e39, 1e39), (1e-30, 3.4e38)]
    for lo, hi in ranges:
        lo32, hi32 = torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32)
        expected = (float(lo32), float(hi32 - lo32))
        assert R.binning_constants((lo, hi)) == pytest.approx(expected, rel=0, abs=0, nan_ok=True), (lo, hi)


def test_rgb_grey_level_uses_bt601_weights():
    pixel = torch.tensor([0.2, 0.4, 0.6]).reshape(1, 3, 1, 1)
    expected = 0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6
    assert R.grey_levels(pixel).item() == pytest.approx(expected, rel=1e-6)


def test_temperature_zero_hides_exactly_the_top_scored_patches():
    scores = torch.tensor([[0.1, 5.0, 3.0, 0.2, 4.0, 0.0]])
    m = R.entropy_guided_mask(scores, 0.5, temperature=0)
    assert m.ids_mask.tolist() == [[1, 2, 4]]
    assert m.ids_keep.tolist() == [[0, 3, 5]]
    low = R.entropy_guided_mask(scores, 0.5, temperature=0, prefer="low")
    assert low.ids_mask.tolist() == [[0, 3, 5]]


def test_temperature_zero_ties_go_to_the_lower_index():
    scores = torch.ones(1, 6)
    assert R.entropy_guided_mask(scores, 0.5, temperature=0).ids_mask.tolist() == [[0, 1, 2]]
    assert R.entropy_guided_mask(scores, 0.5, temperature=0, prefer="low").ids_mask.tolist() == [[0, 1, 2]]


def test_ids_restore_inverts_the_shuffle():
    scores = torch.rand(3, 49)
    m = R.entropy_guided_mask(scores, 0.75, generator=torch.Generator().manual_seed(1))
    shuffled = torch.cat([m.ids_keep, m.ids_mask], dim=1)
    assert torch.equal(torch.gather(shuffled, 1, m.ids_restore), torch.arange(49).expand(3, 49))
    assert m.ids_keep.shape == (3, R.num_visible(49, 0.75)) == (3, 12)
    assert torch.equal(m.mask.sum(1), torch.full((3,), 37))


def test_infinite_temperature_ignores_scores():
    noise = torch.rand(2, 20)
    a = R.entropy_guided_mask(torch.rand(2, 20), 0.5, temperature=math.inf, noise=noise)
    b = R.entropy_guided_mask(torch.rand(2, 20) * 100, 0.5, temperature=math.inf, noise=noise)
    assert torch.equal(a.mask, b.mask)


def test_gumbel_top_k_draws_in_proportion_to_the_weights():
    # One hidden patch of two: P(hide patch 1) = w1 / (w0 + w1) with w = (score + 1e-6) ** (1 / T).
    scores = torch.tensor([[1.0, 3.0]]).expand(20000, 2)
    m = R.entropy_guided_mask(scores, 0.5, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert m.mask[:, 1].float().mean().item() == pytest.approx(0.75, abs=0.015)
    m = R.entropy_guided_mask(scores, 0.5, temperature=0.5, generator=torch.Generator().manual_seed(0))
    assert m.mask[:, 1].float().mean().item() == pytest.approx(0.9, abs=0.01)
    m = R.entropy_guided_mask(scores, 0.5, temperature=1.0, prefer="low", generator=torch.Generator().manual_seed(0))
    assert m.mask[:, 1].float().mean().item() == pytest.approx(0.25, abs=0.015)


def test_patchify_matches_mae_layout_and_unpatchify_inverts_it():
    images = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    patches = R.patchify(images, 2)
    assert patches.shape == (2, 6, 12)
    # patch (row 0, col 1), pixel (py=1, px=0), channel 2
    assert patches[1, 1, (1 * 2 + 0) * 3 + 2] == images[1, 2, 1, 2]
    assert torch.equal(R.unpatchify(patches, 2, 4, 6), images)


def test_gather_normalized_has_zero_mean_unit_variance():
    images = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    out = R.gather_patches(images, torch.tensor([[0, 3], [2, 1]]), 4, normalize=True, eps=0.0)
    assert torch.allclose(out.mean(-1), torch.zeros(2, 2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(out.var(-1), torch.ones(2, 2, dtype=torch.float64), atol=1e-12)


def test_reference_backward_matches_autograd():
    images = torch.rand(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([[0, 3, 3], [2, 1, 0]])  # a repeated id accumulates
    grad = torch.randn(2, 3, 48, dtype=torch.float64)
    for normalize in (False, True):
        out = R.gather_patches(images, ids, 4, normalize=normalize)
        (expected,) = torch.autograd.grad(out, images, grad)
        got = R.gather_patches_backward(grad, images.detach(), ids, 4, normalize=normalize)
        assert torch.allclose(got, expected, atol=1e-12)


def test_apply_patch_mask_fills_hidden_patches_only():
    images = torch.rand(1, 3, 4, 4)
    mask = torch.tensor([[True, False, False, True]])
    out = R.apply_patch_mask(images, mask, 2, fill=-1.0)
    assert (out[..., :2, :2] == -1).all() and (out[..., 2:, 2:] == -1).all()
    assert torch.equal(out[..., :2, 2:], images[..., :2, 2:])
    assert torch.equal(out[..., 2:, :2], images[..., 2:, :2])
