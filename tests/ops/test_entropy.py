"""patch_entropy: compiled backends against the reference, and its argument checks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medens.ops import patch_entropy
from medens.ops import reference as R

from .helpers import CPU_BACKENDS, IMAGE_DTYPES, bin_edge_images, random_images, run_python, smooth_images

# Entropies are sums of a few hundred terms: the kernels add float32 terms (at most eight in float32, the rest in
# float64), the reference sums in float32.
ATOL = 1e-4

SHAPES = [  # (B, C, H, W), p
    ((1, 1, 1, 1), 1),
    ((3, 3, 7, 5), 1),
    ((2, 1, 12, 20), 4),
    ((5, 3, 32, 48), 16),
    ((1, 3, 64, 64), 32),
    ((2, 3, 24, 24), 24),  # p = H = W: one patch per image
    ((4, 1, 30, 45), 15),
    ((2, 3, 40, 60), 20),  # rows of 60 pixels: AVX-512 steps of 16 end in a masked step of 12
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", IMAGE_DTYPES, ids=str)
@pytest.mark.parametrize(("shape", "p"), SHAPES, ids=str)
def test_matches_reference(backend, dtype, shape, p):
    images = random_images(shape, dtype)
    expected = R.patch_entropy(images, p)
    got = patch_entropy(images, p, backend=backend)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("dtype", IMAGE_DTYPES, ids=str)
def test_any_strides(backend, layout, dtype):
    images = random_images((3, 3, 16, 24), dtype, layout=layout)
    torch.testing.assert_close(patch_entropy(images, 8, backend=backend),
                               R.patch_entropy(images.contiguous(), 8), atol=ATOL, rtol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", IMAGE_DTYPES, ids=str)
@pytest.mark.parametrize("p", [8, 16, 32])
def test_flat_images_with_repeated_levels(backend, dtype, p):
    # Few levels per patch: counts above 63, which the AVX-512 sweep gathers instead of reading from registers.
    images = smooth_images((4, 3, 64, 64), dtype)
    torch.testing.assert_close(patch_entropy(images, p, backend=backend), R.patch_entropy(images, p),
                               atol=ATOL, rtol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(("bins", "value_range"), [(2, None), (7, (0.25, 0.8)), (300, (-1.0, 2.0)),
                                                    (4096, None), (64, (0.0, 0.5))])
def test_bins_and_value_ranges(backend, bins, value_range):
    images = torch.rand(2, 3, 16, 16) * 1.4 - 0.2  # some values outside the range: clamped
    expected = R.patch_entropy(images, 8, bins=bins, value_range=value_range)
    got = patch_entropy(images, 8, bins=bins, value_range=value_range, backend=backend)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("value_range", [(0.0, 1.0), (0.5, 0.75), (0.45, 0.55)], ids=["unit", "pow2", "divide"])
@pytest.mark.parametrize("p", [16, 32])
def test_grey_levels_at_bin_edges_bin_like_the_reference(backend, value_range, p):
    # Grey levels on and a few floats either side of every one of 256 bin edges, in grey RGB images (R = G = B):
    # any difference in rounding (the grey level, the scaling to bins) moves pixels to the neighbouring bin and
    # changes the entropies by far more than the tolerance. One case per way the float32 RGB path scales a level.
    images = bin_edge_images((3, 3, 2 * p, 2 * p), value_range)
    expected = R.patch_entropy(images, p, value_range=value_range)
    torch.testing.assert_close(patch_entropy(images, p, value_range=value_range, backend=backend), expected,
                               atol=ATOL, rtol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_nan_and_inf_pixels_are_binned_like_the_reference(backend):
    images = torch.rand(2, 1, 8, 8)
    images[0, 0, 0, :3] = float("nan")
    images[1, 0, 5, 5] = float("inf")
    images[1, 0, 6, 6] = -float("inf")
    torch.testing.assert_close(patch_entropy(images, 4, backend=backend), R.patch_entropy(images, 4),
                               atol=ATOL, rtol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_known_values(backend):
    levels = torch.arange(256, dtype=torch.uint8).repeat(4).reshape(1, 1, 32, 32)
    assert patch_entropy(levels, 32, backend=backend).item() == pytest.approx(8.0, abs=1e-6)
    for p in (4, 16, 32):  # more bins than pixels, about as many, fewer
        constant = torch.full((1, 3, 2 * p, 2 * p), 0.3)
        assert torch.equal(patch_entropy(constant, p, backend=backend), torch.zeros(1, 4))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
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
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
for p in (16, 32):
    assert torch.equal(patch_entropy(torch.full((1, 3, 2 * p, 2 * p), 0.3), p, backend="cpp"), torch.zeros(1, 4))
for lo, hi in ((0.0, 1.0), (0.5, 0.75), (0.45, 0.55)):  # grey levels on and beside every bin edge
    edges = torch.tensor([lo + (hi - lo) * k / 256 for k in range(256)], dtype=torch.float32)
    levels = torch.cat([edges, torch.nextafter(edges, torch.tensor(2.0)), torch.nextafter(edges, torch.tensor(-1.0))])
    images = levels.repeat(4)[: 3 * 32 * 32].reshape(3, 1, 32, 32).expand(3, 3, 32, 32).contiguous()
    torch.testing.assert_close(patch_entropy(images, 16, value_range=(lo, hi), backend="cpp"),
                               R.patch_entropy(images, 16, value_range=(lo, hi)), atol=1e-4, rtol=0)
print("checked", len(cases))
"""


@pytest.mark.skipif(not CPU_BACKENDS, reason="medens._C (the cpp backend) is not built")
def test_portable_loops_match_the_reference(tmp_path):
    result = run_python(PORTABLE_CHECK, tmp_path, MEDENS_DISABLE_AVX512="1")
    assert result.returncode == 0, result.stderr
    assert "checked 8" in result.stdout


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 3), c=st.sampled_from([1, 3]), hp=st.integers(1, 4), wp=st.integers(1, 4),
    p=st.integers(1, 20), bins=st.integers(2, 600), dtype=st.sampled_from(IMAGE_DTYPES),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_matches_reference(b, c, hp, wp, p, bins, dtype, seed):
    if not CPU_BACKENDS:
        pytest.skip("medens._C is not built")
    g = torch.Generator().manual_seed(seed)
    images = random_images((b, c, hp * p, wp * p), dtype, generator=g)
    torch.testing.assert_close(patch_entropy(images, p, bins=bins, backend=CPU_BACKENDS[0]),
                               R.patch_entropy(images, p, bins=bins), atol=ATOL, rtol=0)


@pytest.mark.parametrize("backend", ["reference", *CPU_BACKENDS])
def test_auto_and_explicit_backends_agree(backend):
    images = random_images((2, 3, 32, 32), torch.float32)
    torch.testing.assert_close(patch_entropy(images, 16), patch_entropy(images, 16, backend=backend),
                               atol=ATOL, rtol=0)


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
