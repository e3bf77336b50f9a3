"""ContextPool vision models: a ViT that pools patch tokens before attention, and a ResNet
whose down-sampling is ContextPool with stride.

Flat, Hub-shipped file: imports only torch, transformers and its sibling flat files.
Weight names follow transformers' ViT / ResNet (5.x) so a checkpoint converts by a key
map; ContextPool adds `pool.*` (the predictor) and `pool_mix` (the gate) per site.

Identity start (spec item 7): every pooling site mixes the original features f with the
pooled ones p as f + g * (p - f) with a learnable scalar g (`pool_mix`). g = 0 gives f
exactly, so a converted model reproduces its source; g = 1 is pure ContextPool (the
default for training from scratch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from .configuration_contextpool_vision import ContextPoolResNetConfig, ContextPoolViTConfig
from .layers_contextpool_vision import (
    ContextPoolDownsample,
    ContextPoolResNetEmbeddings,
    ContextPoolResNetEncoder,
    _checked_pixel_values,
    _make_pool,
)
from .modeling_utils_contextpool import (
    ContextPoolHubMixin,
    _classification_loss,
    _linear_without_bias,
    _mix_pooled,
    _mixed_projection,
    _stacked_linear,
)
from .predictor_contextpool import _is_plain_layer

# --------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------


@dataclass
class ContextPoolVisionModelOutput(ModelOutput):
    """Base-model output. `pooling_sizes`: one (B, G, H, W) map of sigma per pooling site
    (ViT: per pooled layer, on the patch grid; ResNet: per replaced down-sampling site, on
    its output grid), in grid units of the pooled input; returned with `output_pooling_sizes=True`.
    """

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    pooling_sizes: tuple[torch.Tensor, ...] | None = None


@dataclass
class ContextPoolImageClassifierOutput(ModelOutput):
    """`ImageClassifierOutput` plus the per-site pooling sizes."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    pooling_sizes: tuple[torch.Tensor, ...] | None = None


def _image_classifier_output(head, outputs, labels, return_dict):
    """The ViT/ResNet heads' common end: classifier on `pooler_output`, loss, output (tuple unless return_dict)."""
    logits = head.classifier(outputs.pooler_output)
    loss = _classification_loss(head.config, logits, labels, float32=False) if labels is not None else None
    out = ContextPoolImageClassifierOutput(
        loss=loss,
        logits=logits,
        hidden_states=outputs.hidden_states,
        attentions=outputs.attentions,  # None for ResNet
        pooling_sizes=outputs.pooling_sizes,
    )
    return out if return_dict else out.to_tuple()


# --------------------------------------------------------------------------------------
# ViT
# --------------------------------------------------------------------------------------


