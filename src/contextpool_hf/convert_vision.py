"""Convert transformers ViT / ResNet checkpoints to their ContextPool counterparts.

Weights carry over by name (the ContextPool models keep transformers' 5.x weight names);
the new ContextPool parameters (predictors, mix gates) start with the gates closed
(`pool_mix_init=0.0`), so the converted model reproduces the source's logits at
conversion time. Fine-tuning then opens the gates.

The source's image processor is saved with the model. A source folder without one (or a model
object) gets a default processor derived from the config, and a warning says so: ViT models the
ViT preprocessing at the config's `image_size` (mean/std 0.5), ResNet the ImageNet preprocessing of
transformers' ResNet checkpoints (shortest edge 224, crop 0.875, ImageNet mean/std), so that
`pipeline("image-classification", model=out, trust_remote_code=True)` works on the output.
"""

from __future__ import annotations

import logging
import os

import torch
from transformers import AutoImageProcessor, ResNetForImageClassification, ViTForImageClassification

from .configuration_contextpool_vision import ContextPoolResNetConfig, ContextPoolViTConfig
from .modeling_contextpool_vision import (
    ContextPoolResNetForImageClassification,
    ContextPoolViTForImageClassification,
)

logger = logging.getLogger(__name__)

_LABEL_FIELDS = ("id2label", "label2id", "problem_type")


def _load(source, cls):
    if isinstance(source, (str, os.PathLike)):
        return cls.from_pretrained(source)
    if not isinstance(source, cls):
        raise ValueError(f"expected a {cls.__name__} or a path to one, got {type(source).__name__}")
    return source


def _label_kwargs(config) -> dict:
    return {name: getattr(config, name) for name in _LABEL_FIELDS if getattr(config, name, None) is not None}


def _carry_weights(source, target) -> None:
    """Copy every source tensor into the target; only ContextPool's own tensors may be new."""
    result = target.load_state_dict(source.state_dict(), strict=False)
    if result.unexpected_keys:
        raise ValueError(f"source weights with no place in the ContextPool model: {result.unexpected_keys}")
    missing = [k for k in result.missing_keys if ".pool." not in k and not k.endswith("pool_mix")]
    if missing:
        raise ValueError(f"ContextPool weights not found in the source: {missing}")


def convert_vit(source, **pooling_overrides) -> ContextPoolViTForImageClassification:
    """A `ViTForImageClassification` (or its path) -> `ContextPoolViTForImageClassification`.

    `pooling_overrides` sets `pool_*` / `classifier_pooling` fields (default `pool_mix_init=0.0`).
    """
    source = _load(source, ViTForImageClassification)
    cfg = source.config
    if not isinstance(cfg.patch_size, int):
        raise ValueError(f"only square int patch sizes convert, got patch_size={cfg.patch_size!r}")
    if getattr(cfg, "pooler_output_size", cfg.hidden_size) != cfg.hidden_size and source.vit.pooler is not None:
        raise ValueError("ViT checkpoints with a pooler of another size are not supported")
    overrides = {"pool_mix_init": 0.0, **pooling_overrides}
    config = ContextPoolViTConfig(
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size,
        hidden_act=cfg.hidden_act,
        hidden_dropout_prob=cfg.hidden_dropout_prob,
        attention_probs_dropout_prob=cfg.attention_probs_dropout_prob,
        initializer_range=cfg.initializer_range,
        layer_norm_eps=cfg.layer_norm_eps,
        image_size=list(cfg.image_size) if isinstance(cfg.image_size, (list, tuple)) else cfg.image_size,
        patch_size=cfg.patch_size,
        num_channels=cfg.num_channels,
        qkv_bias=cfg.qkv_bias,
        **_label_kwargs(cfg),
        **overrides,
    )
    target = ContextPoolViTForImageClassification(config).to(source.dtype)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("vit.pooler.")}
    result = target.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if ".pool." not in k and not k.endswith("pool_mix")]
    if result.unexpected_keys or missing:
        raise ValueError(f"ViT weights do not map: unexpected {result.unexpected_keys}, missing {missing}")
    return target.eval()


