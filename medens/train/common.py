"""What the ``pretrain`` and ``finetune`` commands share: options, config resolution, the run's set-up, data.

Options are declared once, as :class:`Option` entries keyed by config name; each stage lists the keys it uses
with their defaults. The command line, a YAML file and the Python entry points (``run_pretrain(config)``,
``run_finetune(config)``) all go through the same keys, so a preset, a ``--set key=value`` and a flag are
interchangeable, and ``config.yaml`` in the output folder repeats a run.

Order of precedence: stage defaults < the run's saved ``config.yaml`` (with ``resume``) < ``--config`` YAML <
command-line flags and ``--set``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medens.data.duplicates import DEFAULT_THRESHOLD
from medens.engine import (
    AMP_CHOICES,
    DistContext,
    EngineConfig,
    Trainer,
    TrainingInterrupted,
    WarmupCosine,
    build_loader,
    configure_determinism,
    init_distributed,
    load_yaml,
    logging_to,
    merge_config,
    parse_overrides,
    scaled_lr,
    seed_everything,
    write_config,
)
from medens.engine.atomic import remove_stale_temporaries
from medens.engine.checkpoint import CHECKPOINT_NAME
from medens.engine.config import yaml_value

__all__ = [
    "Option",
    "OPTIONS",
    "DATA_DEFAULTS",
    "ENGINE_DEFAULTS",
    "DATA_CLI_KEYS",
    "OPTIM_CLI_KEYS",
    "ENGINE_CLI_KEYS",
    "user_errors",
    "user_error_message",
    "interrupted_exit_code",
    "BOOKKEEPING_KEYS",
    "CONFIG_NAME",
    "SPLITS_NAME",
    "add_options",
    "add_stage_parser",
    "cli_logging",
    "cli_overrides",
    "resolve_config",
    "check_types",
    "RunContext",
    "run_session",
    "open_dataset",
    "open_data",
    "train_loader",
    "warmup_cosine",
    "write_run_config",
    "resume_and_fit",
    "split_hash",
    "effective_lr",
    "run_cli",
]

_logger = logging.getLogger(__name__)

CONFIG_NAME = "config.yaml"
SPLITS_NAME = "splits.json"

#: Keys a run adds to its ``config.yaml`` that are facts about the run, not options (ignored when read back).
BOOKKEEPING_KEYS = ("classes", "num_classes", "split_hash", "init_requested", "run", "encoder")


@dataclass(frozen=True)
class Option:
    """One configuration key as a command-line flag.

    Attributes:
        help: what it does (the default is appended from the stage's defaults).
        type: parser for the flag's value; ``bool`` makes a ``--flag/--no-flag`` pair.
        choices: allowed values.
        metavar: placeholder in ``--help``.
        flag: the flag, when not ``--`` + the key with dashes.
    """

    help: str
    type: Callable[[str], Any] | type = str
    choices: tuple[Any, ...] | None = None
    metavar: str | None = None
    flag: str | None = None


def _optional_float(text: str) -> float | None:
    return None if text.lower() in ("none", "null", "") else float(text)


def _optional_int(text: str) -> int | None:
    return None if text.lower() in ("none", "null", "") else int(text)


def _optional_str(text: str) -> str | None:
    return None if text.lower() in ("none", "null", "") else text


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


#: Every option either stage knows, with its help text.
OPTIONS: dict[str, Option] = {
    # data
    "dataset": Option(
        "dataset name: busi, isic2018, kvasir, covid, medmnist:<flag>, folder or synthetic", metavar="NAME"
    ),
    "data_root": Option(
        "folder the dataset was unpacked in (not needed for synthetic)", _optional_str, metavar="PATH"
    ),
    "dataset_options": Option(
        "reader options for medens.data.load_dataset as KEY=VALUE, repeatable (e.g. num_images=64 for synthetic)",
        metavar="KEY=VALUE",
        flag="--dataset-option",
    ),
    "cache_dir": Option(
        "decode images once into a memory-mapped cache in this folder", _optional_str, metavar="DIR"
    ),
    "split_seed": Option("seed of the train/val/test split", int),
    "val_fraction": Option("share of images for validation (when the dataset has no official split)", float),
    "test_fraction": Option("share of images for testing (when the dataset has no official split)", float),
    "folds": Option("k-fold cross-validation: number of folds", _optional_int, metavar="K"),
    "fold": Option(
        "k-fold cross-validation: which fold (0-based) is the test split", _optional_int, metavar="I"
    ),
    "use_official_split": Option("keep the publisher's split where the dataset ships one", bool),
    "split_file": Option("reuse the split recorded in this splits.json", _optional_str, metavar="FILE"),
    "dedupe": Option(
        "keep near-duplicate images on one side of every split (off: plain stratified splits, a leaky protocol)",
        choices=("on", "off"),
    ),
    "dedupe_threshold": Option("dHash bits up to which two images are candidate copies", int, metavar="BITS"),
    "keep_conflicts": Option("keep images of duplicate groups whose labels disagree (excluded by default)", bool),
    "num_workers": Option("data-loading worker processes per rank", int),
    # model geometry
    "arch": Option(
        "timm ConvNeXt architecture (convnext_tiny; convnext_atto/femto/pico/nano for small machines)"
    ),
    "image_size": Option("input side in pixels, a multiple of the patch size (32)", int),
    "drop_path": Option("stochastic depth of the encoder", float),
    # augmentation
    "crop_scale_min": Option("smallest random-resized-crop area (share of the image)", float),
    "hflip": Option("probability of a horizontal flip", float),
    # optimisation
    "epochs": Option("training epochs", int),
    "warmup_epochs": Option("epochs of linear lr warm-up", float),
    "batch_size": Option("images per batch and rank", int),
    "accum_steps": Option("batches accumulated per optimiser step", int),
    "blr": Option("base learning rate: lr = blr * effective batch / 256", float),
    "lr": Option("absolute learning rate (overrides --blr)", _optional_float),
    "min_lr": Option("final learning rate of the cosine schedule", float),
    "weight_decay": Option("AdamW weight decay", float),
    "betas": Option("AdamW betas as B1,B2", _floats, metavar="B1,B2"),
    "clip_grad": Option("clip the global gradient norm to this (none: no clipping)", _optional_float),
    "amp": Option(
        "mixed precision: auto (bf16 on capable GPUs, fp16 on older, fp32 on CPU), bf16, fp16, off",
        choices=AMP_CHOICES,
    ),
    "channels_last": Option("NHWC memory format (faster convolutions on GPUs)", bool),
    "compile": Option("torch.compile the model", bool),
    "ema_decay": Option("keep an exponential moving average of the weights with this decay", _optional_float),
    "max_nonfinite": Option("stop after this many non-finite loss steps in a row", int),
    # run
    "seed": Option("random seed", int),
    "deterministic": Option("deterministic kernels (bit-identical reruns and resumes; slower)", bool),
    "device": Option("auto, cpu or cuda (under torchrun each rank takes its LOCAL_RANK GPU)"),
    "ops_backend": Option("medens.ops backend: auto, reference, cpp, cuda or triton"),
    "progress": Option("show progress bars", bool),
    "tensorboard": Option(
        "write TensorBoard events (auto: when tensorboard is installed)",
        yaml_value,
        metavar="auto|true|false",
    ),
    "dist_timeout_s": Option("seconds a rank waits for the others before failing", float),
}

DATA_DEFAULTS: dict[str, Any] = {
    "dataset": "synthetic",
    "data_root": None,
    "dataset_options": {},
    "cache_dir": None,
    "split_seed": 0,
    "val_fraction": 0.1,
    "test_fraction": 0.2,
    "folds": None,
    "fold": None,
    "use_official_split": True,
    "split_file": None,
    "dedupe": "on",
    "dedupe_threshold": DEFAULT_THRESHOLD,
    "keep_conflicts": False,
    "num_workers": 4,
}

ENGINE_DEFAULTS: dict[str, Any] = {
    "accum_steps": 1,
    "lr": None,
    "min_lr": 0.0,
    "weight_decay": 0.05,
    "clip_grad": None,
    "amp": "auto",
    "channels_last": True,
    "compile": False,
    "ema_decay": None,
    "max_nonfinite": 5,
    "seed": 0,
    "deterministic": False,
    "device": "auto",
    "progress": True,
    "tensorboard": "auto",
    "dist_timeout_s": 1800.0,
}

#: The data options every training command exposes on its command line, in help order.
DATA_CLI_KEYS = tuple(DATA_DEFAULTS)

#: The optimisation options every training command exposes on its command line, in help order.
OPTIM_CLI_KEYS = (
    "epochs",
    "warmup_epochs",
    "batch_size",
    "accum_steps",
    "blr",
    "lr",
    "min_lr",
    "weight_decay",
    "betas",
)

#: The engine options every training command exposes on its command line, in help order.
ENGINE_CLI_KEYS = (
    "clip_grad",
    "amp",
    "channels_last",
    "compile",
    "ema_decay",
    "max_nonfinite",
    "seed",
    "deterministic",
    "device",
    "progress",
    "tensorboard",
    "dist_timeout_s",
)


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors a user can act on from the message alone: the commands print it and exit 1, without a traceback.

    (``OSError`` of the kinds in :data:`USER_ERRNOS` too; see :func:`user_error_message`.)

    Imported here rather than at module level, so that ``--help`` does not load the models.
    """
    from medens.data import DatasetError
    from medens.engine import NonFiniteLossError
    from medens.models import PretrainedWeightsUnavailable

    return (ValueError, FileNotFoundError, DatasetError, PretrainedWeightsUnavailable, NonFiniteLossError)


#: ``OSError`` numbers that are the environment's or the user's doing (a path, a permission, the disk), not a bug.
USER_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.EEXIST,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ENOENT,
        errno.ENAMETOOLONG,
        errno.ELOOP,
    }
)
_ERRNO_HINTS = {
    errno.ENOSPC: "free some space (the last checkpoint is intact; --resume continues)",
    errno.EDQUOT: "free some space or raise the quota",
    errno.EACCES: "check the permissions, or choose another path",
    errno.EPERM: "check the permissions, or choose another path",
    errno.EROFS: "the file system is read-only: choose a writable --out/--cache-dir",
    errno.EEXIST: "a file is in the way: remove it or choose another path",
    errno.ENOTDIR: "a file stands where a folder is needed: choose another path",
    errno.EISDIR: "a folder stands where a file is needed: choose another path",
}


