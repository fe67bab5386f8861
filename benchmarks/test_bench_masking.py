"""entropy_guided_mask on (256, 196) scores (ConvNeXt at 224 px with 16-pixel patches).

Roofline counts: reads scores and noise, writes the mask and three index lists. Per patch, a Gumbel key costs
three logarithms (counted as 20 operations each) and a few more; the selection about 10 (T = 0: only those).
"""

from __future__ import annotations

import pytest
import torch

from medens.ops import entropy_guided_mask

from .conftest import run

pytestmark = pytest.mark.benchmark


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_entropy_guided_mask(benchmark, device, backend, temperature):
    scores = torch.rand(256, 196, device=device) * 8
    noise = torch.rand(256, 196, device=device)
    case = f"(256, 196) T={temperature:g} ratio=0.75"
    run(benchmark, lambda: entropy_guided_mask(scores, 0.75, temperature=temperature, noise=noise,
                                               backend=backend),
        op="entropy_guided_mask", case=case, backend=backend, device=device,
        bytes_moved=2 * scores.numel() * 4 + scores.numel() * (1 + 3 * 8), rounds=50,
        ops=scores.numel() * (70 if temperature else 10))
