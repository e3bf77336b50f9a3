"""Convert pretrained BERT, GPT-2 and Llama checkpoints into ContextPool models.

The ContextPool text models host these three architectures (see configuration_contextpool),
so a conversion is a config translation plus a key map over the weights. Every source weight
must land somewhere (or be on an explicit ignore list: buffers, masks, aliases of tied
weights), and every target weight except the new pooling parameters must be set; anything
else is an error. The converted model starts with each layer's pooled path closed
(`pool_mix_init=0.0`, spec item 7), so at conversion time it reproduces the source model;
fine-tuning then opens the pooled path (`pool_mix` receives gradients from the first step).

ViT/ResNet (contextpool_hf.convert_vision) and Marian/BART (contextpool_hf.convert_seq2seq)
checkpoints are dispatched to their own modules.

    from contextpool_hf.convert import convert_checkpoint
    convert_checkpoint("path/to/bert", "out/contextpool-bert", task="sequence-classification")

or, on the command line, `contextpool-hf convert SRC OUT [--task ...] [--pool_target kv] ...`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib
import inspect
import json
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, PreTrainedConfig, PreTrainedModel

from .configuration_contextpool import CONTEXTPOOL_AUTO_MAP, ContextPoolConfig
from .modeling_contextpool import (
    ContextPoolForCausalLM,
    ContextPoolForMaskedLM,
    ContextPoolForQuestionAnswering,
    ContextPoolForSequenceClassification,
    ContextPoolForTokenClassification,
    ContextPoolModel,
    ContextPoolPreTrainedModel,
)

# model_types converted here, by key map.
SUPPORTED_SOURCES: tuple[str, ...] = ("bert", "gpt2", "llama")
# model_types converted by sibling modules: model_type -> (module, checkpoint function, model function).
DISPATCHED_SOURCES: dict[str, tuple[str, str, str]] = {
    "vit": ("contextpool_hf.convert_vision", "convert_vision_checkpoint", "convert_vit"),
    "resnet": ("contextpool_hf.convert_vision", "convert_vision_checkpoint", "convert_resnet"),
    "marian": ("contextpool_hf.convert_seq2seq", "convert_seq2seq_checkpoint", "convert_seq2seq_model"),
    "bart": ("contextpool_hf.convert_seq2seq", "convert_seq2seq_checkpoint", "convert_seq2seq_model"),
}

TASKS: tuple[str, ...] = (
    "base",
    "causal-lm",
    "masked-lm",
    "sequence-classification",
    "token-classification",
    "question-answering",
)

TARGET_CLASSES: dict[str, type[ContextPoolPreTrainedModel]] = {
    "base": ContextPoolModel,
    "causal-lm": ContextPoolForCausalLM,
    "masked-lm": ContextPoolForMaskedLM,
    "sequence-classification": ContextPoolForSequenceClassification,
    "token-classification": ContextPoolForTokenClassification,
    "question-answering": ContextPoolForQuestionAnswering,
}

# Source classes converted with their head: class name -> (model_type, task).
SOURCE_ARCHITECTURES: dict[str, tuple[str, str]] = {
    "BertModel": ("bert", "base"),
    "BertForMaskedLM": ("bert", "masked-lm"),
    "BertForPreTraining": ("bert", "masked-lm"),  # the next-sentence head is dropped
    "BertForSequenceClassification": ("bert", "sequence-classification"),
    "BertForTokenClassification": ("bert", "token-classification"),
    "BertForQuestionAnswering": ("bert", "question-answering"),
    "GPT2Model": ("gpt2", "base"),
    "GPT2LMHeadModel": ("gpt2", "causal-lm"),
    "GPT2ForSequenceClassification": ("gpt2", "sequence-classification"),
    "LlamaModel": ("llama", "base"),
    "LlamaForCausalLM": ("llama", "causal-lm"),
    "LlamaForSequenceClassification": ("llama", "sequence-classification"),
}

# Tasks a family can be given. An encoder cannot become a causal LM (or a decoder a masked
# LM) without changing its attention pattern, so the converted model would not be the source.
_FAMILY_TASKS = {
    "bert": ("base", "masked-lm", "sequence-classification", "token-classification", "question-answering"),
    "gpt2": ("base", "causal-lm", "sequence-classification", "token-classification", "question-answering"),
    "llama": ("base", "causal-lm", "sequence-classification", "token-classification", "question-answering"),
}

TOLERANCE = 1e-5  # max abs difference allowed between source and converted outputs (float32)


class UnsupportedArchitectureError(ValueError):
    """The source model type, class or one of its options has no ContextPool equivalent."""


class ConversionError(ValueError):
    """The weights did not map one to one, or the converted model does not reproduce the source."""


# ----------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------


def _supported_list() -> str:
    return ", ".join(SUPPORTED_SOURCES + tuple(DISPATCHED_SOURCES))


def _unsupported_type(model_type: str | None, what: str = "source") -> UnsupportedArchitectureError:
    return UnsupportedArchitectureError(
        f"cannot convert {what} of model_type {model_type!r} to ContextPool: supported model_types are "
        f"{_supported_list()} (text classes: {', '.join(SOURCE_ARCHITECTURES)})"
    )


def _check_pool_overrides(overrides: dict) -> dict:
    fields = {f.name for f in dataclasses.fields(ContextPoolConfig)}
    bad = sorted(k for k in overrides if not (k.startswith("pool_") and k in fields))
    if bad:
        allowed = sorted(f for f in fields if f.startswith("pool_"))
        raise TypeError(f"unknown pooling override(s) {bad}; conversion accepts only {allowed}")
    return {"pool_mix_init": 0.0, **overrides}


def _common_fields(cfg: PreTrainedConfig) -> dict:
    """Labels, problem type and special token ids, carried over as they are."""
    fields = {
        "id2label": dict(cfg.id2label) if getattr(cfg, "id2label", None) else None,
        "label2id": dict(cfg.label2id) if getattr(cfg, "label2id", None) else None,
        "problem_type": getattr(cfg, "problem_type", None),
        "pad_token_id": getattr(cfg, "pad_token_id", None),
        "bos_token_id": getattr(cfg, "bos_token_id", None),
        "eos_token_id": getattr(cfg, "eos_token_id", None),
        "tie_word_embeddings": bool(getattr(cfg, "tie_word_embeddings", True)),
    }
    return {k: v for k, v in fields.items() if v is not None}


def _hidden_act(cfg, name: str) -> str:
    act = getattr(cfg, name)
    if not isinstance(act, str) or act not in transformers.activations.ACT2FN:
        raise UnsupportedArchitectureError(f"{cfg.model_type} {name}={act!r} is not a transformers activation name")
    return act


def _bert_config(cfg) -> dict:
    position_type = getattr(cfg, "position_embedding_type", "absolute")
    if position_type != "absolute":
        raise UnsupportedArchitectureError(
            f"BERT position_embedding_type={position_type!r} is not supported (only 'absolute' converts)"
        )
    if getattr(cfg, "is_decoder", False) or getattr(cfg, "add_cross_attention", False):
        raise UnsupportedArchitectureError("BERT as a decoder (is_decoder / add_cross_attention) is not supported")
    return dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_attention_heads,
        head_dim=cfg.hidden_size // cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size,
        mlp_type="gelu",
        hidden_act=_hidden_act(cfg, "hidden_act"),
        max_position_embeddings=cfg.max_position_embeddings,
        position_embedding_type="absolute",
        type_vocab_size=cfg.type_vocab_size,
        norm_type="layernorm",
        norm_eps=cfg.layer_norm_eps,
        norm_bias=True,
        norm_position="post",
        embedding_norm=True,
        final_norm=False,
        attention_bias=True,
        mlp_bias=True,
        is_causal=False,
        hidden_dropout=cfg.hidden_dropout_prob,
        attention_dropout=cfg.attention_probs_dropout_prob,
        embedding_dropout=cfg.hidden_dropout_prob,
        classifier_dropout=(
            cfg.classifier_dropout if getattr(cfg, "classifier_dropout", None) is not None else cfg.hidden_dropout_prob
        ),
        initializer_range=cfg.initializer_range,
        mlm_head_transform=True,
        classifier_pooling="cls",
        use_pooler=True,
    )


def _gpt2_config(cfg) -> dict:
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
        hidden_act=_hidden_act(cfg, "activation_function"),
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


def _llama_config(cfg) -> dict:
    rope = dict(getattr(cfg, "rope_parameters", None) or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise UnsupportedArchitectureError(
            f"Llama rope_parameters with rope_type={rope_type!r} are not supported (only 'default' rotary converts)"
        )
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise UnsupportedArchitectureError("Llama partial_rotary_factor != 1.0 is not supported")
    rope_theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    heads = cfg.num_attention_heads
    return dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=heads,
        num_key_value_heads=cfg.num_key_value_heads if cfg.num_key_value_heads is not None else heads,
        head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
        intermediate_size=cfg.intermediate_size,
        mlp_type="gated",
        hidden_act=_hidden_act(cfg, "hidden_act"),
        max_position_embeddings=cfg.max_position_embeddings,
        position_embedding_type="rotary",
        rope_theta=float(rope_theta),
        type_vocab_size=0,
        norm_type="rmsnorm",
        norm_eps=cfg.rms_norm_eps,
        norm_position="pre",
        embedding_norm=False,
        final_norm=True,
        attention_bias=bool(cfg.attention_bias),
        mlp_bias=bool(cfg.mlp_bias),
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


_CONFIG_BUILDERS: dict[str, Callable[[PreTrainedConfig], dict]] = {
    "bert": _bert_config,
    "gpt2": _gpt2_config,
    "llama": _llama_config,
}


def convert_config(source_config: PreTrainedConfig, **pool_overrides) -> ContextPoolConfig:
    """A BERT / GPT-2 / Llama config -> the equivalent `ContextPoolConfig`.

    `pool_overrides` sets any `pool_*` field; `pool_mix_init` defaults to 0.0 so that the
    converted model reproduces the source. Labels, problem type and special token ids carry over.
    Raises UnsupportedArchitectureError for other model types or for source options that have
    no exact ContextPool counterpart.
    """
    model_type = getattr(source_config, "model_type", None)
    if model_type not in _CONFIG_BUILDERS:
        raise _unsupported_type(model_type, "config")
    fields = _CONFIG_BUILDERS[model_type](source_config)
    fields.update(_common_fields(source_config))
    fields.update(_check_pool_overrides(pool_overrides))
    config = ContextPoolConfig(**fields)
    config.auto_map = dict(CONTEXTPOOL_AUTO_MAP)
    return config


# ----------------------------------------------------------------------------------------
# Key maps
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Entry:
    """target key <- fn(source tensor); keys are relative to the model bodies / heads."""

    target: str
    source: str | None  # None: a constant (fn receives None)
    fn: Callable[[torch.Tensor | None], torch.Tensor] | None = None


def _same(t):
    return t


def _transpose(t):
    # GPT-2's Conv1D stores (in, out) and computes x @ W; nn.Linear stores (out, in).
    return t.t().contiguous()


def _c_attn_part(index: int, is_weight: bool):
    def fn(t):
        part = t.chunk(3, dim=-1)[index]  # c_attn outputs are [q | k | v] along the last dim
        return part.t().contiguous() if is_weight else part.contiguous()

    return fn


def _layer_entries(prefix_t: str, prefix_s: str, pairs, suffixes=("weight", "bias")) -> list[_Entry]:
    out = []
    for target, source, has_bias in pairs:
        for suffix in suffixes if has_bias else ("weight",):
            out.append(_Entry(f"{prefix_t}.{target}.{suffix}", f"{prefix_s}.{source}.{suffix}"))
    return out


def _bert_body(config: ContextPoolConfig) -> list[_Entry]:
    entries = [
        _Entry("embed_tokens.weight", "embeddings.word_embeddings.weight"),
        _Entry("embed_positions.weight", "embeddings.position_embeddings.weight"),
        _Entry("embed_token_types.weight", "embeddings.token_type_embeddings.weight"),
        _Entry("embed_norm.weight", "embeddings.LayerNorm.weight"),
        _Entry("embed_norm.bias", "embeddings.LayerNorm.bias"),
    ]
    pairs = [
        ("attention.q_proj", "attention.self.query", True),
        ("attention.k_proj", "attention.self.key", True),
        ("attention.v_proj", "attention.self.value", True),
        ("attention.o_proj", "attention.output.dense", True),
        ("attn_norm", "attention.output.LayerNorm", True),
        ("mlp.up_proj", "intermediate.dense", True),
        ("mlp.down_proj", "output.dense", True),
        ("mlp_norm", "output.LayerNorm", True),
    ]
    for i in range(config.num_hidden_layers):
        entries += _layer_entries(f"layers.{i}", f"encoder.layer.{i}", pairs)
    return entries


def _gpt2_body(config: ContextPoolConfig) -> list[_Entry]:
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
        entries += _layer_entries(t, s, [("attn_norm", "ln_1", True), ("mlp_norm", "ln_2", True)])
    entries += [_Entry("norm.weight", "ln_f.weight"), _Entry("norm.bias", "ln_f.bias")]
    return entries


def _llama_body(config: ContextPoolConfig) -> list[_Entry]:
    entries = [_Entry("embed_tokens.weight", "embed_tokens.weight")]
    attn_bias, mlp_bias = config.attention_bias, config.mlp_bias
    pairs = [
        ("attention.q_proj", "self_attn.q_proj", attn_bias),
        ("attention.k_proj", "self_attn.k_proj", attn_bias),
        ("attention.v_proj", "self_attn.v_proj", attn_bias),
        ("attention.o_proj", "self_attn.o_proj", attn_bias),
        ("mlp.gate_proj", "mlp.gate_proj", mlp_bias),
        ("mlp.up_proj", "mlp.up_proj", mlp_bias),
        ("mlp.down_proj", "mlp.down_proj", mlp_bias),
        ("attn_norm", "input_layernorm", False),
        ("mlp_norm", "post_attention_layernorm", False),
    ]
    for i in range(config.num_hidden_layers):
        entries += _layer_entries(f"layers.{i}", f"layers.{i}", pairs)
    entries.append(_Entry("norm.weight", "norm.weight"))
    return entries


_BODY_MAPS = {"bert": _bert_body, "gpt2": _gpt2_body, "llama": _llama_body}


def _zeros_like_bias(size: int):
    return lambda _: torch.zeros(size)


def _head_entries(model_type: str, task: str, config: ContextPoolConfig) -> list[_Entry]:
    """Head keys (outside the bodies), relative to the model roots."""
    if model_type == "bert":
        return {
            "masked-lm": [
                _Entry("cls.dense.weight", "cls.predictions.transform.dense.weight"),
                _Entry("cls.dense.bias", "cls.predictions.transform.dense.bias"),
                _Entry("cls.norm.weight", "cls.predictions.transform.LayerNorm.weight"),
                _Entry("cls.norm.bias", "cls.predictions.transform.LayerNorm.bias"),
                _Entry("cls.decoder.weight", "cls.predictions.decoder.weight"),
                _Entry("cls.bias", "cls.predictions.bias"),
            ],
            "sequence-classification": [
                _Entry("classifier.weight", "classifier.weight"),
                _Entry("classifier.bias", "classifier.bias"),
            ],
            "token-classification": [
                _Entry("classifier.weight", "classifier.weight"),
                _Entry("classifier.bias", "classifier.bias"),
            ],
            "question-answering": [
                _Entry("qa_outputs.weight", "qa_outputs.weight"),
                _Entry("qa_outputs.bias", "qa_outputs.bias"),
            ],
        }.get(task, [])
    # GPT-2 / Llama
    if task == "causal-lm":
        return [_Entry("lm_head.weight", "lm_head.weight")]
    if task == "sequence-classification":
        # `score` has no bias; the ContextPool classifier's bias is set to zero.
        return [
            _Entry("classifier.weight", "score.weight"),
            _Entry("classifier.bias", None, _zeros_like_bias(config.num_labels)),
        ]
    return []


# Source tensors that carry no information of their own.
_IGNORED_SOURCE_KEYS = (
    re.compile(r"(^|\.)position_ids$"),  # BERT buffer (old checkpoints)
    re.compile(r"(^|\.)attn\.(masked_)?bias$"),  # GPT-2 causal-mask buffers (old checkpoints)
    re.compile(r"(^|\.)rotary_emb\.inv_freq$"),  # Llama buffer (old checkpoints)
)


def _is_pooling_key(key: str) -> bool:
    return ".attention.pool." in key or key.endswith(".attention.pool_mix")


def _source_body_prefix(source: PreTrainedModel) -> str:
    if source.base_model is source:
        return ""
    return source.base_model_prefix + "."


def _source_task(source: PreTrainedModel) -> str:
    name = type(source).__name__
    if name not in SOURCE_ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"cannot convert {name} (model_type {source.config.model_type!r}): supported classes are "
            f"{', '.join(SOURCE_ARCHITECTURES)}; pass task='base' (or another task) to convert its body only"
        )
    return SOURCE_ARCHITECTURES[name][1]


def _build_state_dict(
    source: PreTrainedModel, target: ContextPoolPreTrainedModel, model_type: str, source_task: str | None, task: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map the source state dict onto the target's keys, strictly. -> (state, freshly initialised keys).

    Allowed to be left out: ignored buffers/aliases; with a forced task, the source head (and a
    BERT pooler the target has no place for); from BertForPreTraining, its next-sentence head.
    Allowed to stay unset: pooling parameters, tied weights, and with a forced task the new head.
    """
    config = target.config
    src = source.state_dict()
    src_body = _source_body_prefix(source)
    tgt_body = "model." if target.base_model is not target else ""
    head_carried = task == source_task

    entries = [_Entry(tgt_body + e.target, src_body + e.source, e.fn) for e in _BODY_MAPS[model_type](config)]
    source_pooler = f"{src_body}pooler.dense.weight" in src
    target_pooler = target.base_model.pooler is not None
    if model_type == "bert" and source_pooler and target_pooler:
        entries += [
            _Entry(f"{tgt_body}pooler.weight", f"{src_body}pooler.dense.weight"),
            _Entry(f"{tgt_body}pooler.bias", f"{src_body}pooler.dense.bias"),
        ]
    if head_carried:
        entries += _head_entries(model_type, task, config)

    state, used = {}, set()
    for entry in entries:
        value = None
        if entry.source is not None:
            if entry.source not in src:
                raise ConversionError(
                    f"{type(source).__name__} has no weight {entry.source!r} (needed for {entry.target!r}); "
                    "the checkpoint does not match its config"
                )
            used.add(entry.source)
            value = src[entry.source]
        state[entry.target] = (entry.fn or _same)(value)
    # BERT's decoder bias is an alias of `cls.predictions.bias`.
    alias, original = "cls.predictions.decoder.bias", "cls.predictions.bias"
    if alias in src and original in used and torch.equal(src[alias], src[original]):
        used.add(alias)

    leftover = [k for k in src if k not in used and not any(p.search(k) for p in _IGNORED_SOURCE_KEYS)]
    droppable = []
    for key in leftover:
        outside_body = bool(src_body) and not key.startswith(src_body)
        is_pooler = key.startswith(f"{src_body}pooler.")
        if not head_carried and (outside_body or is_pooler):
            droppable.append(key)
        elif type(source).__name__ == "BertForPreTraining" and (key.startswith("cls.seq_relationship.") or is_pooler):
            droppable.append(key)
        elif is_pooler and not target_pooler:
            droppable.append(key)
    if droppable:
        warnings.warn(
            f"{type(source).__name__} -> {type(target).__name__}: dropping source weights with no place "
            f"in the target: {droppable}",
            stacklevel=3,
        )
    leftover = [k for k in leftover if k not in droppable]
    if leftover:
        raise ConversionError(
            f"source weights with no place in {type(target).__name__}: {leftover}; the key map for "
            f"{type(source).__name__} does not cover them"
        )

    target_state = target.state_dict()
    unexpected = sorted(k for k in state if k not in target_state)
    if unexpected:
        raise ConversionError(f"key map produced weights that {type(target).__name__} does not have: {unexpected}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(target_state[key].shape):
            raise ConversionError(
                f"shape mismatch for {key}: the source gives {tuple(value.shape)}, {type(target).__name__} has "
                f"{tuple(target_state[key].shape)}"
            )
    tied = dict(target._tied_weights_keys or {}) if config.tie_word_embeddings else {}
    missing = [
        k for k in target_state if k not in state and not _is_pooling_key(k) and not (k in tied and tied[k] in state)
    ]
    fresh = []
    for key in missing:
        outside_body = bool(tgt_body) and not key.startswith(tgt_body)
        is_pooler = key.startswith(f"{tgt_body}pooler.")
        if (not head_carried and outside_body) or (is_pooler and not source_pooler):
            fresh.append(key)
    missing = [k for k in missing if k not in fresh]
    if missing:
        raise ConversionError(f"{type(target).__name__} weights not set by the conversion: {missing}")
    return state, fresh


# ----------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------


def _dispatch_module(model_type: str):
    module_name = DISPATCHED_SOURCES[model_type][0]
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        if error.name not in (module_name, None) and not str(module_name).endswith(str(error.name)):
            raise
        raise UnsupportedArchitectureError(
            f"model_type {model_type!r} converts with {module_name}, which is not available in this "
            f"installation ({error}); text conversion supports {', '.join(SUPPORTED_SOURCES)}"
        ) from error


def _is_path(source) -> bool:
    return isinstance(source, (str, os.PathLike))


def _source_model_type(source) -> str | None:
    if _is_path(source):
        return AutoConfig.from_pretrained(source).model_type
    if isinstance(source, PreTrainedModel):
        return source.config.model_type
    raise TypeError(f"source must be a PreTrainedModel or a path, got {type(source).__name__}")


def _load_source(path, task: str | None, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """Load a BERT/GPT-2/Llama folder (or Hub name) with the class its config names."""
    config = AutoConfig.from_pretrained(path)
    if config.model_type not in SUPPORTED_SOURCES:
        raise _unsupported_type(config.model_type)
    architectures = list(getattr(config, "architectures", None) or [])
    kwargs = {"dtype": dtype} if dtype is not None else {}
    known = [a for a in architectures if a in SOURCE_ARCHITECTURES]
    if known:
        return getattr(transformers, known[0]).from_pretrained(path, **kwargs)
    if architectures and task is None:
        raise UnsupportedArchitectureError(
            f"cannot convert {architectures[0]} (model_type {config.model_type!r}): supported classes are "
            f"{', '.join(SOURCE_ARCHITECTURES)}; pass task=... to convert its body with a new head"
        )
    if architectures:
        warnings.warn(f"{architectures[0]} is not a supported class: converting its body only", stacklevel=3)
    return transformers.AutoModel.from_pretrained(path, **kwargs)


def convert_model(
    source: PreTrainedModel | str | os.PathLike, *, task: str | None = None, **pool_overrides
) -> PreTrainedModel:
    """A BERT / GPT-2 / Llama model (or its folder / Hub name) -> the ContextPool equivalent.

    The head follows the source class (BertModel -> ContextPoolModel with pooler,
    BertForMaskedLM/BertForPreTraining -> ContextPoolForMaskedLM, GPT2LMHeadModel/
    LlamaForCausalLM -> ContextPoolForCausalLM, ...). `task` ("base", "causal-lm", "masked-lm",
    "sequence-classification", "token-classification", "question-answering") forces a head: a
    head the source does not have is freshly initialised (with a warning). Every source weight is
    used and every target weight except the pooling parameters is set, or ConversionError.
    ViT/ResNet and Marian/BART sources are handed to their own conversion modules.
    The returned model is in eval mode, in the source's dtype and attention implementation.
    """
    model_type = _source_model_type(source)
    if model_type in DISPATCHED_SOURCES:
        module = _dispatch_module(model_type)
        return getattr(module, DISPATCHED_SOURCES[model_type][2])(source, **pool_overrides)
    if model_type not in SUPPORTED_SOURCES:
        raise _unsupported_type(model_type)
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if _is_path(source):
        source = _load_source(source, task)
    # An unknown class (e.g. BertForMultipleChoice) converts only with a forced task: its body.
    source_task = _source_task(source) if task is None or type(source).__name__ in SOURCE_ARCHITECTURES else None
    task = task or source_task
    if task not in _FAMILY_TASKS[model_type]:
        raise UnsupportedArchitectureError(
            f"a {model_type} model cannot become a {task!r} model without changing what it computes; "
            f"{model_type} converts to {', '.join(_FAMILY_TASKS[model_type])}"
        )

    config = convert_config(source.config, **pool_overrides)
    if model_type == "bert":
        # BERT's pooler (dense + tanh on [CLS]) lives in the body; keep it where the target uses it:
        # the bare model (if the source has one) and sequence classification (new if needed).
        has_pooler = f"{_source_body_prefix(source)}pooler.dense.weight" in source.state_dict()
        config.use_pooler = task == "sequence-classification" or (task == "base" and has_pooler)
    config._attn_implementation = getattr(source.config, "_attn_implementation", None) or "sdpa"
    if config._attn_implementation not in ("eager", "sdpa"):
        config._attn_implementation = "sdpa"
    target_class = TARGET_CLASSES[task]
    target = target_class(config).to(source.dtype)
    state, fresh = _build_state_dict(source, target, model_type, source_task, task)
    if fresh:
        warnings.warn(
            f"{type(source).__name__} -> {target_class.__name__}: newly initialised weights {fresh} "
            "(train them before use)",
            stacklevel=2,
        )
    result = target.load_state_dict(state, strict=False)
    if result.unexpected_keys:  # guarded above; kept as a last line of defence
        raise ConversionError(f"unexpected keys when loading the converted weights: {result.unexpected_keys}")
    if config.tie_word_embeddings:
        target.tie_weights()
    if getattr(source, "generation_config", None) is not None and target.can_generate():
        target.generation_config = copy.deepcopy(source.generation_config)
    target._contextpool_conversion = {
        "source_class": type(source).__name__,
        "source_model_type": model_type,
        "source_task": source_task,
        "task": task,
        "new_weights": fresh,
    }
    return target.eval()


# ----------------------------------------------------------------------------------------
# Verification
# ----------------------------------------------------------------------------------------


def _target_task(model) -> str | None:
    for task, cls in TARGET_CLASSES.items():
        if type(model) is cls:
            return task
    return None


def _random_batch(config, vocab_size, pad_token_id, batch, seq_len, generator, padded: bool):
    ids = torch.randint(0, vocab_size, (batch, seq_len), generator=generator)
    if pad_token_id is not None and vocab_size > 1:
        ids = torch.where(ids == pad_token_id, (ids + 1) % vocab_size, ids)
    mask = torch.ones(batch, seq_len, dtype=torch.long)
    if padded and batch > 1:
        lengths = torch.randint(1, seq_len + 1, (batch,), generator=generator)
        lengths[0] = seq_len
        mask = (torch.arange(seq_len)[None] < lengths[:, None]).long()
        ids = ids.masked_fill(mask == 0, pad_token_id if pad_token_id is not None else 0)
    return ids, mask


def _per_token_diff(a, b, mask) -> float:
    keep = mask.bool()
    return float((a.float() - b.float())[keep].abs().max()) if keep.any() else 0.0


@torch.no_grad()
def verify_conversion(
    source_model: PreTrainedModel,
    converted_model: PreTrainedModel,
    *,
    n_inputs: int = 2,
    seq_len: int = 16,
    batch_size: int = 3,
    seed: int = 0,
) -> float:
    """Max abs difference of the main outputs on random token inputs (right-padded batches).

    Compares the head outputs (logits, start/end logits) when the converted head came from the
    source, otherwise the bodies' last_hidden_state (and BERT's pooler_output when both have
    one). Per-token outputs are compared at real (non-padded) positions. Both models run in
    eval mode (their training flags are restored afterwards).
    """
    config = source_model.config
    vocab_size = int(config.vocab_size)
    seq_len = max(1, min(seq_len, int(getattr(converted_model.config, "max_position_embeddings", seq_len))))
    source_task = SOURCE_ARCHITECTURES.get(type(source_model).__name__, (None, "base"))[1]
    target_task = _target_task(converted_model)
    conversion = getattr(converted_model, "_contextpool_conversion", None)
    head_carried = target_task == source_task and not (conversion and conversion.get("new_weights"))
    pad = getattr(config, "pad_token_id", None)
    # HF's decoder classifiers find the last token through pad_token_id; without one, no padding.
    padded = not (head_carried and source_task == "sequence-classification" and pad is None)
    batch = batch_size if padded else 1
    token_types = getattr(config, "type_vocab_size", 0) or 0

    modes = (source_model.training, converted_model.training)
    source_model.eval()
    converted_model.eval()
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    try:
        for _ in range(n_inputs):
            ids, mask = _random_batch(config, vocab_size, pad, batch, seq_len, generator, padded)
            device = next(source_model.parameters()).device
            inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
            if token_types > 1 and converted_model.config.type_vocab_size == token_types:
                inputs["token_type_ids"] = torch.randint(0, token_types, ids.shape, generator=generator).to(device)
            if head_carried and target_task != "base":
                a = source_model(**inputs, use_cache=False) if source_model.can_generate() else source_model(**inputs)
                b = converted_model(**inputs)
                names = ("start_logits", "end_logits") if target_task == "question-answering" else ("logits",)
                for name in names:
                    # BertForPreTraining calls its MLM logits `prediction_logits`
                    x = getattr(a, name, None) if name in a else a["prediction_logits"]
                    y = getattr(b, name)
                    if target_task == "sequence-classification":
                        worst = max(worst, float((x.float() - y.float()).abs().max()))
                    else:
                        worst = max(worst, _per_token_diff(x, y, mask.to(x.device)))
            else:
                a = source_model.base_model(**inputs)
                b = converted_model.base_model(**inputs)
                worst = max(worst, _per_token_diff(a.last_hidden_state, b.last_hidden_state, mask.to(device)))
                pa, pb = getattr(a, "pooler_output", None), getattr(b, "pooler_output", None)
                if pa is not None and pb is not None:
                    worst = max(worst, float((pa.float() - pb.float()).abs().max()))
    finally:
        source_model.train(modes[0])
        converted_model.train(modes[1])
    return worst


# ----------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------


def _source_name(src) -> str:
    if _is_path(src):
        return str(src)
    return getattr(src, "name_or_path", None) or getattr(src.config, "_name_or_path", "") or type(src).__name__


def _ensure_auto_map(out: Path) -> None:
    """save_pretrained writes only the saved class's auto_map entry; make it list every head."""
    path = out / "config.json"
    config = json.loads(path.read_text())
    auto_map = dict(config.get("auto_map") or {})
    if all(auto_map.get(k) == v for k, v in CONTEXTPOOL_AUTO_MAP.items()):
        return
    auto_map.update(CONTEXTPOOL_AUTO_MAP)
    config["auto_map"] = auto_map
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _dispatch_checkpoint(model_type, src, out, task, check, pool_overrides) -> Path:
    module = _dispatch_module(model_type)
    function = getattr(module, DISPATCHED_SOURCES[model_type][1])
    parameters = inspect.signature(function).parameters
    kwargs = dict(pool_overrides)
    if "task" in parameters and task is not None:
        kwargs["task"] = task
    if "check" in parameters:
        kwargs["check"] = check
    result = function(src, out, **kwargs)
    return Path(result) if isinstance(result, (str, os.PathLike)) else Path(out)


def convert_checkpoint(
    src: PreTrainedModel | str | os.PathLike,
    out: str | os.PathLike,
    *,
    task: str | None = None,
    check: bool = True,
    **pool_overrides,
) -> Path:
    """Convert `src` (a folder, Hub name or model), check it, and save it to `out`.

    Saves the converted model with its remote code (config.json's auto_map lists every head),
    the source tokenizer when AutoTokenizer can load it, and `conversion.json` (source,
    max abs difference measured, pool overrides, base_model). With `check`, the source and the
    converted model are compared in float32 on random inputs and ConversionError is raised if
    they differ by more than 1e-5. Returns the output folder.
    """
    model_type = _source_model_type(src)
    if model_type in DISPATCHED_SOURCES:
        return _dispatch_checkpoint(model_type, src, out, task, check, pool_overrides)
    if model_type not in SUPPORTED_SOURCES:
        raise _unsupported_type(model_type)
    saved_dtype = None
    if _is_path(src):
        source_config = AutoConfig.from_pretrained(src)
        saved_dtype = getattr(source_config, "dtype", None)
        source = _load_source(src, task, dtype=torch.float32)
    else:
        source = src
    converted = convert_model(source, task=task, **pool_overrides)

    max_diff = None
    if check:
        if source.dtype != torch.float32:
            source_check, converted_check = copy.deepcopy(source).float(), copy.deepcopy(converted).float()
        else:
            source_check, converted_check = source, converted
        max_diff = verify_conversion(source_check, converted_check)
        if not max_diff <= TOLERANCE:
            raise ConversionError(
                f"converted model differs from the source by {max_diff:.3g} (allowed {TOLERANCE:g}); not saved"
            )
    if isinstance(saved_dtype, str):
        saved_dtype = getattr(torch, saved_dtype, None)
    if isinstance(saved_dtype, torch.dtype) and saved_dtype.is_floating_point and saved_dtype != converted.dtype:
        converted = converted.to(saved_dtype)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    converted.config.auto_map = dict(CONTEXTPOOL_AUTO_MAP)
    converted.save_pretrained(out)
    _ensure_auto_map(out)

    tokenizer_saved = False
    if _is_path(src):
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(src)
        except (OSError, ValueError, KeyError, TypeError) as error:
            warnings.warn(f"no tokenizer saved: AutoTokenizer could not load {src} ({error})", stacklevel=2)
        else:
            tokenizer.save_pretrained(out)
            tokenizer_saved = True

    from . import __version__

    info = converted._contextpool_conversion
    record = {
        "base_model": _source_name(src),
        "source_model_type": model_type,
        "source_class": info["source_class"],
        "task": info["task"],
        "target_class": type(converted).__name__,
        "new_weights": info["new_weights"],
        "max_abs_diff": max_diff,
        "tolerance": TOLERANCE,
        "checked": bool(check),
        "pool_overrides": {k: v for k, v in pool_overrides.items()},
        "pool_mix_init": converted.config.pool_mix_init,
        "tokenizer_saved": tokenizer_saved,
        "dtype": str(converted.dtype).replace("torch.", ""),
        "contextpool_hf_version": __version__,
        "transformers_version": transformers.__version__,
    }
    (out / "conversion.json").write_text(json.dumps(record, indent=2) + "\n")
    return out


# ----------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    text = text.strip()
    if text.lower() in ("", "none"):
        return []
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices like 0,2, got {text!r}") from error


_POOL_OPTIONS = (
    ("pool_target", str, "qkv or kv: what the pooled features feed"),
    ("pool_groups", int, "1 = shared pooling, num_key_value_heads = per-head pooling"),
    ("pool_sigma_min", float, "smallest Gaussian width (tokens)"),
    ("pool_sigma_max", float, "largest Gaussian width (tokens)"),
    ("pool_truncation", float, "window radius R = ceil(truncation * sigma_max)"),
    ("pool_kernel_size", int, "predictor's depthwise conv kernel (odd)"),
    ("pool_predictor_width", int, "predictor width (default hidden_size)"),
    ("pool_mix_init", float, "initial pooled mix (0 = exactly the source model, the default)"),
    ("pool_implementation", str, "fast or reference"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `contextpool-hf convert`."""
    parser.add_argument("src", help="source checkpoint: a local folder or a Hub model name")
    parser.add_argument("out", help="output folder")
    parser.add_argument("--task", choices=TASKS, default=None, help="force a head (default: the source's)")
    parser.add_argument("--no-check", dest="check", action="store_false", help="skip the equivalence check")
    for name, kind, help_text in _POOL_OPTIONS:
        parser.add_argument(f"--{name}", type=kind, default=None, help=help_text)
    parser.add_argument("--pool_layers", type=_int_list, default=None, help="layers that pool, e.g. 0,2 (default all)")
    parser.add_argument(
        "--pool_normalize", default=None, action=argparse.BooleanOptionalAction, help="normalise by pooled weight mass"
    )


def run(args: argparse.Namespace) -> int:
    names = [name for name, _, _ in _POOL_OPTIONS] + ["pool_layers", "pool_normalize"]
    overrides = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    out = convert_checkpoint(args.src, args.out, task=args.task, check=args.check, **overrides)
    record_path = Path(out) / "conversion.json"
    max_diff = json.loads(record_path.read_text()).get("max_abs_diff") if record_path.exists() else None
    if max_diff is not None:
        print(f"max abs difference (source vs converted): {max_diff:.3e}")
    elif args.check:
        print("max abs difference: not reported by this converter")
    else:
        print("equivalence check skipped (--no-check)")
    print(f"saved to {out}")
    return 0


__all__ = [
    "SUPPORTED_SOURCES",
    "DISPATCHED_SOURCES",
    "TASKS",
    "SOURCE_ARCHITECTURES",
    "UnsupportedArchitectureError",
    "ConversionError",
    "convert_config",
    "convert_model",
    "convert_checkpoint",
    "verify_conversion",
    "add_arguments",
    "run",
]
