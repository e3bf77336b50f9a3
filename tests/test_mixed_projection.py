"""`_mixed_projection`: the projections of the mixed tokens as one autograd function that keeps no copy of its
input (`_MixedProjection`), against the mix and the projections written plainly: float64, every gradient, in the
function and in every model family that uses it, and what the graph keeps."""

import pytest
import torch
import torch.nn.functional as F
from helpers import random_ids, saved_storages, tiny_causal_lm
from test_seq2seq import batch as seq2seq_batch
from test_seq2seq import tiny_model as tiny_seq2seq
from torch import nn

import contextpool_hf.layers_contextpool as text_layers
import contextpool_hf.layers_contextpool_seq2seq as seq2seq_layers
import contextpool_hf.modeling_contextpool_vision as vision
from contextpool_hf import ContextPoolViTConfig, ContextPoolViTForImageClassification
from contextpool_hf.modeling_utils_contextpool import _mixed_projection, _MixedProjection


def _inputs(head_rows, bias, frozen_mix, widths=(6, 6, 6), lead=(3,), mix_shape=()):
    torch.manual_seed(0)
    d = 6
    head = torch.randn(*lead, head_rows, d, dtype=torch.float64, requires_grad=True) if head_rows else None
    original = torch.randn(*lead, 5, d, dtype=torch.float64, requires_grad=True)
    pooled = torch.randn(*lead, 5, d, dtype=torch.float64, requires_grad=True)
    mix = torch.full(mix_shape, 0.3, dtype=torch.float64, requires_grad=not frozen_mix)
    layers = [nn.Linear(d, w, bias=bias).double() for w in widths]
    return head, original, pooled, mix, layers


def _plain(head, original, pooled, mix, layers):
    mixed = original + mix * (pooled - original)
    if head is not None:
        mixed = torch.cat([head, mixed], dim=1)
    return torch.cat([F.linear(mixed, layer.weight, layer.bias) for layer in layers], dim=-1)


def _grads(fn, args, layers):
    out = fn(*args, layers)
    leaves = [t for t in args if t is not None and t.requires_grad]
    leaves += [p for layer in layers for p in layer.parameters()]
    grad_out = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1))
    return out, torch.autograd.grad(out, leaves, grad_out)


@pytest.mark.parametrize("head_rows", [0, 1, 2])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("frozen_mix", [False, True])
@pytest.mark.parametrize("widths", [(6, 6, 6), (4,), (6, 3)], ids=["qkv", "one", "kv-narrow"])
def test_fused_projection_equals_the_plain_mix_and_linear(head_rows, bias, frozen_mix, widths):
    head, original, pooled, mix, layers = _inputs(head_rows, bias, frozen_mix, widths)
    args = (head, original, pooled, mix)
    out, grads = _grads(_mixed_projection, args, layers)
    expected_out, expected_grads = _grads(_plain, args, layers)
    torch.testing.assert_close(out, expected_out, rtol=1e-12, atol=1e-12)
    assert len(grads) == len(expected_grads)
    for got, expected in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_fused_projection_with_leading_dims_and_a_per_group_mix():
    """The text models' (B, 1, n, d) features with a scalar mix, the seq2seq memory's (B, m, d) with a (1,) mix."""
    for lead, mix_shape in (((2, 1), ()), ((2,), (1,))):
        head, original, pooled, mix, layers = _inputs(0, True, False, lead=lead, mix_shape=mix_shape)
        out, grads = _grads(_mixed_projection, (None, original, pooled, mix), layers)
        expected_out, expected_grads = _grads(_plain, (None, original, pooled, mix), layers)
        torch.testing.assert_close(out, expected_out, rtol=1e-12, atol=1e-12)
        assert grads[2].shape == mix.shape
        for got, expected in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_fused_projection_passes_gradcheck():
    head, original, pooled, mix, layers = _inputs(1, True, False)
    weight, bias = layers[0].weight, layers[0].bias
    assert torch.autograd.gradcheck(_MixedProjection.apply, (head, original, pooled, mix, weight, bias))


def test_wrapped_layers_no_grad_and_autocast_are_left_to_the_caller():
    """A layer that is not a plain nn.Linear (a PEFT adapter) must run its own forward; without autograd there is
    nothing to save; under autocast the matmuls' dtype is autocast's: None each time, the caller projects."""

    class Scaled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    head, original, pooled, mix, layers = _inputs(1, True, False)
    assert _mixed_projection(head, original, pooled, mix, [Scaled(6, 6).double(), layers[0]]) is None
    with torch.no_grad():
        assert _mixed_projection(head, original, pooled, mix, layers) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _mixed_projection(head, original, pooled, mix, layers) is None
    assert _mixed_projection(head, original, pooled, mix, layers) is not None


