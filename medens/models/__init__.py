"""Models: the masked ConvNeXt autoencoder for pre-training and ConvNeXt classifiers for fine-tuning.

- :class:`MaskedConvNeXt`       entropy-guided masked autoencoder (FCMAE-style sparse encoder, light decoder)
- :func:`create_classifier`     timm ConvNeXt classifier from ImageNet, an MAE encoder, or scratch (any timm
                                 architecture from scratch: the plain baseline)
- :func:`save_weights` / :func:`load_weights` / :func:`load_encoder_into`   safetensors with checked metadata
"""

from medens.models.arch import (
    DEFAULT_ARCH,
    DEFAULT_NORM,
    ENCODER_STRIDE,
    NORM_CHOICES,
    SMALL_ARCHS,
    check_arch,
    check_input_size,
    check_norm,
    check_timm_arch,
    split_arch,
)
from medens.models.classifier import (
    INIT_RANDOM_FALLBACK,
    PretrainedWeightsUnavailable,
    check_arch_for_init,
    classifier_norm,
    classifier_stride,
    create_classifier,
    parse_init,
    pixel_normalisation,
)
from medens.models.masked_convnext import (
    MaskedConvNeXt,
    MaskedOutput,
)
from medens.models.weights import (
    ENCODER_FORMAT,
    MODEL_FORMAT,
    WeightsMismatchError,
    load_encoder_into,
    load_weights,
    read_metadata,
    save_weights,
)

__all__ = [
    "DEFAULT_ARCH",
    "DEFAULT_NORM",
    "NORM_CHOICES",
    "check_norm",
    "ENCODER_FORMAT",
    "ENCODER_STRIDE",
    "INIT_RANDOM_FALLBACK",
    "MODEL_FORMAT",
    "MaskedConvNeXt",
    "MaskedOutput",
    "PretrainedWeightsUnavailable",
    "SMALL_ARCHS",
    "WeightsMismatchError",
    "check_arch",
    "check_arch_for_init",
    "classifier_norm",
    "classifier_stride",
    "check_timm_arch",
    "check_input_size",
    "create_classifier",
    "load_encoder_into",
    "load_weights",
    "parse_init",
    "pixel_normalisation",
    "read_metadata",
    "save_weights",
    "split_arch",
]
