"""The data flags every command shares read the same everywhere: ``pipeline``, ``study``, ``medens data`` and the
training stages take each one's help from the one table (:mod:`medens.data.options`), and no command shows a flag
twice."""

from __future__ import annotations

import argparse

import pytest

from medens.cli import build_parser
from medens.data import list_datasets
from medens.data.__main__ import build_parser as data_parser
from medens.data.options import DATA_OPTIONS, SHARED_DATA_KEYS
from medens.flags import flag_name


def _parsers() -> dict[str, argparse.ArgumentParser]:
    parsers = {name: build_parser(name)[1] for name in ("pipeline", "study", "pretrain", "finetune")}
    return {**parsers, "data": data_parser()}


PARSERS = _parsers()


def _action(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    (action,) = [a for a in parser._actions if flag in a.option_strings]
    return action


@pytest.mark.parametrize("key", SHARED_DATA_KEYS)
def test_a_shared_data_flag_has_one_help_text(key):
    flag = flag_name(key, DATA_OPTIONS[key])
    texts = {name: _action(parser, flag).help for name, parser in PARSERS.items()}
    assert len(set(texts.values())) == 1, texts
    (text,) = set(texts.values())
    assert text.startswith(DATA_OPTIONS[key].help)
    for name, parser in PARSERS.items():  # and each command prints it: the help, reflowed, holds its words
        assert " ".join(text.split()) in " ".join(parser.format_help().split()), name


def test_the_dataset_names_are_the_registry_s():
    text = DATA_OPTIONS["dataset"].help
    for name in list_datasets():
        assert (f"{name}:<flag>" if name == "medmnist" else name) in text


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_no_command_shows_a_flag_twice(name):
    parser = PARSERS[name]
    flags = [flag for action in parser._actions for flag in action.option_strings]
    assert len(flags) == len(set(flags)), sorted(f for f in flags if flags.count(f) > 1)
    shown = [line.split()[0].rstrip(",") for line in parser.format_help().splitlines()
             if line.startswith("  --")]
    assert len(shown) == len(set(shown)), sorted(f for f in shown if shown.count(f) > 1)


def test_the_readme_names_every_registered_dataset():
    from pathlib import Path

    readme = Path(__file__).resolve().parents[1] / "README.md"
    if not readme.is_file():
        pytest.skip(f"no README.md beside the tests ({readme})")
    section = readme.read_text(encoding="utf-8").split("## Datasets", 1)[-1].split("\n## ", 1)[0]
    for name in list_datasets():
        assert f"`{name}:<flag>`" in section if name == "medmnist" else f"`{name}`" in section, name
