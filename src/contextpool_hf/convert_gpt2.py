"""GPT-2 sources (GPT2Model, GPT2LMHeadModel, GPT2ForSequenceClassification) -> ContextPool decoders.

GPT-2 stores its projections as `Conv1D` (in, out) matrices and fuses q/k/v into one `c_attn`;
the key map transposes and splits them.
"""

from __future__ import annotations

from .configuration_contextpool import ContextPoolConfig
from .convert_keymap import (
    SourceFamily,
    UnsupportedArchitectureError,
    _Entry,
    decoder_head_entries,
    hidden_act,
    layer_entries,
)


def gpt2_config_fields(cfg) -> dict:
    for option, why in (
        ("scale_attn_by_inverse_layer_idx", "scales attention scores by 1/(layer+1)"),
        ("reorder_and_upcast_attn", "reorders the attention product in float32 (exact only in float32)"),
        ("add_cross_attention", "adds cross-attention layers"),
    ):
        if getattr(cfg, option, False):
            raise UnsupportedArchitectureError(f"GPT-2 {option}=True is not supported: it {why}")
    if not getattr(cfg, "scale_attn_weights", True):
        raise UnsupportedArchitectureError("GPT-2 scale_attn_weights=False (unscaled attention) is not supported")
    return dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.n_embd,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_head,
        head_dim=cfg.n_embd // cfg.n_head,
        intermediate_size=cfg.n_inner if cfg.n_inner is not None else 4 * cfg.n_embd,
        mlp_type="gelu",
        hidden_act=hidden_act(cfg, "activation_function"),
        max_position_embeddings=cfg.n_positions,
        position_embedding_type="absolute",
        type_vocab_size=0,
        norm_type="layernorm",
        norm_eps=cfg.layer_norm_epsilon,
        norm_bias=True,
        norm_position="pre",
        embedding_norm=False,
        final_norm=True,
        attention_bias=True,
        mlp_bias=True,
        is_causal=True,
        hidden_dropout=cfg.resid_pdrop,
        attention_dropout=cfg.attn_pdrop,
        embedding_dropout=cfg.embd_pdrop,
        classifier_dropout=0.0,  # GPT2ForSequenceClassification has no dropout before `score`
        initializer_range=cfg.initializer_range,
        mlm_head_transform=False,
        classifier_pooling="last",
        use_pooler=False,
    )


def _transpose(t):
    # GPT-2's Conv1D stores (in, out) and computes x @ W; nn.Linear stores (out, in).
    return t.t().contiguous()


def _c_attn_part(index: int, is_weight: bool):
    def fn(t):
        part = t.chunk(3, dim=-1)[index]  # c_attn outputs are [q | k | v] along the last dim
        return part.t().contiguous() if is_weight else part.contiguous()

    return fn


def gpt2_body(config: ContextPoolConfig) -> list[_Entry]:
    entries = [_Entry("embed_tokens.weight", "wte.weight"), _Entry("embed_positions.weight", "wpe.weight")]
    for i in range(config.num_hidden_layers):
        t, s = f"layers.{i}", f"h.{i}"
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            entries.append(_Entry(f"{t}.attention.{name}.weight", f"{s}.attn.c_attn.weight", _c_attn_part(j, True)))
            entries.append(_Entry(f"{t}.attention.{name}.bias", f"{s}.attn.c_attn.bias", _c_attn_part(j, False)))
        for target, source in (
            ("attention.o_proj", "attn.c_proj"),
            ("mlp.up_proj", "mlp.c_fc"),
            ("mlp.down_proj", "mlp.c_proj"),
        ):
            entries.append(_Entry(f"{t}.{target}.weight", f"{s}.{source}.weight", _transpose))
            entries.append(_Entry(f"{t}.{target}.bias", f"{s}.{source}.bias"))
        entries += layer_entries(t, s, [("attn_norm", "ln_1", True), ("mlp_norm", "ln_2", True)])
    entries += [_Entry("norm.weight", "ln_f.weight"), _Entry("norm.bias", "ln_f.bias")]
    return entries


GPT2 = SourceFamily(
    model_type="gpt2",
    config_fields=gpt2_config_fields,
    body_entries=gpt2_body,
    head_entries=decoder_head_entries,
    architectures={
        "GPT2Model": "base",
        "GPT2LMHeadModel": "causal-lm",
        "GPT2ForSequenceClassification": "sequence-classification",
    },
)
