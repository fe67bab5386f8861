"""gather_patches, apply_patch_mask, patchify/unpatchify: backends against the reference, gradients, checks."""

from __future__ import annotations

import pytest
import torch

from medens.ops import apply_patch_mask, gather_patches, patchify, unpatchify
from medens.ops import reference as R

from .helpers import CPU_BACKENDS, FLOAT_DTYPES, random_images

# Normalised patches: kernels keep statistics in float64, the reference in float32 (float64 for float64 images);
# the results then round to the image dtype, so the tolerance is about one unit in the last place of that dtype.
NORMALIZED_TOL = {
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float64: dict(atol=1e-12, rtol=1e-12),
}

GEOMETRIES = [  # (B, C, H, W), p, K
    ((1, 1, 1, 1), 1, 1),
    ((3, 3, 8, 12), 4, 5),
    ((2, 1, 20, 10), 5, 8),
    ((5, 3, 32, 32), 16, 1),
    ((2, 3, 16, 16), 16, 1),  # p = H
    ((4, 2, 12, 18), 3, 24),
]


def random_ids(b: int, n: int, k: int, *, unique: bool = True) -> torch.Tensor:
    if unique and k <= n:
        return torch.stack([torch.randperm(n)[:k] for _ in range(b)])
    return torch.randint(0, n, (b, k))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize(("shape", "p", "k"), GEOMETRIES, ids=str)
def test_gather_is_exact(backend, dtype, shape, p, k):
    images = random_images(shape, dtype)
    n = (shape[2] // p) * (shape[3] // p)
    ids = random_ids(shape[0], n, min(k, n))
    assert torch.equal(gather_patches(images, ids, p, backend=backend), R.gather_patches(images, ids, p))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize(("shape", "p", "k"), GEOMETRIES[1:], ids=str)
def test_gather_normalized_matches_reference(backend, dtype, shape, p, k):
    images = random_images(shape, dtype)
    n = (shape[2] // p) * (shape[3] // p)
    ids = random_ids(shape[0], n, min(k, n))
    got = gather_patches(images, ids, p, normalize=True, backend=backend)
    expected = R.gather_patches(images, ids, p, normalize=True)
    assert got.dtype == dtype
    torch.testing.assert_close(got, expected, **NORMALIZED_TOL[dtype])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("normalize", [False, True])
def test_gather_any_strides(backend, layout, normalize):
    images = random_images((3, 3, 16, 24), torch.float32, layout=layout)
    ids = torch.randint(0, 6, (3, 10))[:, ::2]  # non-contiguous ids, repeats allowed
    got = gather_patches(images, ids, 8, normalize=normalize, backend=backend)
    torch.testing.assert_close(got, R.gather_patches(images.contiguous(), ids, 8, normalize=normalize),
                               **NORMALIZED_TOL[torch.float32])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("normalize", [False, True])
def test_gather_gradcheck(backend, normalize):
    images = torch.rand(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([[0, 3, 3], [2, 1, 0]])  # a repeated id must accumulate
    assert torch.autograd.gradcheck(lambda x: gather_patches(x, ids, 4, normalize=normalize, backend=backend),
                                    (images,))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("normalize", [False, True])
def test_gather_backward_matches_reference(backend, dtype, normalize):
    images = random_images((3, 3, 16, 16), dtype).requires_grad_()
    ids = random_ids(3, 4, 3)
    grad = torch.randn(3, 3, 192).to(dtype)
    (got,) = torch.autograd.grad(gather_patches(images, ids, 8, normalize=normalize, backend=backend), images, grad)
    expected = R.gather_patches_backward(grad, images.detach(), ids, 8, normalize=normalize)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=5e-2, rtol=2e-2)
    torch.testing.assert_close(got, expected, **tol)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.uint8, *FLOAT_DTYPES], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_apply_patch_mask_is_exact(backend, dtype, layout):
    images = random_images((3, 3, 12, 20), dtype, layout=layout)
    mask = torch.rand(3, 15) < 0.5
    fill = 7.0 if dtype == torch.uint8 else -0.25
    got = apply_patch_mask(images, mask, 4, fill=fill, backend=backend)
    assert torch.equal(got, R.apply_patch_mask(images, mask, 4, fill=fill))
    assert got.data_ptr() != images.data_ptr()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_apply_patch_mask_non_contiguous_mask_and_odd_shapes(backend):
    images = torch.rand(2, 1, 9, 15)
    mask = (torch.rand(15, 2) < 0.5).t()
    assert torch.equal(apply_patch_mask(images, mask, 3, backend=backend), R.apply_patch_mask(images, mask, 3))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(
    ("dtype", "fill"),
    [(torch.float16, 1e6), (torch.float16, -65520.0), (torch.bfloat16, 1e39), (torch.float32, 1e39)],
    ids=str,
)
def test_apply_patch_mask_refuses_a_fill_the_dtype_cannot_hold(backend, dtype, fill):
    images = torch.rand(1, 1, 8, 8).to(dtype)
    mask = torch.tensor([[True, False, False, True]])
    with pytest.raises(RuntimeError, match="overflow"):  # the reference's own rule (masked_fill)
        images.masked_fill(torch.ones_like(images, dtype=torch.bool), fill)
    with pytest.raises(ValueError, match=f"fill must be representable in {dtype}"):
        apply_patch_mask(images, mask, 4, fill=fill, backend=backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("fill", [float("inf"), float("-inf"), 65504.0], ids=str)
def test_apply_patch_mask_float16_edge_fills_agree(backend, fill):
    images = torch.rand(1, 1, 8, 8).half()
    mask = torch.tensor([[True, False, False, True]])
    got = apply_patch_mask(images, mask, 4, fill=fill, backend=backend)
    assert torch.equal(got, R.apply_patch_mask(images, mask, 4, fill=fill))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("fill", [-0.0, float("nan"), -1.5], ids=str)
def test_apply_patch_mask_keeps_the_bits_of_the_fill(backend, dtype, fill):
    # torch.equal cannot tell -0.0 from 0.0 and is false for NaN: compare the bit patterns
    images = torch.rand(1, 2, 8, 8).to(dtype)
    mask = torch.tensor([[True, False, False, True]])
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[dtype.itemsize]
    got = apply_patch_mask(images, mask, 4, fill=fill, backend=backend)
    assert torch.equal(got.view(bits), R.apply_patch_mask(images, mask, 4, fill=fill).view(bits))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_the_kernel_refuses_an_overflowing_fill_as_the_reference_does(backend):
    # The registered op skips the public check (as a caller of torch.ops.medens would): the fill's encoding itself
    # refuses a value float16 cannot hold, with the reference's own error, instead of filling inf.
    images = torch.rand(1, 1, 8, 8).half()
    mask = torch.tensor([[True, False, False, True]])
    with pytest.raises(RuntimeError, match="overflow") as expected:
        R.apply_patch_mask(images, mask, 4, fill=1e6)
    with pytest.raises(RuntimeError, match="overflow") as got:
        torch.ops.medens.apply_patch_mask(images, mask, 4, 1e6, backend)
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize(
    ("dtype", "fill", "expected"),
    [(torch.uint8, 255.0, 0xFF), (torch.float16, -2.0, 0xC000), (torch.bfloat16, 1.0, 0x3F80),
     (torch.float32, -0.0, 0x8000_0000), (torch.float64, float("-inf"), 0xFFF0_0000_0000_0000)],
    ids=str,
)
def test_fill_is_encoded_as_the_unsigned_bit_pattern_of_one_element(dtype, fill, expected):
    from medens.ops._launch import fill_bits

    assert fill_bits(fill, dtype) == expected


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_apply_patch_mask_gradcheck(backend):
    images = torch.rand(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, False, False, True], [False, False, True, False]])
    assert torch.autograd.gradcheck(lambda x: apply_patch_mask(x, mask, 4, fill=0.5, backend=backend), (images,))
    assert torch.autograd.gradgradcheck(lambda x: apply_patch_mask(x, mask, 4, backend=backend), (images,))


