"""patch_entropy: the reference against known answers, every backend against the reference, its argument checks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medens.ops import available_backends, patch_entropy
from medens.ops import reference as R

from .helpers import (
    IMAGE_DTYPES,
    KERNELS,
    backend_cases,
    backends,
    bin_edge_images,
    device_of,
    on,
    random_images,
    run_python,
    smooth_images,
    tol,
    why_skipped,
)

# ---- the reference against cases whose answers are known ----------------------------------------------------------


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


# ---- every backend against the reference ---------------------------------------------------------------------------
# The interpreted Triton kernels run one program at a time: their cases are small; "gpu" cases run on a CUDA device.

SHAPES = {  # (B, C, H, W), p
    "cpp": [
        ((1, 1, 1, 1), 1),
        ((3, 3, 7, 5), 1),
        ((2, 1, 12, 20), 4),
        ((5, 3, 32, 48), 16),
        ((1, 3, 64, 64), 32),
        ((2, 3, 24, 24), 24),  # p = H = W: one patch per image
        ((4, 1, 30, 45), 15),
        ((2, 3, 40, 60), 20),  # rows of 60 pixels: AVX-512 steps of 16 end in a masked step of 12
    ],
    "triton": [((2, 3, 32, 48), 16), ((3, 1, 7, 5), 1), ((2, 3, 15, 10), 5), ((1, 1, 24, 24), 24),
               ((2, 1, 24, 48), 24)],
    "gpu": [((4, 3, 224, 224), 16), ((3, 1, 7, 5), 1), ((2, 3, 15, 10), 5), ((2, 3, 64, 64), 32),
            ((2, 1, 24, 48), 24)],
}


@pytest.mark.parametrize("dtype", IMAGE_DTYPES, ids=str)
@pytest.mark.parametrize(("backend", "shape", "p"), backend_cases(SHAPES))
def test_matches_reference(backend, dtype, shape, p):
    images = random_images(shape, dtype)
    expected = R.patch_entropy(images, p)
    got = patch_entropy(on(backend, images), p, backend=backend)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert got.device.type == device_of(backend).type
    torch.testing.assert_close(got.cpu(), expected, **tol("entropy"))
    if got.is_cuda and available_backends()["cpp"]:  # the same bins and float64 sums as the CPU kernels
        torch.testing.assert_close(got.cpu(), patch_entropy(images, p, backend="cpp"),
                                   **tol("entropy_between_kernels"))


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize(("backend", "dtype", "shape"), backend_cases({
    "cpp": [(dtype, (3, 3, 16, 24)) for dtype in IMAGE_DTYPES],
    "triton": [(torch.float32, (2, 3, 16, 24))],
}))
def test_any_strides(backend, layout, dtype, shape):
    images = random_images(shape, dtype, layout=layout)
    torch.testing.assert_close(patch_entropy(on(backend, images), 8, backend=backend).cpu(),
                               R.patch_entropy(images.contiguous(), 8), **tol("entropy"))


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize(("bins", "value_range"), [(256, None), (7, (0.25, 0.8)), (4096, None)])
@pytest.mark.parametrize("backend", backends("cuda", "triton", gpu_only=True))
def test_strides_bins_and_ranges_on_a_gpu(backend, layout, bins, value_range):
    images = random_images((3, 3, 32, 48), torch.float32, layout=layout) * 1.4 - 0.2
    got = patch_entropy(on(backend, images), 8, bins=bins, value_range=value_range, backend=backend)
    torch.testing.assert_close(got.cpu(), R.patch_entropy(images, 8, bins=bins, value_range=value_range),
                               **tol("entropy"))


@pytest.mark.parametrize(("backend", "dtype", "shape", "p"), backend_cases({
    "cpp": [(dtype, (4, 3, 64, 64), p) for dtype in IMAGE_DTYPES for p in (8, 16, 32)],
    "triton": [(dtype, (2, 3, 32, 32), 8) for dtype in (torch.uint8, torch.float32)],
}))
def test_flat_images_with_repeated_levels(backend, dtype, shape, p):
    # Few levels per patch: counts above 63, which the AVX-512 sweep gathers instead of reading from registers.
    images = smooth_images(shape, dtype)
    torch.testing.assert_close(patch_entropy(on(backend, images), p, backend=backend).cpu(),
                               R.patch_entropy(images, p), **tol("entropy"))


@pytest.mark.parametrize("backend", backends(*KERNELS))
@pytest.mark.parametrize(("bins", "value_range"), [(2, None), (7, (0.25, 0.8)), (300, (-1.0, 2.0)),
                                                    (4096, None), (64, (0.0, 0.5)), (256, (-2.0, 2.0))])
def test_bins_and_value_ranges(backend, bins, value_range):
    images = torch.rand(2, 3, 16, 16) * 1.4 - 0.2  # some values outside the range: clamped to the end bins
    expected = R.patch_entropy(images, 8, bins=bins, value_range=value_range)
    got = patch_entropy(on(backend, images), 8, bins=bins, value_range=value_range, backend=backend)
    torch.testing.assert_close(got.cpu(), expected, **tol("entropy"))


EDGE_RANGES = {"unit": (0.0, 1.0), "pow2": (0.5, 0.75), "divide": (0.45, 0.55)}


@pytest.mark.parametrize(("backend", "value_range", "p", "steps"), backend_cases({
    "cpp": [(r, p, 4) for r in EDGE_RANGES.values() for p in (16, 32)],
    "triton": [(r, 8, 1) for r in EDGE_RANGES.values()],  # 768 levels: each edge and its neighbours
    "gpu": [(r, p, 4) for r in EDGE_RANGES.values() for p in (16, 32)],
}))
def test_grey_levels_at_bin_edges_bin_like_the_reference(backend, value_range, p, steps):
    # Grey levels on and a few floats either side of every one of 256 bin edges, in grey RGB images (R = G = B):
    # any difference in rounding (the grey level, the scaling to bins) moves pixels to the neighbouring bin and
    # changes the entropies by far more than the tolerance. One case per way the float32 RGB path scales a level.
    images = bin_edge_images((3, 3, 2 * p, 2 * p), value_range, steps=steps)
    expected = R.patch_entropy(images, p, value_range=value_range)
    got = patch_entropy(on(backend, images), p, value_range=value_range, backend=backend)
    torch.testing.assert_close(got.cpu(), expected, **tol("entropy"))


@pytest.mark.parametrize("backend", backends(*KERNELS))
@pytest.mark.parametrize("bins", [256, 255, 100])
def test_bins_of_8_bit_levels_as_floats(backend, bins):
    # Every 8-bit level as a float (k / 255) in each channel: many grey levels fall within an ulp of a bin edge,
    # where a fused multiply-add or an approximate division would move a pixel into the next bin (and change a
    # 16 x 16 patch's entropy by far more than the tolerance).
    levels = torch.arange(256, dtype=torch.float32) / 255
    images = torch.stack([levels, levels.flip(0), levels.roll(7)]).reshape(1, 3, 16, 16)
    images = torch.cat([images, images.roll(1, dims=1), images[:, :1].expand(1, 3, 16, 16)])
    got = patch_entropy(on(backend, images), 16, bins=bins, backend=backend)
    torch.testing.assert_close(got.cpu(), R.patch_entropy(images, 16, bins=bins), **tol("entropy"))


@pytest.mark.parametrize("backend", backends(*KERNELS))
def test_nan_and_inf_pixels_are_binned_like_the_reference(backend):
    images = torch.rand(2, 1, 8, 8)
    images[0, 0, 0, :3] = float("nan")
    images[1, 0, 5, 5] = float("inf")
    images[1, 0, 6, 6] = -float("inf")
    torch.testing.assert_close(patch_entropy(on(backend, images), 4, backend=backend).cpu(),
                               R.patch_entropy(images, 4), **tol("entropy"))


@pytest.mark.parametrize("backend", backends(*KERNELS))
def test_known_values(backend):
    levels = torch.arange(256, dtype=torch.uint8).repeat(4).reshape(1, 1, 32, 32)
    assert patch_entropy(on(backend, levels), 32, backend=backend).item() == pytest.approx(8.0, abs=1e-6)
    for p in (4, 16, 32):  # more bins than pixels, about as many, fewer
        constant = torch.full((1, 3, 2 * p, 2 * p), 0.3)
        assert torch.equal(patch_entropy(on(backend, constant), p, backend=backend).cpu(), torch.zeros(1, 4))


@pytest.mark.parametrize("backend", backends("cpp"))
def test_rgb_grey_levels_round_like_the_reference(backend):
    # Equal entropies need equal bins: with 4096 bins over a narrow range, any difference in the rounding of
    # 0.299 R + 0.587 G + 0.114 B would move pixels to neighbouring bins.
    images = torch.rand(8, 3, 16, 16)
    expected = R.patch_entropy(images, 1, bins=4096, value_range=(0.45, 0.55))
    assert torch.equal(patch_entropy(images, 1, bins=4096, value_range=(0.45, 0.55), backend=backend), expected)
    grey = R.grey_levels(images)
    bins = R.grey_bins(grey, 4096, (0.45, 0.55))
    counts = torch.bincount(bins.flatten(), minlength=4096)
    assert counts[1:-1].sum() > 0  # the narrow range is really exercised


# Every case of the portable loops that the AVX-512 kernels replace on this machine: p = 16 and 32 and others, the
# default, power-of-two and other value ranges, byte and 16-bit bins, a masked last step, flat patches.
PORTABLE_CHECK = """
import torch
from medens.ops import build_info, patch_entropy
from medens.ops import reference as R
assert build_info()["cpu_avx512"] is False
g = torch.Generator().manual_seed(0)
cases = [((3, 3, 64, 96), 16, 256, None), ((2, 3, 64, 64), 32, 256, None), ((2, 3, 40, 60), 20, 256, None),
         ((2, 3, 32, 32), 8, 64, (0.0, 0.5)), ((2, 3, 32, 32), 8, 7, (0.25, 0.8)), ((2, 1, 32, 48), 16, 256, None),
         ((2, 3, 32, 32), 32, 300, (-1.0, 2.0)), ((2, 3, 16, 16), 4, 256, None)]