def convert_resnet(source, **pooling_overrides) -> ContextPoolResNetForImageClassification:
    """A `ResNetForImageClassification` (or its path) -> `ContextPoolResNetForImageClassification`."""
    source = _load(source, ResNetForImageClassification)
    cfg = source.config
    # after_conv: at gate 0 every replaced site is exactly the source's strided conv (before_conv
    # would feed the 3x3 convs a subsampled map, which is not what a strided conv computes)
    overrides = {"pool_mix_init": 0.0, "pool_placement": "after_conv", **pooling_overrides}
    config = ContextPoolResNetConfig(
        num_channels=cfg.num_channels,
        embedding_size=cfg.embedding_size,
        hidden_sizes=list(cfg.hidden_sizes),
        depths=list(cfg.depths),
        layer_type=cfg.layer_type,
        hidden_act=cfg.hidden_act,
        downsample_in_first_stage=cfg.downsample_in_first_stage,
        downsample_in_bottleneck=cfg.downsample_in_bottleneck,
        **_label_kwargs(cfg),
        **overrides,
    )
    if config.pool_placement == "before_conv" and {"stem_conv", "stages"} & set(config.pool_downsampling):
        logger.warning(
            "pool_placement='before_conv' feeds the replaced convolutions a down-sampled map: the converted"
            " model does not reproduce the source even at pool_mix_init=0 (use 'after_conv' for that)"
        )
    target = ContextPoolResNetForImageClassification(config).to(source.dtype)
    _carry_weights(source, target)
    return target.eval()


def convert_vision_checkpoint(src, out, *, overwrite: bool = False, **overrides):
    """Convert a ViT or ResNet checkpoint folder (or model) and save it, with remote code,
    to `out`, plus the source's image processor when `src` is a folder that has one."""
    from .convert import check_output_folder

    check_output_folder(src, out, overwrite)  # never into the source folder; non-empty OUT needs overwrite
    model_type = src.config.model_type if not isinstance(src, (str, os.PathLike)) else None
    if model_type is None:
        from transformers import AutoConfig

        model_type = AutoConfig.from_pretrained(src).model_type
    if model_type == "vit":
        model = convert_vit(src, **overrides)
    elif model_type == "resnet":
        model = convert_resnet(src, **overrides)
    else:
        raise ValueError(f"convert_vision_checkpoint handles model_type 'vit' or 'resnet', got {model_type!r}")
    import contextpool_hf  # noqa: F401  (registers the classes so save_pretrained writes the code files)

    processor = None
    if isinstance(src, (str, os.PathLike)):
        try:
            processor = AutoImageProcessor.from_pretrained(src)
        except (OSError, ValueError):
            processor = None
    if processor is None:
        processor = default_image_processor(model.config)
        if processor is not None:
            logger.warning(
                "%s has no image processor: saved a default %s derived from the config (%s); replace it if "
                "the source model was trained with other preprocessing",
                src if isinstance(src, (str, os.PathLike)) else type(src).__name__,
                type(processor).__name__, _describe(processor),
            )
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out)
    if processor is not None:
        processor.save_pretrained(out)
    return model


def _describe(processor) -> str:
    size = getattr(processor, "size", None)
    size = dict(size) if size is not None and not isinstance(size, dict) else size
    return f"size {size}, mean {list(processor.image_mean)}, std {list(processor.image_std)}"


def default_image_processor(config):
    """The preprocessing a ViT / ResNet of this config was most likely trained with, or None
    (with a warning) when the images are not 3-channel RGB, for which no default is safe."""
    from transformers import ConvNextImageProcessorPil, ViTImageProcessorPil
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    if config.num_channels != 3:
        logger.warning(
            "no image processor saved: the model takes %d-channel images and there is no default preprocessing "
            "for them; save one with the converted model before using pipeline()", config.num_channels,
        )
        return None
    if config.model_type.endswith("vit"):
        size = config.image_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        # do_convert_rgb: grayscale and RGBA images become the RGB the model expects
        return ViTImageProcessorPil(size={"height": height, "width": width}, image_mean=[0.5] * 3,
                                    image_std=[0.5] * 3, do_convert_rgb=True)  # fmt: skip
    return ConvNextImageProcessorPil(size={"shortest_edge": 224}, crop_pct=0.875, image_mean=list(IMAGENET_DEFAULT_MEAN),
                                     image_std=list(IMAGENET_DEFAULT_STD), do_convert_rgb=True)  # fmt: skip


@torch.no_grad()
def max_logit_difference(source, converted, pixel_values: torch.Tensor) -> float:
    """max |logits_source - logits_converted| on `pixel_values` (both in eval mode)."""
    source.eval()
    converted.eval()
    return float((source(pixel_values=pixel_values).logits - converted(pixel_values=pixel_values).logits).abs().max())


__all__ = ["convert_vit", "convert_resnet", "convert_vision_checkpoint", "default_image_processor",
           "max_logit_difference"]
