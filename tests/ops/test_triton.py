"""Triton kernels against the reference, on every machine.

Without a GPU they run on CPU tensors in the Triton interpreter (the root conftest sets ``TRITON_INTERPRET=1``
before Triton is imported), which executes the kernels' own code with numpy: the same float32 and float64
operations, in the same order, as the compiled kernels. With a GPU the same tests run compiled on CUDA tensors.
Sizes are kept small because the interpreter runs one program at a time.
"""

from __future__ import annotations

import math

import pytest
import torch

from medens.ops import (
    apply_patch_mask,
    available_backends,
    entropy_guided_mask,
    gather_patches,
    patch_entropy,
)
from medens.ops import reference as R

pytest.importorskip("triton")
if not available_backends()["triton"]:
    pytest.skip("the triton backend cannot run here (no CUDA device and TRITON_INTERPRET is not 1)",
                allow_module_level=True)

from medens.kernels.triton import masking as triton_masking  # noqa: E402
from medens.kernels.triton import patches as triton_patches  # noqa: E402

from medens.ops import _triton  # noqa: E402

from .helpers import (  # noqa: E402
    FLOAT_DTYPES,
    IMAGE_DTYPES,
    assert_same_mask,
    bin_edge_images,
    random_images,
    smooth_images,
)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BACKEND = "triton"

# Entropies: float64 sums in the kernel, float32 in the reference (as for the other backends).
ENTROPY_ATOL = 1e-4
# Normalised patches: float64 statistics in the kernel, float32 in the reference; about one ulp of the dtype.
NORMALIZED_TOL = {
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float64: dict(atol=1e-12, rtol=1e-12),
}


def on_device(*tensors: torch.Tensor):
    moved = tuple(t.to(DEVICE) for t in tensors)
    return moved if len(moved) > 1 else moved[0]


# ---- patch_entropy -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", IMAGE_DTYPES, ids=str)
@pytest.mark.parametrize(("shape", "p"), [((2, 3, 32, 48), 16), ((3, 1, 7, 5), 1), ((2, 3, 15, 10), 5),
                                          ((1, 1, 24, 24), 24), ((2, 1, 24, 48), 24)], ids=str)
def test_entropy_matches_reference(dtype, shape, p):
    images = random_images(shape, dtype)
    got = patch_entropy(on_device(images), p, backend=BACKEND)
    assert got.dtype == torch.float32 and got.device.type == DEVICE.type
    torch.testing.assert_close(got.cpu(), R.patch_entropy(images, p), atol=ENTROPY_ATOL, rtol=0)


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_entropy_any_strides(layout):
    images = random_images((2, 3, 16, 24), torch.float32, layout=layout)
    torch.testing.assert_close(patch_entropy(on_device(images), 8, backend=BACKEND).cpu(),
                               R.patch_entropy(images.contiguous(), 8), atol=ENTROPY_ATOL, rtol=0)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32], ids=str)
def test_entropy_flat_images_with_repeated_levels(dtype):
    images = smooth_images((2, 3, 32, 32), dtype)
    torch.testing.assert_close(patch_entropy(on_device(images), 8, backend=BACKEND).cpu(),
                               R.patch_entropy(images, 8), atol=ENTROPY_ATOL, rtol=0)


@pytest.mark.parametrize(("bins", "value_range"), [(2, None), (7, (0.25, 0.8)), (300, (-1.0, 2.0)), (4096, None),
                                                    (64, (0.0, 0.5)), (256, (-2.0, 2.0))])
def test_entropy_bins_and_value_ranges(bins, value_range):
    images = torch.rand(2, 3, 16, 16) * 1.4 - 0.2  # values outside the range land in the end bins
    got = patch_entropy(on_device(images), 8, bins=bins, value_range=value_range, backend=BACKEND)
    torch.testing.assert_close(got.cpu(), R.patch_entropy(images, 8, bins=bins, value_range=value_range),
                               atol=ENTROPY_ATOL, rtol=0)


@pytest.mark.parametrize("value_range", [(0.0, 1.0), (0.5, 0.75), (0.45, 0.55)], ids=["unit", "pow2", "divide"])
def test_entropy_grey_levels_at_bin_edges(value_range):
    images = bin_edge_images((3, 3, 16, 16), value_range, steps=1)  # 768 levels: each edge and its neighbours
    got = patch_entropy(on_device(images), 8, value_range=value_range, backend=BACKEND)
    torch.testing.assert_close(got.cpu(), R.patch_entropy(images, 8, value_range=value_range),
                               atol=ENTROPY_ATOL, rtol=0)