def user_error_message(err: BaseException) -> str | None:
    """The message to print for a user's or the environment's mistake, or None for what must be a bug.

    One place decides: :func:`user_errors` (bad values, files, datasets, weights), and ``OSError`` whose number is
    in :data:`USER_ERRNOS` (said with the file it concerns and what to do).
    """
    if isinstance(err, OSError) and not isinstance(err, user_errors()):
        if err.errno not in USER_ERRNOS:
            return None
        names = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
        text = err.strerror or str(err)
        hint = _ERRNO_HINTS.get(err.errno)
        return f"{names + ': ' if names and names not in text else ''}{text}" + (f"; {hint}" if hint else "")
    if isinstance(err, user_errors()):
        return str(err)
    return None


def interrupted_exit_code(err: TrainingInterrupted) -> int:
    """The shell's convention for a run stopped by a signal: 128 + SIGTERM (15) or SIGINT (2)."""
    return 143 if err.reason == "SIGTERM" else 130


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--out``, ``--config``, ``--set``, ``--resume``, ``--print-config``."""
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder of the run")
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
        opt = OPTIONS[key]
        flag = opt.flag or "--" + key.replace("_", "-")
        default = defaults[key]
        shown = "none" if default is None else default
        if isinstance(shown, list):
            shown = ",".join(str(v) for v in shown)
        text = f"{opt.help} (default: {shown})"
        if key == "dataset_options":
            parser.add_argument(
                flag, dest=key, action="append", metavar=opt.metavar, help=text, default=argparse.SUPPRESS
            )
        elif opt.type is bool:
            parser.add_argument(
                flag, dest=key, action=argparse.BooleanOptionalAction, help=text, default=argparse.SUPPRESS
            )
        else:
            metavar = opt.metavar
            if metavar is None and opt.choices is None:
                metavar = {int: "N", float: "X", str: "NAME"}.get(
                    opt.type,
                    "X"
                    if "float" in getattr(opt.type, "__name__", "")
                    else "N"
                    if "int" in getattr(opt.type, "__name__", "")
                    else "VALUE",
                )
            parser.add_argument(
                flag,
                dest=key,
                type=opt.type,
                choices=opt.choices,
                metavar=metavar,
                help=text,
                default=argparse.SUPPRESS,
            )


def cli_overrides(args: argparse.Namespace, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """What the command line sets: ``--config`` YAML, then flags, then ``--set``; plus ``out`` and ``resume``.

    Raises:
        ValueError: for a bad ``--set`` or ``--dataset-option`` item, or an unknown key in either or in the YAML.
    """
    given = vars(args)
    overrides: dict[str, Any] = {}
    if given.get("config"):
        # A run's own config.yaml is a valid --config: its bookkeeping and its out/resume are not options.
        skip = (*BOOKKEEPING_KEYS, "out", "resume")
        from_file = load_yaml(given["config"])
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
    return overrides


def add_stage_parser(
    subparsers: argparse._SubParsersAction,
    name: str,
    *,
    help: str,
    description: str,
    defaults: Mapping[str, Any],
    keys: Iterable[str],
    func: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    """Register a training subcommand: the common arguments, then the flags of ``keys``; ``func`` runs it."""
    parser = subparsers.add_parser(
        name, help=help, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_arguments(parser)
    add_options(parser, defaults, keys)
    parser.set_defaults(func=func)
    return parser


def cli_logging() -> contextlib.AbstractContextManager:
    """Log ``medens`` INFO messages to stderr for a command's duration, unless the caller set up logging already."""
    return contextlib.nullcontext() if logging.getLogger("medens").handlers else logging_to(None)