def _no_fused_projection(monkeypatch):
    for module in (text_layers, seq2seq_layers, vision):
        monkeypatch.setattr(module, "_mixed_projection", lambda *args: None)


def _loss_and_grads(model, run):
    model.zero_grad(set_to_none=True)
    loss = run(model)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _seq2seq_loss(model):
    ids, mask = seq2seq_batch()
    labels = torch.randint(3, 40, (3, 6), generator=torch.Generator().manual_seed(2))
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss


FAMILIES = {
    "causal-lm": (lambda: tiny_causal_lm(pool_mix_init=0.6).double().train(),
                  lambda m: m(input_ids=random_ids(), labels=random_ids()).loss),
    "causal-lm-kv": (lambda: tiny_causal_lm(pool_mix_init=0.6, pool_target="kv").double().train(),
                     lambda m: m(input_ids=random_ids(), labels=random_ids()).loss),
    "seq2seq": (lambda: tiny_seq2seq().double().train(), lambda m: _seq2seq_loss(m)),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_models_with_the_fused_projection_equal_the_plain_one(family, monkeypatch):
    """Loss and every parameter's gradient with the fused function equal the plain mix and projections (float64)."""
    make, run = FAMILIES[family]
    model = make()
    fused = _loss_and_grads(model, run)
    _no_fused_projection(monkeypatch)
    plain = _loss_and_grads(model, run)
    torch.testing.assert_close(fused[0], plain[0], rtol=1e-12, atol=1e-12)
    assert fused[1].keys() == plain[1].keys() and any("pool_mix" in n for n in fused[1])
    for name in plain[1]:
        torch.testing.assert_close(fused[1][name], plain[1][name], rtol=1e-10, atol=1e-12, msg=name)


def _token_sized_saved(fn, like) -> list[int]:
    """Byte sizes of the tensors (each storage once, parameters left out) that fn() keeps for its backward and that
    are at least `like`'s size."""
    _, saved = saved_storages(fn)
    return sorted(n for n in saved.values() if n >= like.numel() * like.element_size())


def test_vit_attention_keeps_no_copy_of_the_mixed_tokens(monkeypatch):
    """The mixed tokens that a pooled ViT layer's q/k/v projection reads are rebuilt in its backward from the patch
    copy and the pooled patches (which the predictor and the pooling keep anyway): its graph keeps one token-sized
    tensor fewer than with F.linear's own backward, which keeps its input. (Its CLS rows are a copy: a view would
    keep the whole normalised input.)"""
    config = ContextPoolViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                  image_size=16, patch_size=4, num_labels=3)
    attention = ContextPoolViTForImageClassification(config).vit.layers[0].attention
    hidden = torch.randn(4, 17, 16) * 1.0  # the CLS token and a 4x4 grid (not a leaf: nothing keeps it but the graph)
    hidden.requires_grad_()
    patches = hidden[:, 1:]
    fused = _token_sized_saved(lambda: attention(hidden * 1.0, (4, 4)), patches)
    grad = torch.autograd.grad(attention(hidden, (4, 4))[0].sum(), hidden)[0]
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    _no_fused_projection(monkeypatch)
    plain = _token_sized_saved(lambda: attention(hidden * 1.0, (4, 4)), patches)
    assert len(fused) == len(plain) - 1, (fused, plain)


def test_causal_lm_layer_keeps_no_copy_of_the_mixed_tokens(monkeypatch):
    """The same for a pooled causal-LM layer's projections (pool_groups=1): one token-sized tensor fewer per layer."""
    model = tiny_causal_lm(pool_mix_init=0.6).train()
    ids = random_ids(n=12)
    hidden = model.get_input_embeddings()(ids)
    fused = _token_sized_saved(lambda: model(input_ids=ids).logits, hidden)
    _no_fused_projection(monkeypatch)
    plain = _token_sized_saved(lambda: model(input_ids=ids).logits, hidden)
    # in bytes: the fused q/k/v are views of one output where the plain ones are three tensors
    layers = sum(1 for layer in model.model.layers if layer.attention.pool is not None)
    assert layers and sum(fused) == sum(plain) - layers * hidden.numel() * hidden.element_size(), (fused, plain)