def test_entropy_nan_and_inf_pixels():
    images = torch.rand(2, 1, 8, 8)
    images[0, 0, 0, :3] = float("nan")
    images[1, 0, 5, 5] = float("inf")
    images[1, 0, 6, 6] = -float("inf")
    torch.testing.assert_close(patch_entropy(on_device(images), 4, backend=BACKEND).cpu(),
                               R.patch_entropy(images, 4), atol=ENTROPY_ATOL, rtol=0)


@pytest.mark.parametrize("bins", [256, 255, 100])
def test_entropy_bins_of_levels_on_bin_edges(bins):
    # Every 8-bit level as a float (k / 255) in each channel: many grey levels fall within an ulp of a bin edge,
    # where a fused multiply-add or an approximate division would move a pixel into the next bin (and change a
    # 16 x 16 patch's entropy by far more than the tolerance).
    levels = torch.arange(256, dtype=torch.float32) / 255
    images = torch.stack([levels, levels.flip(0), levels.roll(7)]).reshape(1, 3, 16, 16)
    images = torch.cat([images, images.roll(1, dims=1), images[:, :1].expand(1, 3, 16, 16)])
    got = patch_entropy(on_device(images), 16, bins=bins, backend=BACKEND)
    torch.testing.assert_close(got.cpu(), R.patch_entropy(images, 16, bins=bins), atol=ENTROPY_ATOL, rtol=0)


# ---- entropy_guided_mask -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.0, 0.1, 1.0, math.inf])
@pytest.mark.parametrize("prefer", ["high", "low"])
@pytest.mark.parametrize(("b", "n", "ratio"), [(1, 1, 0.0), (3, 7, 0.5), (4, 196, 0.75), (2, 300, 0.9)])
def test_mask_identical_to_reference(temperature, prefer, b, n, ratio):
    scores = torch.rand(b, n) * 8
    noise = torch.rand(b, n)
    expected = R.entropy_guided_mask(scores, ratio, temperature=temperature, prefer=prefer, noise=noise)
    got = entropy_guided_mask(on_device(scores), ratio, temperature=temperature, prefer=prefer,
                              noise=on_device(noise), backend=BACKEND)
    assert_same_mask(got, expected)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_mask_every_score_and_noise_dtype(dtype, temperature):
    scores = (torch.rand(3, 50) * 8).to(dtype)
    noise = torch.rand(3, 50).clamp(1e-3, 1 - 1e-3).to(dtype)
    expected = R.entropy_guided_mask(scores, 0.6, temperature=temperature, noise=noise)
    got = entropy_guided_mask(on_device(scores), 0.6, temperature=temperature, noise=on_device(noise),
                              backend=BACKEND)
    assert_same_mask(got, expected)


@pytest.mark.parametrize("prefer", ["high", "low"])
def test_mask_ties_go_to_the_lower_index(prefer):
    scores = torch.tensor([[1.0, 2.0, 2.0, 1.0, 2.0, 1.0, 0.0, -0.0]]).abs().repeat(2, 1)
    scores[1, 7] = -0.0  # -0.0 and +0.0 tie
    expected = R.entropy_guided_mask(scores.abs(), 0.5, temperature=0, prefer=prefer)
    got = entropy_guided_mask(on_device(scores), 0.5, temperature=0, prefer=prefer, backend=BACKEND)
    assert_same_mask(got, expected)


def test_mask_equal_noise_and_extreme_noise():
    scores = torch.ones(2, 10)
    noise = torch.full((2, 10), 0.5)
    noise[1, 3] = 0.0  # key -inf: kept
    noise[1, 4] = 1.0  # key +inf: hidden first
    for temperature in (1.0, math.inf):
        expected = R.entropy_guided_mask(scores, 0.3, temperature=temperature, noise=noise)
        got = entropy_guided_mask(on_device(scores), 0.3, temperature=temperature, noise=on_device(noise),
                                  backend=BACKEND)
        assert_same_mask(got, expected)


def test_mask_non_contiguous_scores_and_noise():
    scores = torch.rand(40, 6).t()
    noise = torch.rand(6, 80)[:, ::2]
    expected = R.entropy_guided_mask(scores.contiguous(), 0.5, noise=noise.contiguous())
    got = entropy_guided_mask(on_device(scores), 0.5, noise=on_device(noise), backend=BACKEND)
    assert_same_mask(got, expected)


