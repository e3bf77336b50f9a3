"""Building blocks of the ContextPool vision models: the helpers both families share and the
ResNet layers (down-sampling site, conv layers, blocks, stages, encoder).

Flat, Hub-shipped file: imports only torch, transformers and its sibling flat files
(`modeling_contextpool_vision` imports it, so `save_pretrained` copies it too). Weight names
follow transformers' ResNet (5.x); ContextPool adds `downsample.pool.*` and `downsample.pool_mix`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from .checks_contextpool import _autocast_on
from .configuration_contextpool_vision import ContextPoolResNetConfig
from .modeling_utils_contextpool import _lerp_grads, _mix_pooled, _pool_from_config
from .pooling_contextpool import ContextPool, _is_compiling
from .predictor_contextpool import _is_plain_layer


def _make_pool(config, channels: int, stride: int) -> ContextPool:
    return _pool_from_config(config, channels, causal=False, spatial_dims=2, stride=stride)


def _checked_pixel_values(pixel_values: torch.Tensor, expected_channels: int, dtype: torch.dtype) -> torch.Tensor:
    """pixel_values (B, channels, H, W) as the model reads them: in the model's floating dtype, cast from any other
    floating dtype as transformers' ViT casts (an image processor's float32 for a bf16 model). Integer and bool
    pixels are refused: they are raw images (0-255), which a cast would feed in unnormalised, a silent wrong answer."""
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4:
        got = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
        raise ValueError(f"pixel_values must be (batch, channels, height, width), got {got}")
    if not pixel_values.is_floating_point():
        raise ValueError(
            f"pixel_values must be floating point (rescaled and normalised pixels), got {pixel_values.dtype}: pass"
            " the images through the model's image processor (AutoImageProcessor.from_pretrained(...)), which"
            " rescales and normalises them."
        )
    if pixel_values.shape[1] != expected_channels:
        raise ValueError(
            "Make sure that the channel dimension of the pixel values match with the one set in the configuration."
            f" Expected {expected_channels} but got {pixel_values.shape[1]}. (A grayscale image for an RGB model:"
            " pass it through the image processor with do_convert_rgb=True.)"
        )
    return pixel_values.to(dtype)


# --------------------------------------------------------------------------------------
# ResNet layers
# --------------------------------------------------------------------------------------


class ContextPoolDownsample(nn.Module):
    """Down-sampling by ContextPool with stride, mixed with the operator it replaces.

    x (B, C, H, W) -> (B, C, ceil(H/s), ceil(W/s)): out = orig + g * (contextpool(x) - orig),
    where orig is x sampled at the strided positions ("subsample": the down-sampling inside a
    strided convolution) or the 3x3 max pooling ("max", the ResNet stem). The predictor reads x; channel group k of x is
    pooled with group k's weights and sizes. `last_sigma` keeps the last (B, G, H', W') sizes.
    """

    def __init__(self, config, channels: int, stride: int = 2, original: str = "subsample"):
        super().__init__()
        if channels % config.pool_groups:
            raise ValueError(f"pool_groups ({config.pool_groups}) must divide the {channels} channels of every pooling site")
        self.stride, self.original = stride, original
        self.pool = _make_pool(config, channels, stride)
        self.pool_mix = nn.Parameter(torch.full((), float(config.pool_mix_init)))
        self.last_sigma: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        batch, channels, height, width = x.shape
        groups = self.pool.groups
        hidden = x.permute(0, 2, 3, 1)  # (B, H, W, C), a view of the channels-first x
        # The predictor reads a channels-last copy: its depthwise conv and projection are 1.5-2x
        # faster there (measured) than on channels-first memory, copy included.
        hidden_last = hidden.contiguous()  # (B, H, W, C)
        orig = None
        if self.original == "max" and not _MaxPoolMix.applies(hidden_last, self.pool_mix):
            # on the channels-last copy (x's values, channels-last memory): CPU max pooling is 3-4x
            # faster there than on channels-first memory (measured at ResNet stem shapes)
            orig = F.max_pool2d(hidden_last.permute(0, 3, 1, 2), kernel_size=3, stride=s, padding=1)
        elif self.original != "max":
            orig = x[:, :, ::s, ::s]
        weights, sigma, _ = self.pool.predict(hidden_last)  # (B, G, H, W), (B, G, H', W')
        feats = hidden.unflatten(-1, (groups, channels // groups)).permute(0, 3, 1, 2, 4)  # (B, G, H, W, C/G), a view
        # The op keeps x's channels-first memory in its output, so this permute back is a view.
        pooled = self.pool.pool(feats, weights, sigma)  # (B, G, H', W', C/G)
        pooled = pooled.permute(0, 1, 4, 2, 3).reshape(batch, channels, *pooled.shape[2:4])
        self.last_sigma = sigma.detach()
        if orig is None:  # the max pooling inside the mix: it keeps no copy of the max-pooled map
            mixed = _MaxPoolMix.apply(hidden_last, pooled, self.pool_mix.to(pooled.dtype), s)
        else:
            mixed = _mix_pooled(orig, pooled, self.pool_mix)  # x's channels-last memory
        out_positions = batch * mixed.shape[2] * mixed.shape[3]
        if 9 * channels > out_positions and mixed.device.type == "cpu" and not _is_compiling():
            # A small map with many channels (a ResNet's last stages) continues channels-first: the CPU conv
            # backward on channels-last memory copies the next conv's weight (out x C x 3 x 3, at least 9 C^2
            # numbers) into channels-last, several times, where this copy is B * H' * W' * C (measured: the
            # ResNet step's peak memory was such a copy, at its last stage). Eager only: compiled, inductor
            # chooses the layouts.
            mixed = mixed.contiguous()
        return mixed


class _MaxPoolMix(torch.autograd.Function):
    """lerp(max_pool2d(x, 3, stride, 1), pooled, mix) keeping x and the max pooling's indices, not the max-pooled map.

    lerp's backward reads its start for the gate's gradient: as two nodes, the max-pooled map (a quarter of x) is
    kept from the forward to the end of the backward. Here it is recomputed from x (which the ReLU before and the
    pooling keep anyway) when the gate's gradient is formed. hidden (B, H, W, C) is x row-major (x's channels-last
    view, where the max pooling is fastest); pooled (B, C, H', W'); mix 0-dim in pooled's dtype.

    The input's gradient is written into a tensor of its own (not a view of one): it is the first of the site's
    three gradients of x to arrive (this node is created last), and autograd adds the others into it in place only
    if it is not a view (measured: otherwise each addition allocates a new tensor of x's size).
    """

    @staticmethod
    def applies(hidden: torch.Tensor, mix: torch.Tensor) -> bool:
        """Eager training outside autocast (elsewhere the two nodes, which compile and autocast handle)."""
        return (
            torch.is_grad_enabled()
            and (hidden.requires_grad or mix.requires_grad)
            and not _is_compiling()
            and not _autocast_on(hidden.device.type)
        )

    @staticmethod
    def forward(ctx, hidden, pooled, mix, stride):
        orig, indices = F.max_pool2d(hidden.permute(0, 3, 1, 2), 3, stride, 1, return_indices=True)  # (B, C, H', W')
        ctx.save_for_backward(hidden, indices, pooled, mix)
        ctx.stride = stride
        return torch.lerp(orig, pooled, mix)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        hidden, indices, pooled, mix = ctx.saved_tensors
        need_hidden, need_pooled, need_mix = ctx.needs_input_grad[:3]
        x, s = hidden.permute(0, 3, 1, 2), ctx.stride  # (B, C, H, W), channels-last memory
        orig = F.max_pool2d(x, 3, s, 1) if need_mix else None  # the forward's max-pooled map, recomputed
        grad_orig, grad_pooled, grad_mix = _lerp_grads(grad, orig, pooled, mix, need_hidden, need_pooled, need_mix)
        del orig
        grad_hidden = None
        if need_hidden:
            grad_hidden = torch.empty_like(hidden, memory_format=torch.contiguous_format)  # (B, H, W, C), not a view
            torch.ops.aten.max_pool2d_with_indices_backward.grad_input(
                grad_orig, x, [3, 3], [s, s], [1, 1], [1, 1], False, indices, grad_input=grad_hidden.permute(0, 3, 1, 2)
            )  # fmt: skip
        return grad_hidden, grad_pooled, grad_mix, None


def _shared_downsample(config, in_channels: int, stride: int, replace: bool):
    """A block's one down-sampling site on its input (`pool_placement="before_conv"`), else None.

    before_conv: ContextPool down-samples the block input once; the main path and the shortcut
    both read it and every convolution runs at stride 1 on the down-sampled grid (the cost of
    transformers' strided convolutions). after_conv (checkpoints saved before the field
    existed, and conversion, which it reproduces exactly at gate 0): each strided conv runs at
    stride 1 and its own ContextPool picks the outputs (`ContextPoolResNetConvLayer`).
    """
    if replace and stride > 1 and config.pool_placement == "before_conv":
        return ContextPoolDownsample(config, in_channels, stride)
    return None


class ContextPoolResNetConvLayer(nn.Module):
    """Conv -> BatchNorm -> activation; a replaced stride moves into a ContextPoolDownsample:
    before the conv (a 1x1 conv, where sampling commutes, or `pool_placement="before_conv"`, the
    stem conv) or after the k x k conv run at stride 1 ("after_conv")."""

    def __init__(self, config, in_channels, out_channels, kernel_size=3, stride=1, activation="relu", replace=False):
        super().__init__()
        self.downsample = None
        self.downsample_first = False
        conv_stride = stride
        if replace and stride > 1:
            conv_stride = 1
            self.downsample_first = kernel_size == 1 or config.pool_placement == "before_conv"
            self.downsample = ContextPoolDownsample(config, in_channels if self.downsample_first else out_channels, stride)
        self.convolution = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=conv_stride, padding=kernel_size // 2, bias=False
        )
        self.normalization = nn.BatchNorm2d(out_channels)
        self.activation = ACT2FN[activation] if activation is not None else nn.Identity()
        # set by the stem when a ContextPoolDownsample reads this layer's output (see `_convolve`)
        self.channels_last_output = False

    def _convolve(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution; with `channels_last_output`, its output in channels-last memory (the same values).

        A ContextPoolDownsample reads its input channels-last (the predictor's conv and the max pooling are
        1.5-4x faster there), so a channels-first map costs it a copy of the map, kept for the backward: at the
        stem the largest tensor of a ResNet step. A conv whose weight is channels-last writes its output
        channels-last (oneDNN), so the copy never exists; the weight's copy is small (3 x 7 x 7 per output
        channel) and autograd keeps the input the layer keeps anyway.
        """
        conv = self.convolution
        # eager only, as the sites' other layout choices: compiled, inductor chooses the layouts
        if not self.channels_last_output or not _is_plain_layer(conv) or x.dim() != 4 or _is_compiling():
            return conv(x)
        weight = conv.weight.contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None and self.downsample_first:
            x = self.downsample(x)
        x = self._convolve(x)
        if self.downsample is not None and not self.downsample_first:
            x = self.downsample(x)
        return self.activation(self.normalization(x))


class ContextPoolResNetEmbeddings(nn.Module):
    def __init__(self, config: ContextPoolResNetConfig):
        super().__init__()
        sites = config.pool_downsampling
        self.embedder = ContextPoolResNetConvLayer(
            config, config.num_channels, config.embedding_size, kernel_size=7, stride=2,
            activation=config.hidden_act, replace="stem_conv" in sites,
        )
        if "stem_pool" in sites:
            self.pooler = ContextPoolDownsample(config, config.embedding_size, 2, original="max")
            self.embedder.channels_last_output = self.embedder.downsample is None
        else:
            self.pooler = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.num_channels = config.num_channels

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pixel_values = _checked_pixel_values(pixel_values, self.num_channels, self.embedder.convolution.weight.dtype)
        return self.pooler(self.embedder(pixel_values))


class ContextPoolResNetShortCut(nn.Module):
    def __init__(self, config, in_channels, out_channels, stride=2, replace=False):
        super().__init__()
        self.downsample = ContextPoolDownsample(config, in_channels, stride) if replace and stride > 1 else None
        conv_stride = 1 if self.downsample is not None else stride
        self.convolution = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=conv_stride, bias=False)
        self.normalization = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        return self.normalization(self.convolution(x))


