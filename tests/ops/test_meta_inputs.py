"""Every public op refuses a tensor on the meta device by the argument's name (it has a shape but no values)."""

from __future__ import annotations

import pytest
import torch

from medens.ops import apply_patch_mask, entropy_guided_mask, gather_patches, patch_entropy

META = torch.device("meta")


def _calls() -> dict[str, tuple]:
    images, scores = torch.rand(2, 3, 32, 32), torch.rand(2, 16)
    ids, mask = torch.zeros(2, 4, dtype=torch.int64), torch.zeros(2, 16, dtype=torch.bool)
    return {
        "scores": (entropy_guided_mask, (scores.to(META), 0.75), {}),
        "noise": (entropy_guided_mask, (scores, 0.75), {"noise": torch.rand(2, 16).to(META)}),
        "images": (patch_entropy, (images.to(META), 8), {}),
        "ids": (gather_patches, (images, ids.to(META), 8), {}),
        "mask": (apply_patch_mask, (images, mask.to(META), 8), {}),
    }


@pytest.mark.parametrize("argument", list(_calls()))
def test_a_meta_tensor_is_refused_by_name(argument: str) -> None:
    op, args, kwargs = _calls()[argument]
    with pytest.raises(ValueError, match=rf"^{argument} must be a tensor with values .*meta device"):
        op(*args, **kwargs)
