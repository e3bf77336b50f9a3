"""Building blocks of the ContextPool encoder-decoder: the stack view of the config, the
embeddings, cross-attention over the pooled memory, the MLP and the encoder/decoder layers.

Flat, Hub-shipped file: imports only torch, transformers and its flat siblings (relatively), so
`save_pretrained` copies it next to modeling_contextpool_seq2seq.py, which imports it and
re-exports these names. The self-attention is the text model's `ContextPoolSelfAttention`
(layers_contextpool.py), run on a `_StackConfig`.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.cache_utils import EncoderDecoderCache
from transformers.modeling_layers import GradientCheckpointingLayer

from .attention_contextpool import ATTENTION_FUNCTIONS, sdpa_attention_forward
from .configuration_contextpool_seq2seq import ContextPoolSeq2SeqConfig
from .inputs_contextpool import _embedded_inputs
from .layers_contextpool import ContextPoolSelfAttention
from .modeling_utils_contextpool import (
    _add_bias,
    _linear_without_bias,
    _mix_pooled,
    _mixed_projection,
    _pool_from_config,
)


def sinusoidal_positions(position_ids: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Marian's table, computed on the fly: sin in the first half, cos in the second (not interleaved).

    position_ids (B, n) -> (B, n, dim). Computed in float64 like Marian's numpy table.
    """
    half = dim // 2 if dim % 2 == 0 else dim // 2 + 1
    j = torch.arange(0, dim, 2, dtype=torch.float64, device=position_ids.device)  # even channel indices
    angles = position_ids.to(torch.float64).unsqueeze(-1) / torch.pow(10000.0, j / dim)  # (B, n, ceil(dim/2))
    out = torch.empty(position_ids.shape + (dim,), dtype=torch.float64, device=position_ids.device)
    out[..., :half] = torch.sin(angles)
    out[..., half:] = torch.cos(angles[..., : dim - half])
    # Marian stores the table in float32 before adding it
    return out.to(torch.float32).to(dtype)


class _StackConfig:
    """One stack (encoder or decoder) of the seq2seq config seen as a `ContextPoolConfig`.

    The text model's building blocks read these attributes; everything else (pool_*,
    `_attn_implementation`, ...) is read live from the seq2seq config, so switching the
    attention implementation on the model reaches every layer.
    """

    def __init__(self, config: ContextPoolSeq2SeqConfig, stack: str):
        self._config = config
        heads = config.encoder_attention_heads if stack == "encoder" else config.decoder_attention_heads
        self.hidden_size = config.d_model
        self.num_attention_heads = self.num_key_value_heads = heads
        self.head_dim = config.d_model // heads
        self.is_causal = stack == "decoder"
        self.pool_layers = config.pool_layers_of(stack)

    # text-model fields the seq2seq config does not have (ablation knobs, other source families): their defaults
    _TEXT_ONLY_DEFAULTS = {"pool_placement": "attention_input", "pool_mode": "adaptive", "pool_fixed_sigma": None,
                           "attention_output_bias": None, "qk_norm": False, "attention_window": None}

    def __getattr__(self, name):
        if name.startswith("__") or name == "_config":
            raise AttributeError(name)
        try:
            return getattr(self._config, name)
        except AttributeError:
            if name in self._TEXT_ONLY_DEFAULTS:
                return self._TEXT_ONLY_DEFAULTS[name]
            raise

    def layer_pools(self, layer_idx: int) -> bool:
        return self.pool_layers is None or layer_idx in self.pool_layers


