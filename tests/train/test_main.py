"""One command-line convention: the ``medens`` script, flags without a command, ``--config`` and exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from medens.cli import COMMANDS
from medens.data.__main__ import main as data_main
from medens.train.__main__ import main as train_main


def test_flags_without_a_command_run_the_pipeline(capsys: pytest.CaptureFixture) -> None:
    # Before: "invalid choice: 'busi'". Now the pipeline parses them and asks for what is missing.
    assert train_main(["--dataset", "busi", "--data-root", "/nowhere"]) == 2
    err = capsys.readouterr().err
    assert "pipeline: error: out: expected --out DIR for dataset 'busi'" in err and "--help" in err


def test_an_unknown_command_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as info:
        train_main(["pretrian"])
    assert info.value.code == 2


def test_config_file_sets_the_flags_of_argparse_commands(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "ensemble.yaml"
    config.write_text(f"members: [{tmp_path / 'a'}, {tmp_path / 'b'}]\nout: {tmp_path / 'e'}\nece-bins: 5\n")
    # The file stands in for the required --members and --out: the command gets as far as the folders.
    assert train_main(["ensemble", "--config", str(config)]) == 2
    assert "members: expected fine-tuning run folders" in capsys.readouterr().err
    config.write_text("members: [a]\nbootstraps: 5\n")
    assert train_main(["ensemble", "--config", str(config), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "expected one of the options" in err and "'bootstraps'" in err
    (tmp_path / "p.yaml").write_text("preset: huge\n")
    assert train_main(["pipeline", "--config", str(tmp_path / "p.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "preset: in" in capsys.readouterr().err


def test_stages_take_a_preset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import yaml

    argv = ["--dataset", "busi", "--data-root", str(tmp_path), "--out", str(tmp_path / "o"), "--print-config"]
    assert train_main(["finetune", *argv, "--preset", "small"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert (config["preset"], config["arch"], config["image_size"], config["epochs"]) == (
        "small", "convnext_atto", 96, 40)  # fmt: skip
    assert train_main(["finetune", *argv, "--preset", "small", "--epochs", "3"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["epochs"] == 3  # flags override the preset


def test_data_command_takes_the_training_spelling_and_keeps_the_old_one(capsys: pytest.CaptureFixture) -> None:
    new = ["--dataset", "synthetic", "--dataset-option", "num_images=24", "--split-seed", "3", "--json"]
    assert data_main(new) == 0
    out_new, err_new = capsys.readouterr()
    assert "deprecated" not in err_new
    old = ["--dataset", "synthetic", "--option", "num_images=24", "--seed", "3", "--json"]
    assert data_main(old) == 0
    out_old, err_old = capsys.readouterr()
    assert out_old == out_new
    assert "--option is deprecated; use --dataset-option" in err_old
    assert "--seed is deprecated; use --split-seed" in err_old


def test_every_command_has_one_help_line() -> None:
    """The help line a command's parser shows is the registry's: no module writes its own."""
    from medens.train import __main__ as dispatcher

    assert set(COMMANDS) == {"pipeline", "study", "pretrain", "finetune", "ensemble", "predict", "data"}
    for name in dispatcher.SUBCOMMANDS:
        parser, chosen = dispatcher.build_parser(name)
        assert chosen is not None
        (subparsers,) = [a for a in parser._actions if a.dest == "command"]
        shown = {action.dest: action.help for action in subparsers._choices_actions}
        assert shown[name] == COMMANDS[name][1], name


def test_the_medens_console_script(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "medens"
    if not script.is_file():
        pytest.skip(f"no medens script beside {sys.executable} (medens is not installed into this environment)")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    top = subprocess.run([str(script), "--help"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert top.returncode == 0 and "pretrain" in top.stdout and "    data " in top.stdout
    data = subprocess.run(
        [str(script), "data", "--dataset", "synthetic", "--dataset-option", "num_images=20", "--json"],
        capture_output=True, text=True, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert data.returncode == 0, data.stderr
    assert '"num_images": 20' in data.stdout
    usage = subprocess.run([str(script), "pretrain", "--out", str(tmp_path / "o"), "--epochs", "ten"],
                           capture_output=True, text=True, cwd=tmp_path, env=env)  # fmt: skip
    assert usage.returncode == 2 and "Traceback" not in usage.stderr
