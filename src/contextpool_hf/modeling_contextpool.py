"""ContextPool Transformers for text: encoder (BERT-like), decoder-only LM (GPT-2/Llama-like), heads.

Flat, Hub-shipped file: imports only torch, transformers and its sibling flat files.

Every attention layer that pools (config.pool_layers) first lets each token pool its
Gaussian neighbourhood (pooling_contextpool.ContextPool), then runs ordinary attention
between the pooled contexts (spec item 6). The residual stream is never replaced, and a
learnable per-layer mix (`pool_mix`) blends token and context, so a model converted from a
pretrained checkpoint with pool_mix = 0 is exactly the source model (spec item 7).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
from transformers.generation import GenerationMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import ModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils import logging
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_contextpool import ContextPoolConfig, rope_stand_in
from .modeling_utils_contextpool import (
    ContextPoolHubMixin,
    _classification_loss,
    _is_compiling,
    _pool_from_config,
)
from .pooling_contextpool import _SIGMA_FLOOR, DEFAULT_EPS, ContextPool, _mask_as_weights

logger = logging.get_logger(__name__)


# --------------------------------------------------------------------------------------
# Outputs: transformers' fields, plus the pooling sizes each layer used
# --------------------------------------------------------------------------------------


@dataclass
class ContextPoolModelOutput(ModelOutput):
    """last_hidden_state (B, n, d); pooling_sizes: per pooling layer, sigma (B, groups, n) (None for layers that do not pool)."""

    last_hidden_state: torch.Tensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    pooling_sizes: tuple[torch.Tensor | None, ...] | None = None


@dataclass
class ContextPoolModelOutputWithPooling(ContextPoolModelOutput):
    pooler_output: torch.Tensor | None = None


@dataclass
class ContextPoolCausalLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    pooling_sizes: tuple[torch.Tensor | None, ...] | None = None


@dataclass
class ContextPoolMaskedLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    pooling_sizes: tuple[torch.Tensor | None, ...] | None = None


@dataclass
class ContextPoolSequenceClassifierOutput(ContextPoolMaskedLMOutput):
    pass


@dataclass
class ContextPoolTokenClassifierOutput(ContextPoolMaskedLMOutput):
    pass


@dataclass
class ContextPoolQuestionAnsweringOutput(ModelOutput):
    loss: torch.Tensor | None = None
    start_logits: torch.Tensor | None = None
    end_logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    pooling_sizes: tuple[torch.Tensor | None, ...] | None = None


# --------------------------------------------------------------------------------------
# Cache: keys/values plus the pooling state of every causal pooling layer (spec item 10)
# --------------------------------------------------------------------------------------


class ContextPoolCacheLayer(DynamicLayer):
    """A DynamicLayer that also keeps what a causal ContextPool needs to continue a sequence.

    pool_features (B, G, R + 1, C): the last R + 1 pooled-feature inputs, as a ring buffer
    whose slot `pool_next` holds the oldest one (zero where none yet);
    pool_weights (B, G, R + 1): their weights w_j, in the same slots (zero where none yet);
    conv_state (B, width, kernel - 1): the predictor's causal conv inputs.

    A ring rather than a sliding window because a pooled sum does not depend on the order of
    its terms: a decoding step overwrites one slot instead of copying the whole window, and
    reads each slot's distance to the newest token from a table.
    """

    _POOL_STATE = ("pool_features", "pool_weights", "conv_state")
    # Rollback (assisted decoding): how many forwards back `crop` can reach once recording is on.
    _MAX_RECORDED = 64

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.pool_features = self.pool_weights = self.conv_state = None
        self.pool_next = 0
        self.record_past = False
        self.past_log = []  # per forward: (length before, ring, ring weights, ring slot, conv state, inputs)
        self.pending_replay = None  # (log entry, m): replay its first m tokens on the next forward

    def activate_past_recording(self) -> None:
        """Keep, per forward, the pooling state it started from and its inputs (references: a step
        writes its ring out of place, so nothing is copied), so that `crop` can roll back exactly."""
        self.record_past = True

    def record(self, hidden, features, keep) -> None:
        """Called by the attention module before it pools n new tokens (hidden (B, n, d), features (B, G, n, C))."""
        entry = (self.get_seq_length(), self.pool_features, self.pool_weights, self.pool_next, self.conv_state,
                 hidden, features, keep)  # fmt: skip
        self.past_log.append(entry)
        if len(self.past_log) > self._MAX_RECORDED:
            self.past_log.pop(0)

    def _map_pool_state(self, fn) -> None:
        for name in self._POOL_STATE:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, fn(value))

    def pool_history(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The ring in time order, oldest first: features (B, G, R + 1, C), weights (B, G, R + 1)."""
        shift = -self.pool_next
        return self.pool_features.roll(shift, dims=2), self.pool_weights.roll(shift, dims=2)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self.past_log, self.pending_replay = [], None  # recorded states are of the old batch order
        self._map_pool_state(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._map_pool_state(lambda t: t.repeat_interleave(repeats, dim=0))
        self.past_log, self.pending_replay = [], None

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._map_pool_state(lambda t: t[indices, ...])
        self.past_log, self.pending_replay = [], None

    def crop(self, tokens_to_remove: int) -> None:
        """Remove the last -tokens_to_remove tokens (transformers' convention: a negative count).

        The ring of the last R + 1 pooling inputs cannot be rewound by itself (a step overwrote the
        oldest slot), so it comes from the recorded state at the start of the forward that produced
        the new length, plus a replay of that forward's first tokens on the next forward (the
        pooling module does it: `ContextPoolSelfAttention._pool`).
        """
        if tokens_to_remove == 0 or self.pool_weights is None:
            super().crop(tokens_to_remove)
            return
        if tokens_to_remove > 0:
            super().crop(tokens_to_remove)  # transformers' own error for the legacy positive form
        if not self.record_past:
            raise NotImplementedError(
                "ContextPoolCache can only be cropped after cache.activate_past_recording() (assisted and "
                "speculative decoding call it): the pooling state of removed tokens is otherwise not kept"
            )
        target = self.get_seq_length() - abs(tokens_to_remove)
        while self.past_log and self.past_log[-1][0] > target:
            self.past_log.pop()
        if not self.past_log or target < 0:
            raise ValueError(f"cannot crop {abs(tokens_to_remove)} tokens: the recorded pooling history is shorter")
        entry = self.past_log[-1]
        _, self.pool_features, self.pool_weights, self.pool_next, self.conv_state = entry[:5]
        replay = target - entry[0]
        if replay == 0:
            self.past_log.pop()  # the next forward records this same state again
        self.pending_replay = (entry, replay) if replay else None
        super().crop(tokens_to_remove)

    def reset(self) -> None:
        super().reset()
        self.pool_features = self.pool_weights = self.conv_state = None
        self.pool_next = 0
        self.past_log, self.pending_replay = [], None


class ContextPoolCache(DynamicCache):
    """DynamicCache whose layers also carry the ContextPool state; created by the model when needed."""

    def __init__(self, *args, **kwargs):
        Cache.__init__(self, layer_class_to_replicate=ContextPoolCacheLayer)
        self.record_past = False

    def activate_past_recording(self) -> None:
        self.record_past = True  # also for the layers created later, in `layer`
        super().activate_past_recording()

    @classmethod
    def from_prefix(cls, prefix: Cache) -> ContextPoolCache:
        """A filled cache of keys/values only (PEFT prefix tuning's virtual tokens) as a ContextPoolCache.

        The prefix is attended to but has no pooling history: the first real chunk pools alone, as
        after an empty cache (virtual tokens are keys/values, not inputs a token could pool). The
        tensors are shared, not copied or detached, so gradients reach the prefix parameters.
        """
        if not isinstance(prefix, Cache) or len(getattr(prefix, "layers", ())) == 0:
            raise ValueError(f"cache must be a ContextPoolCache or a filled transformers Cache, got {type(prefix).__name__}")
        cache = cls()
        for idx, source in enumerate(prefix.layers):
            if source.keys is None or source.keys.numel() == 0:
                continue
            layer = cache.layer(idx)
            layer.lazy_initialization(source.keys, source.values)
            layer.keys, layer.values = source.keys, source.values  # (B, Hkv, prefix, dh)
        return cache

    def layer(self, layer_idx: int) -> ContextPoolCacheLayer:
        while len(self.layers) <= layer_idx:
            self.layers.append(ContextPoolCacheLayer())
            if self.record_past:
                self.layers[-1].activate_past_recording()
        return self.layers[layer_idx]


# --------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------


class ContextPoolRMSNorm(nn.Module):
    """RMSNorm computed in float32 (as Llama does), so converted checkpoints match exactly."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        dtype = hidden.dtype
        h = hidden.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def _make_norm(config: ContextPoolConfig) -> nn.Module:
    if config.norm_type == "rmsnorm":
        return ContextPoolRMSNorm(config.hidden_size, config.norm_eps)
    return nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.norm_bias)


def rotary_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype, config=None):
    """cos, sin of shape (B, n, head_dim) for rotary positions (computed on the fly: no buffer to load).

    With `config.rope_scaling_params` (Llama 3's "llama3", "linear", "yarn") the frequencies and the
    cos/sin factor come from transformers' ROPE_INIT_FUNCTIONS, as in the source models.
    """
    scaling = getattr(config, "rope_scaling_params", None) if config is not None else None
    if scaling:
        inv_freq, attention_factor = _scaled_inv_freq(config)
        inv_freq = inv_freq.to(position_ids.device)
    else:
        exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=position_ids.device).float() / head_dim
        inv_freq, attention_factor = 1.0 / (theta**exponent), 1.0  # (head_dim / 2,)
    freqs = position_ids.float().unsqueeze(-1) * inv_freq  # (B, n, head_dim / 2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (B, n, head_dim)
    if attention_factor != 1.0:
        return (emb.cos() * attention_factor).to(dtype), (emb.sin() * attention_factor).to(dtype)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _scaled_inv_freq(config) -> tuple[torch.Tensor, float]:
    """(inv_freq (head_dim / 2,), cos/sin factor) of a scaled rotary type, memoised per parameters."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    key = (float(config.rope_theta), config.head_dim, config.max_position_embeddings,
           tuple(sorted((k, str(v)) for k, v in config.rope_scaling_params.items())))  # fmt: skip
    if key not in _SCALED_ROPE_CACHE:
        stand_in = rope_stand_in(config)
        inv_freq, factor = ROPE_INIT_FUNCTIONS[stand_in.rope_parameters["rope_type"]](stand_in, "cpu")
        _SCALED_ROPE_CACHE[key] = (inv_freq.float(), float(factor))
    return _SCALED_ROPE_CACHE[key]


_SCALED_ROPE_CACHE: dict[tuple, tuple[torch.Tensor, float]] = {}


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, heads, n, head_dim); cos/sin: (B, n, head_dim)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + _rotate_half(x) * sin


