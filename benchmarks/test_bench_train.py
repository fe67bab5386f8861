"""One masked-autoencoder training step (mask, forward, backward, AdamW) with the medens ops against the same
step with the pure-PyTorch reference ops; images per second in ``extra_info["images_per_s"]``.

On CPU: ConvNeXt-Atto, 16 images of 128 px, fp32. On a GPU: ConvNeXt-Tiny, 64 images of 224 px, bf16/fp16
autocast (the paper's model and size). Run with ``pytest benchmarks/test_bench_train.py --benchmark``.
"""

from __future__ import annotations

import pytest
import torch

from medens import ops
from medens.engine import create_optimizer, resolve_precision
from medens.models import MaskedConvNeXt, create_classifier

from .conftest import run
from .scaling import median_seconds

pytestmark = pytest.mark.benchmark


def _train_step(device: torch.device, backend: str):
    arch, size, batch = ("convnext_tiny", 224, 64) if device.type == "cuda" else ("convnext_atto", 128, 16)
    torch.manual_seed(0)
    model = MaskedConvNeXt(arch, image_size=size, ops_backend=backend).to(device, memory_format=torch.channels_last)
    optimizer = create_optimizer(model, 1e-4, betas=(0.9, 0.95))
    precision = resolve_precision("auto", device)
    images = torch.rand(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)

    def step() -> torch.Tensor:
        with precision.autocast():
            loss = model(images).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step, f"{arch} {batch}x{size}px {precision.name}", batch


def test_train_step(benchmark, device, backend) -> None:
    step, case, batch = _train_step(device, backend)
    step()  # first-call allocations and kernel selection
    run(benchmark, step, op="mae_train_step", case=case, backend=backend, device=device, bytes_moved=0,
        rounds=5 if device.type == "cpu" else 20)
    benchmark.extra_info["images_per_s"] = batch / benchmark.stats.stats.median


def test_masking_ops_share_of_step(benchmark, device, backend) -> None:
    """The part of the training step spent in the medens ops: entropy, mask selection and target gathering."""
    step, case, batch = _train_step(device, backend)
    arch, size = ("convnext_tiny", 224) if device.type == "cuda" else ("convnext_atto", 128)
    model = MaskedConvNeXt(arch, image_size=size, ops_backend=backend).to(device)
    images = torch.rand(batch, 3, size, size, device=device)

    def mask_ops() -> torch.Tensor:
        patch_mask, _ = model.sample_mask(images)
        return ops.gather_patches(images, patch_mask.ids_mask, model.patch_size, normalize=True, backend=backend)

    step()
    run(benchmark, mask_ops, op="mae_masking_ops", case=case, backend=backend, device=device, bytes_moved=0,
        rounds=10 if device.type == "cpu" else 50)
    ops_median = benchmark.stats.stats.median
    step_median = median_seconds(step, device, repeats=3 if device.type == "cpu" else 10)
    benchmark.extra_info.update(step_seconds=step_median, share_of_step=ops_median / step_median)


def _classifier_inputs(device: torch.device):
    arch, size, batch = ("convnext_tiny", 224, 64) if device.type == "cuda" else ("convnext_atto", 128, 16)
    images = torch.rand(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 3, (batch,), device=device)
    return arch, size, batch, images, labels


def test_finetune_step(benchmark, device) -> None:
    """One fine-tuning step of a 3-class classifier (forward, cross-entropy, backward, AdamW)."""
    arch, size, batch, images, labels = _classifier_inputs(device)
    torch.manual_seed(0)
    model, _ = create_classifier(arch, 3, init="scratch")
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = create_optimizer(model, 1e-4)
    precision = resolve_precision("auto", device)

    def step() -> torch.Tensor:
        with precision.autocast():
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    step()
    run(benchmark, step, op="finetune_step", case=f"{arch} {batch}x{size}px {precision.name}", backend="torch",
        device=device, bytes_moved=0, rounds=5 if device.type == "cpu" else 20)
    benchmark.extra_info["images_per_s"] = batch / benchmark.stats.stats.median


def test_ensemble_inference(benchmark, device) -> None:
    """Ensemble prediction: two classifiers, softmax, mean of the probabilities (the paper's rule)."""
    arch, size, batch, images, _ = _classifier_inputs(device)
    members = [create_classifier(arch, 3, init="scratch")[0].to(device, memory_format=torch.channels_last).eval()
               for _ in range(2)]
    precision = resolve_precision("auto", device)

    @torch.inference_mode()
    def predict() -> torch.Tensor:
        with precision.autocast():
            return torch.stack([m(images).float().softmax(-1) for m in members]).mean(0)

    run(benchmark, predict, op="ensemble_inference", case=f"2 x {arch} {batch}x{size}px {precision.name}",
        backend="torch", device=device, bytes_moved=0, rounds=5 if device.type == "cpu" else 20)
    benchmark.extra_info["images_per_s"] = batch / benchmark.stats.stats.median


@pytest.mark.parametrize("output_stride", [32, 16])
def test_mae_step_against_finetune_step(benchmark, device, output_stride) -> None:
    """A masked pre-training step against a fine-tuning step of the same network and batch (target: <= 1.15x).

    The ``small`` preset's geometry on a CPU (ConvNeXt-Atto with BatchNorm, 32 images of 96 px; at stride 16 its
    6 x 6 masking grid of 16 px patches); ConvNeXt-Tiny, 64 x 224 px, bf16 on a GPU. The fine-tuning step is timed
    in the same process right after (``extra_info``: ``finetune_step_seconds`` and ``ratio``).
    """
    from medens.models.arch import stride_kwargs

    arch, size, batch, norm = (
        ("convnext_tiny", 224, 64, "layer") if device.type == "cuda" else ("convnext_atto", 96, 32, "batch")
    )
    torch.manual_seed(0)
    mae = MaskedConvNeXt(arch, image_size=size, norm=norm, output_stride=output_stride, decoder_dim=128).to(device)
    classifier, _ = create_classifier(arch, 3, init="scratch", norm=norm, output_stride=output_stride)
    classifier = classifier.to(device)
    assert classifier.feature_info[-1]["reduction"] == output_stride == stride_kwargs(output_stride).get(
        "output_stride", 32
    )
    precision = resolve_precision("auto", device)
    images = torch.rand(batch, 3, size, size, device=device)
    labels = torch.randint(0, 3, (batch,), device=device)

    def training_step(model, loss_of):
        optimizer = create_optimizer(model, 1e-4)

        def step() -> torch.Tensor:
            with precision.autocast():
                loss = loss_of(model)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss

        return step

    mae_step = training_step(mae, lambda m: m(images).loss)
    finetune_step = training_step(classifier, lambda m: torch.nn.functional.cross_entropy(m(images), labels))
    mae_step()
    finetune_step()
    grid = size // output_stride
    run(benchmark, mae_step, op="mae_vs_finetune_step",
        case=f"{arch} {norm} stride {output_stride} ({grid}x{grid} grid) {batch}x{size}px {precision.name}",
        backend="torch", device=device, bytes_moved=0, rounds=5 if device.type == "cpu" else 20)
    mae_median = benchmark.stats.stats.median
    finetune_median = median_seconds(finetune_step, device, repeats=5 if device.type == "cpu" else 20)
    benchmark.extra_info.update(finetune_step_seconds=finetune_median, ratio=mae_median / finetune_median)