def test_patchify_unpatchify_round_trip():
    images = torch.rand(2, 3, 12, 20)
    patches = patchify(images, 4)
    assert patches.shape == (2, 15, 48)
    assert torch.equal(unpatchify(patches, 4, 12, 20), images)


# ---- bad input ----------------------------------------------------------------------------------------------------

X = torch.rand(2, 3, 16, 16)
IDS = torch.zeros(2, 3, dtype=torch.int64)
MASK = torch.zeros(2, 4, dtype=torch.bool)
BAD_CALLS = [
    (lambda: gather_patches(X, IDS, 5), ValueError, "multiples of patch_size"),
    (lambda: gather_patches(X, IDS.int(), 8), TypeError, "ids must have dtype int64"),
    (lambda: gather_patches(X, IDS[0], 8), ValueError, "ids must have 2 dimensions"),
    (lambda: gather_patches(X, torch.zeros(3, 3, dtype=torch.int64), 8), ValueError, "ids must have shape"),
    (lambda: gather_patches(X, IDS + 4, 8), ValueError, r"patch indices in \[0, 4\)"),
    (lambda: gather_patches(X, IDS - 1, 8), ValueError, r"patch indices in \[0, 4\)"),
    (lambda: gather_patches(X.to(torch.uint8), IDS, 8), TypeError, "images must have dtype"),
    (lambda: gather_patches(X, IDS, 8, normalize=1), TypeError, "normalize must be a bool"),
    (lambda: gather_patches(X, IDS, 8, eps=-1.0), ValueError, "eps must be >= 0"),
    (lambda: gather_patches(X[:, :1], IDS, 1, normalize=True), ValueError, "at least 2 values per patch"),
    (lambda: apply_patch_mask(X, MASK.float(), 8), TypeError, "mask must have dtype bool"),
    (lambda: apply_patch_mask(X, MASK[:, :3], 8), ValueError, r"mask must have shape \(2, 4\)"),
    (lambda: apply_patch_mask(X, MASK, 3), ValueError, "multiples of patch_size"),
    (lambda: apply_patch_mask(X.to(torch.uint8), MASK, 8, fill=0.5), ValueError, "integer in"),
    (lambda: apply_patch_mask(X.to(torch.uint8), MASK, 8, fill=300), ValueError, "integer in"),
    (lambda: unpatchify(torch.rand(2, 5, 48), 4, 8, 8), ValueError, "patches must have shape"),
]


@pytest.mark.parametrize(("call", "error", "message"), BAD_CALLS)
def test_bad_input_is_refused_with_a_clear_message(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_out_of_range_ids_are_caught_by_the_kernel_too(backend):
    # Under torch.compile the eager range check is skipped; the kernel itself must refuse, never read out of bounds.
    from medens.ops._registry import kernel

    with pytest.raises(ValueError, match="out of range"):
        kernel("gather_patches", backend)(X, IDS + 100, 8, False, 1e-6)
    with pytest.raises(ValueError, match="out of range"):
        kernel("gather_patches_backward", backend)(torch.zeros(2, 3, 192), X, IDS - 1, 8, False, 1e-6)
