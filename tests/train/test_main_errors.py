"""The one error rule: a user's or the environment's mistake ends with a line naming the culprit, exit 1, no
traceback; anything else is reported as a bug in medens, with its traceback."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from medens.train.__main__ import main

TINY = [
    "--dataset", "synthetic", "--dataset-option", "num_images=16", "--dataset-option", "image_size=64",
    "--arch", "convnext_atto", "--image-size", "64", "--decoder-dim", "32", "--batch-size", "8",
    "--num-workers", "0", "--no-progress", "--mask-ratio", "0.5", "--epochs", "1",
]  # fmt: skip
#: TINY without the pre-training options.
FT_TINY = [a for i, a in enumerate(TINY) if a not in ("--decoder-dim", "--mask-ratio") and
           TINY[i - 1] not in ("--decoder-dim", "--mask-ratio")]  # fmt: skip


def _fails_cleanly(capsys: pytest.CaptureFixture, argv: list[str], *needles: str, code: int = 1) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("where", ["is_a_file", "under_a_file"])
def test_out_that_is_or_lies_under_a_file(tmp_path: Path, capsys: pytest.CaptureFixture, where: str) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    out = blocker if where == "is_a_file" else blocker / "run"
    _fails_cleanly(capsys, ["pretrain", *TINY, "--out", str(out)], str(blocker))
    assert blocker.read_text() == "a file"


@pytest.mark.parametrize("where", ["is_a_file", "under_a_file"])
def test_cache_dir_that_is_or_lies_under_a_file(tmp_path: Path, capsys: pytest.CaptureFixture, where: str) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    cache = blocker if where == "is_a_file" else blocker / "cache"
    _fails_cleanly(capsys, ["pretrain", *TINY, "--cache-dir", str(cache), "--out", str(tmp_path / "run")],
                   str(blocker), "a file")
    assert blocker.read_text() == "a file"


def test_disk_full_while_saving_names_the_file_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    from collections import namedtuple

    import torch

    import medens.io as atomic

    def full(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1234 vs 1200")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 30, 10 << 30, 1 << 20))
    out = tmp_path / "run"
    err = _fails_cleanly(capsys, ["pretrain", *TINY, "--out", str(out)], "no space left to write", "checkpoint.pt")
    assert "unexpected pos" not in err
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert atomic._LOW_SPACE > 1 << 20


def _can_mount_a_private_tmpfs() -> bool:
    import shutil
    import subprocess

    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt 2>/dev/null || "
                            "mount -t tmpfs -o size=1m tmpfs /tmp"], capture_output=True)  # fmt: skip
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_a_private_tmpfs(),
                    reason="no unprivileged user and mount namespaces here (unshare -rm) to mount a small tmpfs")
def test_disk_full_on_a_real_small_file_system(tmp_path: Path) -> None:
    """The installed CLI, its --out on a 4 MiB tmpfs: the first checkpoint cannot fit."""
    import subprocess

    from tests._installed import installed

    small = tmp_path / "small"
    small.mkdir()
    child = installed("-m", "medens.train", "pretrain", *TINY, "--cache-dir", str(tmp_path / "cache"),
                      "--out", str(small / "run"))  # fmt: skip
    # The mount exists only in the child's private namespace; list the run folder before it goes.
    script = f'mount -t tmpfs -o size=4m tmpfs "{small}" || exit 99; "$@"; rc=$?; ls -a "{small}/run"; exit $rc'
    child["args"] = ["unshare", "-rm", "sh", "-c", script, "sh", *child["args"]]
    result = subprocess.run(**child, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "no space left" in result.stderr.lower() and "checkpoint.pt" in result.stderr, result.stderr
    assert result.stderr.count("free some space") == 1, result.stderr  # one piece of advice, once
    left = result.stdout.split()
    assert "config.yaml" in left and not [name for name in left if name.endswith(".tmp")], left


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_read_only_or_forbidden_out(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    # Tests run as root here, where chmod cannot forbid anything: simulate the file system's refusal.
    import os

    out = tmp_path / "ro" / "run"
    real_mkdir = Path.mkdir

    def refuse(self, *args, **kwargs):
        if self == out:
            raise OSError(code, os.strerror(code), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    _fails_cleanly(capsys, ["pretrain", *TINY, "--out", str(out)], str(out), os.strerror(code))


def test_corrupt_checkpoint_on_resume(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    _fails_cleanly(capsys, ["pretrain", *TINY, "--resume", "--out", str(out)], "is not a readable medens checkpoint",
                   str(out / "checkpoint.pt"))


@pytest.mark.parametrize("content", [b"", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json", b"garbage"])
def test_corrupt_encoder_for_init_mae(tmp_path: Path, capsys: pytest.CaptureFixture, content: bytes) -> None:
    encoder = tmp_path / "encoder.safetensors"
    encoder.write_bytes(content)
    argv = [
        "finetune", "--dataset", "synthetic", "--dataset-option", "num_images=30", "--dataset-option", "image_size=64",
        "--arch", "convnext_atto", "--image-size", "64", "--epochs", "1", "--num-workers", "0", "--no-progress",
        "--init", f"mae:{encoder}", "--out", str(tmp_path / "ft"),
    ]  # fmt: skip
    _fails_cleanly(capsys, argv, str(encoder), "expected a safetensors weights file")


def test_a_bug_keeps_its_traceback_and_says_it_is_one(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medens.train.pretrain as pretrain

    def broken(config):
        raise KeyError("an internal key")

    monkeypatch.setattr(pretrain, "run_pretrain", broken)
    assert main(["pretrain", *TINY, "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError" in err and "this is a bug in medens" in err


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--device", "tpu"], "device: expected 'auto', 'cpu', 'cuda' or 'cuda:N' (a torch device), received 'tpu'"),
        (["--ops-backend", "nope"], "ops_backend: expected 'auto' or one of"),
        (["--set", "image_size=abc"], "image_size: expected an integer, received 'abc'"),
        (["--dataset-option", "num_images"], "--dataset-option: expected KEY=VALUE, received 'num_images'"),
        # a value --set (or a YAML file) gives is held to the flag's choices too
        (["--set", "pretrain_split=every"], "pretrain_split: expected train or trainval or all, received 'every'"),
        (["--set", "masking=blocks"], "masking: expected "),
    ],
)
def test_bad_values_name_the_option(tmp_path: Path, capsys: pytest.CaptureFixture, flags: list[str], needle: str) -> None:
    """A bad option value is a usage error: exit 2, the option named, a pointer to --help, no traceback."""
    err = _fails_cleanly(capsys, ["pretrain", *TINY, *flags, "--out", str(tmp_path / "run")], needle, code=2)
    assert "--help" in err


def test_an_ops_backend_this_machine_cannot_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from medens.ops import available_backends

    missing = [name for name, ok in available_backends().items() if not ok]
    if not missing:
        pytest.skip("every ops backend can run on this machine")
    _fails_cleanly(capsys, ["pretrain", *TINY, "--ops-backend", missing[0], "--out", str(tmp_path / "run")],
                   "ops_backend: expected a backend that can run on this machine", repr(missing[0]), code=2)


@pytest.mark.parametrize(
    ("stage", "flags", "needle"),
    [
        ("pretrain", ["--warmup-epochs", "-1"], "warmup_epochs: expected a number at least 0, received -1.0"),
        ("pretrain", ["--dist-timeout-s", "-5"], "dist_timeout_s: expected a number greater than 0, received -5.0"),
        ("pretrain", ["--tensorboard", "maybe"], "tensorboard: expected auto or true or false, received 'maybe'"),
        ("finetune", ["--eval-batch-size", "0"], "eval_batch_size: expected a number at least 1, received 0"),
    ],
)
def test_values_out_of_range_are_refused_not_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture, stage: str, flags: list[str], needle: str
) -> None:
    out = tmp_path / "run"
    _fails_cleanly(capsys, [stage, *(TINY if stage == "pretrain" else FT_TINY), *flags, "--out", str(out)], needle,
                   code=2)
    assert not out.exists()


@pytest.mark.parametrize("resume", [False, True])
def test_a_folder_of_the_other_stage_is_named_as_what_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture, resume: bool
) -> None:
    run = tmp_path / "pre"
    run.mkdir()
    (run / "config.yaml").write_text("mask_ratio: 0.6\narch: convnext_atto\n")
    (run / "checkpoint.pt").write_bytes(b"")
    argv = ["finetune", *FT_TINY, "--out", str(run), *(["--resume"] if resume else [])]
    err = _fails_cleanly(capsys, argv, f"out: {run} holds a pretrain run, not a finetune run", code=2)
    assert "did you mean" not in err and "holds a finetune run" not in err


def test_choices_hold_for_set_and_yaml_values_and_floats_take_any_number(tmp_path: Path) -> None:
    from medens.train.configuration import check_types
    from medens.train.options import FINETUNE_DEFAULTS

    with pytest.raises(ValueError, match="select_metric: expected macro_f1 or accuracy"):
        check_types({"select_metric": "f1"}, FINETUNE_DEFAULTS)
    check_types({"dedupe": False, "imbalance": "none"}, FINETUNE_DEFAULTS)  # YAML's `dedupe: off` is False
    with pytest.raises(ValueError, match="imbalance: expected none or weighted_loss or balanced_sampler"):
        check_types({"imbalance": "typo"}, FINETUNE_DEFAULTS)
    # a float option whose default a YAML file wrote as a whole number still takes a fraction
    check_types({"warmup_epochs": 2.5}, {**FINETUNE_DEFAULTS, "warmup_epochs": 5})
    with pytest.raises(ValueError, match="epochs: expected an integer"):
        check_types({"epochs": 2.5}, FINETUNE_DEFAULTS)