class ContextPoolViTPatchEmbeddings(nn.Module):
    def __init__(self, config: ContextPoolViTConfig):
        super().__init__()
        self.patch_size, self.num_channels = config.patch_size, config.num_channels
        self.projection = nn.Conv2d(config.num_channels, config.hidden_size, config.patch_size, config.patch_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projection(pixel_values)  # (B, d, H/p, W/p)


class ContextPoolViTEmbeddings(nn.Module):
    """CLS token + patch embeddings + position embeddings (as transformers' ViT)."""

    def __init__(self, config: ContextPoolViTConfig):
        super().__init__()
        self.config = config
        rows, cols = config.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.patch_embeddings = ContextPoolViTPatchEmbeddings(config)
        self.position_embeddings = nn.Parameter(torch.zeros(1, rows * cols + 1, config.hidden_size))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def interpolate_pos_encoding(self, rows: int, cols: int) -> torch.Tensor:
        """Bicubic resize of the patch position embeddings to a (rows, cols) grid."""
        base_rows, base_cols = self.config.grid_size
        if (rows, cols) == (base_rows, base_cols):
            return self.position_embeddings
        dim = self.position_embeddings.shape[-1]
        cls_pos, patch_pos = self.position_embeddings[:, :1], self.position_embeddings[:, 1:]
        patch_pos = patch_pos.reshape(1, base_rows, base_cols, dim).permute(0, 3, 1, 2)  # (1, d, r, c)
        patch_pos = F.interpolate(patch_pos, size=(rows, cols), mode="bicubic", align_corners=False)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False):
        """-> embeddings (B, 1 + rows*cols, d) and the grid (rows, cols)."""
        dtype = self.patch_embeddings.projection.weight.dtype
        pixel_values = _checked_pixel_values(pixel_values, self.config.num_channels, dtype)
        height, width = pixel_values.shape[-2:]
        patch = self.config.patch_size
        if not interpolate_pos_encoding:
            expected = self.config.image_hw
            if (height, width) != tuple(expected):
                raise ValueError(
                    f"Input image size ({height}*{width}) doesn't match model ({expected[0]}*{expected[1]})."
                    " Resize it with the image processor, or pass interpolate_pos_encoding=True."
                )
        elif height % patch or width % patch:
            raise ValueError(
                f"Input image size ({height}*{width}) is not divisible by the patch size {patch}: "
                "the patch grid would drop pixels; resize or pad the image."
            )
        patches = self.patch_embeddings(pixel_values)  # (B, d, rows, cols)
        rows, cols = patches.shape[-2:]
        patches = patches.flatten(2).transpose(1, 2)  # (B, rows*cols, d)
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        embeddings = torch.cat([cls, patches], dim=1)
        if interpolate_pos_encoding:
            embeddings = embeddings + self.interpolate_pos_encoding(rows, cols)
        else:
            embeddings = embeddings + self.position_embeddings
        return self.dropout(embeddings), (rows, cols)


