"""What the ContextPool text models check and derive from their inputs before the layers run.

Flat, Hub-shipped file: imports only torch and its flat siblings (relatively); `save_pretrained`
copies it with the modeling files that import it. Split out of modeling_contextpool.py, which
re-exports these names: the token-id, embedding and label checks (shared with the seq2seq model),
and the layout of documents packed in one row (position_ids that restart).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .checks_contextpool import _mask_as_weights, _values_unreadable
from .modeling_utils_contextpool import _is_compiling


def _dtype_or_type(value) -> str:
    """What an argument is, for an error: its dtype when it is a tensor, else its type's name (a list, an array)."""
    return str(value.dtype) if isinstance(value, torch.Tensor) else type(value).__name__


def _is_integer_tensor(value) -> bool:
    """An integer tensor (any width, signed or not), not bool: ids and labels. A bool tensor is a mask, not ids."""
    return (isinstance(value, torch.Tensor) and not value.is_floating_point() and not value.is_complex()
            and value.dtype != torch.bool)  # fmt: skip


def _checked_token_ids(input_ids: torch.Tensor, vocab_size: int, name: str = "input_ids", noun: str = "ids",
                       size_name: str | None = None) -> torch.Tensor:
    """input_ids as an embedding reads them: int64 or int32 as given, any other integer dtype (uint8 from an image
    of ids, int16) as int64, every one in [0, vocab_size); else a ValueError naming `name`. Learned positions are
    indices too: `_position_ids` passes them here (noun "positions", size_name "max_position_embeddings")."""
    if not _is_integer_tensor(input_ids):
        got = _dtype_or_type(input_ids)
        raise ValueError(f"{name} must be an integer tensor of token ids in [0, {vocab_size}), got {got}")
    if input_ids.dtype not in (torch.int64, torch.int32):  # the two index dtypes torch's embedding takes
        input_ids = input_ids.long()
    if input_ids.numel() == 0 or _values_unreadable(input_ids):
        return input_ids
    low, high = torch.stack(torch.aminmax(input_ids)).tolist()  # one reduction, one read-back
    if low < 0 or high >= vocab_size:
        bound = f"[0, {vocab_size})" if size_name is None else f"[0, {size_name}) = [0, {vocab_size})"
        raise ValueError(f"{name} contains {noun} outside {bound}: min {low}, max {high}")
    return input_ids


def _check_inputs_embeds(inputs_embeds, weight: torch.Tensor, name: str = "inputs_embeds") -> None:
    """A floating tensor in the model's dtype. transformers' Llama does not cast either: a float64
    embedding into a float32 model fails inside the first matmul, so say so here, at the entry."""
    if not isinstance(inputs_embeds, torch.Tensor) or not inputs_embeds.is_floating_point():
        got = _dtype_or_type(inputs_embeds)
        raise ValueError(f"{name} must be a floating-point tensor, got {got}")
    # also under autocast: the norms are not autocast and fail on float64 next to float32 weights
    if inputs_embeds.dtype != weight.dtype:
        raise ValueError(
            f"{name} has dtype {inputs_embeds.dtype} but the model's weights are {weight.dtype}: pass "
            f"{name}.to({weight.dtype}) (or convert the model with model.to({inputs_embeds.dtype}))"
        )


def _embedded_inputs(input_ids, inputs_embeds, embedding: torch.nn.Embedding, vocab_size: int, width: int,
                     prefix: str = "", scale: float = 1.0) -> torch.Tensor:
    """(B, n, width) embeddings from exactly one of input_ids (B, n) (looked up in `embedding`, times `scale`) or
    inputs_embeds (B, n, width), each checked, with an error naming the argument (`prefix`: "decoder_" for the
    seq2seq decoder's). Empty batches and sequences are refused: the attention reshapes (B, n, -1), undefined on
    0 elements (as in Llama and BART)."""
    ids_name, embeds_name = f"{prefix}input_ids", f"{prefix}inputs_embeds"
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError(f"Pass exactly one of {ids_name} or {embeds_name}")
    if input_ids is not None:
        input_ids = _checked_token_ids(input_ids, vocab_size, ids_name)
        if input_ids.dim() != 2:
            raise ValueError(f"{ids_name} must be (batch, sequence_length), got shape {tuple(input_ids.shape)}")
        inputs_embeds = embedding(input_ids)
        inputs_embeds = inputs_embeds * scale if scale != 1.0 else inputs_embeds
    else:
        _check_inputs_embeds(inputs_embeds, embedding.weight, embeds_name)
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != width:
            raise ValueError(f"{embeds_name} must be (batch, sequence_length, {width}), got {tuple(inputs_embeds.shape)}")
    batch, n = inputs_embeds.shape[:2]
    if batch == 0 or n == 0:
        name = ids_name if input_ids is not None else embeds_name
        raise ValueError(f"{name} must hold at least one sequence of at least one token, got batch {batch}, length {n}")
    return inputs_embeds


