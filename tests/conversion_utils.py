"""Helpers for conversion tests that can fail: perturbed sources, deliberate mis-mappings, output diffs.

A freshly initialised transformers model is a weak conversion oracle: every LayerNorm / RMSNorm has
weight 1 and bias 0, so swapping two norms (GPT-2 `ln_1`/`ln_2`, Llama `input_layernorm`/
`post_attention_layernorm`) changes nothing, and small initial weights make attention nearly uniform,
so even a q/k swap moves the outputs by only ~5e-5. `perturb_weights` adds seeded noise to every
trainable tensor (norm weights and biases included) and to the floating-point buffers a checkpoint
stores (BatchNorm running statistics, BART's `final_logits_bias`), so that no two tensors of one shape
are interchangeable and a wrong key map shows up as an O(1) difference.

    from conversion_utils import perturb_weights, swap_weights, max_diff
    source = perturb_weights(GPT2LMHeadModel(config).eval(), seed=0)
"""

from __future__ import annotations

import re

import torch


@torch.no_grad()
def perturb_weights(model: torch.nn.Module, seed: int = 0, scale: float = 0.1, skip: tuple[str, ...] = ()):
    """Add N(0, scale^2) noise to every trainable parameter and floating-point state buffer, in place.

    Parameters with `requires_grad=False` are left alone: they are fixed tables the architecture
    recomputes (Marian's sinusoidal positions), not weights a key map carries. BatchNorm
    `running_var` is multiplied by exp(noise) so that it stays positive. Tied parameters are
    perturbed once (named_parameters lists a shared tensor once). `skip` holds regexes of names to
    leave alone. Names are visited in a fixed order and drawn from one seeded generator, so the
    result depends only on (architecture, seed). Returns the model.
    """
    generator = torch.Generator().manual_seed(seed)
    skipped = [re.compile(pattern) for pattern in skip]
    persistent = set(model.state_dict())
    tensors = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    tensors += [(n, b) for n, b in model.named_buffers() if b.is_floating_point() and n in persistent]
    for name, tensor in tensors:
        if any(pattern.search(name) for pattern in skipped):
            continue
        noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32).to(tensor.dtype)
        if name.endswith("running_var"):
            tensor.mul_(torch.exp(scale * noise))
        else:
            tensor.add_(scale * noise)
    return model


@torch.no_grad()
def swap_weights(model: torch.nn.Module, pairs: list[tuple[str, str]]):
    """Exchange the values of named tensors in place (a deliberate key-map bug); -> the model.

    Each pair names two state-dict entries of one shape, e.g.
    ("model.layers.0.attn_norm.weight", "model.layers.0.mlp_norm.weight").
    """
    state = model.state_dict()
    for a, b in pairs:
        if a not in state or b not in state:
            missing = [k for k in (a, b) if k not in state]
            raise KeyError(f"{type(model).__name__} has no {missing}; keys look like {sorted(state)[:6]}")
        first = state[a].clone()
        state[a].copy_(state[b])
        state[b].copy_(first)
    return model


def layer_pairs(model: torch.nn.Module, pattern_a: str, pattern_b: str) -> list[tuple[str, str]]:
    """Every (a, b) key pair where `a` matches pattern_a and b is `a` with pattern_a replaced by pattern_b.

    `layer_pairs(m, r"\\.attn_norm\\.", ".mlp_norm.")` pairs each layer's attention norm (weight and
    bias) with that layer's MLP norm. Raises if nothing matches, so a renamed module fails loudly.
    """
    keys = list(model.state_dict())
    pairs = [(k, re.sub(pattern_a, pattern_b, k)) for k in keys if re.search(pattern_a, k)]
    if not pairs:
        raise KeyError(f"no key of {type(model).__name__} matches {pattern_a!r}")
    return pairs


def max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """max |a - b| in float64, over the positions where `mask` (batch, seq) is 1 when given.

    Equal infinities (scores that top-k / a logits processor set to -inf) count as no difference;
    an infinity on one side only is an infinite difference; NaN on either side is NaN.
    """
    a, b = a.double(), b.double()
    if mask is not None:
        keep = mask.bool()
        a, b = a[keep], b[keep]
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.numel() == 0:
        return 0.0
    same_inf = torch.isinf(a) & (a == b)
    return float((a - b).abs().masked_fill(same_inf, 0.0).max())
