"""The training loop: exact resume, stop signals, non-finite steps, accumulation, logs and checkpoints."""

from __future__ import annotations

import csv
import math
import os
import signal
from pathlib import Path

import pytest
import torch

from medens.engine import (
    NonFiniteLossError,
    TrainingInterrupted,
    load_checkpoint,
)
from tests.engine.helpers import assert_same_weights, images, mae_step, make_trainer


def _uninterrupted(tmp_path: Path, **kwargs):
    trainer, loader = make_trainer(tmp_path / "full", images(), **kwargs)
    trainer.fit(loader)
    return trainer


def test_resume_after_one_epoch_equals_uninterrupted_run(tmp_path: Path) -> None:
    full = _uninterrupted(tmp_path)

    first, loader = make_trainer(tmp_path / "split", images())
    with pytest.raises(TrainingInterrupted) as info:
        first.fit(loader, epoch_end=lambda epoch, t: t.request_stop())
    assert info.value.checkpoint == tmp_path / "split" / "checkpoint.pt"
    assert first.epoch == 1

    torch.manual_seed(1234)  # a fresh process would not share the first run's random state
    second, loader = make_trainer(tmp_path / "split", images(), seed=0)
    assert second.resume()
    second.fit(loader)
    assert_same_weights(second.module, full.module)
    assert [r["train_loss"] for r in second.history] == [r["train_loss"] for r in full.history]
    rows = list(csv.DictReader((tmp_path / "split" / "log.csv").read_text().splitlines()))
    assert [r["epoch"] for r in rows] == ["1", "2"]


def test_resume_mid_epoch_with_accumulation_equals_uninterrupted_run(tmp_path: Path) -> None:
    full = _uninterrupted(tmp_path, batch_size=2, accum_steps=2)
    calls = {"n": 0}

    def stop_after_five(model, batch):
        calls["n"] += 1
        if calls["n"] == 5:  # the first micro-batch of the third accumulation group
            trainer.request_stop()
        return mae_step(model, batch)

    trainer, loader = make_trainer(
        tmp_path / "split", images(), batch_size=2, accum_steps=2, step_fn=stop_after_five
    )
    with pytest.raises(TrainingInterrupted):
        trainer.fit(loader)
    # The stop waits for the end of the accumulation group: 6 micro-batches, 3 optimiser steps.
    assert (trainer.epoch, trainer.batch_in_epoch, trainer.step) == (0, 6, 3)

    resumed, loader = make_trainer(tmp_path / "split", images(), batch_size=2, accum_steps=2)
    resumed.resume()
    resumed.fit(loader)
    assert_same_weights(resumed.module, full.module)
    assert resumed.history[0]["train_loss"] == pytest.approx(full.history[0]["train_loss"], rel=1e-6)


def test_sigterm_saves_and_stops_after_the_current_step(tmp_path: Path) -> None:
    full = _uninterrupted(tmp_path)
    calls = {"n": 0}

    def terminate_at_two(model, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return mae_step(model, batch)

    trainer, loader = make_trainer(tmp_path / "split", images(), step_fn=terminate_at_two)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as info:
        trainer.fit(loader)
    assert signal.getsignal(signal.SIGTERM) is previous  # handlers are restored
    assert info.value.reason == "SIGTERM" and trainer.step == 2
    state = load_checkpoint(info.value.checkpoint)
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (0, 2, 2)

    resumed, loader = make_trainer(tmp_path / "split", images())
    resumed.resume()
    resumed.fit(loader)
    assert_same_weights(resumed.module, full.module)


def test_poisoned_batch_is_skipped_not_trained_on(tmp_path: Path) -> None:
    # Poison exactly the images of the second batch of the (shuffled) first epoch.
    _, loader = make_trainer(tmp_path, images(12), epochs=1)
    order = list(loader.sampler)
    poisoned = images(12, poison=tuple(order[4:8]))
    trainer, loader = make_trainer(tmp_path, poisoned, epochs=1)

    snapshots = []

    def watch(model, batch):
        snapshots.append({k: v.clone() for k, v in trainer.module.state_dict().items()})
        return mae_step(model, batch)

    trainer.step_fn = watch
    trainer.fit(loader)
    snapshots.append(trainer.module.state_dict())
    before_bad, after_bad = snapshots[1], snapshots[2]
    assert all(torch.equal(before_bad[k], after_bad[k]) for k in before_bad)  # step 2 changed nothing
    assert not all(torch.equal(snapshots[0][k], before_bad[k]) for k in before_bad)  # step 1 did train
    assert all(torch.isfinite(v).all() for v in trainer.module.state_dict().values())
    assert trainer.history[0]["skipped_steps"] == 1
    assert math.isfinite(trainer.history[0]["train_loss"])  # the skipped step's NaN is not averaged in


def test_repeated_nonfinite_losses_stop_with_advice_after_saving(tmp_path: Path) -> None:
    trainer, loader = make_trainer(tmp_path, images(12, poison=tuple(range(12))), epochs=3, max_nonfinite=2)
    initial = {k: v.clone() for k, v in trainer.module.state_dict().items()}
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit(loader)
    message = str(info.value)
    assert "not finite for 2 optimiser steps in a row" in message
    assert "lower learning rate" in message and "--amp off" in message
    assert (tmp_path / "checkpoint.pt").is_file()
    assert all(torch.equal(initial[k], v) for k, v in trainer.module.state_dict().items())


def test_accumulation_matches_a_larger_batch(tmp_path: Path) -> None:
    """Two accumulated micro-batches of 2 give the step of one batch of 4 (same masks, same images)."""
    a, loader_a = make_trainer(tmp_path / "a", images(8), epochs=1, batch_size=4)
    b, loader_b = make_trainer(tmp_path / "b", images(8), epochs=1, batch_size=2, accum_steps=2)
    fixed = torch.tensor([[True, False, True, False]] * 4)

    def fixed_mask(model, batch):
        x, _ = batch
        return model(x, fixed[: x.shape[0]]).loss, x.shape[0]

    a.step_fn = b.step_fn = fixed_mask
    a.fit(loader_a)
    b.fit(loader_b)
    for (name, pa), pb in zip(a.module.named_parameters(), b.module.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-6, msg=name)


def test_log_and_checkpoint_contents(tmp_path: Path) -> None:
    trainer, loader = make_trainer(tmp_path, images(), epochs=2, ema_decay=0.9, clip_grad=1.0)
    trainer.fit(loader)
    rows = list(csv.DictReader((tmp_path / "log.csv").read_text().splitlines()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"train_loss", "lr", "images_per_s", "skipped_steps", "step"} <= rows[0].keys()
    assert float(rows[0]["images_per_s"]) > 0
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert {"model", "optimizer", "scheduler", "ema", "rng", "epoch", "step", "history"} <= state.keys()
    assert state["epoch"] == 2 and state["step"] == 6 and len(state["rng"]) == 1
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    # The EMA trails the weights.
    assert not torch.equal(trainer.ema.module.decoder.pred.weight, trainer.module.decoder.pred.weight)


def test_checkpoint_loading_refuses_code(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"format": "medens-checkpoint", "x": Evil()}, tmp_path / "checkpoint.pt")
    with pytest.raises(RuntimeError, match="not a readable medens checkpoint"):
        load_checkpoint(tmp_path / "checkpoint.pt")
