"""Exported encoders, ImageNet initialisation from local files and the offline message."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from medens.models import (
    ENCODER_FORMAT,
    INIT_RANDOM_FALLBACK,
    MaskedConvNeXt,
    PretrainedWeightsUnavailable,
    WeightsMismatchError,
    classifier_norm,
    classifier_stride,
    create_classifier,
    load_encoder_into,
    read_metadata,
    save_weights,
)

ARCH = "convnext_atto"


def _export(model: MaskedConvNeXt, path: Path) -> Path:
    return save_weights(
        path, model.encoder_state_dict(), {"format": ENCODER_FORMAT, **model.encoder_config()}
    )


def test_exported_encoder_loads_into_timm_with_only_the_head_missing(tmp_path: Path) -> None:
    mae = MaskedConvNeXt(ARCH, image_size=64, decoder_dim=32).eval()
    path = _export(mae, tmp_path / "encoder.safetensors")
    assert read_metadata(path)["arch"] == ARCH

    plain = timm.create_model(ARCH, num_classes=3)
    missing, unexpected = plain.load_state_dict(load_file(str(path)), strict=False)
    assert unexpected == []
    assert sorted(missing) == ["head.fc.bias", "head.fc.weight", "head.norm.bias", "head.norm.weight"]

    clf, init = create_classifier(ARCH, 3, init=f"mae:{path}")
    assert init == f"mae:{path}"
    clf.eval()
    images = torch.rand(2, 3, 64, 64)
    visible = torch.zeros(2, 4, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(
            clf.forward_features(mae.normalize(images)), mae.forward_encoder(images, visible), rtol=0, atol=0
        )


def test_encoder_of_another_arch_is_refused(tmp_path: Path) -> None:
    path = _export(MaskedConvNeXt(ARCH, image_size=64, decoder_dim=32), tmp_path / "encoder.safetensors")
    with pytest.raises(
        WeightsMismatchError, match="pre-trained as 'convnext_atto' but the model is 'convnext_femto'"
    ):
        create_classifier("convnext_femto", 3, init=f"mae:{path}")


def test_encoder_without_metadata_but_wrong_shapes_is_refused(tmp_path: Path) -> None:
    femto = timm.create_model("convnext_femto", num_classes=0)
    path = tmp_path / "bare.safetensors"
    save_file(
        {k: v.contiguous() for k, v in femto.state_dict().items() if not k.startswith("head.")}, str(path)
    )
    with pytest.raises(WeightsMismatchError, match="tensors of the wrong shape"):
        create_classifier(ARCH, 3, init=f"mae:{path}")


def test_missing_encoder_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="mae:PATH to name an encoder.safetensors"):
        create_classifier(ARCH, 3, init=f"mae:{tmp_path / 'nope.safetensors'}")


@pytest.mark.parametrize("bad", ["imagenet1k", "mae:", "random"])
def test_bad_init_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="init: expected 'imagenet', 'scratch' or 'mae:PATH'"):
        create_classifier(ARCH, 3, init=bad)


def _imagenet_like_file(path: Path) -> dict[str, torch.Tensor]:
    """A 1000-class ConvNeXt-Atto state dict as timm publishes it (here: random weights)."""
    torch.manual_seed(1)
    state = {k: v.contiguous() for k, v in timm.create_model(ARCH).state_dict().items()}
    save_file(state, str(path))
    return state


def test_pretrained_file_round_trips(tmp_path: Path) -> None:
    state = _imagenet_like_file(tmp_path / "model.safetensors")
    model, init = create_classifier(ARCH, 4, init="imagenet", pretrained_file=tmp_path / "model.safetensors")
    assert init == "imagenet"
    loaded = model.state_dict()
    assert loaded["head.fc.weight"].shape == (4, 320)  # the 1000-class head is dropped, the new one is fresh
    for key, value in state.items():
        if not key.startswith("head.fc."):
            assert torch.equal(loaded[key], value), key


def test_offline_without_weights_says_how_to_supply_them(offline: Path) -> None:
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        create_classifier("convnext_atto.d2_in1k", 3, init="imagenet")
    message = str(info.value)
    assert "'convnext_atto.d2_in1k' are not available here (HF_HUB_OFFLINE is set)" in message
    assert "--pretrained-file" in message and "--allow-random-imagenet-fallback" in message
    assert "https://huggingface.co/timm/convnext_atto.d2_in1k" in message


def test_offline_fallback_is_random_and_recorded(offline: Path) -> None:
    model, init = create_classifier(ARCH, 3, init="imagenet", allow_random_fallback=True)
    assert init == INIT_RANDOM_FALLBACK
    assert model.head.fc.out_features == 3


def test_offline_reads_the_hugging_face_cache(offline: Path) -> None:
    snapshot = offline / "models--timm--convnext_atto.d2_in1k" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (offline / "models--timm--convnext_atto.d2_in1k" / "refs").mkdir()
    (offline / "models--timm--convnext_atto.d2_in1k" / "refs" / "main").write_text("abc123")
    state = _imagenet_like_file(snapshot / "model.safetensors")
    model, init = create_classifier(ARCH, 3, init="imagenet")
    assert init == "imagenet"
    assert torch.equal(model.state_dict()["stem.0.weight"], state["stem.0.weight"])


def test_unknown_pretrained_tag_lists_known_ones() -> None:
    with pytest.raises(ValueError, match=r"Invalid pretrained tag.*convnext_atto\.d2_in1k"):
        create_classifier("convnext_atto.nope", 3, init="imagenet")


def test_incomplete_pretrained_file_is_refused_by_name_unless_allowed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = _imagenet_like_file(tmp_path / "full.safetensors")
    partial = {k: v for k, v in state.items() if not k.startswith("stages.3.")}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    n_missing = len(state) - len(partial)
    with pytest.raises(ValueError, match=r"pretrained_file: expected every tensor of .*/partial\.safetensors, "
                       rf"received a file without {n_missing} of them \(stages\.3\.") as info:
        create_classifier(ARCH, 4, init="imagenet", pretrained_file=tmp_path / "partial.safetensors")
    assert "--allow-partial" in str(info.value)
    with caplog.at_level("WARNING", logger="medens"):
        model, init = create_classifier(
            ARCH, 4, init="imagenet", pretrained_file=tmp_path / "partial.safetensors", allow_partial=True
        )
    assert init == "imagenet" and f"lacks {n_missing} tensors" in caplog.text
    assert torch.equal(model.state_dict()["stem.0.weight"], state["stem.0.weight"])
    # A complete file passes without a word, with or without the flag.
    create_classifier(ARCH, 4, init="imagenet", pretrained_file=tmp_path / "full.safetensors")


def test_init_mae_naming_a_folder_says_so_and_points_at_the_file(tmp_path: Path) -> None:
    mae = MaskedConvNeXt(ARCH, image_size=64, decoder_dim=32)
    _export(mae, tmp_path / "encoder.safetensors")
    with pytest.raises(FileNotFoundError, match=r"received the folder .*; did you mean mae:.*encoder\.safetensors\?"):
        create_classifier(ARCH, 3, init=f"mae:{tmp_path}")


def test_any_timm_architecture_from_scratch_but_a_convnext_for_imagenet_or_mae(tmp_path: Path) -> None:
    """The plain baseline member: any timm model from random weights; the method's members stay ConvNeXts."""
    model, init = create_classifier("resnet10t", 3, init="scratch")
    assert init == "scratch" and type(model).__name__ == "ResNet" and model.get_classifier().out_features == 3
    for init in ("imagenet", f"mae:{tmp_path / 'encoder.safetensors'}"):
        with pytest.raises(ValueError, match="arch: expected a timm ConvNeXt architecture.*'resnet10t'"):
            create_classifier("resnet10t", 3, init=init)
    with pytest.raises(ValueError, match="arch: expected a timm architecture.*'resnet1008'.*Did you mean"):
        create_classifier("resnet1008", 3, init="scratch")


