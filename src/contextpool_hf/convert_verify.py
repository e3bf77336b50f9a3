"""Does a converted model compute what its source computes? `verify_conversion` on random token inputs."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from .convert_families import SOURCE_ARCHITECTURES
from .convert_keymap import TARGET_CLASSES


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

