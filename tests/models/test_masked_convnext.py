"""MaskedConvNeXt: sparse semantics of the encoder, the loss, masking choices and option checks."""

from __future__ import annotations

import math

import pytest
import timm
import torch

import medens.models.masked_convnext as mc
from medens import ops
from medens.models import MaskedConvNeXt

IMAGE = 64
PATCH = 32


def _mask(batch: int, grid: int, hidden: list[list[int]]) -> torch.Tensor:
    ids = torch.tensor(hidden, dtype=torch.int64)
    assert ids.shape[0] == batch
    return torch.zeros(batch, grid * grid, dtype=torch.bool).scatter_(1, ids, True)


def _hidden_pixels(mask: torch.Tensor, patch: int, size: int) -> torch.Tensor:
    """(B, 1, H, W) bool: pixels inside hidden patches."""
    grid = size // patch
    m = mask.view(-1, 1, grid, grid)
    return m.repeat_interleave(patch, -2).repeat_interleave(patch, -1)


def _hidden_at(mask: torch.Tensor, shape: torch.Size, channels_last: bool) -> torch.Tensor:
    """The hidden mask broadcastable to a feature map of ``shape`` (NCHW or NHWC)."""
    b = mask.shape[0]
    grid = int(math.isqrt(mask.shape[1]))
    h, w = (shape[1], shape[2]) if channels_last else (shape[-2], shape[-1])
    m = mask.view(b, 1, grid, grid).repeat_interleave(h // grid, -2).repeat_interleave(w // grid, -1)
    return m.permute(0, 2, 3, 1) if channels_last else m


def _noise_hooks(model: MaskedConvNeXt, mask: torch.Tensor, seed: int) -> list:
    """Forward hooks that add large noise at hidden positions to the output of every encoder layer."""
    gen = torch.Generator().manual_seed(seed)

    def make(channels_last: bool):
        def hook(module, inputs, out):
            noise = torch.randn(out.shape, generator=gen) * 10
            return out + noise * _hidden_at(mask, out.shape, channels_last)

        return hook

    enc = model.encoder
    handles = [enc.stem.register_forward_hook(make(False))]
    for stage in enc.stages:
        if not isinstance(stage.downsample, torch.nn.Identity):
            handles.append(stage.downsample.register_forward_hook(make(False)))
        for block in stage.blocks:
            cl = not block.use_conv_mlp
            handles.append(block.conv_dw.register_forward_hook(make(False)))
            handles.append(block.norm.register_forward_hook(make(cl)))
            handles.append(block.mlp.act.register_forward_hook(make(cl)))
            handles.append(block.mlp.register_forward_hook(make(cl)))
    return handles


def _some_hidden(batch: int, grid: int, seed: int) -> torch.Tensor:
    """A ``(batch, grid * grid)`` mask hiding half the patches of each image, at random (2 of 4 on a 2 x 2 grid)."""
    if grid == 2:
        return _mask(batch, grid, [[0, 3], [1, 2]][:batch])
    gen = torch.Generator().manual_seed(seed)
    hidden = [torch.randperm(grid * grid, generator=gen)[: grid * grid // 2].tolist() for _ in range(batch)]
    return _mask(batch, grid, hidden)


def sparse_violations(model: MaskedConvNeXt, seed: int = 0) -> list[str]:
    """Which sparse-encoder properties ``model`` violates (empty when it behaves as a sparse network)."""
    torch.manual_seed(seed)
    size, patch = model.image_size, model.patch_size
    images = torch.rand(2, 3, size, size)
    mask = _some_hidden(2, size // patch, seed)
    model.eval()
    violations = []
    with torch.no_grad():
        feats = model.forward_encoder(images, mask)
        hidden = _hidden_at(mask, feats.shape, False).expand_as(feats)
        visible = ~hidden
        if feats[hidden].abs().max() != 0:
            violations.append("output not zero at hidden positions")

        # 1. Pixels inside hidden patches (even NaN and inf) do not change a visible feature.
        pix = _hidden_pixels(mask, patch, size).expand_as(images)
        other = torch.where(pix, torch.rand_like(images), images)
        other[:, :, :2, :2] = torch.where(pix[:, :, :2, :2], torch.tensor(float("nan")), other[:, :, :2, :2])
        feats_px = model.forward_encoder(other, mask)
        if not torch.equal(feats_px[visible], feats[visible]) or feats_px[hidden].abs().max() != 0:
            violations.append("hidden pixels change the output")

        # 2. Whatever any layer computes at hidden positions never reaches a visible position.
        handles = _noise_hooks(model, mask, seed)
        try:
            feats_noise = model.forward_encoder(images, mask)
        finally:
            for h in handles:
                h.remove()
        if not torch.equal(feats_noise[visible], feats[visible]):
            violations.append("hidden activations leak into visible positions")
    return violations


@pytest.mark.parametrize("arch", ["convnext_atto", "convnextv2_atto", "convnext_atto_ols", "convnext_tiny"])
def test_encoder_is_sparse(arch: str) -> None:
    model = MaskedConvNeXt(arch, image_size=IMAGE, decoder_dim=32)
    assert sparse_violations(model) == []


@pytest.mark.parametrize("norm", ["layer", "batch"])
@pytest.mark.parametrize(("output_stride", "image_size"), [(16, 96), (8, 64)])
def test_finer_stride_encoder_is_sparse(output_stride: int, image_size: int, norm: str) -> None:
    """A 6 x 6 (or 8 x 8) masking grid at the dilated encoder's own stride keeps the sparse semantics exactly."""
    model = _with_active_blocks(
        MaskedConvNeXt(
            "convnext_atto", image_size=image_size, decoder_dim=32, norm=norm, output_stride=output_stride
        )
    )
    assert model.patch_size == output_stride and min(model.mask_grid) >= 6
    assert sparse_violations(model) == []


@pytest.mark.parametrize("leak", ["_skip_first_sparse_call", "_no_block_output_mask", "_no_pixel_or_stem_mask"])
def test_sparse_checks_catch_a_missing_mask_at_a_finer_stride(leak: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _with_active_blocks(MaskedConvNeXt("convnext_atto", image_size=96, decoder_dim=32, output_stride=16))
    assert sparse_violations(model) == []
    globals()[leak](monkeypatch)
    assert sparse_violations(model) != []


def _with_active_blocks(model: MaskedConvNeXt) -> MaskedConvNeXt:
    """Layer scale starts at 1e-6, which would hide a leak below float32 resolution; make every block matter."""
    with torch.no_grad():
        for stage in model.encoder.stages:
            for block in stage.blocks:
                block.gamma.fill_(1.0)
    return model


def _batch_norm_model(**kwargs) -> MaskedConvNeXt:
    """A BatchNorm encoder with non-trivial layer scale and BatchNorm affine parameters and running statistics."""
    torch.manual_seed(1)
    model = MaskedConvNeXt("convnext_atto", image_size=IMAGE, decoder_dim=32, norm="batch", **kwargs)
    with torch.no_grad():
        for module in model.encoder.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
        for stage in model.encoder.stages:
            for block in stage.blocks:
                block.gamma.fill_(1.0)
    return model


def test_batch_norm_encoder_is_sparse_in_evaluation() -> None:
    model = _batch_norm_model()
    assert all(type(m) is mc.SparseBatchNorm2d for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.encoder.modules())
    assert sparse_violations(model) == []


@pytest.mark.parametrize("output_stride", [32, 16])
def test_batch_norm_statistics_in_training_count_visible_positions_only(output_stride: int) -> None:
    """In training, hidden pixels change neither a visible feature nor a running statistic."""
    patch = output_stride
    images = torch.rand(2, 3, IMAGE, IMAGE)
    mask = _some_hidden(2, IMAGE // patch, seed=3)
    pix = _hidden_pixels(mask, patch, IMAGE).expand_as(images)
    other = torch.where(pix, torch.rand_like(images) * 5, images)
    other[:, :, :2, :2] = torch.where(pix[:, :, :2, :2], torch.tensor(float("nan")), other[:, :, :2, :2])
    results = []
    for pixels in (images, other):
        model = _batch_norm_model(output_stride=output_stride).train()
        feats = model.forward_encoder(pixels, mask)
        results.append((feats.detach(), {k: v.clone() for k, v in model.encoder.state_dict().items()}))
    visible = ~_hidden_at(mask, results[0][0].shape, False).expand_as(results[0][0])
    torch.testing.assert_close(results[1][0][visible], results[0][0][visible], rtol=1e-5, atol=1e-5)
    for key, value in results[0][1].items():
        torch.testing.assert_close(results[1][1][key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert all(m.sparse is None for m in _batch_norm_model()._sparse_norms)  # cleared after every pass

    # The stem's statistics are those of its convolution's output at visible positions.
    model = _batch_norm_model(output_stride=output_stride).train()
    stem_conv, stem_norm = model.encoder.stem
    before = stem_norm.running_mean.clone()
    with torch.no_grad():
        x = ops.apply_patch_mask(model.normalize(images), mask, patch, fill=0.0, backend="reference")
        out = stem_conv(x)
        keep = ~_hidden_at(mask, out.shape, False)[:, 0]  # (B, h, w)
        mean = out.permute(0, 2, 3, 1)[keep].mean(0)
        model.forward_encoder(images, mask)
    torch.testing.assert_close(stem_norm.running_mean, before.lerp(mean, stem_norm.momentum), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("training", [False, True])
def test_unmasked_batch_norm_encoder_equals_timm_forward_features(training: bool) -> None:
    """With no patch hidden, the BatchNorm encoder is timm's BatchNorm ConvNeXt, statistics included."""
    model = _batch_norm_model().train(training)
    ref = timm.create_model("convnext_atto", num_classes=4, conv_mlp=True, norm_layer=torch.nn.BatchNorm2d)
    missing, unexpected = ref.load_state_dict(model.encoder_state_dict(), strict=False)
    assert unexpected == [] and missing and all(k.startswith("head.") for k in missing)
    ref.train(training)
    images = torch.rand(4, 3, IMAGE, IMAGE)
    none_hidden = torch.zeros(4, (IMAGE // PATCH) ** 2, dtype=torch.bool)
    ours = model.forward_encoder(images, none_hidden)
    theirs = ref.forward_features(model.normalize(images))
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    ref_state = ref.state_dict()
    for key, value in model.encoder_state_dict().items():
        torch.testing.assert_close(value, ref_state[key], rtol=1e-5, atol=1e-6, msg=key)


def test_bad_norm_is_named() -> None:
    with pytest.raises(ValueError, match=r"norm: expected one of \['layer', 'batch'\], received 'group'"):
        MaskedConvNeXt("convnext_atto", image_size=IMAGE, decoder_dim=32, norm="group")


def _skip_first_sparse_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Leave out the mask after the stem (the first one each forward pass applies)."""
    original = mc._SparseMask.__call__

    def leaky(self, x):
        self.calls = getattr(self, "calls", 0) + 1
        return x if self.calls == 1 else original(self, x)

    monkeypatch.setattr(mc._SparseMask, "__call__", leaky)


def _no_block_output_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    """Leave out the mask at the end of every block."""

    def block(block, x, sparse):
        shortcut = x
        x = sparse(block.conv_dw(x))
        x = mc._masked_mlp(block.mlp, block.norm(x), sparse)
        return block.drop_path(x.mul(block.gamma.reshape(1, -1, 1, 1))) + shortcut

    monkeypatch.setattr(mc, "_masked_block", block)


def _no_pixel_or_stem_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    """Leave out both the zeroing of hidden pixels and the mask after the stem."""
    monkeypatch.setattr(mc.ops, "apply_patch_mask", lambda x, *args, **kwargs: x)
    _skip_first_sparse_call(monkeypatch)


@pytest.mark.parametrize("leak", [_skip_first_sparse_call, _no_block_output_mask, _no_pixel_or_stem_mask])
def test_sparse_checks_catch_a_missing_mask(leak, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks above are not vacuous: leaving out one mask makes them fail."""
    model = MaskedConvNeXt("convnext_atto", image_size=IMAGE, decoder_dim=32)
    # Layer scale starts at 1e-6, which would hide a leak below float32 resolution; make blocks matter.
    with torch.no_grad():
        for stage in model.encoder.stages:
            for block in stage.blocks:
                block.gamma.fill_(1.0)
    assert sparse_violations(model) == []
    leak(monkeypatch)
    assert sparse_violations(model) != []


@pytest.mark.parametrize("output_stride", [32, 16])
def test_unmasked_encoder_equals_timm_forward_features(output_stride: int) -> None:
    model = MaskedConvNeXt("convnext_atto", image_size=IMAGE, decoder_dim=32, output_stride=output_stride).eval()
    extra = {} if output_stride == 32 else {"output_stride": output_stride}
    ref = timm.create_model("convnext_atto", num_classes=4, **extra).eval()
    missing, unexpected = ref.load_state_dict(model.encoder_state_dict(), strict=False)
    assert unexpected == [] and missing and all(k.startswith("head.") for k in missing)
    images = torch.rand(2, 3, IMAGE, IMAGE)
    none_hidden = torch.zeros(2, model.num_patches, dtype=torch.bool)
    with torch.no_grad():
        ours = model.forward_encoder(images, none_hidden)
        theirs = ref.forward_features(model.normalize(images))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_forward_shapes_and_mask_count() -> None:
    model = MaskedConvNeXt("convnext_atto", image_size=96, mask_ratio=0.6, decoder_dim=32)
    images = torch.rand(3, 3, 96, 96)
    loss, pred, mask = model(images)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert pred.shape == (3, 9, PATCH * PATCH * 3)
    assert mask.shape == (3, 9) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [9 - int(9 * 0.4)] * 3
    loss.backward()
    assert model.decoder.mask_token.grad is not None and model.encoder.stem[0].weight.grad is not None


def test_loss_counts_hidden_patches_only() -> None:
    model = MaskedConvNeXt("convnext_atto", image_size=IMAGE, decoder_dim=32)
    images = torch.rand(2, 3, IMAGE, IMAGE)
    ids_mask = torch.tensor([[1, 2], [0, 3]])
    pred = torch.randn(2, 4, PATCH * PATCH * 3)
    loss = model.forward_loss(images, pred, ids_mask)
    # Changing the prediction of visible patches does not change the loss ...
    changed = pred.clone()
    changed[0, 0] += 100
    changed[1, 1] += 100
    assert model.forward_loss(images, changed, ids_mask) == loss
    # ... and the loss is the MSE against per-patch normalised pixels of the hidden patches.
    target = ops.patchify(images, PATCH)
    target = torch.stack([target[0, [1, 2]], target[1, [0, 3]]])
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    hidden_pred = torch.stack([pred[0, [1, 2]], pred[1, [0, 3]]])
    torch.testing.assert_close(loss, ((hidden_pred - target) ** 2).mean(), rtol=1e-5, atol=1e-6)


def test_given_mask_is_used() -> None:
    model = MaskedConvNeXt("convnext_atto", image_size=IMAGE, decoder_dim=32)
    mask = _mask(2, 2, [[0, 3], [1, 2]])
    _, _, used = model(torch.rand(2, 3, IMAGE, IMAGE), mask)
    assert torch.equal(used, mask)
    with pytest.raises(ValueError, match="same number of hidden patches"):
        model(
            torch.rand(2, 3, IMAGE, IMAGE),
            torch.tensor([[True, False, False, False], [True, True, False, False]]),
        )


def _textured_images() -> torch.Tensor:
    """Two images of 2x2 patches: patches 1 and 2 are noise (high entropy), 0 and 3 flat (zero entropy)."""
    images = torch.full((2, 3, IMAGE, IMAGE), 0.5)
    noise = torch.rand(2, 3, IMAGE, IMAGE)
    images[:, :, :PATCH, PATCH:] = noise[:, :, :PATCH, PATCH:]
    images[:, :, PATCH:, :PATCH] = noise[:, :, PATCH:, :PATCH]
    return images


@pytest.mark.parametrize(("prefer", "expected"), [("high", [1, 2]), ("low", [0, 3])])
def test_entropy_masking_hides_patches_by_entropy(prefer: str, expected: list[int]) -> None:
    model = MaskedConvNeXt(
        "convnext_atto",
        image_size=IMAGE,
        mask_ratio=0.5,
        mask_temperature=0.0,
        mask_prefer=prefer,
        decoder_dim=32,
    )
    patch_mask, scores = model.sample_mask(_textured_images())
    assert scores.shape == (2, 4)
    assert patch_mask.ids_mask.tolist() == [expected, expected]


def test_random_masking_ignores_entropy() -> None:
    model = MaskedConvNeXt(
        "convnext_atto", image_size=IMAGE, mask_ratio=0.5, masking="random", decoder_dim=32
    )
    images = _textured_images()
    seen = set()
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        patch_mask, _ = model.sample_mask(images[:1], generator=gen)
        seen.add(tuple(patch_mask.ids_mask[0].tolist()))
    assert len(seen) > 3  # 6 possible pairs; entropy-first top-k would always pick (1, 2)


def test_patch_larger_than_stride() -> None:
    model = MaskedConvNeXt("convnext_atto", image_size=128, patch_size=64, mask_ratio=0.5, decoder_dim=32)
    loss, pred, mask = model(torch.rand(1, 3, 128, 128))
    assert pred.shape == (1, 4, 64 * 64 * 3) and mask.shape == (1, 4) and torch.isfinite(loss)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mask_ratio": 1.2}, r"mask_ratio: expected a number strictly between 0 and 1.*1\.2"),
        ({"mask_ratio": 0.0}, "mask_ratio"),
        ({"mask_ratio": 0.9}, "leaves 0 of 4 patches visible"),
        ({"image_size": 100}, r"image_size: expected a positive multiple of the patch size 32.*100"),
        ({"patch_size": 16}, r"patch_size: expected a positive multiple of the encoder stride 32.*16"),
        ({"patch_size": 8, "output_stride": 16}, r"patch_size: expected a positive multiple of the encoder stride 16"),
        ({"output_stride": 4}, r"output_stride: expected one of \[32, 16, 8\], received 4"),
        ({"arch": "convnext_tinyy"}, r"arch: expected a timm ConvNeXt.*'convnext_tinyy'.*convnext_tiny"),
        ({"arch": "resnet50"}, r"arch: expected a timm ConvNeXt.*'resnet50'"),
        ({"masking": "grid"}, r"masking: expected one of \('entropy', 'random'\), received 'grid'"),
        ({"mask_prefer": "middle"}, "mask_prefer"),
        ({"mask_temperature": -1.0}, "mask_temperature"),
    ],
)
def test_bad_options_fail_at_construction(kwargs: dict, match: str) -> None:
    args = {"arch": "convnext_atto", "image_size": IMAGE, "decoder_dim": 32} | kwargs
    with pytest.raises(ValueError, match=match):
        MaskedConvNeXt(**args)


def test_bad_images_are_refused() -> None:
    model = MaskedConvNeXt("convnext_atto", image_size=IMAGE, decoder_dim=32)
    with pytest.raises(ValueError, match="images: expected a float tensor of shape"):
        model(torch.rand(2, 1, IMAGE, IMAGE))
    with pytest.raises(ValueError, match="multiples of the patch size 32, received 48x64"):
        model(torch.rand(2, 3, 48, IMAGE))