def test_batch_norm_encoder_loads_into_a_batch_norm_classifier_only(tmp_path: Path) -> None:
    mae = MaskedConvNeXt(ARCH, image_size=64, decoder_dim=32, norm="batch").eval()
    path = _export(mae, tmp_path / "encoder.safetensors")
    assert read_metadata(path)["norm"] == "batch"

    clf, init = create_classifier(ARCH, 3, init=f"mae:{path}", norm="batch")
    assert init == f"mae:{path}"
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in clf.modules())
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in clf.modules())
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            clf.eval().forward_features(mae.normalize(images)),
            mae.forward_encoder(images, torch.zeros(2, 4, dtype=torch.bool)),
            rtol=0,
            atol=0,
        )
    # A classifier from an encoder is built with the encoder's norm, whatever norm asks for.
    follows, _ = create_classifier(ARCH, 3, init=f"mae:{path}", norm="layer")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in follows.modules())
    assert classifier_norm(f"mae:{path}", "layer") == "batch"
    layer = _export(MaskedConvNeXt(ARCH, image_size=64, decoder_dim=32), tmp_path / "layer.safetensors")
    from_layer, _ = create_classifier(ARCH, 3, init=f"mae:{layer}", norm="batch")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in from_layer.modules())
    # Loading into a model of the other norm is refused by name.
    with pytest.raises(WeightsMismatchError, match="pre-trained with norm 'batch' but the model has norm 'layer'"):
        load_encoder_into(timm.create_model(ARCH, num_classes=3), path, ARCH)