class ContextPoolViTAttention(nn.Module):
    """Self-attention whose queries/keys/values come from ContextPool-pooled patch tokens.

    With one pooling group the d-wide patch tokens are pooled and mixed, then projected (bias
    included). With G > 1 groups, group g pools the channels of its own heads: pooling is
    linear in the features for fixed weights and sizes, so the projections (without bias) are
    computed first and each group pools its heads' channels, then the bias is added; for G = 1
    both orders give the same linear map, and pooling the d inputs costs a third of pooling
    the 3d projections. The CLS token is not on the grid and is never pooled.
    """

    def __init__(self, config: ContextPoolViTConfig, pooled: bool):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.dropout = config.attention_probs_dropout_prob
        d = config.hidden_size
        self.q_proj = nn.Linear(d, d, bias=config.qkv_bias)
        self.k_proj = nn.Linear(d, d, bias=config.qkv_bias)
        self.v_proj = nn.Linear(d, d, bias=config.qkv_bias)
        self.o_proj = nn.Linear(d, d)
        self.pool = _make_pool(config, d, stride=1) if pooled else None
        self.pool_mix = nn.Parameter(torch.full((), float(config.pool_mix_init))) if pooled else None
        # One group: pool the d inputs, then project (the same linear map as pooling the 3d projections).
        self.pool_before_projection = config.pool_groups == 1

    @staticmethod
    def _fused_projection(hidden, projections):
        """The projections of `hidden` side by side, (B, N, F*d), as one matmul (each layer's own forward
        when one is not a plain nn.Linear, e.g. a PEFT adapter, whose update reading `.weight` would skip)."""
        if not all(_is_plain_layer(p) for p in projections):
            return torch.cat([p(hidden) for p in projections], dim=-1)
        return F.linear(hidden, *_stacked_linear(projections))

    def _project_pooled(self, hidden, grid, projections):
        """`projections` side by side of hidden (B, N, d) with its patch tokens mixed with their pooled context,
        (B, N, F*d), and sigma. In training one function keeps no copy of the mixed tokens (`_mixed_projection`)."""
        cls, patches, pooled, sigma = self._pool_hidden(hidden, grid)
        out = _mixed_projection(cls, patches, pooled, self.pool_mix, projections)
        if out is None:
            mixed = torch.cat([cls, _mix_pooled(patches, pooled, self.pool_mix)], dim=1)  # the CLS token is not pooled
            out = self._fused_projection(mixed, projections)
        return out, sigma

    def _pool_hidden(self, hidden, grid):
        """hidden (B, N, d) -> its CLS token (B, 1, d), patch tokens (B, N - 1, d), their pooled context
        (the same shape), and sigma. The CLS token is not on the grid and is never pooled."""
        batch, n, d = hidden.shape
        rows, cols = grid
        # A contiguous copy of the patches: its (B, d, rows, cols) view is then channels-last in
        # memory, where the predictor's depthwise conv is fast (the strided view that skips the
        # CLS token is not: it costs about as much again as the whole predictor).
        # split, not two slices: its backward is one cat where two slices each zero-fill a full-size grad
        cls, patches = hidden.split([1, n - 1], dim=1)
        patches = patches.contiguous().view(batch, rows, cols, d)
        weights, sigma, _ = self.pool.predict(patches)  # (B, 1, rows, cols) each
        # reshape, not view: the tiled pooling's output is a view cropped from whole tiles where the grid is not a
        # multiple of the tile (17x17, 20x20 patches, ...), which no view flattens
        pooled = self.pool.pool(patches.unsqueeze(1), weights, sigma).reshape(batch, n - 1, d)
        return cls, patches.view(batch, n - 1, d), pooled, sigma

    def _pool_projections(self, hidden, projected, grid):
        """hidden (B, N, d) normalised input; projected (B, N, F*d): F projections without bias,
        side by side. Returns the same layout with the patch tokens pooled, and sigma."""
        batch, n, width = projected.shape
        rows, cols = grid
        groups, d = self.config.pool_groups, hidden.shape[-1]
        weights, sigma, _ = self.pool.predict(hidden[:, 1:].contiguous().view(batch, rows, cols, d))  # (B, G, r, c)
        # group g pools the channels of its heads in each projection
        nf, c = width // d, d // groups
        feats = projected[:, 1:].reshape(batch, rows * cols, nf, groups, c).permute(0, 3, 1, 2, 4)
        feats = feats.reshape(batch, groups, rows, cols, nf * c)  # (B, G, r, c, F*d/G)
        mixed = _mix_pooled(feats, self.pool.pool(feats, weights, sigma), self.pool_mix)
        mixed = mixed.view(batch, groups, rows * cols, nf, c).permute(0, 2, 3, 1, 4)
        mixed = mixed.reshape(batch, rows * cols, width)  # (B, rows*cols, F*d)
        return torch.cat([projected[:, :1], mixed], dim=1), sigma  # the CLS token is not pooled

    def forward(self, hidden: torch.Tensor, grid: tuple[int, int], output_attentions: bool = False):
        batch, n, d = hidden.shape
        sigma = None
        if self.pool is None:
            q, k, v = self.q_proj(hidden), self.k_proj(hidden), self.v_proj(hidden)
        elif self.pool_before_projection:
            # One pooling for every channel: pool the d-wide input and project it (the same linear
            # map as projecting first, at a third of the pooling work for q, k and v).
            if self.config.pool_feeds == "qkv":
                projected, sigma = self._project_pooled(hidden, grid, (self.q_proj, self.k_proj, self.v_proj))
                q, k, v = projected.split(d, dim=-1)
            else:
                q = self.q_proj(hidden)
                projected, sigma = self._project_pooled(hidden, grid, (self.k_proj, self.v_proj))
                k, v = projected.split(d, dim=-1)
        else:
            # The pooled projections in one matmul (bias after pooling, see the class docstring).
            pooled = (self.q_proj, self.k_proj, self.v_proj) if self.config.pool_feeds == "qkv" else (self.k_proj, self.v_proj)
            unbiased, biases = zip(*(_linear_without_bias(p, hidden) for p in pooled), strict=True)
            projected, sigma = self._pool_projections(hidden, torch.cat(unbiased, dim=-1), grid)  # (B, N, F*d)
            if all(bias is not None for bias in biases):  # the projections are built with or without, all alike
                projected = projected + torch.cat(biases)
            if self.config.pool_feeds == "qkv":
                q, k, v = projected.split(d, dim=-1)
            else:
                q, (k, v) = self.q_proj(hidden), projected.split(d, dim=-1)
        shape = (batch, n, self.num_heads, self.head_dim)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))  # (B, heads, N, hd)
        dropout = self.dropout if self.training else 0.0
        probs = None
        if output_attentions:  # the explicit (reference) path: it has the probabilities to return
            scores = torch.matmul(q, k.transpose(-1, -2)) * self.head_dim**-0.5
            probs = F.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(q.dtype)
            context = torch.matmul(F.dropout(probs, dropout, self.training), v)
        else:
            context = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        context = context.transpose(1, 2).reshape(batch, n, d)
        return self.o_proj(context), probs, sigma