class ContextPoolCrossAttention(nn.Module):
    """Decoder-to-encoder attention over the pooled encoder memory (spec item 9).

    The memory (B, m, d) is pooled bidirectionally with this layer's own predictor (padding has
    weight 0), mixed with the unpooled memory by `pool_mix`, and projected to keys/values once per
    source: with an `EncoderDecoderCache` they are stored and reused at every generation step.
    pool_groups > 1: each group pools its own heads' key/value channels (like the self-attention).
    """

    def __init__(self, config: _StackConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        d, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(d, d, bias=bias)
        self.k_proj = nn.Linear(d, d, bias=bias)
        self.v_proj = nn.Linear(d, d, bias=bias)
        self.o_proj = nn.Linear(d, d, bias=bias)
        self.groups = config.pool_groups
        if config.pool_cross_attention and config.layer_pools(layer_idx):
            self.pool = _pool_from_config(config, config.hidden_size, causal=False)
            self.pool_mix = nn.Parameter(torch.full((config.pool_groups,), float(config.pool_mix_init)))
        else:
            self.pool = None

    def memory_keys_values(self, memory: torch.Tensor, keep: torch.Tensor | None):
        """memory (B, m, d), keep (B, m) bool or None -> keys, values (B, H, m, dh)."""
        batch, m, _ = memory.shape
        if self.pool is None:
            k, v = self.k_proj(memory), self.v_proj(memory)
        else:
            weights, sigma, _ = self.pool.predict(memory, keep)
            if self.groups == 1:
                pooled = self.pool.pool(memory.unsqueeze(1), weights, sigma).squeeze(1)
                # in training one function that keeps no copy of the mixed memory
                projected = _mixed_projection(None, memory, pooled, self.pool_mix, (self.k_proj, self.v_proj))
                if projected is not None:
                    k, v = projected.split([self.k_proj.out_features, self.v_proj.out_features], dim=-1)
                else:
                    mixed = _mix_pooled(memory, pooled, self.pool_mix)
                    k, v = self.k_proj(mixed), self.v_proj(mixed)
            else:
                groups = self.groups
                (k, k_bias), (v, v_bias) = (_linear_without_bias(proj, memory) for proj in (self.k_proj, self.v_proj))
                k, v = k.view(batch, m, groups, -1), v.view(batch, m, groups, -1)
                features = torch.cat([k.transpose(1, 2), v.transpose(1, 2)], dim=-1)  # (B, G, m, 2 d / G), group-major
                pooled = self.pool.pool(features, weights, sigma)
                mixed = _mix_pooled(features, pooled, self.pool_mix.view(1, groups, 1, 1))
                k, v = (p.reshape(batch, m, -1) for p in mixed.transpose(1, 2).chunk(2, dim=-1))
                k, v = _add_bias(k, k_bias), _add_bias(v, v_bias)
        k = k.view(batch, m, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, m, dh)
        v = v.view(batch, m, self.num_heads, self.head_dim).transpose(1, 2)
        return k, v

    def forward(self, hidden, memory, memory_keep, attention_bias, cache: EncoderDecoderCache | None = None,
                output_attentions: bool = False):
        batch, n, _ = hidden.shape
        q = self.q_proj(hidden).view(batch, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, n, dh)
        if cache is not None and cache.is_updated.get(self.layer_idx):
            layer = cache.cross_attention_cache.layers[self.layer_idx]
            k, v = layer.keys, layer.values
        else:
            k, v = self.memory_keys_values(memory, memory_keep)
            if cache is not None:
                k, v = cache.cross_attention_cache.update(k, v, self.layer_idx)
                cache.is_updated[self.layer_idx] = True
        implementation = "eager" if output_attentions else (self.config._attn_implementation or "eager")
        attention = ATTENTION_FUNCTIONS.get(implementation, sdpa_attention_forward)
        output, weights = attention(
            self, q, k, v, attention_bias, self.scaling,
            dropout=self.attention_dropout if self.training else 0.0, is_causal=False,
        )
        return self.o_proj(output.reshape(batch, n, -1)), weights


class ContextPoolSeq2SeqMLP(nn.Module):
    """fc1 -> act -> dropout -> fc2 (BART/Marian names)."""

    def __init__(self, d_model: int, ffn_dim: int, activation: str, activation_dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, d_model)
        self.act = ACT2FN[activation]
        self.dropout = nn.Dropout(activation_dropout)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.act(self.fc1(hidden))))


