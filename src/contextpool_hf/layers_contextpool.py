"""Building blocks of the ContextPool text models: norms, rotary positions, the pooled
self-attention, the MLP and the Transformer layer.

Flat, Hub-shipped file: imports only torch, transformers and its flat siblings (relatively), so
`save_pretrained` copies it with the modeling files that import it (text and seq2seq). Split out
of modeling_contextpool.py, which re-exports these names. `ContextPoolSelfAttention` is where the
pooling happens: it pools (pooling_contextpool.ContextPool) before the projections, then calls
the attention product chosen by `attn_implementation` (attention_contextpool.py).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .attention_contextpool import (
    ATTENTION_FUNCTIONS,
    _attention_implementation,
    _is_flash_like,
    eager_attention_forward,
)
from .cache_contextpool import ContextPoolCache, ContextPoolStaticLayer, cache_layer
from .checks_contextpool import _kept_tensors, _plain_tensors_only
from .configuration_contextpool import ContextPoolConfig, rope_stand_in
from .decoding_contextpool import CausalPoolDecoding
from .inputs_contextpool import _PackedLayout
from .modeling_utils_contextpool import (
    _add_bias,
    _is_compiling,
    _linear_without_bias,
    _mix_pooled,
    _mixed_projection,
    _parameter_value,
    _pool_from_config,
)


class ContextPoolRMSNorm(nn.Module):
    """RMSNorm computed in float32 (as Llama does), so converted checkpoints match exactly."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.dtype == self.weight.dtype == torch.float32:
            # the same six operations in the same order (bitwise equal: there are no casts to make) from one
            # Python call instead of six: a decoding step at batch 1 pays per call
            return F.rms_norm(hidden, self.weight.shape, self.weight, self.eps)
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
        inv_freq, attention_factor = _plain_inv_freq(head_dim, theta, position_ids.device), 1.0
    freqs = position_ids.float().unsqueeze(-1) * inv_freq  # (B, n, head_dim / 2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (B, n, head_dim)
    if attention_factor != 1.0:
        return (emb.cos() * attention_factor).to(dtype), (emb.sin() * attention_factor).to(dtype)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _plain_inv_freq(head_dim: int, theta: float, device: torch.device) -> torch.Tensor:
    """theta^(-2i / head_dim) (head_dim / 2,), memoised per device: a decoding step would otherwise spend
    five small calls on it in every forward. Under torch.compile it is computed (and folded) in the graph."""
    key, compiling = (head_dim, float(theta), device), _is_compiling()
    if not compiling and key in _PLAIN_ROPE_CACHE:
        return _PLAIN_ROPE_CACHE[key]

    def build():
        exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
        return 1.0 / (theta**exponent)

    inv_freq = _kept_tensors(build)  # kept: made outside inference_mode
    if not compiling and _plain_tensors_only(inv_freq):  # one made under a FakeTensorMode is valid only there
        _PLAIN_ROPE_CACHE[key] = inv_freq
    return inv_freq


_PLAIN_ROPE_CACHE: dict[tuple, torch.Tensor] = {}


def _scaled_inv_freq(config) -> tuple[torch.Tensor, float]:
    """(inv_freq (head_dim / 2,), cos/sin factor) of a scaled rotary type, memoised per parameters."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    key = (float(config.rope_theta), config.head_dim, config.max_position_embeddings,
           tuple(sorted((k, str(v)) for k, v in config.rope_scaling_params.items())))  # fmt: skip
    if key not in _SCALED_ROPE_CACHE:
        stand_in = rope_stand_in(config)

        def build():
            inv_freq, factor = ROPE_INIT_FUNCTIONS[stand_in.rope_parameters["rope_type"]](stand_in, "cpu")
            return inv_freq.float(), float(factor)

        inv_freq, factor = _kept_tensors(build)  # kept: made outside inference_mode
        if not _plain_tensors_only(inv_freq):  # made under a FakeTensorMode: valid only there
            return inv_freq, factor
        _SCALED_ROPE_CACHE[key] = (inv_freq, factor)
    return _SCALED_ROPE_CACHE[key]


_SCALED_ROPE_CACHE: dict[tuple, tuple[torch.Tensor, float]] = {}


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Llama's rotation, the reference the layers' `_rotate` equals bit for bit. x: (B, heads, n, head_dim);
    cos/sin: (B, n, head_dim)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + _rotate_half(x) * sin


class RotaryTables(NamedTuple):
    """cos and sin as the attention layers read them, built once per forward by `rotary_tables`:
    cos (B, 1, n, head_dim), and sin (B, 1, n, head_dim) with its first half negated."""

    cos: torch.Tensor
    signed_sin: torch.Tensor


def rotary_tables(cos: torch.Tensor, sin: torch.Tensor) -> RotaryTables:
    """`RotaryTables` from rotary_cos_sin's (B, n, head_dim) cos and sin."""
    half = sin.shape[-1] // 2
    signed_sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
    return RotaryTables(cos.unsqueeze(1), signed_sin.unsqueeze(1))