def repeat_kv(hidden: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, kv_heads, n, dh) -> (B, kv_heads * n_rep, n, dh) for grouped-query attention."""
    if n_rep == 1:
        return hidden
    b, h, n, dh = hidden.shape
    return hidden[:, :, None].expand(b, h, n_rep, n, dh).reshape(b, h * n_rep, n, dh)


def eager_attention_forward(module, query, key, value, attention_bias, scaling, dropout=0.0, is_causal=False):
    """Plain attention, the reference. query (B, H, q, dh), key/value (B, Hkv, k, dh).

    attention_bias: additive (B|1, 1, q, k) or None (is_causal is then applied here).
    Returns the output (B, q, H, dh) and the attention weights (B, H, q, k).
    """
    n_rep = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, H, q, k)
    if attention_bias is not None:
        scores = scores + attention_bias
    elif is_causal and scores.shape[-2] > 1:
        q_len, k_len = scores.shape[-2:]
        future = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).triu(k_len - q_len + 1)
        scores = scores.masked_fill(future, torch.finfo(scores.dtype).min)
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()  # (B, q, H, dh)
    return output, weights


def sdpa_attention_forward(module, query, key, value, attention_bias, scaling, dropout=0.0, is_causal=False):
    """torch's fused attention on the same (already pooled) queries, keys and values."""
    n_rep = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    output = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_bias,
        dropout_p=dropout if module.training else 0.0,
        # torch aligns is_causal top-left; only valid without a cache offset (q_len == k_len)
        is_causal=is_causal and attention_bias is None and query.shape[2] == key.shape[2],
        scale=scaling,
    )
    return output.transpose(1, 2).contiguous(), None


# The attention product is swappable; the pooling is not (it runs before, in every backend).
# "eager" and "sdpa" are ours (they take the additive bias of `_attention_bias`, or None for plain
# causal); every other name (flex_attention, flash_attention_*, hub kernels) is looked up in
# transformers' ALL_ATTENTION_FUNCTIONS, with the mask in the format that backend takes
# (`_backend_mask`).
ATTENTION_FUNCTIONS = {"eager": eager_attention_forward, "sdpa": sdpa_attention_forward}


def _is_flash_like(implementation: str) -> bool:
    """Backends that take a 2-D (B, kv) padding mask and apply causality and the window themselves."""
    return "flash" in implementation