@pytest.mark.parametrize("temperature", [0.0, 2.0])
def test_mask_long_rows_take_the_sorting_path(monkeypatch, temperature):
    # Rows longer than MAX_FUSED_ROW get Triton keys and a stable torch.sort; shrink the limit to test it cheaply.
    monkeypatch.setattr(triton_masking, "MAX_FUSED_ROW", 64)
    scores = (torch.rand(3, 100) * 4).round()  # many ties
    noise = torch.rand(3, 100)
    expected = R.entropy_guided_mask(scores, 0.75, temperature=temperature, noise=noise)
    got = entropy_guided_mask(on_device(scores), 0.75, temperature=temperature, noise=on_device(noise),
                              backend=BACKEND)
    assert_same_mask(got, expected)


# ---- gather_patches ------------------------------------------------------------------------------------------------

GEOMETRIES = [  # (B, C, H, W), p, K
    ((1, 1, 1, 1), 1, 1),
    ((3, 3, 8, 12), 4, 5),
    ((2, 1, 20, 10), 5, 8),
    ((2, 3, 32, 32), 16, 3),
    ((2, 2, 12, 18), 3, 24),
]


def random_ids(b: int, n: int, k: int) -> torch.Tensor:
    return torch.stack([torch.randperm(n)[:k] for _ in range(b)]) if k <= n else torch.randint(0, n, (b, k))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize(("shape", "p", "k"), GEOMETRIES, ids=str)