class ContextPoolEncoderLayer(GradientCheckpointingLayer):
    """Self-attention (bidirectional pooling) + MLP; post-norm (BART/Marian) or pre-norm."""

    def __init__(self, config: _StackConfig, layer_idx: int, ffn_dim: int | None = None):
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        d = config.hidden_size
        self.self_attn = ContextPoolSelfAttention(config, layer_idx)
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=config.norm_eps)
        ffn_dim = config.encoder_ffn_dim if ffn_dim is None else ffn_dim
        self.mlp = ContextPoolSeq2SeqMLP(d, ffn_dim, config.activation_function, config.activation_dropout)
        self.final_layer_norm = nn.LayerNorm(d, eps=config.norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def _block(self, hidden, norm, fn):
        if self.pre_norm:
            out, *extra = fn(norm(hidden))
            return hidden + self.dropout(out), extra
        out, *extra = fn(hidden)
        return norm(hidden + self.dropout(out)), extra

    def forward(self, hidden, attention_bias=None, keep=None, output_attentions=False):
        hidden, (weights, sigma) = self._block(
            hidden, self.self_attn_layer_norm,
            lambda x: self.self_attn(x, attention_bias, keep, None, None, output_attentions),
        )
        hidden, _ = self._block(hidden, self.final_layer_norm, lambda x: (self.mlp(x),))
        return hidden, weights, sigma


class ContextPoolDecoderLayer(ContextPoolEncoderLayer):
    """Causal pooled self-attention + cross-attention over the pooled memory + MLP."""

    def __init__(self, config: _StackConfig, layer_idx: int):
        super().__init__(config, layer_idx, config.decoder_ffn_dim)
        self.encoder_attn = ContextPoolCrossAttention(config, layer_idx)
        self.encoder_attn_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)

    def forward(self, hidden, memory, self_bias=None, keep=None, memory_keep=None, cross_bias=None, cache=None,
                output_attentions=False):
        self_cache = cache.self_attention_cache if cache is not None else None
        hidden, (weights, sigma) = self._block(
            hidden, self.self_attn_layer_norm,
            lambda x: self.self_attn(x, self_bias, keep, None, self_cache, output_attentions),
        )
        hidden, (cross_weights,) = self._block(
            hidden, self.encoder_attn_layer_norm,
            lambda x: self.encoder_attn(x, memory, memory_keep, cross_bias, cache, output_attentions),
        )
        hidden, _ = self._block(hidden, self.final_layer_norm, lambda x: (self.mlp(x),))
        return hidden, weights, cross_weights, sigma


class _Embeddings(nn.Module):
    """Token embedding (shared, not owned) * scale + positions (+ LayerNorm) -> dropout."""

    def __init__(self, config: ContextPoolSeq2SeqConfig, shared: nn.Embedding):
        super().__init__()
        # A plain attribute, not a submodule: the matrix lives once, at `model.shared`.
        object.__setattr__(self, "_shared", shared)
        self.config = config
        self.scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.offset = config.position_offset if config.position_embedding_type == "learned" else 0
        self.embed_positions = (
            nn.Embedding(config.max_position_embeddings + self.offset, config.d_model)
            if config.position_embedding_type == "learned"
            else None
        )
        self.layernorm_embedding = nn.LayerNorm(config.d_model, eps=config.norm_eps) if config.layernorm_embedding else None
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, input_ids, inputs_embeds, past: int, what: str):
        config = self.config
        inputs_embeds = _embedded_inputs(input_ids, inputs_embeds, self._shared, config.vocab_size, config.d_model,
                                         what, self.scale)  # fmt: skip
        batch, n = inputs_embeds.shape[:2]
        if past + n > config.max_position_embeddings:
            raise ValueError(
                f"{what or 'source '}sequence length {past + n} is longer than max_position_embeddings "
                f"({config.max_position_embeddings}); truncate the input (tokenizer(..., truncation=True, "
                f"max_length={config.max_position_embeddings}))"
            )
        position_ids = torch.arange(past, past + n, device=inputs_embeds.device).unsqueeze(0).expand(batch, n)
        if self.embed_positions is not None:
            positions = self.embed_positions(position_ids + self.offset)
        else:
            positions = sinusoidal_positions(position_ids, config.d_model, inputs_embeds.dtype)
        hidden = inputs_embeds + positions
        if self.layernorm_embedding is not None:
            hidden = self.layernorm_embedding(hidden)
        return self.dropout(hidden)