class ContextPoolSelfAttention(nn.Module):
    """Self-attention whose queries/keys/values come from ContextPool-pooled features.

    pool_groups == 1: the layer input u is pooled once, mixed with u, then projected.
    pool_groups  > 1: u is projected (without bias) and each group pools its own heads'
    q/k/v channels with its own weights and sizes; pooling is linear over tokens and the
    projection is linear over channels, so this equals projecting per-group pooled inputs,
    at 3d instead of G*d pooled channels. Biases are added after pooling.
    """

    def __init__(self, config: ContextPoolConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        )
        self.scaling = self.head_dim**-0.5
        self.is_causal = config.is_causal
        self.attention_dropout = config.attention_dropout
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        output_bias = bias if config.attention_output_bias is None else config.attention_output_bias
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=output_bias)
        # Qwen3: each head's queries and keys are RMS-normalised before the rotation
        self.q_norm = ContextPoolRMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else None
        self.k_norm = ContextPoolRMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else None
        self.pool_target = config.pool_target
        self.groups = config.pool_groups
        # "block_output": the layer (ContextPoolLayer) pools the residual stream entering it through
        # `pool_residual`; the projections below then read unpooled (already pooled) features.
        self.pools_block_output = config.pool_placement == "block_output" and config.layer_pools(layer_idx)
        if config.layer_pools(layer_idx):
            self.pool = _pool_from_config(
                config, config.hidden_size, causal=config.is_causal,
                mode=config.pool_mode, fixed_sigma=config.pool_fixed_sigma,
            )  # fmt: skip
            # Within max_position_embeddings no two positions lie more than max_position_embeddings - 1
            # apart, so a larger radius is the same pooling: capping it bounds the decoding ring (R + 1
            # slots) and every chunk's work. Rotary models may run past the limit (it is advisory
            # there); the window then stays capped, in the cached and the uncached paths alike, so
            # decoding remains exact (a no-op unless truncation * sigma_max >= max_position_embeddings).
            self.pool.radius = min(self.pool.radius, max(0, config.max_position_embeddings - 1))
            self.pool_mix = nn.Parameter(torch.full((config.pool_groups,), float(config.pool_mix_init)))
        else:
            self.pool = None

    # -- pooling -------------------------------------------------------------------------

    def _pool(self, hidden, features, keep, layer_cache):
        """hidden (B, n, d) feeds the predictor; features (B, G, n, C) are pooled. -> pooled, sigma (B, G, n)."""
        if isinstance(keep, _PackedLayout):
            return self._pool_packed(hidden, features, keep)
        if layer_cache is None:
            weights, sigma, _ = self.pool.predict(hidden, keep)
            return self.pool.pool(features, weights, sigma), sigma
        if layer_cache.pending_replay is not None:  # after a crop: bring the pooling state to the new length
            (_, _, _, _, _, old_hidden, old_features, old_keep), replay = layer_cache.pending_replay
            layer_cache.pending_replay, recording = None, layer_cache.record_past
            layer_cache.record_past = False
            self._pool(old_hidden[:, :replay], old_features[:, :, :replay],
                       old_keep[:, :replay] if old_keep is not None else None, layer_cache)  # fmt: skip
            layer_cache.record_past = recording
        if layer_cache.record_past:
            layer_cache.record(hidden, features, keep)
        if self.pool.predictor is not None and layer_cache.conv_state is not None and hidden.shape[1] == 1:
            return self._decode_step(hidden, features, keep, layer_cache)
        weights, sigma, conv_state = self.pool.predict(hidden, keep, layer_cache.conv_state)
        # A chunk after (or without) a cache: prepend the last R + 1 inputs and weights; the
        # pooled output of token i only reads tokens i-R..i, so this equals pooling the whole
        # sequence. History positions are outputs we throw away; any valid width will do there.
        window = self.pool.radius + 1
        batch, groups, n, channels = features.shape
        if layer_cache.pool_features is None:
            # The first chunk (a prompt, or a training step with use_cache): nothing precedes it, so
            # it pools alone; a zero-weight history would add nothing to the sums, only R + 1 tokens'
            # work. The ring still gets R + 1 slots, the missing past with weight 0.
            pooled = self.pool.pool(features, weights, sigma)
            all_features, all_weights = features, weights
            if n < window:
                all_features = F.pad(features, (0, 0, window - n, 0))  # (B, G, R + 1, C)
                all_weights = F.pad(weights, (window - n, 0))  # (B, G, R + 1)
        else:
            history, history_weights = layer_cache.pool_history()
            all_features = torch.cat([history.to(features.dtype), features], dim=2)  # (B, G, R + 1 + n, C)
            all_weights = torch.cat([history_weights.to(weights.dtype), weights], dim=2)  # (B, G, R + 1 + n)
            all_sigma = torch.cat([sigma.new_full((batch, groups, window), self.pool.sigma_max), sigma], dim=2)
            pooled = self.pool.pool(all_features, all_weights, all_sigma)[:, :, window:]
        # Not detached, like the keys and values: decoding with autograd on gets exact gradients.
        layer_cache.pool_features = all_features[:, :, -window:]
        layer_cache.pool_weights = all_weights[:, :, -window:]
        layer_cache.pool_next = 0
        layer_cache.conv_state = conv_state
        return pooled, sigma

    def packing_gap(self) -> int:
        """Zero-weight tokens needed between packed documents: the pooling radius and the conv reach."""
        if self.pool is None:
            return 0
        predictor = self.pool.predictor
        return max(self.pool.radius, predictor.kernel_size - 1 if predictor is not None else 0)

    def _pool_packed(self, hidden, features, packed):
        """Pool packed documents separately: spread them `gap` tokens apart (weight 0 in between), pool
        the spread row, read the tokens back. hidden (B, n, d), features (B, G, n, C)."""
        batch, n, d = hidden.shape
        groups, channels = features.shape[1], features.shape[-1]
        dest = packed.dest
        spread_hidden = hidden.new_zeros(batch, packed.length, d).scatter(1, dest[..., None].expand(-1, -1, d), hidden)
        index = dest[:, None, :, None].expand(-1, groups, -1, channels)  # (B, G, n, C)
        spread_features = features.new_zeros(batch, groups, packed.length, channels).scatter(2, index, features)
        keep = torch.zeros(batch, packed.length, dtype=torch.bool, device=hidden.device)
        real = packed.keep if packed.keep is not None else torch.ones_like(dest, dtype=torch.bool)
        keep = keep.scatter(1, dest, real)  # (B, spread)
        weights, sigma, _ = self.pool.predict(spread_hidden, keep)
        pooled = self.pool.pool(spread_features, weights, sigma)  # (B, G, spread, C)
        sigma = sigma.gather(2, dest[:, None, :].expand(-1, sigma.shape[1], -1))  # (B, G, n)
        return pooled.gather(2, index), sigma

    def _decode_step(self, hidden, features, keep, layer_cache):
        """One decoding step: the causal predictor on a conv state, then the newest token's pooling.

        Same result as `_pool` on the whole sequence, in about 25 small dense ops. At batch 1
        each op costs a few microseconds whatever its size, so the step avoids the ones it can:
        a framework conv call (milliseconds of setup for these few numbers), the offset loop
        (R + 1 steps), copies of the whole window, no-op casts, and Python-float operands,
        which torch wraps in a new tensor on every call. hidden (B, 1, d), features (B, G, 1, C)
        -> pooled (B, G, 1, C), sigma (B, G, 1).
        """
        pool, predictor = self.pool, self.pool.predictor
        groups = pool.groups
        ring_features, ring_weights = layer_cache.pool_features, layer_cache.pool_weights
        window = ring_weights.shape[-1]
        out_dtype = features.dtype
        tables = self._decode_tables(features, window)

        # predictor (spec item 1): the depthwise conv as kernel_size multiply-adds
        h = predictor.in_proj(hidden) if predictor.in_proj is not None else hidden
        if keep is not None:
            h = h * keep.unsqueeze(-1).to(h.dtype)
        conv_state = layer_cache.conv_state
        if conv_state.dtype != h.dtype:
            conv_state = conv_state.to(h.dtype)
        conv_window = torch.cat([conv_state, h.transpose(1, 2)], dim=-1)  # (B, width, kernel)
        conv = predictor.conv
        conv_out = torch.linalg.vecdot(conv_window, conv.weight.squeeze(1))  # (B, width): one call, not mul + sum
        if conv.bias is not None:
            conv_out = conv_out + conv.bias
        # F.gelu, as the full-sequence path: one call (about 50 us on a 256-vector on this CPU, against
        # about 65 us for x * (1 + erf(x / sqrt 2)) / 2 written out as four calls)
        activated = F.gelu(conv_out)
        proj = predictor.proj  # called as F.linear: a module call costs more than this tiny matmul
        gates = torch.sigmoid(F.linear(activated, proj.weight, proj.bias)).unsqueeze(-1)  # (B, 2G, 1): sigmoid(a), sigmoid(b)
        weights = gates[:, :groups]  # spec item 2
        if keep is not None:
            weights = weights * keep.unsqueeze(1).to(weights.dtype)
        sigma = torch.addcmul(tables["sigma_min"], gates[:, groups:], tables["sigma_span"])  # spec item 3
        layer_cache.conv_state = conv_window[..., 1:]

        # pooling (spec items 4-5, causal): write the newest input over the oldest ring slot.
        # Out of place, so a step taken with autograd on never edits a tensor saved for backward.
        slot = layer_cache.pool_next
        index = tables["slot_index"][slot]
        if ring_features.dtype != out_dtype:  # history in the step's dtype, as `_pool` does for a chunk
            ring_features, ring_weights = ring_features.to(out_dtype), ring_weights.to(weights.dtype)
        ring_features = ring_features.index_copy(2, index, features)
        ring_weights = ring_weights.index_copy(2, index, weights)
        layer_cache.pool_next = (slot + 1) % window
        layer_cache.pool_features, layer_cache.pool_weights = ring_features, ring_weights
        if out_dtype not in (torch.float32, torch.float64):  # computed in float32 at least, like the operator
            ring_features, ring_weights, sigma_c = ring_features.float(), ring_weights.float(), sigma.float()
        else:
            sigma_c = sigma
        # floored as in the operator: a width whose square underflows would give 0 * inf = NaN at distance 0
        inv_var = sigma_c.clamp_min(_SIGMA_FLOOR).pow(-2)
        coef = ring_weights * torch.exp(tables["neg_half_distance_sq_rows"][slot] * inv_var)  # (B, G, R + 1)
        if pool.normalize:  # normalise the R + 1 coefficients rather than the C outputs: fewer calls
            coef = coef / (coef.sum(-1, keepdim=True) + tables["eps"])
        pooled = torch.matmul(coef.unsqueeze(-2), ring_features)  # (B, G, 1, R + 1) @ (B, G, R + 1, C)
        return (pooled if pooled.dtype == out_dtype else pooled.to(out_dtype)), sigma

    def _decode_tables(self, like: torch.Tensor, window: int) -> dict:
        """Constants of a decoding step, built once per device, dtype (of `like`) and ring size R + 1.

        neg_half_distance_sq_rows (R + 1 rows of R + 1): row s holds -(age of each slot)^2 / 2 when the
        newest input sits in slot s (float32 at least); slot_index: the (1,) index of each slot;
        and the step's scalars as 0-dim tensors on the device.
        """
        dtype, device = like.dtype, like.device
        compute = dtype if dtype in (torch.float32, torch.float64) else torch.float32
        key = (device, dtype, window, self.pool.sigma_min, self.pool.sigma_max)
        cached = self.__dict__.get("_decode_tables_cache")  # plain attribute: not a buffer, never saved
        if cached is None or cached[0] != key:
            slots = torch.arange(window, device=device)
            age = (slots[:, None] - slots[None, :]) % window  # (newest slot, slot)

            def scalar(value, scalar_dtype=dtype):
                return torch.tensor(value, dtype=scalar_dtype, device=device)

            tables = dict(
                # the rows as ready-made views: indexing the table on every step would be one more call
                neg_half_distance_sq_rows=list(((age * age).to(compute) * -0.5).unbind(0)),
                slot_index=[slots[s : s + 1] for s in range(window)],
                sigma_min=scalar(self.pool.sigma_min),
                sigma_span=scalar(self.pool.sigma_max - self.pool.sigma_min),
                eps=scalar(DEFAULT_EPS, compute),
            )
            cached = (key, tables)
            self.__dict__["_decode_tables_cache"] = cached
        return cached[1]

    def _pooled_projections(self, hidden, keep, layer_cache):
        """-> q (B, n, H*dh), k, v (B, n, Hkv*dh), sigma (B, G, n) or None."""
        if self.pool is None or self.pools_block_output:
            return self.q_proj(hidden), self.k_proj(hidden), self.v_proj(hidden), None
        if self.groups == 1:
            pooled, sigma = self._pool(hidden, hidden.unsqueeze(1), keep, layer_cache)
            mixed = torch.lerp(hidden, pooled.squeeze(1), self.pool_mix)  # hidden + mix * (pooled - hidden)
            query_source = mixed if self.pool_target == "qkv" else hidden
            return self.q_proj(query_source), self.k_proj(mixed), self.v_proj(mixed), sigma
        batch, n, _ = hidden.shape
        groups = self.groups
        q = F.linear(hidden, self.q_proj.weight)
        k = F.linear(hidden, self.k_proj.weight)
        v = F.linear(hidden, self.v_proj.weight)
        # heads are contiguous in the projection outputs, so group g owns a contiguous block
        parts = [q, k, v] if self.pool_target == "qkv" else [k, v]
        sizes = [p.shape[-1] // groups for p in parts]
        features = torch.cat([p.view(batch, n, groups, -1) for p in parts], dim=-1).transpose(1, 2)  # (B, G, n, C)
        pooled, sigma = self._pool(hidden, features, keep, layer_cache)
        mixed = features + self.pool_mix.view(1, groups, 1, 1) * (pooled - features)
        mixed_parts = mixed.transpose(1, 2).split(sizes, dim=-1)  # each (B, n, G, c)
        mixed_parts = [p.reshape(batch, n, -1) for p in mixed_parts]
        if self.pool_target == "kv":
            mixed_parts = [q] + mixed_parts
        q, k, v = mixed_parts
        if self.q_proj.bias is not None:
            q, k, v = q + self.q_proj.bias, k + self.k_proj.bias, v + self.v_proj.bias
        return q, k, v, sigma

    def pool_residual(self, predictor_input, residual, keep, cache):
        """pool_placement="block_output": pool the residual stream entering the layer (the previous
        block's output) and mix it in, replacing the stream. The predictor reads `predictor_input`
        (the layer's normalised input). residual (B, n, d) -> (B, n, d), sigma (B, 1, n)."""
        layer_cache = cache.layer(self.layer_idx) if cache is not None else None
        pooled, sigma = self._pool(predictor_input, residual.unsqueeze(1), keep, layer_cache)
        return torch.lerp(residual, pooled.squeeze(1), self.pool_mix), sigma

    # -- forward ---------------------------------------------------------------------------

    def forward(
        self,
        hidden: torch.Tensor,
        attention_bias: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: ContextPoolCache | None = None,
        output_attentions: bool = False,
    ):
        batch, n, _ = hidden.shape
        layer_cache = cache.layer(self.layer_idx) if cache is not None else None
        q, k, v, sigma = self._pooled_projections(hidden, keep, layer_cache)
        q = q.view(batch, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, n, dh)
        k = k.view(batch, n, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, n, dh)
        v = v.view(batch, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)  # over head_dim, per head and token
        if position_embeddings is not None:
            cos, sin = position_embeddings
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        implementation = _attention_implementation(self.config, output_attentions)
        dropout = self.attention_dropout if self.training else 0.0
        if implementation in ATTENTION_FUNCTIONS:
            attention = ATTENTION_FUNCTIONS[implementation]
            output, weights = attention(
                self, q, k, v, attention_bias, self.scaling, dropout=dropout, is_causal=self.is_causal
            )
        else:  # transformers' interface: (module, q, k, v, mask, scaling=, dropout=, **kwargs)
            attention = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
            extra = {"sliding_window": self.config.attention_window} if _is_flash_like(implementation) else {}
            output, weights = attention(
                self, q, k, v, attention_bias, scaling=self.scaling, dropout=dropout, is_causal=self.is_causal, **extra
            )
        output = self.o_proj(output.reshape(batch, n, -1))
        return output, weights, sigma


class ContextPoolMLP(nn.Module):
    """GELU MLP (BERT/GPT-2: up -> act -> down) or gated MLP (Llama: act(gate) * up -> down)."""

    def __init__(self, config: ContextPoolConfig):
        super().__init__()
        self.gated = config.mlp_type == "gated"
        bias = config.mlp_bias
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias) if self.gated else None
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=bias)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.gated:
            return self.down_proj(self.act(self.gate_proj(hidden)) * self.up_proj(hidden))
        return self.down_proj(self.act(self.up_proj(hidden)))


