"""How a stage's configuration is resolved (medens/train/configuration.py, arguments.py, presets.py), called
directly: defaults < preset < a resumed run's config.yaml < --config YAML < flags < --set, the bookkeeping a run
writes ignored when read back, and the refusals, each naming the key."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from medens.errors import UsageError
from medens.layout import CONFIG_NAME
from medens.train import pretrain
from medens.train.arguments import cli_overrides
from medens.train.configuration import check_types, effective_lr, refuse_changes_on_resume, resolve_config
from medens.train.options import BOOKKEEPING_KEYS, PRETRAIN_DEFAULTS
from medens.train.presets import PRESET_NAMES, default_preset, load_config_file, load_preset

SMOKE = load_preset("smoke", "pretrain")


def resolve(tmp_path: Path, **overrides) -> dict:
    return resolve_config(PRETRAIN_DEFAULTS, {"out": str(tmp_path), **overrides}, stage="pretrain")


def save(folder: Path, **recorded) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_NAME).write_text(yaml.safe_dump(recorded))


# ---- presets -------------------------------------------------------------------------------------------------------


def test_every_preset_sets_known_options_of_both_stages():
    for preset in PRESET_NAMES:
        for stage in ("pretrain", "finetune"):
            values = load_preset(preset, stage)
            assert values, (preset, stage)
    assert set(SMOKE) <= set(PRETRAIN_DEFAULTS)
    assert default_preset("synthetic") == default_preset(None) == "small" and default_preset("busi") == "paper"
    with pytest.raises(UsageError, match=r"^preset: expected one of .*received 'huge'"):
        load_preset("huge", "pretrain")
    with pytest.raises(UsageError, match=r"^stage: expected one of .*received 'ensemble'"):
        load_preset("smoke", "ensemble")


def test_a_config_file_starts_from_its_base_and_overrides_it(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("epochs: 3\nlr: 0.5\n")
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {base}\nlr: 0.25\n")
    assert load_config_file(child) == {"epochs": 3, "lr": 0.25}
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"base: {loop}\n")
    with pytest.raises(ValueError, match="is its own base"):
        load_config_file(loop)


# ---- resolve_config ------------------------------------------------------------------------------------------------


def test_defaults_then_preset_then_overrides(tmp_path):
    assert resolve(tmp_path)["decoder_dim"] == PRETRAIN_DEFAULTS["decoder_dim"]  # no preset
    assert resolve(tmp_path, preset="smoke")["decoder_dim"] == SMOKE["decoder_dim"] != PRETRAIN_DEFAULTS["decoder_dim"]
    assert resolve(tmp_path, preset="smoke", decoder_dim=16)["decoder_dim"] == 16
    unstaged = resolve_config(PRETRAIN_DEFAULTS, {"out": str(tmp_path), "preset": "smoke"})
    assert unstaged["decoder_dim"] == PRETRAIN_DEFAULTS["decoder_dim"]  # a preset applies to a named stage only


def test_a_resumed_runs_config_sits_between_the_preset_and_the_overrides(tmp_path):
    save(tmp_path, preset="smoke", decoder_dim=24, epochs=3, num_workers=2)
    resumed = resolve(tmp_path, resume=True)
    assert resumed["decoder_dim"] == 24  # the record over its preset's 32
    assert resumed["image_size"] == SMOKE["image_size"]  # the recorded preset applies where the record is silent
    assert resolve(tmp_path, resume=True, num_workers=0)["num_workers"] == 0  # how it runs may change
    assert resolve(tmp_path, resume=True, epochs=5)["epochs"] == 5  # a run may be extended
    assert resolve(tmp_path)["decoder_dim"] == PRETRAIN_DEFAULTS["decoder_dim"]  # without resume: not read


def test_bookkeeping_a_run_wrote_is_ignored_when_read_back(tmp_path):
    bookkeeping = {"classes": ["benign", "malignant"], "num_classes": 2, "split_hash": "ab12", "run": {"host": "h"},
                   "encoder": {"channels": [1]}, "mask_grid": 6, "init_requested": "x", "precise_bn_requested": True}
    assert set(bookkeeping) == set(BOOKKEEPING_KEYS)
    save(tmp_path, epochs=3, **bookkeeping)
    config = resolve(tmp_path, resume=True)
    assert config["epochs"] == 3
    assert not set(BOOKKEEPING_KEYS) & set(config)
    # Unknown keys other than bookkeeping are still refused in a saved config, naming the file.
    save(tmp_path, epochs=3, lrr=0.1)
    with pytest.raises(UsageError, match=rf"unknown option 'lrr' \(in {tmp_path / CONFIG_NAME}\); did you mean lr"):
        resolve(tmp_path, resume=True)


def test_resume_refuses_what_would_make_the_record_false(tmp_path):
    save(tmp_path, epochs=3, decoder_dim=24)
    with pytest.raises(UsageError, match=r"^decoder_dim: expected the value recorded in .* \(24\) when resuming, "
                                         r"received 16"):
        resolve(tmp_path, resume=True, decoder_dim=16)
    with pytest.raises(UsageError, match=r"^epochs: expected at least the 3 epochs recorded"):
        resolve(tmp_path, resume=True, epochs=2)
    (tmp_path / CONFIG_NAME).write_text(yaml.safe_dump({"init": "scratch", "epochs": 3}))  # a fine-tuning record
    with pytest.raises(UsageError, match="holds a finetune run, not a pretrain run"):
        resolve(tmp_path, resume=True)


def test_refuse_changes_on_resume_compares_plain_values_and_what_was_requested(tmp_path):
    saved = {"betas": [0.9, 0.95], "init": "scratch", "init_requested": "imagenet", "classes": ["a"]}
    refuse_changes_on_resume(saved, {"betas": (0.9, 0.95), "init": "imagenet", "classes": ["b"]}, tmp_path)
    with pytest.raises(ValueError, match=r"^betas: expected the value recorded"):
        refuse_changes_on_resume(saved, {"betas": (0.9, 0.999)}, tmp_path)


def test_values_of_the_wrong_type_or_out_of_range_are_named(tmp_path):
    with pytest.raises(UsageError, match=r"^out: expected an output folder"):
        resolve_config(PRETRAIN_DEFAULTS, {"epochs": 1})
    with pytest.raises(UsageError, match=r"^epochs: expected an integer, received 'ten' \(str\)"):
        resolve(tmp_path, epochs="ten")
    with pytest.raises(UsageError, match=r"^masking: expected entropy or random, received 'grid'"):
        resolve(tmp_path, masking="grid")
    with pytest.raises(UsageError, match=r"^split_seed: expected a number at least 0, received -1"):
        resolve(tmp_path, split_seed=-1)
    with pytest.raises(UsageError, match=r"^config: unknown option 'decoder_dims'.*did you mean decoder_dim"):
        resolve(tmp_path, decoder_dims=8)
    assert resolve(tmp_path, warmup_epochs=2)["warmup_epochs"] == 2  # a float option takes an int
    with pytest.raises(ValueError, match=r"^channels_last: expected true or false, received 1"):
        check_types({"channels_last": 1}, PRETRAIN_DEFAULTS)


def test_effective_lr_scales_the_base_rate_unless_lr_is_set():
    config = {"batch_size": 32, "accum_steps": 2, "blr": 1e-3, "lr": None}
    assert effective_lr(config, world_size=4) == (pytest.approx(1e-3 * 32 * 2 * 4 / 256), 256)
    assert effective_lr({**config, "lr": 0.5}, world_size=4) == (0.5, 256)


# ---- the command line: cli_overrides -------------------------------------------------------------------------------


def overrides_of(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser()
    pretrain.add_parser(parser.add_subparsers(dest="command"))
    return cli_overrides(parser.parse_args(["pretrain", *argv]), PRETRAIN_DEFAULTS)


def test_preset_then_config_file_then_flags_then_set(tmp_path):
    config = tmp_path / "options.yaml"
    config.write_text(yaml.safe_dump({"decoder_dim": 48, "epochs": 4, "mask_ratio": 0.5}))
    out = ["--out", str(tmp_path / "run"), "--preset", "smoke"]
    argv = [*out, "--config", str(config), "--epochs", "6", "--mask-ratio", "0.6", "--set", "mask_ratio=0.7"]
    resolved = resolve_config(PRETRAIN_DEFAULTS, overrides_of(argv), stage="pretrain")
    assert resolved["image_size"] == SMOKE["image_size"]  # the preset, where nothing else speaks
    assert resolved["decoder_dim"] == 48  # the file over the preset
    assert resolved["epochs"] == 6  # a flag over the file
    assert resolved["mask_ratio"] == 0.7  # --set over the flag
    assert resolve_config(PRETRAIN_DEFAULTS, overrides_of(out), stage="pretrain")["decoder_dim"] == SMOKE[
        "decoder_dim"]


def test_the_preset_defaults_to_the_datasets_and_a_resumed_run_keeps_its_own(tmp_path):
    out = ["--out", str(tmp_path)]
    assert overrides_of(out)["preset"] == "small"
    assert overrides_of([*out, "--dataset", "busi", "--data-root", "/d"])["preset"] == "paper"
    assert overrides_of([*out, "--preset", "smoke", "--dataset", "busi"])["preset"] == "smoke"
    resumed = overrides_of([*out, "--resume"])
    assert resumed["resume"] is True and "preset" not in resumed


def test_a_runs_own_config_yaml_is_a_valid_config_file(tmp_path):
    recorded = tmp_path / "old" / CONFIG_NAME
    recorded.parent.mkdir()
    recorded.write_text(yaml.safe_dump({"out": "/elsewhere", "resume": True, "classes": ["a", "b"], "run": {},
                                        "epochs": 9}))
    overrides = overrides_of(["--out", str(tmp_path / "new"), "--config", str(recorded)])
    assert overrides["epochs"] == 9 and overrides["out"] == str(tmp_path / "new")
    assert "resume" not in overrides and not set(BOOKKEEPING_KEYS) & set(overrides)


def test_unknown_keys_are_named_with_where_they_came_from(tmp_path):
    with pytest.raises(UsageError, match=r"unknown option 'epoch' \(in --set\); did you mean epochs"):
        overrides_of(["--out", str(tmp_path), "--set", "epoch=2"])
    config = tmp_path / "bad.yaml"
    config.write_text("epoch: 2\n")
    with pytest.raises(UsageError, match=rf"unknown option 'epoch' \(in {config}\)"):
        overrides_of(["--out", str(tmp_path), "--config", str(config)])