for (b, c, h, w), p, bins, value_range in cases:
    coarse = torch.randint(0, 12, (b, 1, h // 4, w // 4), generator=g) / 12
    flat = torch.nn.functional.interpolate(coarse, size=(h, w), mode="nearest").expand(b, c, h, w).contiguous()
    for images in (torch.rand(b, c, h, w, generator=g), flat):
        got = patch_entropy(images, p, bins=bins, value_range=value_range, backend="cpp")
        expected = R.patch_entropy(images, p, bins=bins, value_range=value_range)
        torch.testing.assert_close(got, expected, **TOL)
for p in (16, 32):
    assert torch.equal(patch_entropy(torch.full((1, 3, 2 * p, 2 * p), 0.3), p, backend="cpp"), torch.zeros(1, 4))
for lo, hi in ((0.0, 1.0), (0.5, 0.75), (0.45, 0.55)):  # grey levels on and beside every bin edge
    edges = torch.tensor([lo + (hi - lo) * k / 256 for k in range(256)], dtype=torch.float32)
    levels = torch.cat([edges, torch.nextafter(edges, torch.tensor(2.0)), torch.nextafter(edges, torch.tensor(-1.0))])
    images = levels.repeat(4)[: 3 * 32 * 32].reshape(3, 1, 32, 32).expand(3, 3, 32, 32).contiguous()
    torch.testing.assert_close(patch_entropy(images, 16, value_range=(lo, hi), backend="cpp"),
                               R.patch_entropy(images, 16, value_range=(lo, hi)), **TOL)
print("checked", len(cases))
"""


@pytest.mark.skipif(why_skipped("cpp") is not None, reason=why_skipped("cpp") or "")
def test_portable_loops_match_the_reference(tmp_path):
    result = run_python(f"TOL = {tol('entropy')!r}\n{PORTABLE_CHECK}", tmp_path, MEDENS_DISABLE_AVX512="1")
    assert result.returncode == 0, result.stderr
    assert "checked 8" in result.stdout


@pytest.mark.parametrize("backend", backends("cpp"))
@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 3), c=st.sampled_from([1, 3]), hp=st.integers(1, 4), wp=st.integers(1, 4),
    p=st.integers(1, 20), bins=st.integers(2, 600), dtype=st.sampled_from(IMAGE_DTYPES),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_matches_reference(backend, b, c, hp, wp, p, bins, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    images = random_images((b, c, hp * p, wp * p), dtype, generator=g)
    torch.testing.assert_close(patch_entropy(images, p, bins=bins, backend=backend),
                               R.patch_entropy(images, p, bins=bins), **tol("entropy"))


@pytest.mark.parametrize("backend", backends("reference", "cpp"))
def test_auto_and_explicit_backends_agree(backend):
    images = random_images((2, 3, 32, 32), torch.float32)
    torch.testing.assert_close(patch_entropy(images, 16), patch_entropy(images, 16, backend=backend),
                               **tol("entropy"))


# ---- bad input ----------------------------------------------------------------------------------------------------

BAD_CALLS = [
    (lambda: patch_entropy(torch.rand(3, 16, 16), 8), ValueError, "images must have 4 dimensions"),
    (lambda: patch_entropy(torch.rand(1, 2, 16, 16), 8), ValueError, "C in"),
    (lambda: patch_entropy(torch.rand(1, 3, 16, 12), 8), ValueError, "multiples of patch_size"),
    (lambda: patch_entropy(torch.rand(1, 3, 16, 16), 0), ValueError, "patch_size must be >= 1"),
    (lambda: patch_entropy(torch.rand(1, 3, 16, 16), 2.5), TypeError, "patch_size must be an int"),
    (lambda: patch_entropy(torch.rand(1, 3, 16, 16), 8, bins=1), ValueError, r"bins must be in \[2, 4096\]"),
    (lambda: patch_entropy(torch.rand(1, 3, 16, 16), 8, bins=5000), ValueError, "bins must be in"),
    (lambda: patch_entropy(torch.rand(1, 3, 16, 16), 8, value_range=(1.0, 1.0)), ValueError, "lo < hi"),
    (lambda: patch_entropy(torch.rand(1, 3, 16, 16), 8, value_range=(2.0, 1.0)), ValueError, "lo < hi"),
    (lambda: patch_entropy(torch.rand(1, 3, 16, 16), 8, value_range=1.0), TypeError, "value_range"),
    (lambda: patch_entropy(torch.zeros(1, 3, 16, 16, dtype=torch.int32), 8), TypeError, "dtype"),
    (lambda: patch_entropy(torch.zeros(1, 3, 16, 16, dtype=torch.float64), 8), TypeError, "dtype"),
    (lambda: patch_entropy([[1.0]], 8), TypeError, "torch.Tensor"),
    (lambda: patch_entropy(torch.rand(1, 3, 16, 16), 8, backend="fast"), ValueError, "backend must be one of"),
]


@pytest.mark.parametrize(("call", "error", "message"), BAD_CALLS)
def test_bad_input_is_refused_with_a_clear_message(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_unavailable_backend_raises_runtime_error_saying_why():
    images = torch.rand(1, 3, 16, 16)
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run here"):
        patch_entropy(images, 8, backend="cuda")


def test_a_meta_tensor_is_refused_by_name():
    # It has a shape but no values.
    with pytest.raises(ValueError, match=r"^images must be a tensor with values .*meta device"):
        patch_entropy(torch.rand(2, 3, 32, 32).to("meta"), 8)
