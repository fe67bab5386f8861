"""``entropy_guided_mask``: choose the patches a masked autoencoder hides, guided by per-patch scores."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import reference
from ._backends import resolve_backend
from ._registry import kernel
from ._validation import FLOAT_DTYPES, check_float, check_same_device, check_shape, check_tensor, eager
from .reference import PatchMask


@torch.library.custom_op("medens::entropy_guided_mask", mutates_args=())
def _entropy_guided_mask_op(
    scores: Tensor, noise: Tensor | None, num_keep: int, temperature: float, prefer_high: bool, backend: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return kernel("entropy_guided_mask", backend)(scores, noise, num_keep, temperature, prefer_high)


@_entropy_guided_mask_op.register_fake
def _(scores, noise, num_keep, temperature, prefer_high, backend):
    b, n = scores.shape
    return (
        scores.new_empty((b, n), dtype=torch.bool),
        scores.new_empty((b, num_keep), dtype=torch.int64),
        scores.new_empty((b, n - num_keep), dtype=torch.int64),
        scores.new_empty((b, n), dtype=torch.int64),
    )


def _no_gradient(ctx, *grads):
    # The selection is piecewise constant in the scores and the noise.
    return None, None, None, None, None, None


_entropy_guided_mask_op.register_autograd(_no_gradient)


def _check_temperature(temperature: object) -> float:
    t = check_float("temperature", temperature)
    if math.isnan(t) or t < 0:
        raise ValueError(f"temperature must be >= 0 (0 = plain top-k, inf = uniform), got {t}")
    return t


def entropy_guided_mask(
    scores: Tensor,
    mask_ratio: float,
    *,
    temperature: float = 1.0,
    prefer: str = "high",
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    backend: str = "auto",
) -> PatchMask:
    """Hide ``N - K`` of the N patches, drawn without replacement with probability ∝ (score + 1e-6) ** (±1 / T).

    K = ``int(N * (1 - mask_ratio))`` patches stay visible (MAE's rule). Selection is Gumbel top-k: the hidden
    patches are the N - K largest keys ``±log(score + 1e-6) / T + g``, ``g = -log(-log(noise))``. T = 0 hides
    the top-scored patches (``prefer="low"``: the lowest), ties to the lower index; T = inf is MAE's uniform
    random masking. Given the same ``noise``, every backend returns identical results. (Keys are float64 and each
    backend's logarithm is within about one unit in the last place of the exact value, so two keys less than a few
    such units apart at the cut could be ordered differently; random scores and noise never come that close.)

    Args:
        scores: (B, N) non-negative floats (entropy, or any saliency).
        mask_ratio: fraction of patches hidden, in [0, 1); K = 0 is an error.
        temperature: T >= 0; may be ``float("inf")``.
        prefer: "high" or "low".
        noise: (B, N) uniform in (0, 1), any floating dtype; drawn with ``torch.rand(..., generator=generator)``
            when None. Unused when T = 0.
        generator: random generator for the noise.
        backend: "auto", "reference", "cpp", "cuda" or "triton".

    Returns:
        PatchMask(mask (B, N) bool True = hidden, ids_keep (B, K), ids_mask (B, N - K), ids_restore (B, N)).
    """
    scores = check_tensor("scores", scores, ndim=2, dtypes=FLOAT_DTYPES)
    ratio = check_float("mask_ratio", mask_ratio)
    if not 0 <= ratio < 1:
        raise ValueError(f"mask_ratio must be in [0, 1), got {ratio}")
    t = _check_temperature(temperature)
    if prefer not in ("high", "low"):
        raise ValueError(f"prefer must be 'high' or 'low', got {prefer!r}")
    b, n = scores.shape
    k = reference.num_visible(n, ratio)
    if k < 1:
        raise ValueError(
            f"mask_ratio = {ratio} leaves no visible patch of N = {n} (K = int(N * (1 - mask_ratio)) = 0)")
    if noise is not None:
        noise = check_tensor("noise", noise, ndim=2, dtypes=FLOAT_DTYPES)
        check_shape("noise", noise, (b, n), "the shape of scores")
        check_same_device(scores=scores, noise=noise)
    if eager() and scores.numel():
        low, high = (float(v) for v in torch.aminmax(scores.detach()))
        if not (low >= 0 and high < math.inf):  # also false for NaN
            raise ValueError(f"scores must be finite and non-negative, got values in [{low}, {high}]")
        if noise is not None:
            low, high = (float(v) for v in torch.aminmax(noise.detach()))
            if not (low >= 0 and high <= 1):
                raise ValueError(f"noise must hold values in (0, 1) (uniform noise), got values in [{low}, {high}]")
    if t != 0 and noise is None:
        noise = torch.rand(b, n, generator=generator, device=scores.device)
    name = resolve_backend(backend, scores.device, "entropy_guided_mask")
    if name == "reference":
        return reference.entropy_guided_mask(scores, ratio, temperature=t, prefer=prefer, noise=noise)
    return PatchMask(*_entropy_guided_mask_op(scores, noise if t != 0 else None, k, t, prefer == "high", name))
