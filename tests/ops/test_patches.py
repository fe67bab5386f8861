"""gather_patches, apply_patch_mask, patchify/unpatchify: the reference, every backend against it (values and
gradients), and the argument checks."""

from __future__ import annotations

import pytest
import torch

from medens.ops import apply_patch_mask, gather_patches, patchify, unpatchify
from medens.ops import reference as R

from .helpers import (
    FLOAT_DTYPES,
    IMAGE_DTYPES,
    KERNELS,
    backend_cases,
    backends,
    on,
    random_images,
    tol,
)

# ---- the reference -------------------------------------------------------------------------------------------------


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


@pytest.mark.parametrize(
    ("dtype", "fill", "expected"),
    [(torch.uint8, 255.0, 0xFF), (torch.float16, -2.0, 0xC000), (torch.bfloat16, 1.0, 0x3F80),
     (torch.float32, -0.0, 0x8000_0000), (torch.float64, float("-inf"), 0xFFF0_0000_0000_0000)],
    ids=str,
)
def test_fill_is_encoded_as_the_unsigned_bit_pattern_of_one_element(dtype, fill, expected):
    from medens.ops._launch import fill_bits

    assert fill_bits(fill, dtype) == expected


# ---- gather_patches on every backend -------------------------------------------------------------------------------
# The interpreted Triton kernels run one program at a time: their cases are small; "gpu" cases run on a CUDA device.

GEOMETRIES = {  # (B, C, H, W), p, K
    "cpp": [
        ((1, 1, 1, 1), 1, 1),
        ((3, 3, 8, 12), 4, 5),
        ((2, 1, 20, 10), 5, 8),
        ((5, 3, 32, 32), 16, 1),
        ((2, 3, 16, 16), 16, 1),  # p = H
        ((4, 2, 12, 18), 3, 24),
    ],
    "triton": [
        ((1, 1, 1, 1), 1, 1),
        ((3, 3, 8, 12), 4, 5),
        ((2, 1, 20, 10), 5, 8),
        ((2, 3, 32, 32), 16, 3),  # K > N: ids repeat
        ((2, 2, 12, 18), 3, 24),
    ],
}
GPU_GEOMETRIES = [
    ((1, 1, 1, 1), 1, 1),
    ((3, 3, 8, 12), 4, 5),
    ((2, 1, 20, 10), 5, 8),
    ((8, 3, 224, 224), 16, 147),
    ((2, 3, 64, 64), 64, 1),  # a patch too large to stage in shared memory (float64)
    ((4, 2, 12, 18), 3, 24),
]


def random_ids(b: int, n: int, k: int) -> torch.Tensor:
    """(b, k) patch indices below n: distinct in each row where k <= n, else drawn with repeats."""
    return torch.stack([torch.randperm(n)[:k] for _ in range(b)]) if k <= n else torch.randint(0, n, (b, k))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize(("backend", "shape", "p", "k"), backend_cases(GEOMETRIES))