def _dropout(module: nn.Dropout, hidden: torch.Tensor) -> torch.Tensor:
    """module(hidden), skipped when it is the identity (eval, p = 0): a decoding step at batch 1 is
    priced by its call count, and an inactive dropout is still a module call and a tensor op."""
    return module(hidden) if module.training and module.p > 0 else hidden


class ContextPoolLayer(GradientCheckpointingLayer):
    """One Transformer block; pre-norm (GPT-2/Llama) or post-norm (BERT) residuals."""

    def __init__(self, config: ContextPoolConfig, layer_idx: int):
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.attn_norm = _make_norm(config)
        self.attention = ContextPoolSelfAttention(config, layer_idx)
        self.mlp_norm = _make_norm(config)
        self.mlp = ContextPoolMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(
        self,
        hidden: torch.Tensor,
        attention_bias: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: ContextPoolCache | None = None,
        output_attentions: bool = False,
    ):
        residual_sigma = None
        if self.attention.pools_block_output:  # the paper's Fig. 2(c) placement (config.pool_placement)
            predictor_input = self.attn_norm(hidden) if self.pre_norm else hidden
            hidden, residual_sigma = self.attention.pool_residual(predictor_input, hidden, keep, cache)
        attn_input = self.attn_norm(hidden) if self.pre_norm else hidden
        attn_out, weights, sigma = self.attention(
            attn_input, attention_bias, keep, position_embeddings, cache, output_attentions
        )
        if residual_sigma is not None:
            sigma = residual_sigma
        if self.pre_norm:
            hidden = hidden + _dropout(self.dropout, attn_out)
            hidden = hidden + _dropout(self.dropout, self.mlp(self.mlp_norm(hidden)))
        else:
            hidden = self.attn_norm(hidden + _dropout(self.dropout, attn_out))
            hidden = self.mlp_norm(hidden + _dropout(self.dropout, self.mlp(hidden)))
        return hidden, weights, sigma


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