class ContextPoolResNetBasicLayer(nn.Module):
    def __init__(self, config, in_channels, out_channels, stride=1, replace=False):
        super().__init__()
        act = config.hidden_act
        # the shortcut exists where transformers' has one (its weights convert by name)
        needs_shortcut = in_channels != out_channels or stride != 1
        self.downsample = _shared_downsample(config, in_channels, stride, replace)
        if self.downsample is not None:  # the convs run at stride 1 on the down-sampled input
            stride, replace = 1, False
        self.shortcut = (
            ContextPoolResNetShortCut(config, in_channels, out_channels, stride, replace) if needs_shortcut else nn.Identity()
        )
        self.layer = nn.Sequential(
            ContextPoolResNetConvLayer(config, in_channels, out_channels, stride=stride, activation=act, replace=replace),
            ContextPoolResNetConvLayer(config, out_channels, out_channels, activation=None),
        )
        self.activation = ACT2FN[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        return self.activation(self.layer(x) + self.shortcut(x))


class ContextPoolResNetBottleNeckLayer(nn.Module):
    def __init__(self, config, in_channels, out_channels, stride=1, replace=False, reduction=4):
        super().__init__()
        act, reduced = config.hidden_act, out_channels // reduction
        in_first = config.downsample_in_bottleneck
        needs_shortcut = in_channels != out_channels or stride != 1
        self.downsample = _shared_downsample(config, in_channels, stride, replace)
        if self.downsample is not None:  # the convs run at stride 1 on the down-sampled input
            stride, replace = 1, False
        self.shortcut = (
            ContextPoolResNetShortCut(config, in_channels, out_channels, stride, replace) if needs_shortcut else nn.Identity()
        )
        self.layer = nn.Sequential(
            ContextPoolResNetConvLayer(
                config, in_channels, reduced, kernel_size=1, stride=stride if in_first else 1, activation=act, replace=replace
            ),
            ContextPoolResNetConvLayer(
                config, reduced, reduced, stride=1 if in_first else stride, activation=act, replace=replace
            ),
            ContextPoolResNetConvLayer(config, reduced, out_channels, kernel_size=1, activation=None),
        )
        self.activation = ACT2FN[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        return self.activation(self.layer(x) + self.shortcut(x))


class ContextPoolResNetStage(nn.Module):
    def __init__(self, config, in_channels, out_channels, stride=2, depth=2):
        super().__init__()
        layer = ContextPoolResNetBottleNeckLayer if config.layer_type == "bottleneck" else ContextPoolResNetBasicLayer
        replace = "stages" in config.pool_downsampling
        self.layers = nn.Sequential(
            layer(config, in_channels, out_channels, stride=stride, replace=replace),
            *[layer(config, out_channels, out_channels) for _ in range(depth - 1)],
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ContextPoolResNetEncoder(nn.Module):
    def __init__(self, config: ContextPoolResNetConfig):
        super().__init__()
        first_stride = 2 if config.downsample_in_first_stage else 1
        self.stages = nn.ModuleList(
            [ContextPoolResNetStage(config, config.embedding_size, config.hidden_sizes[0], first_stride, config.depths[0])]
        )
        pairs = zip(config.hidden_sizes[:-1], config.hidden_sizes[1:], strict=True)
        for (c_in, c_out), depth in zip(pairs, config.depths[1:], strict=True):
            self.stages.append(ContextPoolResNetStage(config, c_in, c_out, 2, depth))

    def forward(self, x: torch.Tensor, output_hidden_states: bool = False):
        hidden_states = (x,) if output_hidden_states else None
        for stage in self.stages:
            x = stage(x)
            if output_hidden_states:
                hidden_states += (x,)
        return x, hidden_states
