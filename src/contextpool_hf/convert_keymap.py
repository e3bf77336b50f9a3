"""The strict key map every text source family converts through, and what a family module provides.

A family module (convert_bert, convert_gpt2, convert_llama) describes one source architecture as a
`SourceFamily`: how its config becomes a `ContextPoolConfig` field dict, the body key map, the
head key map, and the source classes (with the task each one converts to). `build_state_dict`
then maps a source state dict onto a ContextPool model strictly: every source weight must land
somewhere (or be on an explicit ignore list: buffers, masks, aliases of tied weights), and every
target weight except the new pooling parameters must be set; anything else is a ConversionError.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Callable

import torch
import transformers
from transformers import PreTrainedConfig, PreTrainedModel

from .configuration_contextpool import ContextPoolConfig
from .modeling_contextpool import (
    ContextPoolForCausalLM,
    ContextPoolForMaskedLM,
    ContextPoolForQuestionAnswering,
    ContextPoolForSequenceClassification,
    ContextPoolForTokenClassification,
    ContextPoolModel,
    ContextPoolPreTrainedModel,
)

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

# Tasks of a decoder-only family. An encoder cannot become a causal LM (or a decoder a masked
# LM) without changing its attention pattern, so the converted model would not be the source.
DECODER_TASKS = ("base", "causal-lm", "sequence-classification", "token-classification", "question-answering")

TOLERANCE = 1e-5  # max abs difference allowed between source and converted outputs (float32)


class UnsupportedArchitectureError(ValueError):
    """The source model type, class or one of its options has no ContextPool equivalent."""


class ConversionError(ValueError):
    """The weights did not map one to one, or the converted model does not reproduce the source."""


@dataclasses.dataclass(frozen=True)
class _Entry:
    """target key <- fn(source tensor); keys are relative to the model bodies / heads."""

    target: str
    source: str | None  # None: a constant (fn receives None)
    fn: Callable[[torch.Tensor | None], torch.Tensor] | None = None


@dataclasses.dataclass(frozen=True)
class SourceFamily:
    """One source architecture: config translation, key maps, and the classes that convert with their head."""

    model_type: str
    config_fields: Callable[[PreTrainedConfig], dict]  # source config -> ContextPoolConfig fields
    body_entries: Callable[[ContextPoolConfig], list[_Entry]]  # relative to the bodies
    head_entries: Callable[[str, ContextPoolConfig], list[_Entry]]  # (task, config) -> relative to the roots
    architectures: dict[str, str]  # source class name -> task it converts to
    tasks: tuple[str, ...] = DECODER_TASKS  # tasks the family can be given


# ----------------------------------------------------------------------------------------
# Helpers for family modules
# ----------------------------------------------------------------------------------------


def same(t):
    return t


def layer_entries(prefix_t: str, prefix_s: str, pairs, suffixes=("weight", "bias")) -> list[_Entry]:
    """`(target, source, has_bias)` module pairs -> their weight (and bias) entries."""
    out = []
    for target, source, has_bias in pairs:
        for suffix in suffixes if has_bias else ("weight",):
            out.append(_Entry(f"{prefix_t}.{target}.{suffix}", f"{prefix_s}.{source}.{suffix}"))
    return out


def _zeros_like_bias(size: int):
    return lambda _: torch.zeros(size)


def decoder_head_entries(task: str, config: ContextPoolConfig) -> list[_Entry]:
    """GPT-2 / Llama-like heads: `lm_head` and the bias-free `score` classifier."""
    if task == "causal-lm":
        return [_Entry("lm_head.weight", "lm_head.weight")]
    if task == "sequence-classification":
        # `score` has no bias; the ContextPool classifier's bias is set to zero.
        return [
            _Entry("classifier.weight", "score.weight"),
            _Entry("classifier.bias", None, _zeros_like_bias(config.num_labels)),
        ]
    return []


def hidden_act(cfg, name: str) -> str:
    act = getattr(cfg, name)
    if not isinstance(act, str) or act not in transformers.activations.ACT2FN:
        raise UnsupportedArchitectureError(f"{cfg.model_type} {name}={act!r} is not a transformers activation name")
    return act


def check_pool_overrides(overrides: dict) -> dict:
    fields = {f.name for f in dataclasses.fields(ContextPoolConfig)}
    bad = sorted(k for k in overrides if not (k.startswith("pool_") and k in fields))
    if bad:
        allowed = sorted(f for f in fields if f.startswith("pool_"))
        raise TypeError(f"unknown pooling override(s) {bad}; conversion accepts only {allowed}")
    return {"pool_mix_init": 0.0, **overrides}


def common_fields(cfg: PreTrainedConfig) -> dict:
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
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        fields[name] = _in_vocab_ids(name, fields[name], getattr(cfg, "vocab_size", None))
    return {k: v for k, v in fields.items() if v is not None}


def _in_vocab_ids(name: str, value, vocab_size: int | None):
    """A special token id outside the vocabulary (GPT2Config's default bos/eos 50256 on a small
    vocabulary, pad -1) can never be embedded or generated by the source either; ContextPoolConfig
    rejects it, so conversion drops it, saying so, instead of failing or keeping a broken id."""
    if value is None or vocab_size is None:
        return value
    ids = value if isinstance(value, (list, tuple)) else [value]
    kept = [i for i in ids if isinstance(i, int) and 0 <= i < vocab_size]
    if len(kept) != len(ids):
        dropped = [i for i in ids if i not in kept]
        warnings.warn(
            f"source config {name}={value!r} has ids outside [0, vocab_size={vocab_size}): {dropped}; "
            "the converted config drops them",
            stacklevel=3,
        )
    if not kept:
        return None
    return kept if isinstance(value, (list, tuple)) else kept[0]


# ----------------------------------------------------------------------------------------
# The strict map
# ----------------------------------------------------------------------------------------

# Source tensors that carry no information of their own.
_IGNORED_SOURCE_KEYS = (
    re.compile(r"(^|\.)position_ids$"),  # BERT buffer (old checkpoints)
    re.compile(r"(^|\.)attn\.(masked_)?bias$"),  # GPT-2 causal-mask buffers (old checkpoints)
    re.compile(r"(^|\.)rotary_emb\.inv_freq$"),  # Llama buffer (old checkpoints)
)


def _is_pooling_key(key: str) -> bool:
    return ".attention.pool." in key or key.endswith(".attention.pool_mix")


def source_body_prefix(source: PreTrainedModel) -> str:
    if source.base_model is source:
        return ""
    return source.base_model_prefix + "."


def build_state_dict(
    source: PreTrainedModel,
    target: ContextPoolPreTrainedModel,
    family: SourceFamily,
    source_task: str | None,
    task: str,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map the source state dict onto the target's keys, strictly. -> (state, freshly initialised keys).

    Allowed to be left out: ignored buffers/aliases; with a forced task, the source head (and a
    BERT pooler the target has no place for); from BertForPreTraining, its next-sentence head.
    Allowed to stay unset: pooling parameters, tied weights, and with a forced task the new head.
    """
    config = target.config
    src = source.state_dict()
    src_body = source_body_prefix(source)
    tgt_body = "model." if target.base_model is not target else ""
    head_carried = task == source_task

    entries = [_Entry(tgt_body + e.target, src_body + e.source, e.fn) for e in family.body_entries(config)]
    source_pooler = f"{src_body}pooler.dense.weight" in src
    target_pooler = target.base_model.pooler is not None
    if family.model_type == "bert" and source_pooler and target_pooler:
        entries += [
            _Entry(f"{tgt_body}pooler.weight", f"{src_body}pooler.dense.weight"),
            _Entry(f"{tgt_body}pooler.bias", f"{src_body}pooler.dense.bias"),
        ]
    if head_carried:
        entries += family.head_entries(task, config)

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
        state[entry.target] = (entry.fn or same)(value)
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
