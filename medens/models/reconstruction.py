"""What a masked autoencoder sees and makes: images, entropy maps, masks and reconstructions, as arrays or a PNG.

With ``norm_pix_loss`` the decoder predicts each hidden patch normalised by that patch's own mean and standard
deviation; :func:`reconstruct` undoes this with the true patch statistics (as MAE's visualisation does), so the
picture shows the predicted *structure* of each hidden patch at the right brightness.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medens import ops
from medens.io import atomic_write_bytes
from medens.models.masked_convnext import MaskedConvNeXt

__all__ = ["Reconstruction", "reconstruct", "save_reconstruction_grid"]


@dataclass
class Reconstruction:
    """Arrays for a few images (all float32 numpy, images channels-last in [0, 1]).

    Attributes:
        images: ``(B, H, W, 3)`` inputs.
        entropy: ``(B, gh, gw)`` patch entropy in bits.
        mask: ``(B, gh, gw)`` bool, True = hidden.
        reconstruction: ``(B, H, W, 3)`` visible patches as given, hidden patches as predicted.
        loss: the batch's loss.
    """

    images: np.ndarray
    entropy: np.ndarray
    mask: np.ndarray
    reconstruction: np.ndarray
    loss: float


@torch.no_grad()
def reconstruct(model: MaskedConvNeXt, images: torch.Tensor, *, seed: int = 0) -> Reconstruction:
    """Mask ``images`` (B, 3, H, W) in [0, 1] as in training (with a fixed seed), encode, decode, reassemble."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        images = images.to(device, torch.float32)
        generator = torch.Generator(device=device).manual_seed(seed)
        patch_mask, scores = model.sample_mask(images, generator=generator)
        loss, pred, mask = model(images, patch_mask.mask)
        p = model.patch_size
        patches = ops.patchify(images, p).float()
        pred = pred.float()
        if model.norm_pix_loss:
            mean = patches.mean(-1, keepdim=True)
            std = (patches.var(-1, keepdim=True) + 1e-6).sqrt()
            pred = pred * std + mean
        merged = torch.where(mask.unsqueeze(-1), pred, patches)
        h, w = images.shape[-2:]
        recon = ops.unpatchify(merged, p, h, w).clamp(0, 1)
    finally:
        model.train(was_training)
    grid = (images.shape[0], h // p, w // p)
    return Reconstruction(
        images=images.permute(0, 2, 3, 1).cpu().numpy(),
        entropy=scores.view(grid).cpu().numpy(),
        mask=mask.view(grid).cpu().numpy(),
        reconstruction=recon.permute(0, 2, 3, 1).cpu().numpy(),
        loss=float(loss),
    )


def save_reconstruction_grid(path: str | os.PathLike, rec: Reconstruction, *, dpi: int = 100) -> Path:
    """One row per image: the image, its entropy map, the mask over the image, the reconstruction (PNG, atomic)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    n = rec.images.shape[0]
    fig = Figure(figsize=(4 * 2.6, n * 2.6))
    axes = fig.subplots(n, 4, squeeze=False)
    h, w = rec.images.shape[1:3]
    vmax = float(max(rec.entropy.max(), 1e-6))
    for i in range(n):
        image = rec.images[i]
        hidden = np.kron(
            rec.mask[i].astype(np.float32), np.ones((h // rec.mask.shape[1], w // rec.mask.shape[2]))
        )
        masked = image * (1 - hidden[..., None]) + 0.5 * hidden[..., None]
        panels = [
            ("image", image, {}),
            ("patch entropy (bits)", rec.entropy[i], {"cmap": "magma", "vmin": 0.0, "vmax": vmax}),
            (f"mask ({int(rec.mask[i].sum())}/{rec.mask[i].size} hidden)", masked, {}),
            ("reconstruction", rec.reconstruction[i], {}),
        ]
        for ax, (title, data, kwargs) in zip(axes[i], panels, strict=True):
            artist = ax.imshow(
                np.clip(data, 0, None) if data.ndim == 3 else data, interpolation="nearest", **kwargs
            )
            if data.ndim == 2:
                fig.colorbar(artist, ax=ax, fraction=0.046, pad=0.04)
            ax.set_title(title, fontsize=9)
            ax.set_axis_off()
    fig.suptitle(f"masked-autoencoder reconstructions (loss {rec.loss:.4f})", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return atomic_write_bytes(path, buf.getvalue())