def run_cli(
    run: Callable[[dict[str, Any]], Path], args: argparse.Namespace, defaults: Mapping[str, Any]
) -> int:
    """Resolve the command line, run the stage, and turn known failures into messages and exit codes.

    Returns:
        0 on success; 1 for a bad option, missing data or a failed run (message logged, no traceback);
        130 after SIGINT, 143 after SIGTERM (the checkpoint is saved; ``--resume`` continues).
    """
    with cli_logging():
        return _run_cli(run, args, defaults)


def _run_cli(
    run: Callable[[dict[str, Any]], Path], args: argparse.Namespace, defaults: Mapping[str, Any]
) -> int:
    try:
        overrides = cli_overrides(args, defaults)
        if getattr(args, "print_config", False):
            import yaml

            config = resolve_config(defaults, overrides)
            sys.stdout.write(yaml.safe_dump(config, sort_keys=False))
            return 0
        run(overrides)
    except TrainingInterrupted as err:
        _logger.warning("%s", err)
        return interrupted_exit_code(err)
    except (*user_errors(), OSError) as err:
        message = user_error_message(err)
        if message is None:
            raise
        _logger.error("%s", message)
        return 1
    return 0


# ---------------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------------


def resolve_config(defaults: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults < saved ``config.yaml`` (when ``resume`` and it exists) < ``overrides``; types checked.

    ``overrides`` must hold ``out``. Bookkeeping keys written by an earlier run are dropped.

    Raises:
        ValueError: unknown keys, wrong types, no ``out``, or (on resume) a change to what the run trained with.
    """
    full = {**defaults, "out": None, "resume": False}
    if not overrides.get("out"):
        raise ValueError("out: expected an output folder (--out DIR), received none")
    saved: dict[str, Any] = {}
    saved_path = Path(overrides["out"]) / CONFIG_NAME
    if overrides.get("resume") and saved_path.is_file():
        saved = load_yaml(saved_path)
        refuse_changes_on_resume(saved, overrides, saved_path)
    config = merge_config(
        full, saved, overrides, source=[str(saved_path), "options"], ignore=BOOKKEEPING_KEYS
    )
    config["out"] = str(Path(config["out"]).expanduser())
    if isinstance(config.get("betas"), tuple):
        config["betas"] = list(config["betas"])
    check_types(config, full)
    return config


#: Options a resumed run may change: where and how it runs, not what it trains (``epochs`` may only grow).
RESUME_MUTABLE_KEYS = (
    "out",
    "resume",
    "epochs",
    "data_root",
    "cache_dir",
    "num_workers",
    "eval_batch_size",
    "compile",
    "device",
    "progress",
    "tensorboard",
    "dist_timeout_s",
)


def _plain(value: Any) -> Any:
    """``value`` with tuples as lists, recursively, so that a flag's value compares equal to its YAML copy."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def refuse_changes_on_resume(saved: Mapping[str, Any], overrides: Mapping[str, Any], saved_path: Path) -> None:
    """Refuse options that would make a resumed run's ``config.yaml`` describe a run that was not trained.

    A resumed run keeps the recorded configuration; only :data:`RESUME_MUTABLE_KEYS` may differ, and ``epochs`` may
    extend the run but not shrink it below what was recorded (those epochs may have been trained already).

    Raises:
        ValueError: naming the key, the recorded value and the value received.
    """
    for key, value in overrides.items():
        if key not in saved or key in BOOKKEEPING_KEYS:
            continue
        recorded = saved[key]
        if key == "init" and value in (saved.get("init_requested"), recorded):
            continue  # what was asked, or what a fallback recorded (a run's own config.yaml given as --config)
        if key == "epochs":
            if isinstance(value, int) and isinstance(recorded, int) and value < recorded:
                raise ValueError(
                    f"epochs: expected at least the {recorded} epochs recorded in {saved_path} when resuming "
                    f"(they may be trained already), received {value}; use another --out for a shorter run"
                )
            continue
        if key in RESUME_MUTABLE_KEYS or _plain(value) == _plain(recorded):
            continue
        raise ValueError(
            f"{key}: expected the value recorded in {saved_path} ({recorded!r}) when resuming, received {value!r}; "
            f"a resumed run keeps its configuration (drop the option, or use another --out for a new run)"
        )


def check_types(config: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
    """Every value has its default's type (ints where an int is expected, numbers for floats, ...).

    Raises:
        ValueError: naming the key, the expected type and the value received.
    """
    for key, default in defaults.items():
        value = config.get(key)
        if default is None or value is None:
            continue
        if isinstance(default, bool):
            ok = isinstance(value, bool)
            want = "true or false"
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
            want = "an integer"
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            want = "a number"
        elif isinstance(default, dict):
            ok = isinstance(value, dict)
            want = "a mapping"
        elif isinstance(default, list):
            ok = isinstance(value, (list, tuple))
            want = "a list"
        else:
            ok = True
            want = ""
        if not ok:
            raise ValueError(f"{key}: expected {want}, received {value!r} ({type(value).__name__})")


def effective_lr(config: Mapping[str, Any], world_size: int) -> tuple[float, int]:
    """``(lr, effective batch)``: ``lr`` when set, else ``blr * batch_size * accum_steps * world_size / 256``."""
    effective = int(config["batch_size"]) * int(config["accum_steps"]) * world_size
    if config.get("lr") is not None:
        return float(config["lr"]), effective
    return scaled_lr(float(config["blr"]), effective), effective


# ---------------------------------------------------------------------------------------------------------------
# A run's set-up
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class RunContext:
    """A started run: its resolved config, folder, place among ranks, and whether it resumes."""

    config: dict[str, Any]
    out_dir: Path
    dist: DistContext
    resuming: bool


@contextlib.contextmanager
def run_session(
    config: dict[str, Any], stage: str, is_complete: Callable[[Path], bool]
) -> Iterator[RunContext]:
    """A run's process-wide set-up, undone when the block ends (so the Python entry points leave no trace).

    Joins the process group (when launched by torchrun), logs to stderr and ``out/train.log``, sets
    determinism and seeds; refuses an image size whose activations cannot fit the device (see
    :func:`check_fits_in_memory`); removes the temporary files of writes an earlier run on this folder did not finish.
    Refuses to start over another run in the same folder.

    Raises:
        ValueError: when ``out`` already holds a run and ``resume`` is off.
    """
    out_dir = Path(config["out"])
    has_checkpoint = (out_dir / CHECKPOINT_NAME).is_file()
    if not config["resume"] and (has_checkpoint or is_complete(out_dir)):
        raise ValueError(
            f"out: {out_dir} already holds a {stage} run; pass --resume to continue it (or to redo its final "
            f"outputs), or choose another --out"
        )
    saved_flags = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )
    dist = init_distributed(config["device"], timeout_s=float(config["dist_timeout_s"]))
    try:
        check_fits_in_memory(config, dist.device)
        if dist.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        with logging_to(out_dir, rank=dist.rank):
            configure_determinism(bool(config["deterministic"]))
            seed_everything(int(config["seed"]))
            if dist.device.type == "cuda":
                torch.backends.cuda.matmul.allow_tf32 = True
                torch.backends.cudnn.allow_tf32 = True
            if dist.is_main:
                remove_stale_temporaries(out_dir)
            resuming = bool(config["resume"]) and has_checkpoint
            _logger.info("%s: %s into %s", stage, "resuming" if resuming else "starting", out_dir)
            yield RunContext(config, out_dir, dist, resuming)
    finally:
        torch.use_deterministic_algorithms(saved_flags[0])
        torch.backends.cudnn.benchmark = saved_flags[1]
        torch.backends.cudnn.deterministic = saved_flags[2]
        torch.backends.cuda.matmul.allow_tf32 = saved_flags[3]
        torch.backends.cudnn.allow_tf32 = saved_flags[4]
        dist.close()


#: Channels of the narrowest ConvNeXt stem (Atto): the memory estimate is a lower bound for every arch.
_MIN_STEM_CHANNELS = 40


def device_memory_bytes(device: torch.device) -> int:
    """Total memory of ``device``: the GPU's for CUDA, the machine's RAM otherwise (0 when unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 0


def check_fits_in_memory(config: Mapping[str, Any], device: torch.device) -> None:
    """Refuse an ``image_size`` whose training step cannot fit ``device`` (a typo such as 32000 for 320).

    The estimate is a lower bound, so a size that fits is never refused: one batch of float32 input images plus
    the stem's output (``_MIN_STEM_CHANNELS`` channels at a quarter of the side), counted once.

    Raises:
        ValueError: naming ``image_size``, the estimate and the memory of the device.
    """
    size, batch = int(config["image_size"]), int(config["batch_size"])
    per_image = 4 * (3 * size * size + _MIN_STEM_CHANNELS * (size // 4) ** 2)
    needed = batch * per_image
    have = device_memory_bytes(device)
    if have and needed > have:
        raise ValueError(
            f"image_size: expected a size whose batch fits on {device} ({have / 2**30:.1f} GiB), received "
            f"{size}: a batch of {batch} needs at least {needed / 2**30:.1f} GiB for its input and first layer"
        )


def open_dataset(config: Mapping[str, Any]) -> Any:
    """The dataset a run's config names (``dataset``, ``data_root``, ``dataset_options``, ``cache_dir``).

    Raises:
        medens.data.DatasetError: unknown dataset, bad options, missing files.
    """
    from medens.data import load_dataset

    options = dict(config.get("dataset_options") or {})
    if config.get("cache_dir"):
        options["cache_dir"] = config["cache_dir"]
    return load_dataset(config["dataset"], config.get("data_root"), **options)


def open_data(config: Mapping[str, Any], ctx: RunContext) -> tuple[Any, dict[str, list[int]]]:
    """Open the dataset and split it; rank 0 writes ``splits.json`` into the run folder.

    A resumed run reuses its own ``splits.json``, so it trains on exactly the images it started with.

    Returns:
        ``(dataset, {"train": [...], "val": [...], "test": [...]})``.

    Raises:
        medens.data.DatasetError: unknown dataset, bad options, missing files.
    """
    from medens.data import make_splits

    dataset = open_dataset(config)
    own_splits = ctx.out_dir / SPLITS_NAME
    split_file = config.get("split_file")
    if ctx.resuming and own_splits.is_file():
        split_file = own_splits
    splits = make_splits(
        dataset,
        seed=int(config["split_seed"]),
        val_fraction=float(config["val_fraction"]),
        test_fraction=float(config["test_fraction"]),
        folds=config.get("folds"),
        fold=config.get("fold"),
        use_official=bool(config["use_official_split"]),
        out_dir=ctx.out_dir if ctx.dist.is_main else None,
        split_file=split_file,
        dedupe=_dedupe_on(config.get("dedupe", "on")),
        dedupe_threshold=int(config.get("dedupe_threshold", DEFAULT_THRESHOLD)),
        keep_conflicts=bool(config.get("keep_conflicts", False)),
        hash_cache_dir=config.get("cache_dir"),
        progress=bool(config.get("progress", True)) and ctx.dist.is_main,
    )
    ctx.dist.barrier()
    return dataset, splits


def _dedupe_on(value: Any) -> bool:
    """``dedupe`` as a bool: ``on``/``off`` (the flag), or a YAML boolean."""
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("on", "true", "yes", "1"):
        return True
    if str(value).lower() in ("off", "false", "no", "0"):
        return False
    raise ValueError(f"dedupe: expected on or off, received {value!r}")


def split_hash(dataset: Any, splits: Mapping[str, list[int]]) -> str:
    """SHA-256 of which image ids are in which split (independent of file formatting and of index order)."""
    canonical = {name: sorted(dataset.ids[i] for i in splits[name]) for name in sorted(splits)}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode("utf-8")).hexdigest()


def run_facts(ctx: RunContext, lr: float, effective_batch: int, precision: str) -> dict[str, Any]:
    """What a run records about where and how it ran (the ``run`` block of ``config.yaml``)."""
    import timm

    import medens

    return {
        "lr": lr,
        "effective_batch_size": effective_batch,
        "world_size": ctx.dist.world_size,
        "device": str(ctx.dist.device),
        "precision": precision,
        "versions": {
            "medens": medens.__version__,
            "torch": torch.__version__,
            "timm": timm.__version__,
            "python": sys.version.split()[0],
        },
        "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]) if sys.argv else "",
    }


# ---------------------------------------------------------------------------------------------------------------
# The training run
# ---------------------------------------------------------------------------------------------------------------


def train_loader(
    config: Mapping[str, Any], dataset: Any, dist: DistContext, weights: Any = None
) -> torch.utils.data.DataLoader:
    """This rank's loader of the training images: full batches only, shuffled (or drawn by ``weights``) by seed."""
    return build_loader(
        dataset,
        int(config["batch_size"]),
        rank=dist.rank,
        world_size=dist.world_size,
        seed=int(config["seed"]),
        drop_last=True,
        weights=weights,
        num_workers=int(config["num_workers"]),
        pin_memory=dist.device.type == "cuda",
        persistent_workers=True,
    )


def warmup_cosine(
    config: Mapping[str, Any],
    optimizer: torch.optim.Optimizer,
    lr: float,
    engine: EngineConfig,
    per_epoch: int,
) -> WarmupCosine:
    """The run's schedule: ``warmup_epochs`` of linear warm-up to ``lr``, then cosine to ``min_lr``."""
    return WarmupCosine(
        optimizer,
        lr,
        total_steps=engine.epochs * per_epoch,
        warmup_steps=round(float(config["warmup_epochs"]) * per_epoch),
        min_lr=float(config["min_lr"]),
    )


def write_run_config(ctx: RunContext, facts: Mapping[str, Any]) -> None:
    """Rank 0 writes ``config.yaml``: the resolved options (``resume`` off, so it repeats the run) and ``facts``."""
    if ctx.dist.is_main:
        write_config(ctx.out_dir / CONFIG_NAME, {**ctx.config, "resume": False, **facts})


def resume_and_fit(
    ctx: RunContext,
    trainer: Trainer,
    loader: torch.utils.data.DataLoader,
    final_output: str,
    epoch_end: Callable[[int, Trainer], Mapping[str, Any] | None] | None = None,
) -> None:
    """Restore the checkpoint when resuming, then train the remaining epochs.

    ``final_output`` (the file whose presence marks a finished run) is deleted first when epochs remain: a run
    that trains on makes it stale.
    """
    if ctx.resuming:
        trainer.resume()
    if not trainer.finished and ctx.dist.is_main:
        (ctx.out_dir / final_output).unlink(missing_ok=True)
    trainer.fit(loader, epoch_end=epoch_end)