def test_norm_applies_to_random_convnexts_and_imagenet_weights_bring_layer_norm(
    offline: Path, tmp_path: Path
) -> None:
    scratch, _ = create_classifier(ARCH, 3, init="scratch", norm="batch")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in scratch.modules())
    # Another architecture keeps its own normalisation.
    resnet, _ = create_classifier("resnet10t", 3, init="scratch", norm="batch")
    plain = timm.create_model("resnet10t", num_classes=3)
    assert [type(m) for m in resnet.modules()] == [type(m) for m in plain.modules()]

    # ImageNet weights are LayerNorm weights: they load as such, whatever norm says.
    weights = tmp_path / "in1k.safetensors"
    state = _imagenet_like_file(weights)
    loaded, init = create_classifier(ARCH, 3, init="imagenet", norm="batch", pretrained_file=weights)
    assert init == "imagenet" and classifier_norm(init, "batch") == "layer"
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in loaded.modules())
    assert torch.equal(loaded.state_dict()["stem.0.weight"], state["stem.0.weight"])
    # Their random fallback is built with norm.
    with pytest.raises(PretrainedWeightsUnavailable):
        create_classifier(ARCH, 3, init="imagenet", norm="batch")
    fallback, init = create_classifier(ARCH, 3, init="imagenet", norm="batch", allow_random_fallback=True)
    assert init == INIT_RANDOM_FALLBACK and classifier_norm(init, "batch") == "batch"
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in fallback.modules())
    with pytest.raises(ValueError, match=r"norm: expected one of \['layer', 'batch'\], received 'group'"):
        create_classifier(ARCH, 3, init="scratch", norm="group")


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_a_finer_stride_encoder_builds_a_classifier_of_its_stride(tmp_path: Path, norm: str) -> None:
    """A 6 x 6-grid encoder (stride 16) loads into the classifier built for it with nothing missing but the head."""
    mae = MaskedConvNeXt(ARCH, image_size=96, decoder_dim=32, norm=norm, output_stride=16).eval()
    path = _export(mae, tmp_path / "encoder.safetensors")
    meta = read_metadata(path)
    assert meta["output_stride"] == 16 and meta["mask_grid"] == [6, 6]

    clf, _ = create_classifier(ARCH, 3, init=f"mae:{path}", norm=norm)  # the stride comes from the encoder
    assert clf.feature_info[-1]["reduction"] == 16
    assert classifier_stride(f"mae:{path}") == 16
    images = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(
            clf.eval().forward_features(mae.normalize(images)),
            mae.forward_encoder(images, torch.zeros(2, 36, dtype=torch.bool)),
            rtol=0,
            atol=0,
        )
    # Into a model of the published stride it is refused by name (the weights would fit, the network would not).
    plain = create_classifier(ARCH, 3, init="scratch", norm=norm)[0]
    with pytest.raises(WeightsMismatchError, match="pre-trained with output stride 16 but the model has 32"):
        load_encoder_into(plain, path, ARCH, norm=norm)
    # An encoder written before the option is a stride-32 encoder.
    old = _export(MaskedConvNeXt(ARCH, image_size=64, decoder_dim=32), tmp_path / "old.safetensors")
    state = load_file(str(old))
    meta = {k: v for k, v in read_metadata(old).items() if k not in ("output_stride", "mask_grid")}
    save_weights(old, state, meta)
    assert classifier_stride(f"mae:{old}") == 32
    assert create_classifier(ARCH, 3, init=f"mae:{old}")[0].feature_info[-1]["reduction"] == 32