class ContextPoolPreTrainedModel(ContextPoolHubMixin, PreTrainedModel):
    config_class = ContextPoolConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ContextPoolLayer"]
    # The pooling runs in our own attention module before the product; the implementation name
    # only selects the product (ATTENTION_FUNCTIONS, else transformers' ALL_ATTENTION_FUNCTIONS),
    # so every backend keeps the pooling.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, ContextPoolRMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, ContextPoolSelfAttention) and module.pool is not None:
            init.constant_(module.pool_mix, float(self.config.pool_mix_init))
        elif isinstance(module, ContextPool) and module.sigma_logit is not None:
            init.constant_(module.sigma_logit, module.initial_sigma_logit)
        elif isinstance(module, ContextPoolMaskedLMHead):
            init.zeros_(module.bias)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # generate() must not hand us a plain DynamicCache: the model creates a ContextPoolCache,
        # which also carries the pooling state, and returns it in `outputs.cache`.
        return False

    def _model_outputs(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                       output_attentions, output_hidden_states, output_pooling_sizes):  # fmt: skip
        """The heads without a cache (all but the causal LM): `self.model` run uncached, as an output object."""
        return self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            output_pooling_sizes=output_pooling_sizes,
            return_dict=True,
        )


def _check_token_ids(input_ids: torch.Tensor, vocab_size: int, name: str = "input_ids") -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.is_floating_point() or input_ids.is_complex():
        got = input_ids.dtype if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"{name} must be an integer tensor of token ids in [0, {vocab_size}), got {got}")
    if _is_compiling() or input_ids.numel() == 0:
        return
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(f"{name} contains ids outside [0, {vocab_size}): min {low}, max {high}")


def _check_inputs_embeds(inputs_embeds, weight: torch.Tensor, name: str = "inputs_embeds") -> None:
    """A floating tensor in the model's dtype. transformers' Llama does not cast either: a float64
    embedding into a float32 model fails inside the first matmul, so say so here, at the entry."""
    if not isinstance(inputs_embeds, torch.Tensor) or not inputs_embeds.is_floating_point():
        got = inputs_embeds.dtype if isinstance(inputs_embeds, torch.Tensor) else type(inputs_embeds).__name__
        raise ValueError(f"{name} must be a floating-point tensor, got {got}")
    # also under autocast: the norms are not autocast and fail on float64 next to float32 weights
    if inputs_embeds.dtype != weight.dtype:
        raise ValueError(
            f"{name} has dtype {inputs_embeds.dtype} but the model's weights are {weight.dtype}: pass "
            f"{name}.to({weight.dtype}) (or convert the model with model.to({inputs_embeds.dtype}))"
        )


def _check_labels(name: str, labels, shape: tuple[int, ...], vocab_size: int) -> None:
    """(B, n) target ids in [0, vocab_size) or -100 (ignored); else a ValueError naming `name`."""
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex():
        got = labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"{name} must be an integer tensor of token ids (-100 = ignore), got {got}")
    if tuple(labels.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(labels.shape)}")
    if _is_compiling() or labels.numel() == 0:
        return
    bad = (labels != -100) & ((labels < 0) | (labels >= vocab_size))
    if bool(bad.any()):
        raise ValueError(f"{name} must be token ids in [0, {vocab_size}) or -100 (ignore), got {int(labels[bad][0])}")


def _attention_bias(keep, q_len, kv_len, causal, dtype, device, window=None):
    """Additive mask (B|1, 1, q, kv) or None when nothing is masked.

    keep: (B, kv) bool of real tokens, or None. Masked entries get the dtype's minimum rather
    than -inf, so fully masked rows (left padding) give uniform weights instead of NaN.
    window: causal sliding window (Mistral): query i sees keys j with i - window < j <= i.
    """
    allowed = None
    windowed = causal and window is not None and window < kv_len
    # causal with q_len == kv_len (no cache) or q_len == 1 needs no tensor: the attention
    # functions apply `is_causal` themselves; a chunk after a cache needs the offset mask.
    if windowed or (causal and 1 < q_len and (q_len != kv_len or keep is not None)):
        allowed = torch.ones(q_len, kv_len, dtype=torch.bool, device=device).tril(kv_len - q_len)
        if windowed:  # query i sits at position kv_len - q_len + i
            allowed = allowed & ~allowed.tril(kv_len - q_len - window)
        allowed = allowed[None, None]
    if keep is not None:
        pad = keep[:, None, None, :]  # (B, 1, 1, kv)
        allowed = pad if allowed is None else (allowed & pad)
    if allowed is None:
        return None
    bias = torch.zeros(allowed.shape, dtype=dtype, device=device)
    return bias.masked_fill(~allowed, torch.finfo(dtype).min)


