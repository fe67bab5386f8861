"""The options of the training stages: every key, its help text, its type and its default, in one table.

Options are declared once, as :class:`Option` entries keyed by config name; each stage's defaults list the keys
it uses. The command line, a YAML preset or file and the Python entry points (``run_pretrain(config)``,
``run_finetune(config)``) all go through the same keys, so a preset, a ``--set key=value`` and a flag are
interchangeable, and ``config.yaml`` in the output folder repeats a run. The defaults are the paper's settings;
the packaged presets (:mod:`medens.train.presets`) change some of them.

Importing this module has no side effects: the table is complete at import.
"""

from __future__ import annotations

from typing import Any

from medens.data.options import DATA_DEFAULTS, DATA_OPTIONS
from medens.data.transforms import DEFAULT_CROP_PCT
from medens.engine.config import yaml_value
from medens.engine.precision import AMP_CHOICES
from medens.flags import Option, optional_float, optional_int, optional_str
from medens.models.arch import DEFAULT_NORM, ENCODER_STRIDE, NORM_CHOICES, OUTPUT_STRIDE_CHOICES
from medens.models.classifier import INIT_RANDOM_FALLBACK
from medens.models.masked_convnext import MASKING_CHOICES, PREFER_CHOICES

__all__ = [
    "Option",
    "OPTIONS",
    "DATA_DEFAULTS",
    "ENGINE_DEFAULTS",
    "PRETRAIN_DEFAULTS",
    "FINETUNE_DEFAULTS",
    "DATA_CLI_KEYS",
    "OPTIM_CLI_KEYS",
    "ENGINE_CLI_KEYS",
    "PRETRAIN_CLI_KEYS",
    "FINETUNE_CLI_KEYS",
    "PRETRAIN_SPLITS",
    "SELECT_METRICS",
    "IMBALANCE_CHOICES",
    "BOOKKEEPING_KEYS",
    "EXECUTION_KEYS",
    "RESUME_MUTABLE_KEYS",
]

#: Images a pre-training run may learn from, by ``pretrain_split``.
PRETRAIN_SPLITS = {"train": ("train",), "trainval": ("train", "val"), "all": ("train", "val", "test")}
#: Validation metrics a run can select its best epoch by (all: higher is better).
SELECT_METRICS = ("macro_f1", "accuracy", "balanced_accuracy", "auroc_macro")
IMBALANCE_CHOICES = ("none", "weighted_loss", "balanced_sampler")

#: Keys a run adds to its ``config.yaml`` that are facts about the run, not options (ignored when read back).
BOOKKEEPING_KEYS = (
    "classes", "num_classes", "split_hash", "init_requested", "precise_bn_requested", "run", "encoder", "mask_grid"
)


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


