"""Configurations of the ContextPool vision models (ViT-style and ResNet-style).

Flat, Hub-shipped file: imports only transformers. Every field is validated at
construction; a bad value raises a `ValueError` that names the field.

Vision defaults for the pooling window (why they differ from the 1-D spec defaults):
the 2-D cost is O(H W (2R+1)^2 d) with R = ceil(truncation * sigma_max). Patch grids
(7x7 to 14x14) and ResNet feature maps are small, and one grid step is already a patch
or a stride-2 pixel, so sigma_max = 2 grid cells with truncation = 2 (R = 4, a 9x9
window, weight exp(-2) = 0.14 at the window edge for the widest Gaussian) covers a
neighbourhood several times larger than a 2x2 pooling cell at 81 offsets per layer.
"""


import math

from transformers import PretrainedConfig
from transformers.activations import ACT2FN

POOL_FEEDS = ("qkv", "kv")
HEAD_POOLINGS = ("cls", "mean")
IMPLEMENTATIONS = ("fast", "reference", "triton")
LAYER_TYPES = ("basic", "bottleneck")
DOWNSAMPLING_SITES = ("stem_conv", "stem_pool", "stages")
POOL_PLACEMENTS = ("before_conv", "after_conv")


def _check_int(name, value, low=1):
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _check_number(name, value, low=None, high=None, low_open=False, high_open=False):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (value < low or (low_open and value <= low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (value > high or (high_open and value >= high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value!r}")


def _check_activation(name, value):
    if not isinstance(value, str) or value not in ACT2FN:
        raise ValueError(f"{name} must be one of transformers' activations {sorted(ACT2FN)}, got {value!r}")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _check_pool_fields(cfg) -> None:
    """Fields shared by both vision configs."""
    _check_int("pool_groups", cfg.pool_groups)
    _check_number("pool_sigma_min", cfg.pool_sigma_min, low=0, low_open=True)
    _check_number("pool_sigma_max", cfg.pool_sigma_max, low=0, low_open=True)
    if not cfg.pool_sigma_min < cfg.pool_sigma_max:
        raise ValueError(
            f"pool_sigma_min must be < pool_sigma_max, got {cfg.pool_sigma_min} and {cfg.pool_sigma_max}"
        )
    _check_number("pool_truncation", cfg.pool_truncation, low=0, low_open=True)
    if not math.isfinite(cfg.pool_truncation * cfg.pool_sigma_max):
        raise ValueError(
            f"pool_truncation * pool_sigma_max (the window radius) must be finite, got "
            f"{cfg.pool_truncation} * {cfg.pool_sigma_max}"
        )
    if not isinstance(cfg.pool_normalize, bool):
        raise ValueError(f"pool_normalize must be a bool, got {cfg.pool_normalize!r}")
    _check_int("pool_kernel_size", cfg.pool_kernel_size)
    if cfg.pool_kernel_size % 2 != 1:
        raise ValueError(f"pool_kernel_size must be odd (same-size depthwise conv), got {cfg.pool_kernel_size}")
    if cfg.pool_predictor_width is not None:
        _check_int("pool_predictor_width", cfg.pool_predictor_width)
    _check_number("pool_mix_init", cfg.pool_mix_init, low=0.0, high=1.0)
    _check_choice("pool_implementation", cfg.pool_implementation, IMPLEMENTATIONS)
    _check_number("initializer_range", cfg.initializer_range, low=0)


class ContextPoolViTConfig(PretrainedConfig):
    r"""A ViT whose attention layers see ContextPool-pooled patch tokens.

    The ViT fields mirror `transformers.ViTConfig` (so a ViT checkpoint converts by a key
    map). The `pool_*` fields configure ContextPool:

    Args:
        pool_layers (`list[int]`, *optional*): indices of the layers that pool; `None` = all.
        pool_groups (`int`, defaults to 1): pooling groups G (1 = shared by all heads;
            `num_attention_heads` = per-head pooling). Must divide `num_attention_heads`.
        pool_sigma_min / pool_sigma_max (`float`, defaults to 0.5 / 2.0): range of the
            Gaussian pooling sizes, in patches.
        pool_truncation (`float`, defaults to 2.0): window radius R = ceil(truncation * sigma_max).
        pool_normalize (`bool`, defaults to True): normalise by the sum of pooling weights.
        pool_feeds (`str`, defaults to "qkv"): "qkv" (queries, keys and values from the
            pooled tokens) or "kv" (queries from the token itself).
        pool_kernel_size (`int`, defaults to 3): depthwise conv kernel of the predictor.
        pool_predictor_width (`int`, *optional*): predictor width (None = hidden size).
        pool_mix_init (`float`, defaults to 1.0): initial value of each layer's learnable
            mix gate between the token (0) and its pooled context (1). Conversion uses 0.0,
            which reproduces the source model exactly.
        pool_implementation (`str`, defaults to "fast"): "fast", "reference" or "triton" (Triton kernels
            on CUDA, opt-in).
        classifier_pooling (`str`, defaults to "cls"): "cls" token or "mean" of patch tokens.
    """

    model_type = "contextpool_vit"

    def __init__(
        self,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        image_size: int | list[int] = 224,
        patch_size: int = 16,
        num_channels: int = 3,
        qkv_bias: bool = True,
        classifier_pooling: str = "cls",
        pool_layers: list[int] | None = None,
        pool_groups: int = 1,
        pool_sigma_min: float = 0.5,
        pool_sigma_max: float = 2.0,
        pool_truncation: float = 2.0,
        pool_normalize: bool = True,
        pool_feeds: str = "qkv",
        pool_kernel_size: int = 3,
        pool_predictor_width: int | None = None,
        pool_mix_init: float = 1.0,
        pool_implementation: str = "fast",
        **kwargs,
    ):
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.image_size = list(image_size) if isinstance(image_size, (list, tuple)) else image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.qkv_bias = qkv_bias
        self.classifier_pooling = classifier_pooling
        self.pool_layers = list(pool_layers) if pool_layers is not None else None
        self.pool_groups = pool_groups
        self.pool_sigma_min = pool_sigma_min
        self.pool_sigma_max = pool_sigma_max
        self.pool_truncation = pool_truncation
        self.pool_normalize = pool_normalize
        self.pool_feeds = pool_feeds
        self.pool_kernel_size = pool_kernel_size
        self.pool_predictor_width = pool_predictor_width
        self.pool_mix_init = pool_mix_init
        self.pool_implementation = pool_implementation
        kwargs.setdefault(
            "auto_map",
            {
                "AutoConfig": "configuration_contextpool_vision.ContextPoolViTConfig",
                "AutoModel": "modeling_contextpool_vision.ContextPoolViTModel",
                "AutoModelForImageClassification": "modeling_contextpool_vision.ContextPoolViTForImageClassification",
            },
        )
        super().__init__(**kwargs)
        self._validate()

    @property
    def image_hw(self) -> tuple[int, int]:
        size = self.image_size
        return (size, size) if isinstance(size, int) else (size[0], size[1])

    @property
    def grid_size(self) -> tuple[int, int]:
        """(rows, cols) of the patch grid at the configured image size."""
        h, w = self.image_hw
        return h // self.patch_size, w // self.patch_size

    def pooled_layer_indices(self) -> list[int]:
        return list(range(self.num_hidden_layers)) if self.pool_layers is None else sorted(self.pool_layers)

    def _validate(self) -> None:
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "patch_size", "num_channels"):
            _check_int(name, getattr(self, name))
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads})"
            )
        # dropout 1 zeroes every activation: [0, 1) as in the text configs
        _check_number("hidden_dropout_prob", self.hidden_dropout_prob, low=0.0, high=1.0, high_open=True)
        _check_number("attention_probs_dropout_prob", self.attention_probs_dropout_prob, low=0.0, high=1.0, high_open=True)
        _check_number("layer_norm_eps", self.layer_norm_eps, low=0, low_open=True)
        _check_activation("hidden_act", self.hidden_act)
        if isinstance(self.image_size, list):
            if len(self.image_size) != 2:
                raise ValueError(f"image_size must be an int or [height, width], got {self.image_size!r}")
            for side in self.image_size:
                _check_int("image_size", side)
        else:
            _check_int("image_size", self.image_size)
        for side in self.image_hw:
            if side % self.patch_size:
                raise ValueError(f"image_size {self.image_size} must be divisible by patch_size {self.patch_size}")
        if not isinstance(self.qkv_bias, bool):
            raise ValueError(f"qkv_bias must be a bool, got {self.qkv_bias!r}")
        _check_choice("classifier_pooling", self.classifier_pooling, HEAD_POOLINGS)
        _check_choice("pool_feeds", self.pool_feeds, POOL_FEEDS)
        if self.pool_layers is not None:
            for index in self.pool_layers:
                if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < self.num_hidden_layers:
                    raise ValueError(
                        f"pool_layers entries must be layer indices in [0, {self.num_hidden_layers}), got {index!r}"
                    )
            if len(set(self.pool_layers)) != len(self.pool_layers):
                raise ValueError(f"pool_layers has duplicates: {self.pool_layers}")
        _check_pool_fields(self)
        if self.num_attention_heads % self.pool_groups:
            raise ValueError(
                f"pool_groups ({self.pool_groups}) must divide num_attention_heads ({self.num_attention_heads})"
            )