def test_gather_is_exact(backend, dtype, shape, p, k):
    images = random_images(shape, dtype)
    ids = random_ids(shape[0], (shape[2] // p) * (shape[3] // p), k)
    assert torch.equal(gather_patches(*on(backend, images, ids), p, backend=backend).cpu(),
                       R.gather_patches(images, ids, p))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize(("backend", "shape", "p", "k"),
                         backend_cases({key: cases[1:] for key, cases in GEOMETRIES.items()}))
def test_gather_normalized_matches_reference(backend, dtype, shape, p, k):
    images = random_images(shape, dtype)
    ids = random_ids(shape[0], (shape[2] // p) * (shape[3] // p), k)
    got = gather_patches(*on(backend, images, ids), p, normalize=True, backend=backend)
    assert got.dtype == dtype
    torch.testing.assert_close(got.cpu(), R.gather_patches(images, ids, p, normalize=True), **tol("normalized", dtype))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize(("shape", "p", "k"), GPU_GEOMETRIES, ids=str)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("backend", backends("cuda", "triton", gpu_only=True))
def test_gather_matches_reference_on_a_gpu(backend, dtype, shape, p, k, layout):
    images = random_images(shape, dtype, layout=layout)
    ids = random_ids(shape[0], (shape[2] // p) * (shape[3] // p), k)
    assert torch.equal(gather_patches(*on(backend, images, ids), p, backend=backend).cpu(),
                       R.gather_patches(images, ids, p))
    if shape[1] * p * p >= 2:
        got = gather_patches(*on(backend, images, ids), p, normalize=True, backend=backend)
        torch.testing.assert_close(got.cpu(), R.gather_patches(images, ids, p, normalize=True),
                                   **tol("normalized", dtype))


ANY_STRIDES = {  # (B, C, H, W), p, ids: non-contiguous, with repeats
    "cpp": [((3, 3, 16, 24), 8, torch.randint(0, 6, (3, 10), generator=torch.Generator().manual_seed(0))[:, ::2])],
    "triton": [((2, 3, 8, 12), 4, torch.tensor([[5, 0, 2], [1, 1, 4]]).t().contiguous().t())],
}


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize(("backend", "shape", "p", "ids"), backend_cases(ANY_STRIDES))
def test_gather_any_strides(backend, layout, normalize, shape, p, ids):
    images = random_images(shape, torch.float32, layout=layout)
    assert not ids.is_contiguous()
    got = gather_patches(*on(backend, images, ids), p, normalize=normalize, backend=backend)
    torch.testing.assert_close(got.cpu(), R.gather_patches(images.contiguous(), ids, p, normalize=normalize),
                               **tol("normalized", torch.float32))


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize(("backend", "shape", "ids"), backend_cases({
    "cpp": [((2, 3, 8, 8), [[0, 3, 3], [2, 1, 0]])],  # a repeated id must accumulate
    "gpu": [((2, 3, 8, 12), [[0, 2, 2], [5, 1, 0]])],
}))
def test_gather_gradcheck(backend, normalize, shape, ids):
    images = on(backend, torch.rand(shape, dtype=torch.float64)).requires_grad_()
    ids = on(backend, torch.tensor(ids))
    assert torch.autograd.gradcheck(lambda x: gather_patches(x, ids, 4, normalize=normalize, backend=backend),
                                    (images,))


@pytest.mark.parametrize("backend", backends("cpp"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("normalize", [False, True])
def test_gather_backward_matches_reference(backend, dtype, normalize):
    images = random_images((3, 3, 16, 16), dtype).requires_grad_()
    ids = random_ids(3, 4, 3)
    grad = torch.randn(3, 3, 192).to(dtype)
    (got,) = torch.autograd.grad(gather_patches(images, ids, 8, normalize=normalize, backend=backend), images, grad)
    expected = R.gather_patches_backward(grad, images.detach(), ids, 8, normalize=normalize)
    torch.testing.assert_close(got, expected, **tol("gather_backward", dtype))


@pytest.mark.parametrize("backend", backends(*KERNELS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("normalize", [False, True])
def test_gather_gradient_accumulates_repeated_ids(backend, dtype, normalize):
    images = torch.rand(2, 3, 8, 12, dtype=dtype)
    ids = torch.tensor([[0, 2, 2, 5], [5, 1, 0, 5]])
    weights = torch.randn(2, 4, 48, dtype=dtype)
    leaf = on(backend, images).requires_grad_()
    (grad,) = torch.autograd.grad((gather_patches(leaf, on(backend, ids), 4, normalize=normalize, backend=backend)
                                   * on(backend, weights)).sum(), leaf)
    reference_leaf = images.clone().requires_grad_()
    (expected,) = torch.autograd.grad((R.gather_patches(reference_leaf, ids, 4, normalize=normalize) * weights).sum(),
                                      reference_leaf)
    torch.testing.assert_close(grad.cpu(), expected, **tol("normalized", dtype))


@pytest.mark.parametrize("backend", backends("triton"))
@pytest.mark.parametrize("normalize", [False, True])
def test_gather_patches_larger_than_one_tile(backend, monkeypatch, normalize):
    # A patch with more values than a program holds is processed in row tiles, one pass per statistic.
    from medens.kernels.triton import patches as triton_patches

    monkeypatch.setattr(triton_patches, "TILE_ELEMENTS", 32)
    images = torch.rand(2, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([[3, 0], [1, 1]])
    got = gather_patches(*on(backend, images.detach(), ids), 8, normalize=normalize, backend=backend)
    expected = R.gather_patches(images, ids, 8, normalize=normalize)
    torch.testing.assert_close(got.cpu(), expected.detach(), **tol("normalized", torch.float64))
    leaf = on(backend, images.detach()).requires_grad_()
    weights = torch.randn(expected.shape, dtype=torch.float64)
    (grad,) = torch.autograd.grad((gather_patches(leaf, on(backend, ids), 8, normalize=normalize, backend=backend)
                                   * on(backend, weights)).sum(), leaf)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), images)
    torch.testing.assert_close(grad.cpu(), expected_grad, **tol("normalized", torch.float64))


# ---- apply_patch_mask on every backend -----------------------------------------------------------------------------

LAYOUTS = ["contiguous", "channels_last", "strided"]


@pytest.mark.parametrize(("backend", "dtype", "layout", "shape", "p"), backend_cases({
    "cpp": [(dtype, layout, (3, 3, 12, 20), 4) for dtype in (torch.uint8, *FLOAT_DTYPES) for layout in LAYOUTS],
    "triton": [(dtype, "contiguous", shape, p) for dtype in (*IMAGE_DTYPES, torch.float64)
               for shape, p in [((2, 3, 8, 12), 4), ((1, 1, 5, 7), 1), ((2, 2, 9, 6), 3)]],
    "gpu": [(dtype, layout, (3, 3, 24, 36), 4) for dtype in (*IMAGE_DTYPES, torch.float64) for layout in LAYOUTS],
}))
def test_apply_patch_mask_is_exact(backend, dtype, layout, shape, p):
    images = random_images(shape, dtype, layout=layout)
    mask = torch.rand(shape[0], (shape[2] // p) * (shape[3] // p)) < 0.6
    fill = 7.0 if dtype == torch.uint8 else -0.25
    on_device = on(backend, images)
    got = apply_patch_mask(on_device, on(backend, mask), p, fill=fill, backend=backend)
    assert torch.equal(got.cpu(), R.apply_patch_mask(images, mask, p, fill=fill))
    assert got.data_ptr() != on_device.data_ptr()


@pytest.mark.parametrize("backend", backends("triton"))
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_apply_patch_mask_any_strides(backend, layout):
    images = random_images((2, 3, 8, 12), torch.float32, layout=layout)
    mask = (torch.rand(6, 2) < 0.5).t()  # non-contiguous
    got = apply_patch_mask(*on(backend, images, mask), 4, backend=backend)
    assert torch.equal(got.cpu(), R.apply_patch_mask(images, mask, 4))
    if layout == "channels_last":
        assert got.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend", backends(*KERNELS))
def test_apply_patch_mask_non_contiguous_mask_and_odd_shapes(backend):
    images = torch.rand(2, 1, 9, 15)
    mask = (torch.rand(15, 2) < 0.5).t()
    got = apply_patch_mask(*on(backend, images, mask), 3, backend=backend)
    assert torch.equal(got.cpu(), R.apply_patch_mask(images, mask, 3))


@pytest.mark.parametrize("backend", backends(*KERNELS))
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
        apply_patch_mask(*on(backend, images, mask), 4, fill=fill, backend=backend)


@pytest.mark.parametrize("backend", backends(*KERNELS))
@pytest.mark.parametrize("fill", [float("inf"), float("-inf"), 65504.0], ids=str)
def test_apply_patch_mask_float16_edge_fills_agree(backend, fill):
    images = torch.rand(1, 1, 8, 8).half()
    mask = torch.tensor([[True, False, False, True]])
    got = apply_patch_mask(*on(backend, images, mask), 4, fill=fill, backend=backend)
    assert torch.equal(got.cpu(), R.apply_patch_mask(images, mask, 4, fill=fill))


@pytest.mark.parametrize("backend", backends(*KERNELS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("fill", [-0.0, float("nan"), -1.5, float("-inf")], ids=str)
def test_apply_patch_mask_keeps_the_bits_of_the_fill(backend, dtype, fill):
    # The kernels receive the fill as its bit pattern (an int32, int64 or uint64 scalar by size and sign) and
    # bitcast it: compare bits, which torch.equal cannot do for -0.0 (equal to 0.0) and NaN (equal to nothing).
    images = torch.rand(1, 2, 8, 8).to(dtype)
    mask = torch.tensor([[True, False, False, True]])
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[dtype.itemsize]
    got = apply_patch_mask(*on(backend, images, mask), 4, fill=fill, backend=backend)
    assert torch.equal(got.cpu().view(bits), R.apply_patch_mask(images, mask, 4, fill=fill).view(bits))


@pytest.mark.parametrize("backend", backends(*KERNELS))
def test_the_kernel_refuses_an_overflowing_fill_as_the_reference_does(backend):
    # The registered op skips the public check (as a caller of torch.ops.medens would): the fill's encoding itself
    # refuses a value float16 cannot hold, with the reference's own error, instead of filling inf.
    images = torch.rand(1, 1, 8, 8).half()
    mask = torch.tensor([[True, False, False, True]])
    with pytest.raises(RuntimeError, match="overflow") as expected:
        R.apply_patch_mask(images, mask, 4, fill=1e6)
    with pytest.raises(RuntimeError, match="overflow") as got:
        torch.ops.medens.apply_patch_mask(*on(backend, images, mask), 4, 1e6, backend)
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize("backend", [*backends("cpp"), *backends("cuda", "triton", gpu_only=True)])
def test_apply_patch_mask_gradcheck(backend):
    images = on(backend, torch.rand(2, 3, 8, 8, dtype=torch.float64)).requires_grad_()
    mask = on(backend, torch.tensor([[True, False, False, True], [False, False, True, False]]))
    assert torch.autograd.gradcheck(lambda x: apply_patch_mask(x, mask, 4, fill=0.5, backend=backend), (images,))
    assert torch.autograd.gradgradcheck(lambda x: apply_patch_mask(x, mask, 4, backend=backend), (images,))


@pytest.mark.parametrize("backend", backends(*KERNELS))
def test_apply_patch_mask_gradient_is_the_visible_pixels(backend):
    images = on(backend, torch.rand(2, 3, 8, 8, dtype=torch.float64)).requires_grad_()
    mask = torch.tensor([[True, False, False, True], [False, False, True, True]])
    (grad,) = torch.autograd.grad(apply_patch_mask(images, on(backend, mask), 4, backend=backend).sum(), images)
    expected = (~R.pixel_mask(mask, 4, 8, 8)).double().expand(2, 3, 8, 8)
    assert torch.equal(grad.cpu(), expected)


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


@pytest.mark.parametrize("backend", backends(*KERNELS))
@pytest.mark.parametrize(("op", "ids"), [("forward", IDS + 100), ("backward", IDS - 1),
                                         ("forward", torch.tensor([[0, 6, 1], [-1, 2, 3]])),
                                         ("backward", torch.tensor([[0, 6, 1], [-1, 2, 3]]))], ids=str)
def test_out_of_range_ids_are_caught_by_the_kernel_too(backend, op, ids):
    # Under torch.compile the eager range check is skipped; the kernel itself must refuse, never read out of bounds.
    from medens.ops._registry import kernel

    images, ids = on(backend, X, ids)
    with pytest.raises(ValueError, match="gather_patches.*out of range"):
        if op == "forward":
            kernel("gather_patches", backend)(images, ids, 8, False, 1e-6)
        else:
            kernel("gather_patches_backward", backend)(on(backend, torch.zeros(2, 3, 192)), images, ids, 8, False,
                                                       1e-6)
    if images.is_cuda:
        torch.cuda.synchronize()  # and the context is still healthy


@pytest.mark.parametrize("backend", backends("triton"))
def test_out_of_range_rows_are_nan(backend):
    from medens.kernels.triton import patches as triton_patches

    images = on(backend, torch.rand(1, 1, 8, 8))
    index_error = torch.zeros(1, dtype=torch.int32, device=images.device)
    out = torch.empty(1, 2, 16, device=images.device)
    triton_patches.gather_patches(images=images, ids=on(backend, torch.tensor([[1, 99]])), patch_size=4,
                                  normalize=False, eps=1e-6, out=out, index_error=index_error)
    assert index_error.item() == 1
    assert torch.equal(out[0, 0].cpu(), R.gather_patches(images.cpu(), torch.tensor([[1]]), 4)[0, 0])
    assert out[0, 1].isnan().all()


@pytest.mark.parametrize("argument", ["ids", "mask"])
def test_a_meta_tensor_is_refused_by_name(argument):
    # It has a shape but no values.
    images = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match=rf"^{argument} must be a tensor with values .*meta device"):
        if argument == "ids":
            gather_patches(images, torch.zeros(2, 4, dtype=torch.int64, device="meta"), 8)
        else:
            apply_patch_mask(images, torch.zeros(2, 16, dtype=torch.bool, device="meta"), 8)
