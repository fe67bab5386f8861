"""The command line of the training stages (``pretrain``, ``finetune``): their flags, and what the flags ask for.

Every stage flag comes from :data:`medens.train.options.OPTIONS`, with the stage's default in its help. What the
command line asks for is merged in one order: ``--preset`` (or the default preset for the dataset) < ``--config``
YAML < flags < ``--set KEY=VALUE``; a resumed run's saved ``config.yaml`` sits between the preset and the rest
(:func:`medens.train.configuration.resolve_config`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from medens.cli import command, command_help
from medens.engine.config import merge_config, parse_overrides
from medens.errors import UsageError
from medens.flags import add_flag
from medens.train.configuration import resolve_config
from medens.train.options import BOOKKEEPING_KEYS, OPTIONS
from medens.train.presets import PRESET_NAMES, default_preset, load_config_file

__all__ = ["add_common_arguments", "add_options", "cli_overrides", "add_stage_parser", "run_stage_cli"]


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--out``, ``--preset``, ``--config``, ``--set``, ``--resume``, ``--print-config``."""
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder of the run")
    parser.add_argument(
        "--preset",
        choices=PRESET_NAMES,
        default=argparse.SUPPRESS,
        help="packaged options to start from: paper (the defaults), small (fits a CPU) or smoke (seconds; for "
        "trying commands) (default: small for the generated synthetic images, paper for a real dataset)",
    )
    parser.add_argument(
        "--config",
        metavar="YAML",
        help="YAML file (or packaged preset name) of options; flags given here override it",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set any config key (repeatable), e.g. --set warmup_epochs=2",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        default=argparse.SUPPRESS,
        help="continue the run in --out from its checkpoint (its config.yaml is the base; flags override it)",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved configuration as YAML and exit"
    )


def add_options(
    parser: argparse.ArgumentParser | Any, defaults: Mapping[str, Any], keys: Iterable[str]
) -> None:
    """Add the flags of ``keys`` (each documented in :data:`OPTIONS`, default from ``defaults``).

    Flags default to "not given" so that only what the user typed overrides the YAML and the defaults.
    """
    for key in keys:
        add_flag(parser, key, OPTIONS[key], defaults[key])


def cli_overrides(args: argparse.Namespace, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """What the command line sets: ``--config`` YAML, then flags, then ``--set``; plus ``out`` and ``resume``.

    The preset is chosen here (``--preset``, else :func:`~medens.train.presets.default_preset` of the dataset the
    rest names) and recorded as ``preset``; a resumed run without ``--preset`` keeps the one it recorded.

    Raises:
        UsageError: for a bad ``--set`` or ``--dataset-option`` item, or an unknown key in either or in the YAML.
    """
    try:
        return _cli_overrides(args, defaults)
    except UsageError:
        raise
    except ValueError as err:
        raise UsageError(str(err)) from None


def _cli_overrides(args: argparse.Namespace, defaults: Mapping[str, Any]) -> dict[str, Any]:
    given = vars(args)
    overrides: dict[str, Any] = {}
    if given.get("config"):
        # A run's own config.yaml is a valid --config: its bookkeeping and its out/resume are not options.
        skip = (*BOOKKEEPING_KEYS, "out", "resume")
        from_file = load_config_file(given["config"])
        merge_config(defaults, from_file, source=[given["config"]], ignore=skip)  # checks the keys
        overrides.update({k: v for k, v in from_file.items() if k not in skip})
    for key in defaults:
        if key in given and key != "dataset_options":
            overrides[key] = given[key]
    if "dataset_options" in given:
        options = dict(overrides.get("dataset_options") or {})
        options.update(parse_overrides(given["dataset_options"], option="--dataset-option"))
        overrides["dataset_options"] = options
    sets = parse_overrides(given.get("set") or [])
    merge_config(defaults, sets, source=["--set"])  # unknown keys fail here, naming --set
    overrides.update(sets)
    overrides["out"] = given["out"]
    if given.get("resume"):
        overrides["resume"] = True
    if "preset" in given:
        overrides["preset"] = given["preset"]
    elif "preset" not in overrides and not given.get("resume"):
        overrides["preset"] = default_preset(overrides.get("dataset", defaults.get("dataset")))
    return overrides


def add_stage_parser(
    subparsers: argparse._SubParsersAction,
    name: str,
    *,
    description: str,
    defaults: Mapping[str, Any],
    keys: Iterable[str],
    func: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    """Register a training subcommand: the common arguments, then the flags of ``keys``; ``func`` runs it."""
    parser = subparsers.add_parser(
        name, help=command_help(name), description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_arguments(parser)
    add_options(parser, defaults, keys)
    parser.set_defaults(func=func)
    return parser


def run_stage_cli(
    name: str, run: Callable[[dict[str, Any]], Path], args: argparse.Namespace, defaults: Mapping[str, Any]
) -> int:
    """Run stage ``name`` from parsed flags (or, with ``--print-config``, print its resolved configuration).

    Returns:
        0 on success; 2 for a usage error, 1 for another user error (one message, no traceback); 130/143 after
        SIGINT/SIGTERM (the checkpoint is saved; ``--resume`` continues).
    """

    @command(name)
    def body(args: argparse.Namespace) -> int:
        overrides = cli_overrides(args, defaults)
        if getattr(args, "print_config", False):
            import yaml

            sys.stdout.write(yaml.safe_dump(resolve_config(defaults, overrides, name), sort_keys=False))
            return 0
        run(overrides)
        return 0

    return body(args)