class ContextPoolResNetConfig(PretrainedConfig):
    r"""A ResNet whose down-sampling is replaced by ContextPool with stride.

    The ResNet fields mirror `transformers.ResNetConfig`. The down-sampling sites are:
    "stem_conv" (the 7x7 stride-2 stem convolution), "stem_pool" (the stem's 3x3 stride-2
    max pooling) and "stages" (the stride-2 convolutions opening each later stage, main
    path and shortcut). A ContextPool with stride 2 does the down-sampling of a replaced site;
    a learnable gate mixes it with the original operator's output (the strided sample, or the
    max pooling): out = (1 - g) * original + g * contextpool, g initialised to `pool_mix_init`.
    Where a strided convolution's down-sampling is replaced, `pool_placement` says where the
    ContextPool sits.

    Args:
        pool_downsampling (`list[str]`, defaults to ["stem_pool", "stages"]): which sites use ContextPool.
        pool_groups (`int`, defaults to 1): channel groups with their own pooling weights and
            sizes (must divide the channels of every replaced site).
        pool_sigma_min / pool_sigma_max (`float`, defaults to 0.5 / 2.0): pooling sizes in
            input pixels of the feature map being down-sampled.
        pool_truncation (`float`, defaults to 2.0): window radius R = ceil(truncation * sigma_max).
        pool_mix_init (`float`, defaults to 1.0): initial mix gate (0.0 after conversion).
        pool_placement (`str`, defaults to "before_conv"): "before_conv": one ContextPool
            down-samples a block's input, shared by its main path and its shortcut, and the
            convolutions run at stride 1 on the down-sampled grid (the stem conv likewise
            reads pooled pixels); the convolutions cost what transformers' strided ones do.
            "after_conv": every strided convolution runs at stride 1 at full resolution and
            its own ContextPool picks the outputs (two sites per block, about 4x the conv
            cost); at gate 0 it is exactly the strided convolution, so conversion uses it,
            and a saved config without this field (saved before it existed) loads as
            "after_conv", with the same outputs as before.
        (other `pool_*` fields as in `ContextPoolViTConfig`)
    """

    model_type = "contextpool_resnet"

    def __init__(
        self,
        num_channels: int = 3,
        embedding_size: int = 64,
        hidden_sizes: list[int] | None = None,
        depths: list[int] | None = None,
        layer_type: str = "bottleneck",
        hidden_act: str = "relu",
        downsample_in_first_stage: bool = False,
        downsample_in_bottleneck: bool = False,
        initializer_range: float = 0.02,
        pool_downsampling: list[str] | None = None,
        pool_groups: int = 1,
        pool_sigma_min: float = 0.5,
        pool_sigma_max: float = 2.0,
        pool_truncation: float = 2.0,
        pool_normalize: bool = True,
        pool_kernel_size: int = 3,
        pool_predictor_width: int | None = None,
        pool_mix_init: float = 1.0,
        pool_implementation: str = "fast",
        pool_placement: str = "before_conv",
        **kwargs,
    ):
        self.num_channels = num_channels
        self.embedding_size = embedding_size
        self.hidden_sizes = list(hidden_sizes) if hidden_sizes is not None else [256, 512, 1024, 2048]
        self.depths = list(depths) if depths is not None else [3, 4, 6, 3]
        self.layer_type = layer_type
        self.hidden_act = hidden_act
        self.downsample_in_first_stage = downsample_in_first_stage
        self.downsample_in_bottleneck = downsample_in_bottleneck
        self.initializer_range = initializer_range
        self.pool_downsampling = list(pool_downsampling) if pool_downsampling is not None else ["stem_pool", "stages"]
        self.pool_groups = pool_groups
        self.pool_sigma_min = pool_sigma_min
        self.pool_sigma_max = pool_sigma_max
        self.pool_truncation = pool_truncation
        self.pool_normalize = pool_normalize
        self.pool_kernel_size = pool_kernel_size
        self.pool_predictor_width = pool_predictor_width
        self.pool_mix_init = pool_mix_init
        self.pool_implementation = pool_implementation
        self.pool_placement = pool_placement
        kwargs.setdefault(
            "auto_map",
            {
                "AutoConfig": "configuration_contextpool_vision.ContextPoolResNetConfig",
                "AutoModel": "modeling_contextpool_vision.ContextPoolResNetModel",
                "AutoModelForImageClassification": "modeling_contextpool_vision.ContextPoolResNetForImageClassification",
            },
        )
        super().__init__(**kwargs)
        self._validate()

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        """A saved config without `pool_placement` predates the field: it loads as "after_conv",
        the layout its weights were trained (or converted) with, so it keeps its outputs."""
        if "pool_placement" not in config_dict and "pool_placement" not in kwargs:
            config_dict = {**config_dict, "pool_placement": "after_conv"}
        return super().from_dict(config_dict, **kwargs)

    def _validate(self) -> None:
        for name in ("num_channels", "embedding_size"):
            _check_int(name, getattr(self, name))
        if not self.hidden_sizes or not self.depths:
            raise ValueError("hidden_sizes and depths must be non-empty lists")
        if len(self.hidden_sizes) != len(self.depths):
            raise ValueError(
                f"hidden_sizes ({len(self.hidden_sizes)} stages) and depths ({len(self.depths)}) must have the same length"
            )
        for value in self.hidden_sizes:
            _check_int("hidden_sizes", value)
        for value in self.depths:
            _check_int("depths", value)
        _check_choice("layer_type", self.layer_type, LAYER_TYPES)
        _check_activation("hidden_act", self.hidden_act)
        for name in ("downsample_in_first_stage", "downsample_in_bottleneck"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        for site in self.pool_downsampling:
            _check_choice("pool_downsampling", site, DOWNSAMPLING_SITES)
        if len(set(self.pool_downsampling)) != len(self.pool_downsampling):
            raise ValueError(f"pool_downsampling has duplicates: {self.pool_downsampling}")
        _check_choice("pool_placement", self.pool_placement, POOL_PLACEMENTS)
        _check_pool_fields(self)
        if self.layer_type == "bottleneck":
            for size in self.hidden_sizes:
                if size % 4:
                    raise ValueError(f"hidden_sizes must be divisible by 4 for bottleneck layers, got {size}")


__all__ = ["ContextPoolViTConfig", "ContextPoolResNetConfig"]
