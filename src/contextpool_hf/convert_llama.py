"""Llama-shaped sources -> ContextPool decoders: Llama (plain or with Llama 3 / linear / YaRN rope
scaling), Mistral (sliding window), Qwen2 (q/k/v biases, no output bias) and Qwen3 (per-head q/k
RMSNorm).

All four are pre-norm RMSNorm decoders with rotary positions, grouped-query attention and a gated
MLP, and share one key map; what differs is carried by ContextPoolConfig fields
(`rope_scaling_params`, `attention_window`, `attention_output_bias`, `qk_norm`). A source option
with no exact counterpart (partial rotary, a per-layer mix of sliding and full attention, a rope
type whose frequencies change with the sequence length) is an UnsupportedArchitectureError.
"""

from __future__ import annotations

from .configuration_contextpool import ROPE_SCALING_TYPES, ContextPoolConfig
from .convert_keymap import (
    SourceFamily,
    UnsupportedArchitectureError,
    _Entry,
    decoder_head_entries,
    hidden_act,
    layer_entries,
)

_NAMES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}


def _rope_fields(cfg, name: str) -> dict:
    rope = dict(getattr(cfg, "rope_parameters", None) or {})
    rope_type = rope.pop("rope_type", rope.pop("type", "default"))
    if rope.pop("partial_rotary_factor", 1.0) != 1.0:
        raise UnsupportedArchitectureError(f"{name} partial_rotary_factor != 1.0 is not supported")
    rope_theta = rope.pop("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    if rope_type == "default":
        return {"rope_theta": float(rope_theta)}
    if rope_type not in ROPE_SCALING_TYPES:
        raise UnsupportedArchitectureError(
            f"{name} rope_parameters with rope_type={rope_type!r} are not supported: converted rope types are "
            f"'default', {', '.join(repr(t) for t in ROPE_SCALING_TYPES)}"
        )
    return {"rope_theta": float(rope_theta), "rope_scaling_params": {"rope_type": rope_type, **rope}}


def _attention_window(cfg, name: str) -> int | None:
    """Mistral's sliding window applies to every layer; Qwen's only to the layers `layer_types` marks."""
    window = getattr(cfg, "sliding_window", None)
    if window is None:
        return None
    layer_types = getattr(cfg, "layer_types", None)
    if layer_types is None:  # Mistral: one window for every layer
        return int(window)
    kinds = set(layer_types)
    if kinds == {"full_attention"}:
        return None
    if kinds == {"sliding_attention"}:
        return int(window)
    raise UnsupportedArchitectureError(
        f"{name} with sliding-window attention on some layers only (layer_types={list(layer_types)}) is not "
        "supported: ContextPool uses one attention window for every layer"
    )


def llama_like_config_fields(cfg) -> dict:
    model_type = cfg.model_type
    name = _NAMES[model_type]
    heads = cfg.num_attention_heads
    if model_type == "qwen2":  # q/k/v have biases, the output projection has none
        attention_bias, output_bias = True, False
    else:
        attention_bias = bool(getattr(cfg, "attention_bias", False))
        output_bias = None
    return dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=heads,
        num_key_value_heads=cfg.num_key_value_heads if cfg.num_key_value_heads is not None else heads,
        head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
        intermediate_size=cfg.intermediate_size,
        mlp_type="gated",
        hidden_act=hidden_act(cfg, "hidden_act"),
        max_position_embeddings=cfg.max_position_embeddings,
        position_embedding_type="rotary",
        **_rope_fields(cfg, name),
        type_vocab_size=0,
        norm_type="rmsnorm",
        norm_eps=cfg.rms_norm_eps,
        norm_position="pre",
        embedding_norm=False,
        final_norm=True,
        attention_bias=attention_bias,
        attention_output_bias=output_bias,
        qk_norm=model_type == "qwen3",
        attention_window=_attention_window(cfg, name),
        mlp_bias=bool(getattr(cfg, "mlp_bias", False)),
        is_causal=True,
        hidden_dropout=0.0,
        attention_dropout=float(cfg.attention_dropout),
        embedding_dropout=0.0,
        classifier_dropout=0.0,
        initializer_range=cfg.initializer_range,
        mlm_head_transform=False,
        classifier_pooling="last",
        use_pooler=False,
    )


def llama_like_body(config: ContextPoolConfig) -> list[_Entry]:
    entries = [_Entry("embed_tokens.weight", "embed_tokens.weight")]
    attn_bias, mlp_bias = config.attention_bias, config.mlp_bias
    output_bias = attn_bias if config.attention_output_bias is None else config.attention_output_bias
    pairs = [
        ("attention.q_proj", "self_attn.q_proj", attn_bias),
        ("attention.k_proj", "self_attn.k_proj", attn_bias),
        ("attention.v_proj", "self_attn.v_proj", attn_bias),
        ("attention.o_proj", "self_attn.o_proj", output_bias),
        ("mlp.gate_proj", "mlp.gate_proj", mlp_bias),
        ("mlp.up_proj", "mlp.up_proj", mlp_bias),
        ("mlp.down_proj", "mlp.down_proj", mlp_bias),
        ("attn_norm", "input_layernorm", False),
        ("mlp_norm", "post_attention_layernorm", False),
    ]
    if config.qk_norm:
        pairs += [("attention.q_norm", "self_attn.q_norm", False), ("attention.k_norm", "self_attn.k_norm", False)]
    for i in range(config.num_hidden_layers):
        entries += layer_entries(f"layers.{i}", f"layers.{i}", pairs)
    entries.append(_Entry("norm.weight", "norm.weight"))
    return entries


def _family(model_type: str) -> SourceFamily:
    prefix = _NAMES[model_type]
    return SourceFamily(
        model_type=model_type,
        config_fields=llama_like_config_fields,
        body_entries=llama_like_body,
        head_entries=decoder_head_entries,
        architectures={
            f"{prefix}Model": "base",
            f"{prefix}ForCausalLM": "causal-lm",
            f"{prefix}ForSequenceClassification": "sequence-classification",
        },
    )


LLAMA, MISTRAL, QWEN2, QWEN3 = (_family(t) for t in ("llama", "mistral", "qwen2", "qwen3"))
