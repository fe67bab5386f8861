"""Engine parts: the resumable sampler, the schedule, lr scaling, parameter groups, config merging, precision."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from torch.utils.data import TensorDataset

from medens.engine import (
    ModelEma,
    ResumableDistributedSampler,
    WarmupCosine,
    create_optimizer,
    load_yaml,
    merge_config,
    parse_overrides,
    recompute_batchnorm_statistics,
    resolve_precision,
    scaled_lr,
    write_config,
)


def _data(n: int) -> TensorDataset:
    return TensorDataset(torch.arange(n))


def test_shards_are_disjoint_cover_the_data_and_reshuffle_per_epoch() -> None:
    samplers = [ResumableDistributedSampler(_data(10), num_replicas=2, rank=r, seed=3) for r in range(2)]
    for s in samplers:
        s.set_epoch(0)
    epoch0 = [list(s) for s in samplers]
    assert len(epoch0[0]) == len(epoch0[1]) == 5
    assert sorted(epoch0[0] + epoch0[1]) == list(range(10))
    for s in samplers:
        s.set_epoch(1)
    assert [list(s) for s in samplers] != epoch0


def test_skip_resumes_the_same_order() -> None:
    sampler = ResumableDistributedSampler(_data(12), seed=1)
    sampler.set_epoch(4)
    full = list(sampler)
    sampler.skip(5)
    assert list(sampler) == full[5:] and len(sampler) == 7
    sampler.set_epoch(4)  # a new epoch starts from the beginning again
    assert list(sampler) == full


def test_weighted_sampling_balances_classes() -> None:
    labels = torch.tensor([0] * 90 + [1] * 10)
    counts = torch.bincount(labels).double()
    sampler = ResumableDistributedSampler(_data(100), seed=0, weights=1.0 / counts[labels])
    drawn = []
    for epoch in range(20):
        sampler.set_epoch(epoch)
        drawn += [int(labels[i]) for i in sampler]
    share = sum(drawn) / len(drawn)
    assert 0.4 < share < 0.6  # about half minority-class draws, against 10% in the data


def test_bad_weights_are_refused() -> None:
    with pytest.raises(ValueError, match="weights: expected 4 non-negative sampling weights"):
        ResumableDistributedSampler(_data(4), weights=[1.0, -1.0, 1.0, 1.0])


def test_warmup_then_cosine() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [param], "lr_scale": 0.5}], lr=1.0)
    sched = WarmupCosine(opt, lr=1.0, total_steps=10, warmup_steps=4, min_lr=0.1)
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr())
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0) and lrs[-1] > 0.1 and all(a >= b for a, b in zip(lrs[4:-1], lrs[5:], strict=True))
    assert sched.get_last_lr() == pytest.approx(0.1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)  # the group's lr_scale applies
    restored = WarmupCosine(opt, lr=1.0, total_steps=10, warmup_steps=4, min_lr=0.1)
    restored.load_state_dict({"step_count": 2})
    assert restored.get_last_lr() == pytest.approx(0.75)


def test_lr_scales_with_the_effective_batch() -> None:
    assert scaled_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)
    assert scaled_lr(1e-3, 256) == pytest.approx(1e-3)


def test_parameter_groups_and_layer_decay() -> None:
    model = timm.create_model("convnext_atto", num_classes=3)
    opt = create_optimizer(model, 1e-3, weight_decay=0.05)
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(model.stem[0].weight) in decay and id(model.stem[0].bias) not in decay
    assert id(model.stages[0].blocks[0].gamma) not in decay

    opt = create_optimizer(model, 1e-3, layer_decay=0.5)
    scale = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    assert scale[id(model.head.fc.weight)] == 1.0
    assert scale[id(model.stem[0].weight)] < scale[id(model.stages[3].blocks[0].conv_dw.weight)] < 1.0
    with pytest.raises(ValueError, match="lr: expected a positive learning rate"):
        create_optimizer(model, 0.0)


def test_config_merging_and_unknown_keys(tmp_path: Path) -> None:
    defaults = {"epochs": 10, "lr": None, "arch": "convnext_tiny"}
    path = tmp_path / "run.yaml"
    path.write_text("epochs: 5\narch: convnext_atto\n")
    merged = merge_config(defaults, load_yaml(path), parse_overrides(["epochs=7", "lr=1e-3"]))
    assert merged == {"epochs": 7, "lr": 1e-3, "arch": "convnext_atto"}
    with pytest.raises(ValueError, match=r"unknown option 'epoch' \(in run.yaml\); did you mean epochs"):
        merge_config(defaults, {"epoch": 3}, source=["run.yaml"])
    with pytest.raises(ValueError, match="--set: expected KEY=VALUE"):
        parse_overrides(["epochs"])
    write_config(tmp_path / "out.yaml", {"out": tmp_path, "betas": (0.9, 0.95)})
    assert load_yaml(tmp_path / "out.yaml") == {"out": str(tmp_path), "betas": [0.9, 0.95]}
    with pytest.raises(FileNotFoundError, match="expected a YAML file, received 'no-such.yaml', which does not"):
        load_yaml("no-such.yaml")


def test_precision_policy() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu).dtype is None
    assert resolve_precision("bf16", cpu).dtype == torch.bfloat16
    assert not resolve_precision("bf16", cpu).needs_scaler
    with pytest.raises(ValueError, match="'fp16' needs a CUDA device"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ValueError, match=r"amp: expected one of \('auto', 'bf16', 'fp16', 'off'\)"):
        resolve_precision("fp8", cpu)


def test_ema_averages_weights_and_batchnorm_statistics_and_copies_the_counter() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.BatchNorm2d(3))
    ema = ModelEma(model, decay=0.75)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    model.train()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model(torch.randn(4, 2, 5, 5) + 3.0)  # moves the running statistics, counts one batch
    ema.update(model)
    live, averaged = model.state_dict(), ema.module.state_dict()
    for key in ("0.weight", "1.running_mean", "1.running_var"):
        torch.testing.assert_close(averaged[key], 0.75 * before[key] + 0.25 * live[key], msg=key)
        assert not torch.equal(live[key], before[key]), key  # the check above compares distinct values
    assert averaged["1.num_batches_tracked"].item() == live["1.num_batches_tracked"].item() == 1


def test_recompute_batchnorm_statistics_averages_the_whole_dataset() -> None:
    data = torch.randn(12, 2, 3, 3) * torch.tensor([1.0, 3.0]).view(1, 2, 1, 1) + torch.tensor([5.0, -2.0]).view(1, 2, 1, 1)
    items = torch.utils.data.TensorDataset(data, torch.zeros(12))
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(2)).eval()
    assert recompute_batchnorm_statistics(model, items, batch_size=4)
    assert not model.training  # left in its mode
    bn = model[0]
    torch.testing.assert_close(bn.running_mean, data.mean(dim=(0, 2, 3)))
    # update_bn's cumulative mean of each batch's (unbiased) variance; three equal batches of four images
    per_batch = torch.stack([data[i : i + 4].var(dim=(0, 2, 3)) for i in (0, 4, 8)])
    torch.testing.assert_close(bn.running_var, per_batch.mean(dim=0))
    assert bn.momentum == 0.1  # restored
    assert not recompute_batchnorm_statistics(torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1)), items)