def _checked_labels(name: str, labels, shape: tuple[int, ...], vocab_size: int) -> torch.Tensor:
    """(B, n) target ids in [0, vocab_size) or -100 (ignored), as int64 (the losses' target dtype; int32 labels come
    from datasets' int32 columns); else a ValueError naming `name`."""
    if not _is_integer_tensor(labels):
        got = _dtype_or_type(labels)
        raise ValueError(f"{name} must be an integer tensor of token ids (-100 = ignore), got {got}")
    _check_label_shape(name, labels, shape)
    labels = labels.long()
    if labels.numel() == 0 or _values_unreadable(labels):
        return labels
    bad = (labels != -100) & ((labels < 0) | (labels >= vocab_size))
    if bool(bad.any()):
        raise ValueError(f"{name} must be token ids in [0, {vocab_size}) or -100 (ignore), got {int(labels[bad][0])}")
    return labels


def _check_label_shape(name: str, labels: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(labels.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(labels.shape)}")


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
    if past > 0 or position_ids.shape[1] < 2 or _values_unreadable(position_ids):
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


def _token_type_ids(token_type_ids, type_vocab_size: int, batch: int, n: int, device) -> torch.Tensor:
    """Segment ids in [0, type_vocab_size) of shape (B, n), (1, n) or (n,) (zeros when not given). Another shape
    (another batch, the ids of another length) is a ValueError naming the argument, not a broadcast error inside
    the embeddings' sum."""
    if token_type_ids is None:
        return torch.zeros(batch, n, dtype=torch.long, device=device)
    token_type_ids = _checked_token_ids(token_type_ids, type_vocab_size, "token_type_ids")
    _check_per_token_shape("token_type_ids", token_type_ids, batch, n)
    return token_type_ids  # (n,) and (1, n): the same segments for every row (the embedding broadcasts)


def _check_per_token_shape(name: str, value: torch.Tensor, batch: int, n: int) -> None:
    """One value per input token: (batch, n), or (1, n) / (n,) for the same values in every row; else a ValueError
    naming `name` and the shape it was given (token_type_ids, position_ids)."""
    shape = tuple(value.shape)
    if shape not in ((batch, n), (1, n), (n,)):
        raise ValueError(f"{name} must be (batch, sequence_length) = {(batch, n)}, (1, {n}) or ({n},), got shape "
                         f"{shape}")  # fmt: skip


def _logits_positions(logits_to_keep):
    """What `logits_to_keep` selects along the sequence, as in transformers' Llama: an int k the last k positions (0:
    all of them), a 1-D integer tensor the positions it lists. Anything else is a ValueError, not an IndexError."""
    if isinstance(logits_to_keep, int) and not isinstance(logits_to_keep, bool) and logits_to_keep >= 0:
        return slice(-logits_to_keep, None)
    if isinstance(logits_to_keep, torch.Tensor) and logits_to_keep.dim() == 1 and _is_integer_tensor(logits_to_keep):
        return logits_to_keep
    got = repr(logits_to_keep) if not isinstance(logits_to_keep, torch.Tensor) else (
        f"a {logits_to_keep.dim()}-D {logits_to_keep.dtype} tensor")  # fmt: skip
    raise ValueError("logits_to_keep must be an int k >= 0 (the last k positions; 0 keeps all) or a 1-D integer "
                     f"tensor of positions, got {got}")  # fmt: skip


def _position_ids(config, position_ids, batch, n, past, device):
    """(B, n) positions of n new tokens after `past` cached ones: counted on when not given, else checked."""
    # Only learned absolute positions have a table to index; rotary positions are computed for any
    # index, and (as in transformers' rotary models) max_position_embeddings is advisory there.
    max_len = config.max_position_embeddings
    limited = config.position_embedding_type == "absolute"
    if position_ids is None:
        if limited and past + n > max_len:
            raise ValueError(
                f"Sequence length {past + n} (input {n} + cached {past}) is longer than this model's "
                f"max_position_embeddings ({max_len}); truncate the input (e.g. tokenizer(..., truncation=True, "
                f"max_length={max_len}))"
            )
        return torch.arange(past, past + n, device=device).unsqueeze(0).expand(batch, n)
    if not isinstance(position_ids, torch.Tensor) or position_ids.dtype == torch.bool or position_ids.is_complex():
        got = _dtype_or_type(position_ids)
        raise ValueError(f"position_ids must be a tensor of token positions (integers; rotary positions may be "
                         f"floats), got {got}")  # fmt: skip
    _check_per_token_shape("position_ids", position_ids, batch, n)
    if position_ids.dim() == 1:  # (n,): the same positions for every row
        position_ids = position_ids.unsqueeze(0)
    if limited:  # they index the learned position table
        if position_ids.is_floating_point():
            raise ValueError(f"position_ids must be integers with position_embedding_type='absolute' (they index "
                             f"the learned position table), got {position_ids.dtype}")  # fmt: skip
        position_ids = _checked_token_ids(position_ids, max_len, "position_ids", "positions", "max_position_embeddings")
    return position_ids.expand(batch, n) if position_ids.shape[0] == 1 else position_ids


def _static_cache_positions(config, cache, attention_mask, position_ids, batch, n, device):
    """Inputs of a forward on a fixed-size cache (a StaticCache with ContextPool layers).

    -> keep_all (B, max_cache_len) bool or None, keep_new (B, n) or None (None also when all n are real tokens,
    outside compilation), position_ids (B, n), and positions (n,): the cache slots of the new tokens. All stay
    tensors of fixed shapes, so that a compiled decoding step has no host sync and no shape that changes from step
    to step; the checks that read numbers run outside compilation only.
    """
    max_len = cache.get_max_length()
    past = cache.get_seq_length()  # 0 before the first forward, then the layers' 0-dim length tensor
    positions = torch.arange(n, device=device) + (past.to(device) if isinstance(past, torch.Tensor) else past)  # (n,)
    compiling = _is_compiling()
    filled = None if compiling else int(past)
    if not compiling:
        first = cache.layers[0]
        if first.is_initialized and first.batch_size != batch:
            raise ValueError(f"cache: this StaticCache was filled with batch {first.batch_size}, got batch {batch}; "
                             "call cache.reset() or build one per batch size")  # fmt: skip
        if filled + n > max_len:
            raise ValueError(
                f"cache: this StaticCache holds max_cache_len={max_len} tokens and {filled} are used, so {n} more do "
                "not fit; build it with a larger max_cache_len (generate sizes it from max_length / max_new_tokens)"
            )
    keep_all = keep_new = None
    if attention_mask is not None:
        keep_all = _mask_as_weights(attention_mask, "attention_mask")
        width = keep_all.shape[-1]
        if not (keep_all.dim() == 2 and keep_all.shape[0] == batch
                and (width == max_len or (not compiling and width == filled + n))):  # fmt: skip
            accepted = f"(batch, max_cache_len) = {(batch, max_len)}"
            if not compiling:
                accepted += f" or (batch, past + sequence_length) = {(batch, filled + n)}"
            raise ValueError(f"attention_mask with a static cache must be {accepted}, got {tuple(keep_all.shape)}")
        if width != max_len:  # the slots not written yet: no token there (and in every query's future)
            keep_all = F.pad(keep_all, (0, max_len - width))
        keep_new = keep_all.gather(1, positions.unsqueeze(0).expand(batch, n))  # (B, n)
        if not compiling and bool(keep_new.all()):
            keep_new = None  # nothing to mask in the pooling (the attention still masks the slots not written yet)
    if compiling:
        position_ids = positions.unsqueeze(0) if position_ids is None else position_ids
        position_ids = position_ids.expand(batch, n)
    else:
        position_ids = _position_ids(config, position_ids, batch, n, filled, device)
    return keep_all, keep_new, position_ids, positions
