"""Output dataclasses of the ContextPool text models (ContextPoolModel and its task heads).

Flat, Hub-shipped file: imports only torch and transformers, and modeling_contextpool.py imports
it relatively, so `save_pretrained` copies it next to that file. transformers' fields (loss
first), plus `pooling_sizes`: the widths sigma each pooling layer used. Split out of
modeling_contextpool.py, which re-exports these names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache
from transformers.modeling_outputs import ModelOutput


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