def _attention_implementation(config, output_attentions: bool = False) -> str:
    """The product's backend name; only the eager product materialises the weights."""
    return "eager" if output_attentions else (config._attn_implementation or "eager")


def _backend_mask(implementation, keep, q_len, kv_len, causal, dtype, device, window=None, batch=1):
    """The attention mask in the format `implementation` takes (one exact mask, three layouts).

    eager/sdpa: `_attention_bias` (additive (B|1, 1, q, kv) or None for plain causal);
    flash-like: the 2-D (B, kv) padding mask or None (the kernel applies causality and the
    window from `module.is_causal` and `sliding_window`); any other backend (flex attention,
    hub kernels): the full additive (B, 1, q, kv) mask with causality and window included, since
    those take no `is_causal` of their own (flex adds it to the scores).
    """
    if implementation in ATTENTION_FUNCTIONS:
        return _attention_bias(keep, q_len, kv_len, causal, dtype, device, window=window)
    if _is_flash_like(implementation):
        return keep.to(torch.int32) if keep is not None else None
    allowed = torch.ones(q_len, kv_len, dtype=torch.bool, device=device)
    if causal:
        allowed = allowed.tril(kv_len - q_len)
        if window is not None and window < kv_len:  # query i sits at position kv_len - q_len + i
            allowed = allowed & ~allowed.tril(kv_len - q_len - window)
    allowed = allowed[None, None]
    if keep is not None:
        allowed = allowed & keep[:, None, None, :]
    # flex attention reads mask[batch_idx]: one row per sequence, not a broadcast one
    bias = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
    return bias.expand(batch, 1, q_len, kv_len)


@dataclass
class _PackedLayout:
    """Documents packed in one row (position_ids restart): where each token goes in a spread-out copy
    of the row in which consecutive documents lie `gap` zero-weight tokens apart, farther than the
    pooling window and the predictor's conv reach, so pooling one row equals pooling each document
    alone. Passed to the pooling in place of `keep`.

    segment (B, n): document index of each token; dest (B, n): its position in the spread copy;
    keep (B, n) or None: real tokens; length: the spread length.
    """

    segment: torch.Tensor
    dest: torch.Tensor
    keep: torch.Tensor | None
    length: int


def _packed_layout(position_ids, keep, past, model) -> _PackedLayout | None:
    """The layout when some row restarts its positions (a position not one past the previous), else None."""
    if past > 0 or _is_compiling() or position_ids.shape[1] < 2:
        return None
    restart = position_ids[:, 1:] != position_ids[:, :-1] + 1  # (B, n - 1)
    if keep is not None:  # padding's positions (generate gives left padding 1, 1, ..., then 0, 1, ...) are no restart
        restart = restart & keep[:, 1:] & keep[:, :-1]
    if not bool(restart.any()):
        return None
    segment = F.pad(restart.long().cumsum(1), (1, 0))  # (B, n)
    gap = max([1] + [layer.attention.packing_gap() for layer in model.layers])
    dest = torch.arange(position_ids.shape[1], device=position_ids.device) + gap * segment
    return _PackedLayout(segment, dest, keep, int(dest.max()) + 1)


def _packed_attention_bias(bias, packed, causal, dtype, implementation):
    """Add "same document only" to the mask (eager/sdpa/flex layouts; flash kernels need cu_seqlens)."""
    if _is_flash_like(implementation):
        raise ValueError(
            f"packed sequences (position_ids that restart) are not supported with attn_implementation="
            f"{implementation!r}; use 'sdpa', 'eager' or 'flex_attention'"
        )
    n = packed.segment.shape[1]
    same = packed.segment[:, None, :, None] == packed.segment[:, None, None, :]  # (B, 1, n, n)
    allowed = same & torch.ones(n, n, dtype=torch.bool, device=same.device).tril() if causal else same
    extra = torch.zeros(allowed.shape, dtype=dtype, device=same.device).masked_fill(~allowed, torch.finfo(dtype).min)
    if bias is None:
        return extra
    return torch.maximum(bias + extra, torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=same.device))


