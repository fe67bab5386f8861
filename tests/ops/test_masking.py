"""entropy_guided_mask: the reference's draws, identical masks on every backend given the same noise, and its
argument checks."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medens.ops import entropy_guided_mask
from medens.ops import reference as R

from .helpers import (
    FLOAT_DTYPES,
    KERNELS,
    assert_same_mask,
    backend_cases,
    backends,
    device_of,
    on,
    run_python,
    why_skipped,
)

TEMPERATURES = [0.0, 0.1, 1.0, 3.5, math.inf]

# ---- the reference -------------------------------------------------------------------------------------------------


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


# ---- every backend against the reference: identical masks ---------------------------------------------------------
# The interpreted Triton kernels run one program at a time: their cases are small; "gpu" cases run on a CUDA device.

ROWS = {  # (B, N, mask ratio)
    "cpp": [(1, 1, 0.0), (3, 7, 0.5), (5, 196, 0.75), (2, 49, 0.6), (4, 1000, 0.9), (1, 4096, 0.25)],
    "triton": [(1, 1, 0.0), (3, 7, 0.5), (4, 196, 0.75), (2, 300, 0.9)],
    "gpu": [(1, 1, 0.0), (3, 7, 0.5), (256, 196, 0.75), (4, 1000, 0.9), (2, 4096, 0.25), (2, 5000, 0.75)],
}
CASE_TEMPERATURES = {"cpp": TEMPERATURES, "triton": [0.0, 0.1, 1.0, math.inf], "gpu": [0.0, 0.1, 1.0, math.inf]}


@pytest.mark.parametrize(("backend", "temperature", "prefer", "b", "n", "ratio"), backend_cases({
    key: [(t, prefer, *row) for t, prefer, row in itertools.product(CASE_TEMPERATURES[key], ["high", "low"], rows)]
    for key, rows in ROWS.items()
}))
def test_identical_to_reference(backend, temperature, prefer, b, n, ratio):
    scores = torch.rand(b, n) * 8
    noise = torch.rand(b, n)
    expected = R.entropy_guided_mask(scores, ratio, temperature=temperature, prefer=prefer, noise=noise)
    got = entropy_guided_mask(on(backend, scores), ratio, temperature=temperature, prefer=prefer,
                              noise=on(backend, noise), backend=backend)
    assert_same_mask(got, expected, device_type=device_of(backend).type)


@pytest.mark.parametrize("temperature", [0.0, 0.7])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize(("backend", "rows"), backend_cases({"cpp": [6], "triton": [3]}))
def test_every_score_and_noise_dtype(backend, rows, dtype, temperature):
    scores = (torch.rand(rows, 50) * 8).to(dtype)
    noise = torch.rand(rows, 50).clamp(1e-3, 1 - 1e-3).to(dtype)
    expected = R.entropy_guided_mask(scores, 0.6, temperature=temperature, noise=noise)
    got = entropy_guided_mask(on(backend, scores), 0.6, temperature=temperature, noise=on(backend, noise),
                              backend=backend)
    assert_same_mask(got, expected)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("backend", backends("cuda", "triton", gpu_only=True))
def test_dtypes_ties_and_strides_on_a_gpu(backend, dtype):
    scores = ((torch.rand(50, 6) * 4).round()).t().to(dtype)  # ties, strides (1, 6)
    noise = torch.rand(6, 100)[:, ::2].to(dtype)
    noise[0, :5] = 0.5
    for temperature in (0.0, 0.7):
        expected = R.entropy_guided_mask(scores, 0.6, temperature=temperature, noise=noise)
        got = entropy_guided_mask(on(backend, scores), 0.6, temperature=temperature, noise=on(backend, noise),
                                  backend=backend)
        assert_same_mask(got, expected, device_type="cuda")


@pytest.mark.parametrize("backend", backends(*KERNELS))
@pytest.mark.parametrize("prefer", ["high", "low"])
def test_ties_go_to_the_lower_index(backend, prefer):
    scores = torch.tensor([[1.0, 2.0, 2.0, 1.0, 2.0, 1.0, 0.0, 0.0]]).repeat(3, 1)
    scores[1, 7] = -0.0  # -0.0 and +0.0 tie
    expected = R.entropy_guided_mask(scores.abs(), 0.5, temperature=0, prefer=prefer)
    got = entropy_guided_mask(on(backend, scores), 0.5, temperature=0, prefer=prefer, backend=backend)
    assert_same_mask(got, expected)
    want = [1, 2, 4, 0] if prefer == "high" else [6, 7, 0, 3]
    assert got.ids_mask[0].tolist() == sorted(want)


@pytest.mark.parametrize("backend", backends(*KERNELS))
def test_equal_noise_ties_and_extreme_noise(backend):
    scores = torch.ones(2, 10)
    noise = torch.full((2, 10), 0.5)
    noise[1, 3] = 0.0  # key -inf: kept
    noise[1, 4] = 1.0  # key +inf: hidden first
    for temperature in (1.0, math.inf):
        expected = R.entropy_guided_mask(scores, 0.3, temperature=temperature, noise=noise)
        got = entropy_guided_mask(on(backend, scores), 0.3, temperature=temperature, noise=on(backend, noise),
                                  backend=backend)
        assert_same_mask(got, expected)
    assert 4 in expected.ids_mask[1].tolist() and 3 in expected.ids_keep[1].tolist()


@pytest.mark.parametrize("backend", backends(*KERNELS))
def test_non_contiguous_scores_and_noise(backend):
    scores = torch.rand(40, 6).t()  # (6, 40) with strides (1, 6)
    noise = torch.rand(6, 80)[:, ::2]
    expected = R.entropy_guided_mask(scores.contiguous(), 0.5, noise=noise.contiguous())
    got = entropy_guided_mask(on(backend, scores), 0.5, noise=on(backend, noise), backend=backend)
    assert_same_mask(got, expected)


@pytest.mark.parametrize("backend", backends("triton"))
@pytest.mark.parametrize("temperature", [0.0, 2.0])
def test_long_rows_take_the_sorting_path(backend, monkeypatch, temperature):
    # Rows longer than MAX_FUSED_ROW get Triton keys and a stable torch.sort; shrink the limit to test it cheaply.
    from medens.kernels.triton import masking as triton_masking

    monkeypatch.setattr(triton_masking, "MAX_FUSED_ROW", 64)
    scores = (torch.rand(3, 100) * 4).round()  # many ties
    noise = torch.rand(3, 100)
    expected = R.entropy_guided_mask(scores, 0.75, temperature=temperature, noise=noise)
    got = entropy_guided_mask(on(backend, scores), 0.75, temperature=temperature, noise=on(backend, noise),
                              backend=backend)
    assert_same_mask(got, expected)


@pytest.mark.parametrize("backend", backends("reference", "cpp"))
def test_generator_makes_draws_repeatable(backend):
    scores = torch.rand(4, 64)
    a = entropy_guided_mask(scores, 0.75, generator=torch.Generator().manual_seed(7), backend=backend)
    b = entropy_guided_mask(scores, 0.75, generator=torch.Generator().manual_seed(7), backend=backend)
    c = entropy_guided_mask(scores, 0.75, generator=torch.Generator().manual_seed(8), backend=backend)
    assert torch.equal(a.mask, b.mask) and not torch.equal(a.mask, c.mask)


@pytest.mark.parametrize("backend", backends("cpp"))
def test_outputs_are_consistent(backend):
    m = entropy_guided_mask(torch.rand(7, 196), 0.75, backend=backend)
    k = R.num_visible(196, 0.75)
    assert m.ids_keep.shape == (7, k) and m.ids_mask.shape == (7, 196 - k)
    assert (m.ids_keep.diff(dim=1) > 0).all() and (m.ids_mask.diff(dim=1) > 0).all()
    assert torch.equal(torch.gather(m.mask, 1, m.ids_mask), torch.ones(7, 196 - k, dtype=torch.bool))
    assert not torch.gather(m.mask, 1, m.ids_keep).any()
    shuffled = torch.cat([m.ids_keep, m.ids_mask], 1)
    assert torch.equal(torch.gather(shuffled, 1, m.ids_restore), torch.arange(196).expand(7, 196))


# ---- the CPU kernel's logarithms (AVX-512 where the machine has it) ------------------------------------------------

needs_cpp = pytest.mark.skipif(why_skipped("cpp") is not None, reason=why_skipped("cpp") or "")


def _ulps_apart(got: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    spacing = torch.nextafter(expected.abs(), torch.tensor(math.inf, dtype=torch.float64)) - expected.abs()
    return (got - expected).abs() / spacing


@needs_cpp
def test_key_logarithms_are_within_one_ulp_of_glibc():
    from medens import _C

    g = torch.Generator().manual_seed(0)
    values = torch.cat([
        torch.rand(20000, generator=g, dtype=torch.float64) * 4,  # around 1, both sides of sqrt(2)
        torch.exp(torch.randn(20000, generator=g, dtype=torch.float64) * 50),  # exponents far from 0
        1 + torch.randn(5000, generator=g, dtype=torch.float64) * 1e-9,  # log close to 0
        torch.tensor([1.0, 2.0, 0.5, math.sqrt(2), math.sqrt(0.5), 1e-6, 1 + 2**-52, 1 - 2**-53, 1.7e308],
                     dtype=torch.float64),
    ])
    got = values.clone()
    _C._log_f64_cpu(got.data_ptr(), got.numel())
    expected = torch.tensor([math.log(v) for v in values.tolist()], dtype=torch.float64)
    assert _ulps_apart(got, expected).max().item() <= 1.0
    ones = torch.ones(9, dtype=torch.float64)
    _C._log_f64_cpu(ones.data_ptr(), ones.numel())
    assert torch.equal(ones, torch.zeros(9, dtype=torch.float64))  # log 1 is exactly 0


@needs_cpp
def test_key_logarithms_of_special_values_follow_the_c_library():
    from medens import _C

    values = torch.tensor([0.0, -0.0, -1.0, math.inf, -math.inf, math.nan, 5e-324, 1e-310, 2.2250738585072014e-308,
                           3.0, 7.0], dtype=torch.float64)  # a vector of 11: one full step of 8 and a masked one
    got = values.clone()
    _C._log_f64_cpu(got.data_ptr(), got.numel())
    for v, out in zip(values.tolist(), got.tolist(), strict=True):
        if v < 0 or math.isnan(v):
            assert math.isnan(out), (v, out)
        elif v == 0:
            assert out == -math.inf
        else:
            assert out == pytest.approx(math.log(v), rel=1e-15), (v, out)


@needs_cpp
def test_gumbel_noise_matches_its_definition():
    from medens import _C

    u = torch.cat([torch.rand(5001, generator=torch.Generator().manual_seed(1), dtype=torch.float64),
                   torch.tensor([0.0, 1.0, 1e-300, 1 - 2**-53], dtype=torch.float64)])
    got = u.clone()
    _C._gumbel_f64_cpu(got.data_ptr(), got.numel())
    expected = torch.tensor([-math.log(-math.log(v)) if 0 < v < 1 else (-math.inf if v == 0 else math.inf)
                             for v in u.tolist()], dtype=torch.float64)
    finite = expected.isfinite()
    assert torch.equal(got[~finite], expected[~finite])
    # Near u = 1/e the result is near 0 and ill-conditioned: an error of one ulp in -log(u), about 1e-16, is then
    # many ulps of the result, in any implementation. Hence a bound of a few ulps plus a few 2^-52 absolute.
    error = (got[finite] - expected[finite]).abs()
    ulps = _ulps_apart(got[finite], expected[finite]).nan_to_num(0.0)
    assert ((ulps <= 4.0) | (error <= 4 * 2.0**-52)).all()


PORTABLE_MASKING_CHECK = """
import torch
from medens.ops import build_info, entropy_guided_mask
from medens.ops import reference as R
assert build_info()["cpu_avx512"] is False
g = torch.Generator().manual_seed(0)
for temperature in (0.0, 0.5, 1.0, float("inf")):
    scores, noise = torch.rand(9, 196, generator=g) * 8, torch.rand(9, 196, generator=g)
    got = entropy_guided_mask(scores, 0.75, temperature=temperature, noise=noise, backend="cpp")
    expected = R.entropy_guided_mask(scores, 0.75, temperature=temperature, noise=noise)
    assert all(torch.equal(a, b) for a, b in zip(got, expected)), temperature