#: Every option of the training stages, with its help text (a stage lists the keys it uses in its defaults).
OPTIONS: dict[str, Option] = {
    # the starting point
    "preset": Option(
        "packaged preset the options start from: paper, small or smoke (none: the defaults, the paper's)",
        optional_str,
        metavar="NAME",
    ),
    # data: medens.data.options, one help text for every command that takes them
    **DATA_OPTIONS,
    # model geometry
    "arch": Option(
        "timm ConvNeXt architecture (convnext_tiny; convnext_atto/femto/pico/nano for small machines); "
        "fine-tuning from scratch takes any timm architecture (e.g. resnet18)"
    ),
    "norm": Option(
        "ConvNeXt normalisation from random weights: layer (LayerNorm, as published) or batch (BatchNorm; learns "
        "better on small datasets); weights keep theirs (ImageNet: layer; an MAE encoder: its own)",
        choices=NORM_CHOICES,
    ),
    "image_size": Option("input side in pixels, a multiple of the patch size (32)", int),
    "drop_path": Option("stochastic depth of the encoder", float),
    # augmentation
    "crop_scale_min": Option("smallest random-resized-crop area (share of the image)", float),
    "hflip": Option("probability of a horizontal flip", float),
    # optimisation
    "epochs": Option("training epochs", int),
    "warmup_epochs": Option("epochs of linear lr warm-up", float, minimum=0),
    "batch_size": Option("images per batch and rank", int),
    "accum_steps": Option("batches accumulated per optimiser step", int),
    "blr": Option("base learning rate: lr = blr * effective batch / 256", float),
    "lr": Option("absolute learning rate (overrides --blr)", optional_float),
    "min_lr": Option("final learning rate of the cosine schedule", float),
    "weight_decay": Option("AdamW weight decay", float),
    "betas": Option("AdamW betas as B1,B2", _floats, metavar="B1,B2"),
    "clip_grad": Option("clip the global gradient norm to this (none: no clipping)", optional_float),
    "amp": Option(
        "mixed precision: auto (bf16 on capable GPUs, fp16 on older, fp32 on CPU), bf16, fp16, off",
        choices=AMP_CHOICES,
    ),
    "channels_last": Option("NHWC memory format (faster convolutions on GPUs)", bool),
    "compile": Option("torch.compile the model", bool),
    "ema_decay": Option("keep an exponential moving average of the weights with this decay", optional_float),
    "max_nonfinite": Option("stop after this many non-finite loss steps in a row", int),
    # run
    "seed": Option("random seed", int, minimum=0),
    "deterministic": Option("deterministic kernels (bit-identical reruns and resumes; slower)", bool),
    "device": Option("auto, cpu or cuda (under torchrun each rank takes its LOCAL_RANK GPU)"),
    "ops_backend": Option("medens.ops backend: auto, reference, cpp, cuda or triton"),
    "progress": Option("show progress bars", bool),
    "tensorboard": Option(
        "write TensorBoard events (auto: when tensorboard is installed)",
        yaml_value,
        metavar="auto|true|false",
        allowed=("auto", True, False),
    ),
    "dist_timeout_s": Option("seconds a rank waits for the others before failing", float, minimum=0, above=True),
    # pre-training

    "output_stride": Option(
        "the encoder's total stride: 32 (the published ConvNeXt), 16 or 8 (its last stages dilated), for a masking "
        "grid finer than 32 px; the MAE member is built with the same stride",
        int,
        choices=OUTPUT_STRIDE_CHOICES,
    ),
    "patch_size": Option(
        "masking patch size, a multiple of --output-stride (none: the stride itself)", optional_int, metavar="N"
    ),
    "mask_ratio": Option("share of patches hidden", float),
    "masking": Option(
        "entropy: the paper's entropy-guided masking; random: MAE's uniform masking (ablation)",
        choices=MASKING_CHOICES,
    ),
    "mask_temperature": Option(
        "temperature of entropy-guided sampling (0: strict top-k; inf: uniform)", float
    ),
    "mask_prefer": Option("hide high- or low-entropy patches preferentially", choices=PREFER_CHOICES),
    "entropy_bins": Option("histogram bins of the patch entropy", int),
    "decoder_dim": Option("decoder width", int),
    "decoder_depth": Option("decoder ConvNeXt blocks", int),
    "norm_pix_loss": Option("regress per-patch normalised pixels", bool),
    "pretrain_split": Option(
        "images to pre-train on: train, trainval, or all (includes the test images)",
        choices=tuple(PRETRAIN_SPLITS),
    ),
    "num_reconstructions": Option("images shown in reconstructions.png", int),
    "probe_every": Option(
        "also probe the encoder every N epochs (linear and k-NN balanced accuracy in log.csv and loss_curve.png; "
        "0: only at the end)",
        int,
        minimum=0,
    ),
    "probe": Option(
        "after pre-training, score the frozen encoder and the same network at random weights with a linear and "
        "a k-nearest-neighbour probe (probe.json; uses labels of the training and validation images only)",
        bool,
    ),
    # fine-tuning

    "init": Option(
        "initialisation: imagenet (timm's weights for --arch), mae:PATH (an encoder.safetensors from "
        "'pretrain') or scratch",
        metavar="imagenet|mae:PATH|scratch",
    ),
    "pretrained_file": Option(
        "local ImageNet weights for --init imagenet (a timm model.safetensors/.pth/.bin)",
        optional_str,
        metavar="FILE",
    ),
    "allow_partial": Option(
        "accept a --pretrained-file that lacks some of the model's tensors (they start at random, with a "
        "warning naming them) instead of refusing it",
        bool,
    ),
    "allow_random_imagenet_fallback": Option(
        "when ImageNet weights cannot be had, train from random weights (recorded as init "
        f"'{INIT_RANDOM_FALLBACK}') instead of failing",
        bool,
    ),
    "layer_decay": Option(
        "layer-wise lr decay factor (1: none); applied to pre-trained inits only (imagenet, mae:PATH), "
        "never to random weights",
        float,
    ),
    "label_smoothing": Option("label smoothing of the cross-entropy", float),
    "drop_rate": Option("dropout before the classifier", float),
    "mixup": Option("Mixup alpha (0: off)", float),
    "cutmix": Option("CutMix alpha (0: off)", float),
    "mixup_prob": Option("probability of applying Mixup/CutMix to a batch", float),
    "imbalance": Option(
        "class imbalance: none, weighted_loss (inverse-frequency class weights) or "
        "balanced_sampler (draw classes equally often)",
        choices=IMBALANCE_CHOICES,
    ),
    "select_metric": Option("validation metric that picks the best epoch", choices=SELECT_METRICS),
    "precise_bn": Option(
        "before each evaluation, recompute the BatchNorm statistics of the weights evaluated over the training "
        "split (evaluation transforms); no effect on a model without BatchNorm",
        bool,
    ),
    "eval_batch_size": Option(
        "batch size for evaluation (none: twice --batch-size)", optional_int, metavar="N", minimum=1
    ),
    "vflip": Option("probability of a vertical flip", float),
    "rotation": Option("maximum random rotation in degrees", float),
    "color_jitter": Option("brightness,contrast,saturation jitter", _floats, metavar="B,C,S"),
    "crop_pct": Option("evaluation: share of the resized image kept by the centre crop", float),
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

def _paper_settings(stage: str) -> dict[str, Any]:
    """The paper's settings of ``stage``: the packaged preset ``<stage>_paper.yaml``, the one place they are written."""
    from medens.train.presets import load_preset  # presets imports nothing of medens.train

    return load_preset("paper", stage)


#: ``pretrain``'s defaults: the paper's pre-training (ConvNeXt-Tiny, 224 px, 400 epochs; ``pretrain_paper.yaml``).
PRETRAIN_DEFAULTS: dict[str, Any] = {
    "preset": None,
    **DATA_DEFAULTS,
    "pretrain_split": "train",
    "norm": DEFAULT_NORM,
    "output_stride": ENCODER_STRIDE,
    "patch_size": None,
    "entropy_bins": 256,
    "drop_path": 0.0,
    "crop_scale_min": 0.2,
    "hflip": 0.5,
    **ENGINE_DEFAULTS,
    "ops_backend": "auto",
    "num_reconstructions": 4,
    "probe": True,
    "probe_every": 0,
    **_paper_settings("pretrain"),
}

#: ``finetune``'s defaults: the paper's fine-tuning (ConvNeXt-Tiny from ImageNet, 224 px, 100 epochs;
#: ``finetune_paper.yaml``).
FINETUNE_DEFAULTS: dict[str, Any] = {
    "preset": None,
    **DATA_DEFAULTS,
    "init": "imagenet",
    "norm": DEFAULT_NORM,
    "pretrained_file": None,
    "allow_random_imagenet_fallback": False,
    "allow_partial": False,
    "betas": [0.9, 0.999],
    "drop_rate": 0.0,
    "mixup": 0.0,
    "cutmix": 0.0,
    "mixup_prob": 1.0,
    "eval_batch_size": None,
    "precise_bn": False,
    "crop_scale_min": 0.75,
    "hflip": 0.5,
    "vflip": 0.0,
    "rotation": 10.0,
    "color_jitter": [0.1, 0.1, 0.05],
    "crop_pct": DEFAULT_CROP_PCT,
    **ENGINE_DEFAULTS,
    "min_lr": 1e-6,
    **_paper_settings("finetune"),
}

#: ``pretrain``'s flags, in help order.
PRETRAIN_CLI_KEYS = (
    *DATA_CLI_KEYS,
    "pretrain_split",
    "arch",
    "norm",
    "image_size",
    "output_stride",
    "patch_size",
    "mask_ratio",
    "masking",
    "mask_temperature",
    "mask_prefer",
    "entropy_bins",
    "decoder_dim",
    "decoder_depth",
    "norm_pix_loss",
    "drop_path",
    "crop_scale_min",
    "hflip",
    *OPTIM_CLI_KEYS,
    "ops_backend",
    "num_reconstructions",
    "probe",
    "probe_every",
    *ENGINE_CLI_KEYS,
)

#: ``finetune``'s flags, in help order.
FINETUNE_CLI_KEYS = (
    *DATA_CLI_KEYS,
    "arch",
    "norm",
    "init",
    "pretrained_file",
    "allow_partial",
    "allow_random_imagenet_fallback",
    "image_size",
    *OPTIM_CLI_KEYS,
    "layer_decay",
    "label_smoothing",
    "drop_path",
    "drop_rate",
    "mixup",
    "cutmix",
    "mixup_prob",
    "imbalance",
    "select_metric",
    "precise_bn",
    "eval_batch_size",
    "crop_scale_min",
    "hflip",
    "vflip",
    "rotation",
    "color_jitter",
    "crop_pct",
    *ENGINE_CLI_KEYS,
)

#: Options that say where and how a run executes, not what it learns. A finished stage is reused, and a resumed run
#: continues, whatever their values.
EXECUTION_KEYS = (
    "out",
    "resume",
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
#: Options a resumed run may change: the execution keys, and ``epochs``, which may only grow.
RESUME_MUTABLE_KEYS = (*EXECUTION_KEYS, "epochs", "probe", "probe_every")