class ContextPoolModel(ContextPoolPreTrainedModel):
    """The bare ContextPool Transformer: embeddings, layers, optional final norm (and BERT pooler)."""

    def __init__(self, config: ContextPoolConfig, add_pooling_layer: bool | None = None):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.embed_positions = (
            nn.Embedding(config.max_position_embeddings, config.hidden_size)
            if config.position_embedding_type == "absolute"
            else None
        )
        self.embed_token_types = (
            nn.Embedding(config.type_vocab_size, config.hidden_size) if config.type_vocab_size > 0 else None
        )
        self.embed_norm = _make_norm(config) if config.embedding_norm else None
        self.embed_dropout = nn.Dropout(config.embedding_dropout)
        self.layers = nn.ModuleList(ContextPoolLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = _make_norm(config) if config.final_norm else None
        if add_pooling_layer is None:
            add_pooling_layer = config.use_pooler
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size) if add_pooling_layer else None
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def _position_ids(self, position_ids, batch, n, past, device):
        # Only learned absolute positions have a table to index; rotary positions are computed for any
        # index, and (as in transformers' rotary models) max_position_embeddings is advisory there.
        max_len = self.config.max_position_embeddings
        limited = self.config.position_embedding_type == "absolute"
        if position_ids is None:
            if limited and past + n > max_len:
                raise ValueError(
                    f"Sequence length {past + n} (input {n} + cached {past}) is longer than this model's "
                    f"max_position_embeddings ({max_len}); truncate the input (e.g. tokenizer(..., truncation=True, "
                    f"max_length={max_len}))"
                )
            return torch.arange(past, past + n, device=device).unsqueeze(0).expand(batch, n)
        if position_ids.shape[-1] != n:
            raise ValueError(f"position_ids must have length {n} (the input length), got shape {tuple(position_ids.shape)}")
        if limited and not _is_compiling() and position_ids.numel() and int(position_ids.max()) >= max_len:
            raise ValueError(
                f"position_ids reach {int(position_ids.max())}, beyond max_position_embeddings ({max_len})"
            )
        return position_ids.expand(batch, n) if position_ids.shape[0] == 1 else position_ids

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_pooling_sizes: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> ContextPoolModelOutputWithPooling | tuple:
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = config.return_dict if return_dict is None else return_dict
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds")
        if input_ids is not None:
            _check_token_ids(input_ids, config.vocab_size)
            if input_ids.dim() != 2:
                raise ValueError(f"input_ids must be (batch, sequence_length), got shape {tuple(input_ids.shape)}")
            batch, n = input_ids.shape
            inputs_embeds = self.embed_tokens(input_ids)
        else:
            _check_inputs_embeds(inputs_embeds, self.embed_tokens.weight)
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != config.hidden_size:
                raise ValueError(
                    f"inputs_embeds must be (batch, sequence_length, {config.hidden_size}), got {tuple(inputs_embeds.shape)}"
                )
            batch, n = inputs_embeds.shape[:2]
        if batch == 0 or n == 0:  # the attention reshapes (B, n, -1), undefined on 0 elements, as in Llama
            name = "input_ids" if input_ids is not None else "inputs_embeds"
            raise ValueError(f"{name} must hold at least one sequence of at least one token, got batch {batch}, length {n}")
        device = inputs_embeds.device

        cache = cache if cache is not None else past_key_values
        use_cache = (config.use_cache if use_cache is None else use_cache) and config.is_causal
        if not config.is_causal:
            cache = None  # a bidirectional encoder has nothing to continue
        if self.gradient_checkpointing and self.training and use_cache:
            use_cache = False
        if cache is not None and not isinstance(cache, ContextPoolCache):
            cache = ContextPoolCache.from_prefix(cache) if cache.get_seq_length() > 0 else None
        if use_cache and cache is None:
            cache = ContextPoolCache()
            if getattr(self, "_record_cache_past", False):  # an assistant model: its cache gets cropped
                cache.activate_past_recording()
        past = cache.get_seq_length() if cache is not None else 0

        keep_all = None
        if attention_mask is not None:
            # 0/1 only: .bool() would read an additive (0 / -inf) mask inverted and 0.5 or -1 as "keep"
            keep_all = _mask_as_weights(attention_mask, "attention_mask")
            if attention_mask.dim() != 2 or tuple(attention_mask.shape) != (batch, past + n):
                raise ValueError(
                    f"attention_mask must be (batch, past + sequence_length) = {(batch, past + n)}, "
                    f"got {tuple(attention_mask.shape)}"
                )
        keep_new = keep_all[:, past:] if keep_all is not None else None
        # Nothing to mask: let SDPA use its causal kernel and the pooling skip the mask.
        if keep_all is not None and not _is_compiling() and bool(keep_all.all()):
            keep_all = keep_new = None

        position_ids_given = position_ids is not None
        position_ids = self._position_ids(position_ids, batch, n, past, device)
        hidden = inputs_embeds
        if self.embed_positions is not None:
            hidden = hidden + self.embed_positions(position_ids)
        if self.embed_token_types is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros(batch, n, dtype=torch.long, device=device)
            _check_token_ids(token_type_ids, config.type_vocab_size, "token_type_ids")
            hidden = hidden + self.embed_token_types(token_type_ids)
        if self.embed_norm is not None:
            hidden = self.embed_norm(hidden)
        hidden = _dropout(self.embed_dropout, hidden)

        position_embeddings = None
        if config.position_embedding_type == "rotary":
            position_embeddings = rotary_cos_sin(
                position_ids, config.head_dim, config.rope_theta, hidden.dtype, config=config
            )
        attention_bias = _backend_mask(
            _attention_implementation(config, output_attentions), keep_all, n, past + n, config.is_causal,
            hidden.dtype, device, window=config.attention_window, batch=batch,
        )  # fmt: skip
        packed = _packed_layout(position_ids, keep_new, past, self) if position_ids_given else None
        if packed is not None:  # several documents per row (DataCollatorWithFlattening)
            attention_bias = _packed_attention_bias(attention_bias, packed, config.is_causal, hidden.dtype,
                                                    _attention_implementation(config, output_attentions))  # fmt: skip
            keep_new = packed

        all_hidden = (hidden,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        all_sigma = ()
        for layer in self.layers:
            hidden, weights, sigma = layer(
                hidden, attention_bias, keep_new, position_embeddings, cache=cache, output_attentions=output_attentions
            )
            all_sigma += (sigma,)
            if output_attentions:
                all_attentions += (weights,)
            if output_hidden_states:
                all_hidden += (hidden,)
        if self.norm is not None:
            hidden = self.norm(hidden)
            if output_hidden_states:
                all_hidden = all_hidden[:-1] + (hidden,)
        pooled = torch.tanh(self.pooler(hidden[:, 0])) if self.pooler is not None else None
        output = ContextPoolModelOutputWithPooling(
            last_hidden_state=hidden,
            cache=cache if use_cache else None,
            hidden_states=all_hidden,
            attentions=all_attentions,
            pooling_sizes=all_sigma if output_pooling_sizes else None,
            pooler_output=pooled,
        )
        return output if return_dict else output.to_tuple()


def _lm_loss(logits, labels, vocab_size, num_items_in_batch=None, shift=False):
    """Cross-entropy over positions with label != -100, optionally predicting the next token."""
    if shift:
        # shift the labels, not the logits: slicing (B, n, vocab) logits would copy them, and
        # copy their gradient back, on every step; the last position gets the ignore index
        labels = F.pad(labels[:, 1:], (0, 1), value=-100)
    logits = logits.reshape(-1, vocab_size)
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    labels = labels.reshape(-1).to(logits.device)
    if num_items_in_batch is None:
        return F.cross_entropy(logits, labels, ignore_index=-100)
    loss = F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
    if isinstance(num_items_in_batch, torch.Tensor):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch


class ContextPoolForCausalLM(ContextPoolPreTrainedModel, GenerationMixin):
    """Decoder-only language model (GPT-2/Llama shape) with causal ContextPool and a cache that
    holds keys/values and each layer's pooling state."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: ContextPoolConfig):
        if not config.is_causal:
            logger.warning("ContextPoolForCausalLM needs causal attention: setting config.is_causal=True")
            config.is_causal = True
        super().__init__(config)
        self.model = ContextPoolModel(config, add_pooling_layer=False)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def _assisted_decoding(self, *args, **kwargs):
        """Assisted / prompt-lookup decoding: transformers needs a cache before the first forward
        (the model otherwise creates its own) and crops it after each verification; an assistant that
        is a ContextPool model records its pooling states too, since its cache is cropped as well."""
        if kwargs.get("cache") is None:
            kwargs["cache"] = ContextPoolCache()
        assistant = kwargs.get("assistant_model")
        inner = getattr(assistant, "model", None)
        if isinstance(inner, ContextPoolModel):
            inner._record_cache_past = True
        try:
            return super()._assisted_decoding(*args, **kwargs)
        finally:
            if isinstance(inner, ContextPoolModel):
                inner._record_cache_past = False

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        inputs_embeds=None,
        cache=None,
        labels=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        output_pooling_sizes=None,
        return_dict=None,
        logits_to_keep: int | torch.Tensor = 0,
        token_type_ids=None,
        past_key_values=None,
        num_items_in_batch=None,
        **kwargs,
    ) -> ContextPoolCausalLMOutput | tuple:
        """labels (B, n): next-token targets aligned with input_ids (shifted inside), -100 = ignore.

        shift_labels (B, n): targets already shifted (position t predicts shift_labels[:, t]), as
        transformers' ForCausalLMLoss takes them (context-parallel training shards the sequence, so
        the shift must happen before the split). When given, they are the targets and `labels` is
        not used; unlike transformers (which then needs `labels` too, or returns no loss) they alone
        give the loss.
        """
        # shift_labels travels in **kwargs, as in transformers' Llama: a named `*label*` argument
        # would make Trainer guess label_names=["labels", "shift_labels"] and report no eval_loss.
        shift_labels = kwargs.pop("shift_labels", None)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            cache=cache if cache is not None else past_key_values,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            output_pooling_sizes=output_pooling_sizes,
            return_dict=True,
        )
        hidden = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])
        loss = None
        vocab_size = self.config.vocab_size
        if labels is not None:  # checked even when shift_labels replace them: a bad one is a bug upstream
            _check_labels("labels", labels, tuple(logits.shape[:2]), vocab_size)
        if shift_labels is not None:
            _check_labels("shift_labels", shift_labels, tuple(logits.shape[:2]), vocab_size)
            loss = _lm_loss(logits, shift_labels, vocab_size, num_items_in_batch)
        elif labels is not None:
            loss = _lm_loss(logits, labels, vocab_size, num_items_in_batch, shift=True)
        output = ContextPoolCausalLMOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            pooling_sizes=outputs.pooling_sizes,
        )
        return output if return_dict else output.to_tuple()


class ContextPoolMaskedLMHead(nn.Module):
    """BERT-style MLM head: (dense -> act -> norm) -> decoder tied to the input embeddings, + bias."""

    def __init__(self, config: ContextPoolConfig):
        super().__init__()
        if config.mlm_head_transform:
            self.dense = nn.Linear(config.hidden_size, config.hidden_size)
            self.act = ACT2FN[config.hidden_act]
            self.norm = _make_norm(config)
        else:
            self.dense = None
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.dense is not None:
            hidden = self.norm(self.act(self.dense(hidden)))
        return self.decoder(hidden) + self.bias


class ContextPoolForMaskedLM(ContextPoolPreTrainedModel):
    _tied_weights_keys = {"cls.decoder.weight": "model.embed_tokens.weight"}

    def __init__(self, config: ContextPoolConfig):
        if config.is_causal:
            logger.warning("ContextPoolForMaskedLM needs bidirectional attention: set config.is_causal=False")
        super().__init__(config)
        self.model = ContextPoolModel(config, add_pooling_layer=False)
        self.cls = ContextPoolMaskedLMHead(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.decoder

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing=True):
        """Also resize the MLM head's output bias (a separate parameter, unknown to the base method)."""
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        old_bias, new_size = self.cls.bias, embeddings.weight.shape[0]
        if old_bias.shape[0] != new_size:
            bias = old_bias.new_zeros(new_size)
            keep = min(new_size, old_bias.shape[0])
            with torch.no_grad():
                bias[:keep] = old_bias[:keep]
            self.cls.bias = nn.Parameter(bias, requires_grad=old_bias.requires_grad)
        return embeddings

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.cls.decoder = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        output_pooling_sizes=None,
        return_dict=None,
        num_items_in_batch=None,
        **kwargs,
    ) -> ContextPoolMaskedLMOutput | tuple:
        """labels (B, n): original ids at masked positions, -100 elsewhere."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self._model_outputs(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
            output_attentions, output_hidden_states, output_pooling_sizes,
        )  # fmt: skip
        logits = self.cls(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            _check_labels("labels", labels, tuple(logits.shape[:2]), self.config.vocab_size)
            loss = _lm_loss(logits, labels, self.config.vocab_size, num_items_in_batch)
        output = ContextPoolMaskedLMOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            pooling_sizes=outputs.pooling_sizes,
        )
        return output if return_dict else output.to_tuple()


def _sequence_representation(config, hidden, attention_mask, input_ids):
    """(B, n, d) -> (B, d) by config.classifier_pooling."""
    if config.classifier_pooling == "cls":
        return hidden[:, 0]
    if config.classifier_pooling == "mean":
        if attention_mask is None:
            return hidden.mean(1)
        keep = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * keep).sum(1) / keep.sum(1).clamp_min(1.0)
    # "last": the last real token (right padding), as GPT-2/Llama classifiers do
    if attention_mask is not None:
        # index of the last 1 in each row, also correct for left padding
        positions = torch.arange(attention_mask.shape[1], device=hidden.device)
        last = (attention_mask.to(torch.long) * positions).argmax(-1)
    elif input_ids is not None and config.pad_token_id is not None:
        is_real = (input_ids != config.pad_token_id).to(torch.long)
        positions = torch.arange(input_ids.shape[1], device=hidden.device)
        last = (is_real * positions).argmax(-1)
    else:
        last = torch.full((hidden.shape[0],), hidden.shape[1] - 1, device=hidden.device)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class ContextPoolForSequenceClassification(ContextPoolPreTrainedModel):
    # the loss is a per-example mean that ignores Trainer's num_items_in_batch
    accepts_loss_kwargs = False

    def __init__(self, config: ContextPoolConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = ContextPoolModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        output_pooling_sizes=None,
        return_dict=None,
        **kwargs,
    ) -> ContextPoolSequenceClassifierOutput | tuple:
        """labels (B,): class ids (cross-entropy), floats for regression, or (B, num_labels) multi-label."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self._model_outputs(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
            output_attentions, output_hidden_states, output_pooling_sizes,
        )  # fmt: skip
        if outputs.pooler_output is not None:
            features = outputs.pooler_output
        else:
            features = _sequence_representation(self.config, outputs.last_hidden_state, attention_mask, input_ids)
        logits = self.classifier(self.dropout(features))
        loss = _classification_loss(self.config, logits, labels, float32=True) if labels is not None else None
        output = ContextPoolSequenceClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            pooling_sizes=outputs.pooling_sizes,
        )
        return output if return_dict else output.to_tuple()