def test_gather_is_exact(dtype, shape, p, k):
    images = random_images(shape, dtype)
    ids = random_ids(shape[0], (shape[2] // p) * (shape[3] // p), k)
    got = gather_patches(*on_device(images, ids), p, backend=BACKEND)
    assert torch.equal(got.cpu(), R.gather_patches(images, ids, p))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize(("shape", "p", "k"), GEOMETRIES[1:], ids=str)
def test_gather_normalized_matches_reference(dtype, shape, p, k):
    images = random_images(shape, dtype)
    ids = random_ids(shape[0], (shape[2] // p) * (shape[3] // p), k)
    got = gather_patches(*on_device(images, ids), p, normalize=True, backend=BACKEND)
    assert got.dtype == dtype
    torch.testing.assert_close(got.cpu(), R.gather_patches(images, ids, p, normalize=True), **NORMALIZED_TOL[dtype])


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("normalize", [False, True])
def test_gather_any_strides(layout, normalize):
    images = random_images((2, 3, 8, 12), torch.float32, layout=layout)
    ids = torch.tensor([[5, 0, 2], [1, 1, 4]]).t().contiguous().t()  # non-contiguous ids, repeats
    got = gather_patches(*on_device(images, ids), 4, normalize=normalize, backend=BACKEND)
    torch.testing.assert_close(got.cpu(), R.gather_patches(images.contiguous(), ids, 4, normalize=normalize),
                               **NORMALIZED_TOL[torch.float32])


@pytest.mark.parametrize("normalize", [False, True])
def test_gather_patches_larger_than_one_tile(monkeypatch, normalize):
    # A patch with more values than a program holds is processed in row tiles, one pass per statistic.
    monkeypatch.setattr(triton_patches, "TILE_ELEMENTS", 32)
    images = torch.rand(2, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([[3, 0], [1, 1]])
    got = gather_patches(*on_device(images.detach(), ids), 8, normalize=normalize, backend=BACKEND)
    expected = R.gather_patches(images, ids, 8, normalize=normalize)
    torch.testing.assert_close(got.cpu(), expected.detach(), **NORMALIZED_TOL[torch.float64])
    leaf = on_device(images.detach()).requires_grad_()
    weights = torch.randn(expected.shape, dtype=torch.float64)
    (grad,) = torch.autograd.grad((gather_patches(leaf, on_device(ids), 8, normalize=normalize, backend=BACKEND)
                                   * on_device(weights)).sum(), leaf)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), images)
    torch.testing.assert_close(grad.cpu(), expected_grad, **NORMALIZED_TOL[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("normalize", [False, True])
def test_gather_gradient_accumulates_repeated_ids(dtype, normalize):
    images = torch.rand(2, 3, 8, 12, dtype=dtype)
    ids = torch.tensor([[0, 2, 2, 5], [5, 1, 0, 5]])
    weights = torch.randn(2, 4, 48, dtype=dtype)
    leaf = on_device(images).requires_grad_()
    (grad,) = torch.autograd.grad((gather_patches(leaf, on_device(ids), 4, normalize=normalize, backend=BACKEND)
                                   * on_device(weights)).sum(), leaf)
    reference_leaf = images.clone().requires_grad_()
    (expected,) = torch.autograd.grad((R.gather_patches(reference_leaf, ids, 4, normalize=normalize) * weights).sum(),
                                      reference_leaf)
    torch.testing.assert_close(grad.cpu(), expected, **NORMALIZED_TOL[dtype])


@pytest.mark.parametrize("op", ["forward", "backward"])
def test_out_of_range_ids_stay_in_bounds_and_raise(op):
    # The public op rejects such ids before any kernel in eager mode; under torch.compile that check is not
    # traced and the kernel itself must stay in bounds and report them.
    images = on_device(torch.rand(2, 3, 8, 12))
    ids = on_device(torch.tensor([[0, 6], [-1, 2]]))
    with pytest.raises(ValueError, match="gather_patches.*out of range"):
        if op == "forward":
            _triton.gather_patches(images, ids, 4, True, 1e-6)
        else:
            _triton.gather_patches_backward(on_device(torch.rand(2, 2, 48)), images, ids, 4, True, 1e-6)


def test_out_of_range_rows_are_nan():
    images = on_device(torch.rand(1, 1, 8, 8))
    index_error = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    out = torch.empty(1, 2, 16, device=DEVICE)
    triton_patches.gather_patches(images=images, ids=on_device(torch.tensor([[1, 99]])), patch_size=4,
                                  normalize=False, eps=1e-6, out=out, index_error=index_error)
    assert index_error.item() == 1
    assert torch.equal(out[0, 0].cpu(), R.gather_patches(images.cpu(), torch.tensor([[1]]), 4)[0, 0])
    assert out[0, 1].isnan().all()


# ---- apply_patch_mask ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [*IMAGE_DTYPES, torch.float64], ids=str)
@pytest.mark.parametrize(("shape", "p"), [((2, 3, 8, 12), 4), ((1, 1, 5, 7), 1), ((2, 2, 9, 6), 3)], ids=str)
def test_apply_mask_is_exact(dtype, shape, p):
    images = random_images(shape, dtype) if dtype != torch.float64 else torch.rand(shape, dtype=dtype)
    mask = torch.rand(shape[0], (shape[2] // p) * (shape[3] // p)) < 0.6
    fill = 7.0 if dtype == torch.uint8 else -0.3
    got = apply_patch_mask(*on_device(images, mask), p, fill=fill, backend=BACKEND)
    assert torch.equal(got.cpu(), R.apply_patch_mask(images, mask, p, fill=fill))


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_apply_mask_any_strides(layout):
    images = random_images((2, 3, 8, 12), torch.float32, layout=layout)
    mask = (torch.rand(6, 2) < 0.5).t()  # non-contiguous
    got = apply_patch_mask(*on_device(images, mask), 4, backend=BACKEND)
    assert torch.equal(got.cpu(), R.apply_patch_mask(images, mask, 4))
    if layout == "channels_last":
        assert got.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("fill", [-0.0, float("nan"), float("-inf")], ids=str)
def test_apply_mask_keeps_the_bits_of_the_fill(dtype, fill):
    # The kernel receives the fill as its bit pattern (an int32, int64 or uint64 scalar by size and sign) and
    # bitcasts it: compare bits, which torch.equal cannot do for -0.0 and NaN.
    images = torch.rand(1, 2, 8, 8).to(dtype)
    mask = torch.tensor([[True, False, False, True]])
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[dtype.itemsize]
    got = apply_patch_mask(*on_device(images, mask), 4, fill=fill, backend=BACKEND)
    assert torch.equal(got.cpu().view(bits), R.apply_patch_mask(images, mask, 4, fill=fill).view(bits))


def test_apply_mask_kernel_refuses_an_overflowing_fill_as_the_reference_does():
    images, mask = torch.rand(1, 1, 8, 8).half(), torch.tensor([[True, False, False, True]])
    with pytest.raises(RuntimeError, match="overflow") as expected:
        R.apply_patch_mask(images, mask, 4, fill=1e6)
    with pytest.raises(RuntimeError, match="overflow") as got:
        _triton.apply_patch_mask(*on_device(images, mask), 4, 1e6)
    assert str(got.value) == str(expected.value)


def test_apply_mask_gradient():
    images = on_device(torch.rand(2, 3, 8, 8, dtype=torch.float64)).requires_grad_()
    mask = on_device(torch.tensor([[True, False, False, True], [False, False, True, True]]))
    (grad,) = torch.autograd.grad(apply_patch_mask(images, mask, 4, backend=BACKEND).sum(), images)
    expected = (~R.pixel_mask(mask.cpu(), 4, 8, 8)).double().expand(2, 3, 8, 8)
    assert torch.equal(grad.cpu(), expected)