class ContextPoolViTMLP(nn.Module):
    def __init__(self, config: ContextPoolViTConfig):
        super().__init__()
        self.activation_fn = ACT2FN[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(hidden)))


class ContextPoolViTLayer(GradientCheckpointingLayer):
    """Pre-norm ViT block; the residual stream is never pooled (spec item 6).

    Gradient checkpointing (`model.gradient_checkpointing_enable()`) recomputes the whole block,
    pooling included, in the backward, as transformers' ViTLayer does."""

    def __init__(self, config: ContextPoolViTConfig, pooled: bool):
        super().__init__()
        self.attention = ContextPoolViTAttention(config, pooled)
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ContextPoolViTMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, grid: tuple[int, int], output_attentions: bool = False):
        attn, probs, sigma = self.attention(self.layernorm_before(hidden), grid, output_attentions)
        hidden = hidden + self.dropout(attn)
        hidden = hidden + self.dropout(self.mlp(self.layernorm_after(hidden)))
        return hidden, probs, sigma


class ContextPoolViTPreTrainedModel(ContextPoolHubMixin, PreTrainedModel):
    config_class = ContextPoolViTConfig
    base_model_prefix = "vit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["ContextPoolViTEmbeddings", "ContextPoolViTLayer"]
    supports_gradient_checkpointing = True
    _supports_sdpa = False
    _supports_flash_attn = False
    _supports_flex_attn = False

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, ContextPoolViTEmbeddings):
            init.trunc_normal_(module.position_embeddings, mean=0.0, std=std)
            init.trunc_normal_(module.cls_token, mean=0.0, std=std)
        elif isinstance(module, ContextPoolViTAttention) and module.pool_mix is not None:
            init.constant_(module.pool_mix, float(self.config.pool_mix_init))


class ContextPoolViTModel(ContextPoolViTPreTrainedModel):
    """Patch embeddings -> layers (ContextPool before attention) -> final LayerNorm.

    `pooler_output` is the CLS token or the mean of the patch tokens (`classifier_pooling`).
    """

    def __init__(self, config: ContextPoolViTConfig):
        super().__init__(config)
        pooled = set(config.pooled_layer_indices())
        self.embeddings = ContextPoolViTEmbeddings(config)
        self.layers = nn.ModuleList([ContextPoolViTLayer(config, i in pooled) for i in range(config.num_hidden_layers)])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> ContextPoolViTPatchEmbeddings:
        """The patch embedding (as transformers' ViT), so `enable_input_require_grads()` hooks it."""
        return self.embeddings.patch_embeddings

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_pooling_sizes: bool | None = None,
        return_dict: bool | None = None,
    ) -> ContextPoolVisionModelOutput | tuple:
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        hidden, grid = self.embeddings(pixel_values, bool(interpolate_pos_encoding))
        all_hidden = (hidden,) if output_hidden_states else None
        all_attn = () if output_attentions else None
        sizes = () if output_pooling_sizes else None
        for layer in self.layers:
            hidden, probs, sigma = layer(hidden, grid, bool(output_attentions))
            if output_hidden_states:
                all_hidden += (hidden,)
            if output_attentions:
                all_attn += (probs,)
            if output_pooling_sizes and sigma is not None:
                sizes += (sigma.detach(),)
        sequence = self.layernorm(hidden)
        pooled = sequence[:, 0] if self.config.classifier_pooling == "cls" else sequence[:, 1:].mean(1)
        out = ContextPoolVisionModelOutput(
            last_hidden_state=sequence,
            pooler_output=pooled,
            hidden_states=all_hidden,
            attentions=all_attn,
            pooling_sizes=sizes,
        )
        return out if return_dict else out.to_tuple()