class ContextPoolForTokenClassification(ContextPoolPreTrainedModel):
    # the loss is a per-example mean that ignores Trainer's num_items_in_batch
    accepts_loss_kwargs = False

    def __init__(self, config: ContextPoolConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = ContextPoolModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        output_pooling_sizes=None,
        return_dict=None,
        **kwargs,
    ) -> ContextPoolTokenClassifierOutput | tuple:
        """labels (B, n): a class per token, -100 = ignore."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self._model_outputs(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
            output_attentions, output_hidden_states, output_pooling_sizes,
        )  # fmt: skip
        logits = self.classifier(self.dropout(outputs.last_hidden_state))
        loss = None
        if labels is not None:
            _check_labels("labels", labels, tuple(logits.shape[:2]), self.num_labels)  # class ids per token
            loss = F.cross_entropy(logits.reshape(-1, self.num_labels).float(), labels.reshape(-1), ignore_index=-100)
        output = ContextPoolTokenClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            pooling_sizes=outputs.pooling_sizes,
        )
        return output if return_dict else output.to_tuple()


class ContextPoolForQuestionAnswering(ContextPoolPreTrainedModel):
    # the loss is a per-example mean that ignores Trainer's num_items_in_batch
    accepts_loss_kwargs = False

    def __init__(self, config: ContextPoolConfig):
        super().__init__(config)
        self.model = ContextPoolModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        start_positions=None,
        end_positions=None,
        output_attentions=None,
        output_hidden_states=None,
        output_pooling_sizes=None,
        return_dict=None,
        **kwargs,
    ) -> ContextPoolQuestionAnsweringOutput | tuple:
        """start_positions/end_positions (B,): answer span; positions outside the input are ignored."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self._model_outputs(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
            output_attentions, output_hidden_states, output_pooling_sizes,
        )  # fmt: skip
        logits = self.qa_outputs(outputs.last_hidden_state)  # (B, n, 2)
        start_logits, end_logits = (t.squeeze(-1).contiguous() for t in logits.split(1, dim=-1))
        loss = None
        if start_positions is not None and end_positions is not None:
            n = start_logits.shape[1]
            start = start_positions.reshape(-1).clamp(0, n)
            end = end_positions.reshape(-1).clamp(0, n)
            loss = (
                F.cross_entropy(start_logits.float(), start, ignore_index=n)
                + F.cross_entropy(end_logits.float(), end, ignore_index=n)
            ) / 2
        output = ContextPoolQuestionAnsweringOutput(
            loss=loss,
            start_logits=start_logits,
            end_logits=end_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            pooling_sizes=outputs.pooling_sizes,
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "ContextPoolCache",
    "ContextPoolPreTrainedModel",
    "ContextPoolModel",
    "ContextPoolForCausalLM",
    "ContextPoolForMaskedLM",
    "ContextPoolForSequenceClassification",
    "ContextPoolForTokenClassification",
    "ContextPoolForQuestionAnswering",
]
