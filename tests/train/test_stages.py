"""The pipeline's stage plan (medens/train/stages.py), called directly: each stage's configuration and its
precedence, variants and their folders, the checks before the first stage, and when a stage runs, resumes or is
skipped."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medens.errors import UsageError
from medens.layout import (
    BASELINE_DIR,
    CACHE_DIR,
    CHECKPOINT_NAME,
    CONFIG_NAME,
    ENCODER_NAME,
    FINETUNE_OUTPUTS,
    IMAGENET_DIR,
    MAE_DIR,
    PRETRAIN_DIR,
    PRETRAIN_OUTPUTS,
    SPLITS_NAME,
)
from medens.train import stages
from medens.train.presets import DEMO_DATASET_OPTIONS, DEMO_OVERRIDES, load_preset


def options(tmp_path: Path, **extra) -> dict:
    """The pipeline's options for the smoke preset on the synthetic images, with ``extra``."""
    return {"out": str(tmp_path), "preset": "smoke", "dataset": "synthetic", **extra}


def finish(folder: Path, names: tuple[str, ...], config: dict | None = None) -> None:
    """Make ``folder`` look like a finished run: every file in ``names``, ``config`` as its config.yaml."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text("")
    (folder / CONFIG_NAME).write_text(yaml.safe_dump(config or {}))


# ---- stage_configs -------------------------------------------------------------------------------------------------


def test_each_stage_starts_from_the_preset_and_gets_its_folder_and_init(tmp_path):
    configs = stages.stage_configs(options(tmp_path))
    assert set(configs) == {"pretrain", "imagenet", "mae"}
    pretrain_preset, finetune_preset = load_preset("smoke", "pretrain"), load_preset("smoke", "finetune")
    assert configs["pretrain"]["decoder_dim"] == pretrain_preset["decoder_dim"]
    assert configs["imagenet"]["lr"] == finetune_preset["lr"] != pretrain_preset["lr"]
    assert configs["pretrain"]["out"] == str(tmp_path / PRETRAIN_DIR)
    assert configs["imagenet"]["out"] == str(tmp_path / IMAGENET_DIR)
    assert configs["mae"]["out"] == str(tmp_path / MAE_DIR)
    assert configs["imagenet"]["init"] == "imagenet"
    assert configs["mae"]["init"] == f"mae:{tmp_path / PRETRAIN_DIR / ENCODER_NAME}"
    # Both members fine-tune on the split the pre-training wrote, so they are scored on the same test images.
    assert configs["imagenet"]["split_file"] == configs["mae"]["split_file"] == str(
        tmp_path / PRETRAIN_DIR / SPLITS_NAME)
    assert configs["imagenet"]["allow_random_imagenet_fallback"] is True
    assert stages.stage_configs(options(tmp_path, require_imagenet=True))["imagenet"][
        "allow_random_imagenet_fallback"] is False


def test_precedence_preset_then_flags_then_epochs_then_set(tmp_path):
    configs = stages.stage_configs(options(
        tmp_path, image_size=48, batch_size=4, pretrain_epochs=3, finetune_epochs=5,
        set_pretrain={"batch_size": 2, "epochs": 7}, set_finetune={"image_size": 32},
    ))
    pretrain, imagenet, mae = configs["pretrain"], configs["imagenet"], configs["mae"]
    assert pretrain["image_size"] == 48  # a flag over the preset's 64
    assert imagenet["image_size"] == mae["image_size"] == 32  # --set-finetune over the flag
    assert pretrain["batch_size"] == 2 and imagenet["batch_size"] == 4  # --set-pretrain only for pre-training
    assert pretrain["epochs"] == 7  # --set-pretrain over --pretrain-epochs
    assert imagenet["epochs"] == mae["epochs"] == 5  # --finetune-epochs over the preset's 1


def test_shared_flags_reach_every_stage_and_unset_ones_leave_the_preset(tmp_path):
    configs = stages.stage_configs(options(tmp_path, seed=11, split_seed=None, arch="convnext_femto"))
    for config in configs.values():
        assert config["seed"] == 11 and config["arch"] == "convnext_femto"
        assert "split_seed" not in config  # None is "not given": the stage default applies
    assert set(stages.SHARED_KEYS) >= {"dataset", "data_root", "cache_dir", "split_seed", "dedupe"}


def test_warmup_is_cut_to_fit_a_shortened_schedule(tmp_path):
    configs = stages.stage_configs(options(tmp_path, pretrain_epochs=2, set_pretrain={"warmup_epochs": 5.0},
                                           set_finetune={"warmup_epochs": 0.5}))
    assert configs["pretrain"]["warmup_epochs"] == 1.0  # at most epochs - 1
    assert configs["mae"]["warmup_epochs"] == 0.0  # the smoke preset's 1 epoch leaves none


def test_the_demo_images_get_the_demo_options_and_the_small_preset_its_overrides(tmp_path):
    small = stages.stage_configs(options(tmp_path, preset="small"))
    assert small["pretrain"]["dataset_options"] == DEMO_DATASET_OPTIONS
    assert small["pretrain"]["epochs"] == DEMO_OVERRIDES["pretrain"]["epochs"]
    assert small["mae"]["image_size"] == DEMO_OVERRIDES["finetune"]["image_size"]
    smoke = stages.stage_configs(options(tmp_path))  # another preset: the demo images, not the demo's schedule
    assert smoke["pretrain"]["dataset_options"] == DEMO_DATASET_OPTIONS
    assert smoke["pretrain"]["epochs"] == load_preset("smoke", "pretrain")["epochs"]
    own = stages.stage_configs(options(tmp_path, preset="small", dataset_options={"num_images": 40}))
    assert own["pretrain"]["dataset_options"] == {"num_images": 40}
    assert own["pretrain"]["epochs"] != DEMO_OVERRIDES["pretrain"]["epochs"]


def test_a_real_dataset_decodes_once_into_the_runs_cache_unless_told_where(tmp_path):
    configs = stages.stage_configs(options(tmp_path, dataset="busi", data_root="/data/busi"))
    assert {c["cache_dir"] for c in configs.values()} == {str(tmp_path / CACHE_DIR)}
    assert configs["pretrain"]["dataset_options"] == {}
    told = stages.stage_configs(options(tmp_path, dataset="busi", data_root="/d", cache_dir="/elsewhere"))
    assert {c["cache_dir"] for c in told.values()} == {"/elsewhere"}


def test_a_variant_sets_pretraining_options_and_names_its_folders(tmp_path):
    variant = stages.Variant("random", {"masking": "random", "mask_ratio": 0.6})
    assert variant.suffix == "-masking-random_mask_ratio-0.6"
    assert stages.DEFAULT_VARIANT.suffix == "" and stages.DEFAULT_VARIANT.folder(PRETRAIN_DIR) == PRETRAIN_DIR
    assert stages.Variant("odd", {"arch": "a/b c"}).suffix == "-arch-a-b-c"  # a folder name, whatever the value
    configs = stages.stage_configs(options(tmp_path, set_pretrain={"masking": "entropy"}), variant)
    assert configs["pretrain"]["masking"] == "random"  # the variant wins over --set-pretrain
    assert configs["pretrain"]["out"] == str(tmp_path / (PRETRAIN_DIR + variant.suffix))
    assert configs["mae"]["out"] == str(tmp_path / (MAE_DIR + variant.suffix))
    assert configs["mae"]["init"] == f"mae:{tmp_path / (PRETRAIN_DIR + variant.suffix) / ENCODER_NAME}"
    assert configs["imagenet"]["out"] == str(tmp_path / IMAGENET_DIR)  # shared by every variant
    assert "masking" not in configs["imagenet"] or configs["imagenet"]["masking"] != "random"


def test_the_mae_member_is_built_with_its_encoders_norm(tmp_path):
    configs = stages.stage_configs(options(tmp_path, set_finetune={"norm": "batchnorm"}),
                                   stages.Variant("ln", {"norm": "layernorm"}))
    assert configs["mae"]["norm"] == configs["pretrain"]["norm"] == "layernorm"
    assert configs["imagenet"]["norm"] == "batchnorm"


def test_a_baseline_is_a_scratch_member_on_the_shared_split(tmp_path):
    configs = stages.stage_configs(options(tmp_path, baseline="resnet18"))
    baseline = configs["baseline"]
    assert (baseline["arch"], baseline["init"], baseline["out"]) == ("resnet18", "scratch",
                                                                    str(tmp_path / BASELINE_DIR))
    assert baseline["split_file"] == configs["imagenet"]["split_file"]


# ---- check_plan ----------------------------------------------------------------------------------------------------


def test_check_plan_names_the_stage_and_variant_of_a_bad_option(tmp_path):
    stages.check_plan(options(tmp_path), [stages.DEFAULT_VARIANT])  # a good plan passes
    bad = stages.Variant("bad", {"mask_ratio": 1.5})
    with pytest.raises(UsageError, match=r"mask_ratio.*\[pretrain stage of variant bad\]"):
        stages.check_plan(options(tmp_path), [stages.DEFAULT_VARIANT, bad])
    with pytest.raises(UsageError, match=r"^select_metric: .*'loss'.* \[imagenet stage\]$"):
        stages.check_plan(options(tmp_path, set_finetune={"select_metric": "loss"}), [stages.DEFAULT_VARIANT])


# ---- run_stage -----------------------------------------------------------------------------------------------------


def recorder(calls: list):
    def run(config):
        calls.append(config)
        return Path(config["out"])

    return run


def test_run_stage_starts_resumes_or_skips(tmp_path):
    folder = tmp_path / "stage"
    config = {"out": str(folder), "epochs": 2, "lr": 0.1}
    calls: list = []
    started = stages.run_stage("pretrain", config, recorder(calls), lambda f: False)
    assert (started.status, calls[-1]["resume"]) == ("ran", False)
    folder.mkdir()
    (folder / CHECKPOINT_NAME).write_text("")
    (folder / CONFIG_NAME).write_text(yaml.safe_dump({"epochs": 2, "lr": 0.1}))
    resumed = stages.run_stage("pretrain", config, recorder(calls), lambda f: False)
    assert (resumed.status, calls[-1]["resume"]) == ("resumed", True)
    skipped = stages.run_stage("pretrain", config, recorder(calls), lambda f: True)
    assert (skipped.status, skipped.seconds, len(calls)) == ("skipped", 0.0, 2)


def test_run_stage_refuses_a_finished_run_with_other_options(tmp_path):
    folder = tmp_path / "stage"
    finish(folder, PRETRAIN_OUTPUTS, {"epochs": 2, "lr": 0.1, "num_workers": 4, "classes": ["a", "b"]})
    calls: list = []
    with pytest.raises(ValueError, match=r"finished pretrain run with other options: lr=0\.1 \(requested 0\.2\)"):
        stages.run_stage("pretrain", {"out": str(folder), "epochs": 2, "lr": 0.2}, recorder(calls),
                         lambda f: True)
    # How it ran (num_workers, out) may differ; an option added later compares with the value runs had before it.
    outcome = stages.run_stage("pretrain", {"out": str(folder), "epochs": 2, "lr": 0.1, "num_workers": 0,
                                            "precise_bn": False}, recorder(calls), lambda f: True)
    assert outcome.status == "skipped" and not calls
    with pytest.raises(ValueError, match=r"precise_bn=False \(requested True\)"):
        stages.run_stage("pretrain", {"out": str(folder), "precise_bn": True}, recorder(calls), lambda f: True)


def test_run_stage_compares_a_requested_init_with_what_was_requested(tmp_path):
    folder = tmp_path / "member"
    finish(folder, FINETUNE_OUTPUTS, {"init": "scratch", "init_requested": "imagenet"})
    calls: list = []
    done = stages.run_stage("imagenet", {"out": str(folder), "init": "imagenet"}, recorder(calls), lambda f: True)
    assert done.status == "skipped"  # asked for imagenet, fell back: still the same request
    with pytest.raises(ValueError, match=r"init='imagenet' \(requested 'scratch'\)"):
        stages.run_stage("imagenet", {"out": str(folder), "init": "scratch"}, recorder(calls), lambda f: True)


# ---- training_plan -------------------------------------------------------------------------------------------------


def test_training_plan_lists_the_stages_to_train_in_order_and_leaves_out_finished_ones(tmp_path):
    variants = [stages.DEFAULT_VARIANT, stages.Variant("r", {"masking": "random"})]
    opts = options(tmp_path, baseline="resnet18", pretrain_epochs=3, finetune_epochs=2)
    plan = stages.training_plan(opts, variants)
    suffix = variants[1].suffix
    assert [p.folder for p in plan] == [tmp_path / PRETRAIN_DIR, tmp_path / IMAGENET_DIR, tmp_path / BASELINE_DIR,
                                        tmp_path / MAE_DIR, tmp_path / (PRETRAIN_DIR + suffix),
                                        tmp_path / (MAE_DIR + suffix)]
    assert [p.epochs for p in plan] == [3, 2, 2, 2, 3, 2]
    finish(tmp_path / PRETRAIN_DIR, PRETRAIN_OUTPUTS)
    finish(tmp_path / IMAGENET_DIR, FINETUNE_OUTPUTS)
    left = [p.folder for p in stages.training_plan(opts, variants)]
    assert tmp_path / PRETRAIN_DIR not in left and tmp_path / IMAGENET_DIR not in left
    assert left[0] == tmp_path / BASELINE_DIR and len(left) == 4