class ContextPoolViTForImageClassification(ContextPoolViTPreTrainedModel):
    """ContextPool ViT with a linear classifier on the CLS token (or the patch mean)."""

    def __init__(self, config: ContextPoolViTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vit = ContextPoolViTModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_pooling_sizes: bool | None = None,
        return_dict: bool | None = None,
    ) -> ContextPoolImageClassifierOutput | tuple:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.vit(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            output_pooling_sizes=output_pooling_sizes,
            return_dict=True,
        )
        return _image_classifier_output(self, outputs, labels, return_dict)


# --------------------------------------------------------------------------------------
# ResNet
# --------------------------------------------------------------------------------------


class ContextPoolResNetPreTrainedModel(ContextPoolHubMixin, PreTrainedModel):
    config_class = ContextPoolResNetConfig
    base_model_prefix = "resnet"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["ContextPoolResNetEmbeddings", "ContextPoolResNetStage"]

    def _init_weights(self, module):
        if isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in = module.weight.shape[1]
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            if getattr(module, "num_batches_tracked", None) is not None:
                init.zeros_(module.num_batches_tracked)
        elif isinstance(module, ContextPoolDownsample):
            init.constant_(module.pool_mix, float(self.config.pool_mix_init))

    def pooling_sites(self) -> list[tuple[str, ContextPoolDownsample]]:
        """(name, module) of every ContextPool down-sampling site, in module order (= `pooling_sizes` order)."""
        return [(name, m) for name, m in self.named_modules() if isinstance(m, ContextPoolDownsample)]


class ContextPoolResNetModel(ContextPoolResNetPreTrainedModel):
    def __init__(self, config: ContextPoolResNetConfig):
        super().__init__(config)
        self.embedder = ContextPoolResNetEmbeddings(config)
        self.encoder = ContextPoolResNetEncoder(config)
        self.pooler = nn.AdaptiveAvgPool2d((1, 1))
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_pooling_sizes: bool | None = None,
        return_dict: bool | None = None,
    ) -> ContextPoolVisionModelOutput | tuple:
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        # cleared (a walk of every module) only when the sizes are asked for; each site sets its own as it runs
        sites = self.pooling_sites() if output_pooling_sizes else ()
        for _, site in sites:
            site.last_sigma = None
        x = self.embedder(pixel_values)
        x, hidden_states = self.encoder(x, bool(output_hidden_states))
        out = ContextPoolVisionModelOutput(
            last_hidden_state=x,
            pooler_output=self.pooler(x),  # (B, C, 1, 1) as transformers' ResNet
            hidden_states=hidden_states,
            pooling_sizes=tuple(m.last_sigma for _, m in sites if m.last_sigma is not None) if output_pooling_sizes else None,
        )
        return out if return_dict else out.to_tuple()


class ContextPoolResNetForImageClassification(ContextPoolResNetPreTrainedModel):
    def __init__(self, config: ContextPoolResNetConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.resnet = ContextPoolResNetModel(config)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(config.hidden_sizes[-1], config.num_labels) if config.num_labels > 0 else nn.Identity(),
        )
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_pooling_sizes: bool | None = None,
        return_dict: bool | None = None,
    ) -> ContextPoolImageClassifierOutput | tuple:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.resnet(
            pixel_values,
            output_hidden_states=output_hidden_states,
            output_pooling_sizes=output_pooling_sizes,
            return_dict=True,
        )
        return _image_classifier_output(self, outputs, labels, return_dict)


__all__ = [
    "ContextPoolDownsample",
    "ContextPoolImageClassifierOutput",
    "ContextPoolResNetForImageClassification",
    "ContextPoolResNetModel",
    "ContextPoolResNetPreTrainedModel",
    "ContextPoolViTForImageClassification",
    "ContextPoolViTModel",
    "ContextPoolViTPreTrainedModel",
    "ContextPoolVisionModelOutput",
]
