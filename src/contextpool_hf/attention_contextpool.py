"""The attention product of the ContextPool text models and the masks each backend takes.

Flat, Hub-shipped file: imports only torch; `save_pretrained` copies it with the modeling files
that import it. Split out of modeling_contextpool.py (which re-exports these names) so that the
product, swappable by `attn_implementation`, reads apart from the pooling that runs before it
(layers_contextpool.py). The eager function is the reference; sdpa is torch's fused kernel on the
same (already pooled) queries, keys and values; every other backend is transformers'.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
    # float32 at least, never less than the inputs: a float64 mask's minimum is -inf in float32, and a
    # fully masked row (left padding) would then give NaN, which the pooling spreads (0 * NaN) to real tokens
    softmax_dtype = torch.promote_types(scores.dtype, torch.float32)
    weights = F.softmax(scores, dim=-1, dtype=softmax_dtype).to(query.dtype)
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
        # torch aligns is_causal top-left; only valid without a cache offset (q_len == k_len). A plain
        # bool: with symbolic lengths (torch.export, torch.compile's dynamic shapes) the comparison is a
        # symbolic bool, which sdpa cannot take; branching on it makes the tracer decide it (a guard).
        is_causal=True if is_causal and attention_bias is None and query.shape[2] == key.shape[2] else False,
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


def _attention_implementation(config, output_attentions: bool = False) -> str:
    """The product's backend name; only the eager product materialises the weights."""
    return "eager" if output_attentions else (config._attn_implementation or "eager")


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


def _plain_causal_prefill(implementation, past, n, keep_new, window) -> bool:
    """Whether a forward on a fixed-size cache may attend without a mask: sdpa, outside compilation, n > 1 tokens
    on an empty cache (`past` its length), none of them padding (`keep_new` None) and no sliding window shorter
    than n. The layer then takes the first n slots of the cache as its keys and values, and SDPA its causal
    kernel, which skips the blocks above the diagonal, where the mask over all max_cache_len slots is a full
    product (3x the work for a 128-token prompt in a 192-token cache)."""
    return (
        implementation == "sdpa"
        and not torch.compiler.is_compiling()
        and n > 1
        and keep_new is None
        and (window is None or window >= n)
        and int(past) == 0
    )


def _static_cache_attention_bias(implementation, keep, positions, kv_len, dtype, window=None, batch=1):
    """The causal mask over a fixed-size cache of kv_len slots, for n new tokens at slots `positions` (n,).

    Query i sees slot j <= positions[i] (within the window) holding a real token (keep (B, kv) or
    None); slots not written yet lie in every query's future. Built from tensors only (the
    positions are one, not a Python offset), so a compiled decoding step reuses one graph.
    -> additive (B|1, 1, n, kv); expanded to (B, 1, n, kv) outside eager/sdpa (flex reads a row per sequence).
    """
    if _is_flash_like(implementation):
        raise ValueError(
            f"attn_implementation={implementation!r} is not supported with a static cache here; use 'sdpa', "
            "'eager' or 'flex_attention', or the default (dynamic) cache"
        )
    slots = torch.arange(kv_len, device=positions.device)
    allowed = slots[None, :] <= positions[:, None]  # (n, kv)
    if window is not None:  # query i sees keys j with i - window < j <= i
        allowed = allowed & (slots[None, :] > positions[:, None] - window)
    allowed = allowed[None, None]
    if keep is not None:
        allowed = allowed & keep[:, None, None, :]
    bias = torch.zeros(allowed.shape, dtype=dtype, device=positions.device).masked_fill(~allowed, torch.finfo(dtype).min)
    return bias if implementation in ATTENTION_FUNCTIONS else bias.expand(batch, 1, positions.shape[0], kv_len)