def _rotate(x: torch.Tensor, tables: RotaryTables) -> torch.Tensor:
    """`apply_rotary` bit for bit, in 4 calls instead of 9: roll(x, head_dim / 2) is cat(x2, x1), and
    x2 * -sin1 equals -x2 * sin1 exactly, so the rotated half's sign moves into the table (built once per
    forward rather than once per layer and tensor). x: (B, heads, n, head_dim)."""
    return x * tables.cos + x.roll(x.shape[-1] // 2, dims=-1) * tables.signed_sin


class ContextPoolSelfAttention(CausalPoolDecoding, nn.Module):
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
        if isinstance(layer_cache, ContextPoolStaticLayer):
            return self._pool_static(hidden, features, keep, layer_cache)
        if layer_cache.pending_replay is not None:  # after a crop: bring the pooling state to the new length
            (_, _, _, _, _, old_hidden, old_features, old_keep), replay = layer_cache.pending_replay
            layer_cache.pending_replay, recording = None, layer_cache.record_past
            layer_cache.record_past = False
            self._pool(old_hidden[:, :replay], old_features[:, :, :replay],
                       old_keep[:, :replay] if old_keep is not None else None, layer_cache)  # fmt: skip
            layer_cache.record_past = recording
        if layer_cache.record_past:
            layer_cache.record(hidden, features, keep)
        if hidden.shape[1] == 1 and layer_cache.conv_state is not None:  # a decoding step (a conv state means a predictor)
            return self._decode_step(hidden, features, keep, layer_cache)
        self._check_pool_state(layer_cache, features)
        weights, sigma, conv_state = self.pool.predict(hidden, keep, layer_cache.conv_state)
        history = layer_cache.pool_history() if layer_cache.pool_features is not None else None
        pooled, last_features, last_weights = self._pool_chunk(features, weights, sigma, history)
        # Not detached, like the keys and values: decoding with autograd on gets exact gradients.
        layer_cache.pool_features, layer_cache.pool_weights = last_features, last_weights
        layer_cache.pool_next = 0
        layer_cache.conv_state = conv_state
        return pooled, sigma

    def _pool_chunk(self, features, weights, sigma, history):
        """Pool n new tokens after the last R + 1 inputs `history` (features (B, G, R + 1, C), weights
        (B, G, R + 1), oldest first; None before the first chunk). -> pooled (B, G, n, C) and the new
        last R + 1 inputs and weights (the next chunk's history, zero-weight where none yet)."""
        # The pooled output of token i only reads tokens i-R..i, so prepending the history equals
        # pooling the whole sequence. History positions are outputs we throw away; any valid width
        # will do there.
        window = self.pool.radius + 1
        batch, groups, n, channels = features.shape
        if history is None:
            # The first chunk (a prompt, or a training step with use_cache): nothing precedes it, so
            # it pools alone; a zero-weight history would add nothing to the sums, only R + 1 tokens'
            # work. The history still gets R + 1 slots, the missing past with weight 0.
            pooled = self.pool.pool(features, weights, sigma)
            all_features, all_weights = features, weights
            if n < window:
                all_features = F.pad(features, (0, 0, window - n, 0))  # (B, G, R + 1, C)
                all_weights = F.pad(weights, (window - n, 0))  # (B, G, R + 1)
        else:
            history_features, history_weights = history
            all_features = torch.cat([history_features.to(features.dtype), features], dim=2)  # (B, G, R + 1 + n, C)
            all_weights = torch.cat([history_weights.to(weights.dtype), weights], dim=2)  # (B, G, R + 1 + n)
            all_sigma = torch.cat([sigma.new_full((batch, groups, window), self.pool.sigma_max), sigma], dim=2)
            pooled = self.pool.pool(all_features, all_weights, all_sigma)[:, :, window:]
        return pooled, all_features[:, :, -window:], all_weights[:, :, -window:]

    def _pool_static(self, hidden, features, keep, layer_cache):
        """`_pool` on a fixed-size cache layer (ContextPoolStaticLayer): the same pooling, with the state
        written in place so that compiled decoding steps see one address and shape throughout."""
        started = layer_cache.pool_started
        if started and hidden.shape[1] == 1 and self.pool.predictor is not None:
            return self._decode_step_static(hidden, features, keep, layer_cache)
        if started:
            self._check_pool_state(layer_cache, features)
        weights, sigma, conv_state = self.pool.predict(hidden, keep, layer_cache.conv_state if started else None)
        pooled, last_features, last_weights = self._pool_chunk(
            features, weights, sigma, layer_cache.pool_history() if started else None
        )
        layer_cache.write_pool_state(last_features, last_weights, conv_state, hidden.shape[1])
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

    def _pooled_projections(self, hidden, keep, layer_cache):
        """-> q (B, n, H*dh) or (B, 1, n, H*dh), k, v (B, n, Hkv*dh) or (B, 1, n, Hkv*dh), sigma (B, G, n) or None
        (the caller views them per head)."""
        if self.pool is None or self.pools_block_output:
            return self.q_proj(hidden), self.k_proj(hidden), self.v_proj(hidden), None
        if self.groups == 1:
            features = hidden.unsqueeze(1)  # (B, 1, n, d)
            pooled, sigma = self._pool(hidden, features, keep, layer_cache)
            if torch.is_grad_enabled():  # training: the pooled projections as one function, no copy of the mix kept
                projected = self._mixed_projections(hidden, features, pooled, sigma)
                if projected is not None:
                    return projected
            # hidden + mix * (pooled - hidden), kept (B, 1, n, d): the projections take any leading dims, and a
            # decoding step at batch 1 pays for a squeeze call
            mixed = _mix_pooled(features, pooled, self.pool_mix)
            query_source = mixed if self.pool_target == "qkv" else hidden
            return self.q_proj(query_source), self.k_proj(mixed), self.v_proj(mixed), sigma
        batch, n, _ = hidden.shape
        groups = self.groups
        (q, q_bias), (k, k_bias), (v, v_bias) = (_linear_without_bias(proj, hidden)
                                                 for proj in (self.q_proj, self.k_proj, self.v_proj))  # fmt: skip
        # heads are contiguous in the projection outputs, so group g owns a contiguous block
        parts = [q, k, v] if self.pool_target == "qkv" else [k, v]
        sizes = [p.shape[-1] // groups for p in parts]
        # written group-major by the cat itself: the pooling then reads (and saves) this very tensor, which the mix
        # saves too, where a (B, n, G, C) cat's transposed view would be copied into a second saved tensor
        features = torch.cat([p.view(batch, n, groups, -1).transpose(1, 2) for p in parts], dim=-1)  # (B, G, n, C)
        pooled, sigma = self._pool(hidden, features, keep, layer_cache)
        mixed = _mix_pooled(features, pooled, self.pool_mix.view(1, groups, 1, 1))
        mixed_parts = mixed.transpose(1, 2).split(sizes, dim=-1)  # each (B, n, G, c)
        mixed_parts = [p.reshape(batch, n, -1) for p in mixed_parts]
        if self.pool_target == "kv":
            mixed_parts = [q] + mixed_parts
        q, k, v = mixed_parts
        return _add_bias(q, q_bias), _add_bias(k, k_bias), _add_bias(v, v_bias), sigma

    def _mixed_projections(self, hidden, features, pooled, sigma):
        """(q, k, v, sigma) from `_mixed_projection` (features, pooled (B, 1, n, d)), or None where it does not
        apply; q is projected from hidden when only k and v are pooled."""
        qkv = self.pool_target == "qkv"
        layers = (self.q_proj, self.k_proj, self.v_proj) if qkv else (self.k_proj, self.v_proj)
        projected = _mixed_projection(None, features, pooled, self.pool_mix, layers)  # (B, 1, n, sum of widths)
        if projected is None:
            return None
        parts = projected.split([layer.out_features for layer in layers], dim=-1)
        return (*parts, sigma) if qkv else (self.q_proj(hidden), *parts, sigma)

    def pool_residual(self, predictor_input, residual, keep, cache):
        """pool_placement="block_output": pool the residual stream entering the layer (the previous
        block's output) and mix it in, replacing the stream. The predictor reads `predictor_input`
        (the layer's normalised input). residual (B, n, d) -> (B, n, d), sigma (B, 1, n)."""
        layer_cache = cache_layer(cache, self.layer_idx) if cache is not None else None
        pooled, sigma = self._pool(predictor_input, residual.unsqueeze(1), keep, layer_cache)
        # read outside this module's forward: through `_parameter_value`, where an offloaded one waits on meta
        return _mix_pooled(residual, pooled.squeeze(1), _parameter_value(self, "pool_mix")), sigma

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
        layer_cache = cache_layer(cache, self.layer_idx) if cache is not None else None
        q, k, v, sigma = self._pooled_projections(hidden, keep, layer_cache)
        q = q.view(batch, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, n, dh)
        k = k.view(batch, n, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, n, dh)
        v = v.view(batch, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)  # over head_dim, per head and token
        if position_embeddings is not None:
            if not isinstance(position_embeddings, RotaryTables):  # (cos, sin) as rotary_cos_sin returns them
                position_embeddings = rotary_tables(*position_embeddings)
            q, k = _rotate(q, position_embeddings), _rotate(k, position_embeddings)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
            if attention_bias is None and n > 1 and isinstance(layer_cache, ContextPoolStaticLayer):
                k, v = k[:, :, :n], v[:, :, :n]  # a prompt on an empty static cache (`_plain_causal_prefill`)
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
