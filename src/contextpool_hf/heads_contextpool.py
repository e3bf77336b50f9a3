"""What the ContextPool text heads put on top of the hidden states: the MLM head module, the
language-model loss (shared with the seq2seq model) and the sequence representation of the
classifiers.

Flat, Hub-shipped file: imports only torch, transformers and its flat siblings (relatively);
`save_pretrained` copies it with the modeling files that import it. Split out of
modeling_contextpool.py, which re-exports these names; the head classes themselves stay there,
since the config's auto_map names them as `modeling_contextpool.<class>`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from .checks_contextpool import _values_unreadable
from .configuration_contextpool import ContextPoolConfig
from .inputs_contextpool import _checked_labels, _dtype_or_type, _is_integer_tensor
from .layers_contextpool import _make_norm


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

    def resize_bias(self, vocab_size: int) -> None:
        """The output bias for a resized vocabulary: kept values, zeros for new tokens (its own parameter, which
        `resize_token_embeddings` does not know)."""
        old = self.bias
        if old.shape[0] == vocab_size:
            return
        bias = old.new_zeros(vocab_size)
        keep = min(vocab_size, old.shape[0])
        with torch.no_grad():
            bias[:keep] = old[:keep]
        self.bias = nn.Parameter(bias, requires_grad=old.requires_grad)


def _causal_lm_loss(logits, labels, shift_labels, vocab_size, num_items_in_batch):
    """The causal LM's loss, or None: from shift_labels (already shifted) when given, else from labels (shifted
    here). labels are checked even when shift_labels replace them: a bad one is a bug upstream."""
    if labels is not None:
        labels = _checked_labels("labels", labels, tuple(logits.shape[:2]), vocab_size)
    if shift_labels is not None:
        shift_labels = _checked_labels("shift_labels", shift_labels, tuple(logits.shape[:2]), vocab_size)
        return _lm_loss(logits, shift_labels, vocab_size, num_items_in_batch)
    if labels is not None:
        return _lm_loss(logits, labels, vocab_size, num_items_in_batch, shift=True)
    return None


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


def _answer_positions(name: str, positions, batch: int, n: int) -> torch.Tensor:
    """(B,) answer-span positions as int64 (any integer dtype given), those past the input (>= n) set to n (ignored,
    as in transformers); a negative position is refused (transformers would clamp it to 0, the CLS token)."""
    if not _is_integer_tensor(positions):
        got = _dtype_or_type(positions)
        raise ValueError(f"{name} must be an integer tensor of token positions, got {got}")
    if positions.numel() != batch:
        raise ValueError(f"{name} must hold one position per example, ({batch},), got shape {tuple(positions.shape)}")
    positions = positions.reshape(-1).long()
    if not _values_unreadable(positions) and bool((positions < 0).any()):
        raise ValueError(f"{name} must be token positions >= 0 (past the input: ignored), got {int(positions.min())}")
    return positions.clamp(0, n)
