"""Masked ConvNeXt autoencoder with entropy-guided masking (FCMAE-style pre-training).

The encoder is an unmodified timm ConvNeXt, run as the *dense form of a sparse network* (ConvNeXt-V2's FCMAE):
hidden positions are zeroed after the stem, after every downsampling, around every depthwise convolution and
after every block, so that each layer sees hidden positions as empty. Consequences, which the tests check:

- the encoder's output is exactly 0 at hidden positions;
- pixels inside hidden patches never change a visible feature (hidden pixels are also zeroed before the stem,
  so this holds for overlapping stems too);
- with no patch hidden, the encoder computes exactly what ``timm.create_model(arch).forward_features`` computes,
  so its weights load into a timm classifier with only the head missing (:meth:`MaskedConvNeXt.encoder_state_dict`).

With ``norm="batch"`` (a BatchNorm ConvNeXt, :mod:`medens.models.arch`) the batch statistics of every BatchNorm
count visible positions only, as SparK's sparse BatchNorm does: empty positions are not data. The layers are
:class:`SparseBatchNorm2d`, which holds exactly ``nn.BatchNorm2d``'s state, so the encoder still loads into timm's
BatchNorm ConvNeXt.

Which patches are hidden comes from :mod:`medens.ops`: the Shannon entropy of each patch's grey-level histogram
(:func:`~medens.ops.patch_entropy`), then Gumbel top-k sampling weighted by it
(:func:`~medens.ops.entropy_guided_mask`). ``masking="random"`` (infinite temperature) is MAE's uniform masking.

The decoder is a 1x1 projection to ``decoder_dim``, a learned mask token at hidden positions, ``decoder_depth``
ConvNeXt-V2 blocks and a 1x1 projection to ``p * p * 3`` pixel values per patch. The loss is the mean squared
error over hidden patches only, against per-patch normalised pixels by default (MAE's ``norm_pix_loss``).

The masking grid. A hidden patch must cover whole positions of the encoder's final feature map, so the masking
patch ``p`` is a multiple of the encoder's total stride ``s``. The published ConvNeXt has ``s = 32``: at 96 px that
is a 3 x 3 grid, a choice among nine blocks that leaves the task of painting two thirds of the image from three.
``output_stride=16`` (or 8) builds the same network with its last stage (or last two) dilated instead of
downsampling (timm's ``output_stride``; the weights keep their shapes), so 16 px patches give a 6 x 6 grid at
96 px, the paper's 7 x 7 at 224 px in miniature, at about 1.5 times the arithmetic of ``s = 32`` (counted per stage, not timed). The sparse
semantics above hold unchanged at every stride, and the MAE member is built with the encoder's stride.

Shapes: ``B`` images of ``H x W`` pixels, patch size ``p`` (a multiple of the encoder's stride ``s``),
``N = (H / p) * (W / p)`` patches in row-major order, ``K`` visible and ``M = N - K`` hidden patches per image.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import timm
import torch
import torch.nn.functional as F
from timm.models.convnext import ConvNeXt, ConvNeXtBlock
from torch import nn

from medens import ops
from medens.models.arch import (
    DEFAULT_ARCH,
    DEFAULT_NORM,
    ENCODER_STRIDE,
    check_arch,
    check_output_stride,
    convnext_norm_kwargs,
    stride_kwargs,
)

__all__ = [
    "MaskedConvNeXt",
    "MaskedOutput",
    "FCMAEDecoder",
    "SparseBatchNorm2d",
]

Masking = Literal["entropy", "random"]
Prefer = Literal["high", "low"]
MASKING_CHOICES: tuple[str, ...] = ("entropy", "random")
PREFER_CHOICES: tuple[str, ...] = ("high", "low")


# ----------------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------------


class MaskedOutput(NamedTuple):
    """What :meth:`MaskedConvNeXt.forward` returns.

    Attributes:
        loss: scalar float32, mean squared error over hidden patches.
        pred: ``(B, N, p*p*3)`` predicted pixels for every patch (normalised per patch when ``norm_pix_loss``).
        mask: ``(B, N)`` bool, True where the patch was hidden.
    """

    loss: torch.Tensor
    pred: torch.Tensor
    mask: torch.Tensor


def _hidden_ids(mask: torch.Tensor) -> torch.Tensor:
    """Ascending indices of the hidden patches of each row of a ``(B, N)`` bool mask; rows must hide equally many."""
    counts = mask.sum(dim=1)
    if mask.shape[0] and not bool((counts == counts[0]).all()):
        raise ValueError(
            f"mask: expected the same number of hidden patches in every image, received counts {counts.tolist()}"
        )
    num_hidden = int(counts[0]) if mask.shape[0] else 0
    # Visible patches sort after hidden ones (key 1 > 0); the stable sort keeps ascending index order inside each.
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    return order[:, :num_hidden]


def _expand_hidden(hidden: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour upsampling of a ``(B, 1, gh, gw)`` patch mask to a feature map of ``size`` (h, w)."""
    gh, gw = hidden.shape[-2:]
    h, w = size
    if (h, w) == (gh, gw):
        return hidden
    if h % gh or w % gw:
        raise RuntimeError(f"feature map {h}x{w} is not a whole multiple of the patch grid {gh}x{gw}")
    return hidden.repeat_interleave(h // gh, dim=-2).repeat_interleave(w // gw, dim=-1)


class _SparseMask:
    """Zeroes hidden positions of NCHW (or NHWC) feature maps at any resolution of the encoder.

    A select (``torch.where``, not a multiplication) so that a NaN or inf computed at a hidden position cannot
    leak; one pass where ``masked_fill`` out of place takes two (a copy, then the fill).
    """

    def __init__(self, hidden: torch.Tensor) -> None:
        self.grid = hidden  # (B, 1, gh, gw) bool
        self._cache: dict[tuple[int, int], torch.Tensor] = {}

    def at(self, size: tuple[int, int]) -> torch.Tensor:
        if size not in self._cache:
            self._cache[size] = _expand_hidden(self.grid, size)
        return self._cache[size]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Zero hidden positions of ``x`` (B, C, h, w)."""
        return torch.where(self.at((x.shape[-2], x.shape[-1])), 0.0, x)

    def channels_last(self, x: torch.Tensor) -> torch.Tensor:
        """Zero hidden positions of ``x`` (B, h, w, C)."""
        return torch.where(self.at((x.shape[1], x.shape[2])).permute(0, 2, 3, 1), 0.0, x)


class SparseBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training statistics, inside the masked encoder, count visible positions only.

    :meth:`MaskedConvNeXt.forward_encoder` sets :attr:`sparse` for the length of one pass; with it unset, or in
    evaluation (running statistics, a per-position map), this is ``nn.BatchNorm2d`` unchanged. Written here because
    torch has no masked BatchNorm; the state dict is ``nn.BatchNorm2d``'s, so the weights load into timm's model.
    """

    sparse: _SparseMask | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sparse is None or not self.training:
            return super().forward(x)
        hidden = self.sparse.at((x.shape[-2], x.shape[-1]))
        # At least one patch per image is visible (the mask ratio leaves one), so count >= 1; it stays a tensor,
        # so no layer waits for the device.
        count = (~hidden).sum().float()
        x32 = torch.where(hidden, 0.0, x.float())  # also keeps a NaN at a hidden position out of the sums
        mean = x32.sum(dim=(0, 2, 3)) / count
        var = torch.where(hidden, 0.0, x32 - mean.view(1, -1, 1, 1)).square().sum(dim=(0, 2, 3)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                unbiased = var * (count / (count - 1).clamp_min(1))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        scale = torch.rsqrt(var + self.eps)
        shift = -mean * scale
        if self.affine:
            scale, shift = scale * self.weight.float(), shift * self.weight.float() + self.bias.float()
        return torch.addcmul(shift.view(1, -1, 1, 1), x32, scale.view(1, -1, 1, 1)).to(x.dtype)


def _masked_mlp(mlp: nn.Module, x: torch.Tensor, zero_hidden) -> torch.Tensor:
    """Run a timm ``Mlp``/``GlobalResponseNormMlp``, re-zeroing hidden positions before a global response norm.

    GRN pools over all positions, so positions the sparse network would not have must be 0 when it runs.
    """
    grn = getattr(mlp, "grn", None)
    if grn is None or isinstance(grn, nn.Identity):
        return mlp(x)
    x = mlp.drop1(mlp.act(mlp.fc1(x)))
    x = grn(zero_hidden(x))
    return mlp.drop2(mlp.fc2(x))


def _masked_block(block: ConvNeXtBlock, x: torch.Tensor, sparse: _SparseMask) -> torch.Tensor:
    """A timm ``ConvNeXtBlock`` as a sparse block: ``x`` (B, C, h, w) is 0 at hidden positions and so is the result."""
    shortcut = x
    x = sparse(block.conv_dw(x))
    if block.use_conv_mlp:
        x = _masked_mlp(block.mlp, block.norm(x), sparse)
    else:
        x = x.permute(0, 2, 3, 1)
        x = _masked_mlp(block.mlp, block.norm(x), sparse.channels_last)
        x = x.permute(0, 3, 1, 2)
    if block.gamma is not None:
        x = x.mul(block.gamma.reshape(1, -1, 1, 1))
    x = block.drop_path(x) + block.shortcut(shortcut)
    return sparse(x)


class FCMAEDecoder(nn.Module):
    """Light convolutional decoder: project, fill hidden positions with a mask token, ConvNeXt-V2 blocks, predict.

    Args:
        in_dim: channels of the encoder's final feature map.
        decoder_dim: decoder width.
        depth: number of ConvNeXt-V2 blocks (GRN, no layer scale).
        out_dim: values predicted per patch, ``p * p * 3``.
    """

    def __init__(self, in_dim: int, decoder_dim: int, depth: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_dim, decoder_dim, kernel_size=1)
        self.mask_token = nn.Parameter(torch.zeros(1, decoder_dim, 1, 1))
        self.blocks = nn.Sequential(
            *[ConvNeXtBlock(decoder_dim, use_grn=True, ls_init_value=None) for _ in range(depth)]
        )
        self.pred = nn.Conv2d(decoder_dim, out_dim, kernel_size=1)

    def forward(self, x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Decode.

        Args:
            x: ``(B, C, gh, gw)`` encoder features on the patch grid (0 at hidden patches).
            hidden: ``(B, 1, gh, gw)`` bool, True at hidden patches.

        Returns:
            ``(B, gh*gw, out_dim)`` predictions, patches in row-major order.
        """
        x = self.proj(x)
        x = torch.where(hidden, self.mask_token.to(x.dtype), x)
        x = self.pred(self.blocks(x))
        return x.flatten(2).transpose(1, 2)


# ----------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------


class MaskedConvNeXt(nn.Module):
    """ConvNeXt masked autoencoder with entropy-guided masking.

    Args:
        arch: a timm ConvNeXt (``convnext_tiny`` for the paper; ``convnext_atto``/``femto``/``pico``/``nano`` for
            small machines; ConvNeXt-V2 names work too). A pretrained tag (``.fb_in1k``) is ignored.
        image_size: side of the square input images; a multiple of ``patch_size``.
        patch_size: masking patch size; a multiple of ``output_stride``. ``None`` means ``output_stride``.
        mask_ratio: fraction of patches hidden, in (0, 1); ``int(N * (1 - mask_ratio))`` stay visible.
        masking: ``"entropy"`` (the paper) or ``"random"`` (MAE's uniform masking, for ablations).
        mask_temperature: temperature of entropy-guided sampling; 0 is plain top-k, ``inf`` is uniform.
        mask_prefer: ``"high"`` hides high-entropy patches preferentially, ``"low"`` low-entropy ones.
        entropy_bins: histogram bins for the patch entropy.
        decoder_dim: decoder width (512 in FCMAE).
        decoder_depth: decoder blocks (1 in FCMAE).
        norm_pix_loss: regress per-patch normalised pixels (MAE's ``norm_pix_loss``).
        drop_path_rate: stochastic depth of the encoder.
        ops_backend: backend for :mod:`medens.ops` (``"auto"``, ``"reference"``, or a kernel backend).
        norm: the encoder's normalisation, ``"layer"`` (as published) or ``"batch"`` (:class:`SparseBatchNorm2d`).
        mean: per-channel mean used to normalise [0, 1] images; default from the arch's pretrained config.
        std: per-channel std, likewise.
        output_stride: the encoder's total stride, 32 (as published), 16 or 8 (the last stages dilated).

    Raises:
        ValueError: on an unknown arch or output stride, a patch size that is not a multiple of the stride, an image size that is not a
            multiple of the patch size, a mask ratio outside (0, 1) or one that leaves no visible or no hidden
            patch, or an unknown masking / prefer choice.
    """

    def __init__(
        self,
        arch: str = DEFAULT_ARCH,
        image_size: int = 224,
        patch_size: int | None = None,
        mask_ratio: float = 0.6,
        masking: Masking = "entropy",
        mask_temperature: float = 1.0,
        mask_prefer: Prefer = "high",
        entropy_bins: int = 256,
        decoder_dim: int = 512,
        decoder_depth: int = 1,
        norm_pix_loss: bool = True,
        drop_path_rate: float = 0.0,
        ops_backend: str = "auto",
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        norm: str = DEFAULT_NORM,
        output_stride: int = ENCODER_STRIDE,
    ) -> None:
        super().__init__()
        self.arch = check_arch(arch)
        self.output_stride = check_output_stride(output_stride)
        patch_size = self.output_stride if patch_size is None else patch_size
        _check_geometry(image_size, patch_size, mask_ratio, self.output_stride)
        if masking not in MASKING_CHOICES:
            raise ValueError(f"masking: expected one of {MASKING_CHOICES}, received {masking!r}")
        if mask_prefer not in PREFER_CHOICES:
            raise ValueError(f"mask_prefer: expected one of {PREFER_CHOICES}, received {mask_prefer!r}")
        if not mask_temperature >= 0:
            raise ValueError(
                f"mask_temperature: expected a number >= 0 (or inf), received {mask_temperature!r}"
            )
        for name, value in (
            ("decoder_dim", decoder_dim),
            ("decoder_depth", decoder_depth),
            ("entropy_bins", entropy_bins),
        ):
            if not isinstance(value, int) or value < (0 if name == "decoder_depth" else 1):
                raise ValueError(f"{name}: expected a positive integer, received {value!r}")

        self.image_size = int(image_size)
        self.patch_size = int(patch_size)
        self.grid_size = self.image_size // self.patch_size
        self.num_patches = self.grid_size**2
        self.mask_ratio = float(mask_ratio)
        self.masking = masking
        self.mask_temperature = float(mask_temperature)
        self.mask_prefer = mask_prefer
        self.entropy_bins = int(entropy_bins)
        self.norm_pix_loss = bool(norm_pix_loss)
        self.ops_backend = ops_backend

        self.norm = norm
        encoder = timm.create_model(
            self.arch,
            pretrained=False,
            drop_path_rate=drop_path_rate,
            **convnext_norm_kwargs(norm, batch_norm=SparseBatchNorm2d),
            **stride_kwargs(self.output_stride),
        )
        if not isinstance(encoder, ConvNeXt):  # pragma: no cover - check_arch only admits ConvNeXt names
            raise ValueError(f"arch: expected a timm ConvNeXt, received {arch!r} ({type(encoder).__name__})")
        if encoder.feature_info[-1]["reduction"] != self.output_stride:  # pragma: no cover - every ConvNeXt
            raise ValueError(f"arch: expected an encoder of total stride {self.output_stride}, received {arch!r}")
        # The classifier head is fine-tuning's business: the encoder is stem + stages (+ norm_pre).
        encoder.head = nn.Identity()
        self.encoder = encoder
        self._sparse_norms = [m for m in encoder.modules() if isinstance(m, SparseBatchNorm2d)]
        self.num_features = encoder.num_features

        cfg = encoder.pretrained_cfg or {}
        mean = tuple(mean or cfg.get("mean", timm.data.IMAGENET_DEFAULT_MEAN))
        std = tuple(std or cfg.get("std", timm.data.IMAGENET_DEFAULT_STD))
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

        self.decoder = FCMAEDecoder(self.num_features, decoder_dim, decoder_depth, self.patch_size**2 * 3)
        self._init_decoder()

    def _init_decoder(self) -> None:
        for module in self.decoder.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.decoder.mask_token, std=0.02)

    # -- masking -----------------------------------------------------------------------------------------------

    @property
    def mask_grid(self) -> tuple[int, int]:
        """``(rows, columns)`` of the masking grid."""
        return (self.grid_size, self.grid_size)

    @property
    def num_visible(self) -> int:
        """``K``: patches left visible per image."""
        return int(self.num_patches * (1 - self.mask_ratio))

    def patch_scores(self, images: torch.Tensor) -> torch.Tensor:
        """Entropy of every patch, ``(B, N)`` float32 bits, from ``images`` (B, 3, H, W) in [0, 1]."""
        return ops.patch_entropy(
            images.detach(), self.patch_size, bins=self.entropy_bins, backend=self.ops_backend
        )

    def sample_mask(
        self, images: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> tuple[ops.PatchMask, torch.Tensor]:
        """Choose the hidden patches of each image.

        Args:
            images: ``(B, 3, H, W)`` float in [0, 1] (not normalised).
            generator: random source; the global one by default (so checkpointed RNG state covers it).

        Returns:
            The :class:`medens.ops.PatchMask` and the ``(B, N)`` entropy scores it was drawn from.
        """
        scores = self.patch_scores(images)
        temperature = float("inf") if self.masking == "random" else self.mask_temperature
        patch_mask = ops.entropy_guided_mask(
            scores,
            self.mask_ratio,
            temperature=temperature,
            prefer=self.mask_prefer,
            generator=generator,
            backend=self.ops_backend,
        )
        return patch_mask, scores

    # -- encoder / decoder / loss -------------------------------------------------------------------------------

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` [0, 1] images to the encoder's input scale (per-channel mean and std)."""
        return (images - self.pixel_mean.to(images.dtype)) / self.pixel_std.to(images.dtype)

    def forward_encoder(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encode with hidden patches treated as empty.

        Args:
            images: ``(B, 3, H, W)`` float in [0, 1]; ``H`` and ``W`` multiples of ``patch_size``.
            mask: ``(B, N)`` bool, True = hidden, ``N = (H / p) * (W / p)``.

        Returns:
            ``(B, C, H / s, W / s)`` final feature map (``s = output_stride``), exactly 0 at hidden positions.
        """
        self._check_images(images)
        b, _, h, w = images.shape
        gh, gw = h // self.patch_size, w // self.patch_size
        if mask.shape != (b, gh * gw) or mask.dtype != torch.bool:
            raise ValueError(
                f"mask: expected a bool tensor of shape {(b, gh * gw)}, received {mask.dtype} {tuple(mask.shape)}"
            )
        sparse = _SparseMask(mask.view(b, 1, gh, gw))
        x = self.normalize(images)
        # Hidden pixels are zeroed before the stem too, so overlapping stems cannot see them either.
        x = ops.apply_patch_mask(x, mask, self.patch_size, fill=0.0, backend=self.ops_backend)
        enc = self.encoder
        for norm in self._sparse_norms:
            norm.sparse = sparse
        try:
            x = sparse(enc.stem(x))
            for stage in enc.stages:
                if not isinstance(stage.downsample, nn.Identity):
                    x = sparse(stage.downsample(x))
                for block in stage.blocks:
                    x = _masked_block(block, x, sparse)
            return sparse(enc.norm_pre(x))
        finally:
            for norm in self._sparse_norms:
                norm.sparse = None

    def forward_decoder(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Predict the pixels of every patch.

        Args:
            features: ``(B, C, H / s, W / s)`` from :meth:`forward_encoder`.
            mask: ``(B, N)`` bool, True = hidden.

        Returns:
            ``(B, N, p*p*3)`` predicted pixel values, in the order of :func:`medens.ops.patchify`.
        """
        b = features.shape[0]
        stride_per_patch = self.patch_size // self.output_stride
        if stride_per_patch > 1:  # several feature positions per patch: pool them (all visible or all empty)
            features = F.avg_pool2d(features, stride_per_patch)
        gh, gw = features.shape[-2:]
        return self.decoder(features, mask.view(b, 1, gh, gw))

    def forward_loss(self, images: torch.Tensor, pred: torch.Tensor, ids_mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over hidden patches.

        Args:
            images: ``(B, 3, H, W)`` in [0, 1], the targets' source.
            pred: ``(B, N, p*p*3)`` from :meth:`forward_decoder`.
            ids_mask: ``(B, M)`` int64 indices of the hidden patches.

        Returns:
            Scalar float32 loss.
        """
        target = ops.gather_patches(
            images, ids_mask, self.patch_size, normalize=self.norm_pix_loss, backend=self.ops_backend
        )
        pred_hidden = torch.gather(pred, 1, ids_mask.unsqueeze(-1).expand(-1, -1, pred.shape[-1]))
        return F.mse_loss(pred_hidden.float(), target.float())

    def forward(
        self,
        images: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> MaskedOutput:
        """Mask, encode, decode and score one batch.

        Args:
            images: ``(B, 3, H, W)`` float in [0, 1] (the model normalises internally).
            mask: optional ``(B, N)`` bool mask (True = hidden) to use instead of sampling one; every image must
                hide the same number of patches.
            generator: random source for the mask.

        Returns:
            :class:`MaskedOutput` ``(loss, pred, mask)``.
        """
        self._check_images(images)
        if mask is None:
            patch_mask, _ = self.sample_mask(images, generator=generator)
            mask, ids_mask = patch_mask.mask, patch_mask.ids_mask
        else:
            ids_mask = _hidden_ids(mask)
        features = self.forward_encoder(images, mask)
        pred = self.forward_decoder(features, mask)
        loss = self.forward_loss(images, pred, ids_mask)
        return MaskedOutput(loss, pred, mask)

    # -- weights -----------------------------------------------------------------------------------------------

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's weights under timm's names, for ``timm.create_model(arch, num_classes=k)``.

        Loading them with ``strict=False`` leaves only the classifier head (``head.*``) missing.
        """
        return {
            k: v.detach().clone() for k, v in self.encoder.state_dict().items() if not k.startswith("head.")
        }

    def encoder_config(self) -> dict[str, Any]:
        """What a fine-tuning run needs to know about this encoder (stored with the exported weights)."""
        return {
            "arch": self.arch,
            "norm": self.norm,
            "output_stride": self.output_stride,
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "mask_grid": list(self.mask_grid),
            "mask_ratio": self.mask_ratio,
            "masking": self.masking,
            "mask_temperature": self.mask_temperature,
            "mask_prefer": self.mask_prefer,
            "mean": [float(v) for v in self.pixel_mean.flatten()],
            "std": [float(v) for v in self.pixel_std.flatten()],
        }

    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay (besides biases and norms, which are 1-D)."""
        return {"decoder.mask_token"}

    # -- checks ------------------------------------------------------------------------------------------------

    def _check_images(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(
                f"images: expected a float tensor of shape (B, 3, H, W) in [0, 1], "
                f"received {images.dtype} {tuple(images.shape)}"
            )
        h, w = images.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"images: expected height and width multiples of the patch size {self.patch_size}, "
                f"received {h}x{w}"
            )


def _check_geometry(image_size: int, patch_size: int, mask_ratio: float, output_stride: int) -> None:
    """Validate image size, patch size and mask ratio together (errors name the option and the values)."""
    if not isinstance(patch_size, int) or patch_size <= 0 or patch_size % output_stride:
        raise ValueError(
            f"patch_size: expected a positive multiple of the encoder stride {output_stride} (output_stride), "
            f"received {patch_size!r}"
        )
    if not isinstance(image_size, int) or image_size <= 0 or image_size % patch_size:
        raise ValueError(
            f"image_size: expected a positive multiple of the patch size {patch_size} (e.g. "
            f"{max(patch_size, round(image_size / patch_size) * patch_size) if isinstance(image_size, int) else 224}), "
            f"received {image_size!r}"
        )
    if not isinstance(mask_ratio, (int, float)) or not 0.0 < mask_ratio < 1.0:
        raise ValueError(
            f"mask_ratio: expected a number strictly between 0 and 1 (e.g. 0.6), received {mask_ratio!r}"
        )
    num_patches = (image_size // patch_size) ** 2
    num_visible = int(num_patches * (1 - mask_ratio))
    if not 0 < num_visible < num_patches:
        raise ValueError(
            f"mask_ratio: {mask_ratio} leaves {num_visible} of {num_patches} patches visible at image_size "
            f"{image_size} and patch_size {patch_size}; expected at least one visible and one hidden patch "
            f"(use larger images or another ratio)"
        )