print("checked")
"""


@needs_cpp
def test_portable_logarithms_give_the_reference_masks(tmp_path):
    result = run_python(PORTABLE_MASKING_CHECK, tmp_path, MEDENS_DISABLE_AVX512="1")
    assert result.returncode == 0, result.stderr
    assert "checked" in result.stdout


@pytest.mark.parametrize("backend", backends("cpp"))
@settings(max_examples=60, deadline=None)
@given(
    b=st.integers(1, 4), n=st.integers(1, 300), ratio=st.floats(0.0, 0.95),
    temperature=st.sampled_from(TEMPERATURES), prefer=st.sampled_from(["high", "low"]),
    levels=st.integers(1, 5), seed=st.integers(0, 2**31 - 1),
)
def test_property_identical_to_reference(backend, b, n, ratio, temperature, prefer, levels, seed):
    if R.num_visible(n, ratio) < 1:
        return
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, levels, (b, n), generator=g).float()  # few levels: many ties
    noise = torch.rand(b, n, generator=g)
    expected = R.entropy_guided_mask(scores, ratio, temperature=temperature, prefer=prefer, noise=noise)
    got = entropy_guided_mask(scores, ratio, temperature=temperature, prefer=prefer, noise=noise,
                              backend=backend)
    assert_same_mask(got, expected)


# ---- bad input ----------------------------------------------------------------------------------------------------

S = torch.rand(2, 10)
BAD_CALLS = [
    (lambda: entropy_guided_mask(torch.rand(10), 0.5), ValueError, "scores must have 2 dimensions"),
    (lambda: entropy_guided_mask(S, 1.0), ValueError, r"mask_ratio must be in \[0, 1\)"),
    (lambda: entropy_guided_mask(S, 1.2), ValueError, "mask_ratio must be in"),
    (lambda: entropy_guided_mask(S, -0.1), ValueError, "mask_ratio must be in"),
    (lambda: entropy_guided_mask(S, 0.95), ValueError, "no visible patch"),
    (lambda: entropy_guided_mask(S, "half"), TypeError, "mask_ratio must be a real number"),
    (lambda: entropy_guided_mask(S, 0.5, temperature=-1.0), ValueError, "temperature must be >= 0"),
    (lambda: entropy_guided_mask(S, 0.5, temperature=math.nan), ValueError, "temperature must be >= 0"),
    (lambda: entropy_guided_mask(S, 0.5, prefer="middle"), ValueError, "prefer must be 'high' or 'low'"),
    (lambda: entropy_guided_mask(S, 0.5, noise=torch.rand(2, 9)), ValueError, r"noise must have shape \(2, 10\)"),
    (lambda: entropy_guided_mask(S, 0.5, noise=torch.rand(2, 10) + 1), ValueError, "noise must hold values"),
    (lambda: entropy_guided_mask(-S, 0.5), ValueError, "scores must be finite and non-negative"),
    (lambda: entropy_guided_mask(S * float("nan"), 0.5), ValueError, "scores must be finite"),
    (lambda: entropy_guided_mask(S.to(torch.int64), 0.5), TypeError, "scores must have dtype"),
]


@pytest.mark.parametrize(("call", "error", "message"), BAD_CALLS)
def test_bad_input_is_refused_with_a_clear_message(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_tensors_on_two_devices_are_refused_naming_the_first() -> None:
    """The message names the argument (``scores``), the device expected and where each tensor is."""
    from medens.ops._validation import check_same_device

    with pytest.raises(ValueError, match=r"^scores: expected every tensor on cpu \(one device\), received "
                                         r"scores on cpu, noise on meta$"):
        check_same_device(scores=torch.zeros(2, 4), noise=torch.zeros(2, 4, device="meta"))


@pytest.mark.parametrize("argument", ["scores", "noise"])
def test_a_meta_tensor_is_refused_by_name(argument):
    # It has a shape but no values.
    scores, noise = torch.rand(2, 16), torch.rand(2, 16)
    if argument == "scores":
        scores = scores.to("meta")
    else:
        noise = noise.to("meta")
    with pytest.raises(ValueError, match=rf"^{argument} must be a tensor with values .*meta device"):
        entropy_guided_mask(scores, 0.75, noise=noise if argument == "noise" else None)
