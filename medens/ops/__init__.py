"""The medens op library: patch entropy, entropy-guided masking and patch gathering for masked autoencoders.

Every op has a pure-PyTorch reference (:mod:`medens.ops.reference`, the specification) and compiled kernels
(C++/OpenMP on CPU, CUDA and Triton on GPU), chosen with ``backend="auto"|"reference"|"cpp"|"cuda"|"triton"``.
The ops are registered with ``torch.library`` (namespace ``medens``), so ``torch.compile`` traces them.

>>> import torch
>>> from medens.ops import patch_entropy, entropy_guided_mask, gather_patches, apply_patch_mask
>>> images = torch.rand(2, 3, 64, 64)
>>> scores = patch_entropy(images, 16)                      # (2, 16) bits
>>> m = entropy_guided_mask(scores, 0.75)                   # hide 12 of 16 patches, high entropy first
>>> visible = gather_patches(images, m.ids_keep, 16)        # (2, 4, 768)
>>> masked = apply_patch_mask(images, m.mask, 16)           # hidden patches set to 0
"""

from ._backends import available_backends, build_info
from ._host_memory import empty_host_cache, host_cache_info
from .entropy import patch_entropy
from .masking import entropy_guided_mask
from .patches import apply_patch_mask, gather_patches, patchify, unpatchify
from .reference import PatchMask

__all__ = [
    "PatchMask",
    "apply_patch_mask",
    "available_backends",
    "build_info",
    "empty_host_cache",
    "entropy_guided_mask",
    "gather_patches",
    "host_cache_info",
    "patch_entropy",
    "patchify",
    "unpatchify",
]
