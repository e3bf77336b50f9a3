"""Cost follows the sequence, not the window radius (issue 11 item 9).

R = ceil(truncation * sigma_max) larger than the input selects the same (j, i) pairs as
R = n - 1, so every path clamps it: the operator (fast 1-D, 2-D, reference) to the input, and
the text models' pooling (chunks and the decoding ring of R + 1 slots) to
max_position_embeddings - 1. Equality with the unclamped computation is checked where both are
cheap; the smoke tests check that huge windows on tiny inputs run and that the radius used
inside is the clamped one (no timing assertions).
"""

import pytest
import torch

from contextpool_hf import ContextPoolConfig, ContextPoolForCausalLM, ContextPoolSeq2SeqConfig
from contextpool_hf import pooling_contextpool as ops
from contextpool_hf.modeling_contextpool_seq2seq import ContextPoolForConditionalGeneration


def _inputs(lead, d, sigma_max, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, d, generator=g, dtype=torch.float64)
    w = 0.05 + 0.95 * torch.rand(*lead, generator=g, dtype=torch.float64)
    s = 0.5 + (sigma_max - 0.5) * torch.rand(*lead, generator=g, dtype=torch.float64)
    return x, w, s


def _with_grads(fn, x, w, s):
    x, w, s = (t.clone().requires_grad_() for t in (x, w, s))
    y = fn(x, w, s)
    grads = torch.autograd.grad(y, (x, w, s), torch.randn(y.shape, generator=torch.Generator().manual_seed(3),
                                                          dtype=y.dtype))
    return (y,) + grads


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("implementation", ["fast", "reference"])
def test_clamped_equals_unclamped_1d(causal, implementation):
    """R = 60 on 9 tokens: the public op (clamped to R = 8) equals the raw path run with R = 60."""
    x, w, s = _inputs((2, 9), 5, sigma_max=20.0)
    radius = ops.window_radius(20.0, 3.0)
    assert radius == 60 and ops.clamped_radius(radius, (9,)) == 8
    raw = ops._pool_fast if implementation == "fast" else ops._pool_reference
    unclamped = _with_grads(lambda a, b, c: raw(a, b, c, radius, 1, causal, True, ops.DEFAULT_EPS), x, w, s)
    clamped = _with_grads(lambda a, b, c: ops.context_pool(a, b, c, causal=causal, sigma_max=20.0,
                                                           implementation=implementation), x, w, s)
    for got, expected in zip(clamped, unclamped, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_clamped_equals_unclamped_2d():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 5, 3, generator=g, dtype=torch.float64)
    w = torch.rand(2, 4, 5, generator=g, dtype=torch.float64)
    s = 0.5 + 9.5 * torch.rand(2, 4, 5, generator=g, dtype=torch.float64)
    radius = ops.window_radius(10.0, 3.0)
    unclamped = ops._pool_reference(x, w, s, radius, 1, False, True, ops.DEFAULT_EPS)
    for implementation in ("fast", "reference"):
        got = ops.context_pool_2d(x, w, s, sigma_max=10.0, implementation=implementation)
        torch.testing.assert_close(got, unclamped, rtol=1e-12, atol=1e-12)


def test_clamped_radius_rule():
    assert ops.clamped_radius(24, (1000,)) == 24
    assert ops.clamped_radius(24, (10,)) == 9
    assert ops.clamped_radius(24, (3, 40)) == 24 and ops.clamped_radius(24, (3, 7)) == 6
    assert ops.clamped_radius(24, (1,)) == 0 and ops.clamped_radius(24, (0,)) == 0


def test_huge_window_on_a_short_sequence_runs_with_the_clamped_radius(monkeypatch):
    """sigma_max = 1e4 (R = 30000) at n = 512: the blocked path is called with R = 511."""
    seen = []
    original = ops._BlockedPool1d.apply
    monkeypatch.setattr(ops._BlockedPool1d, "apply", lambda *a: seen.append(a[3]) or original(*a))
    x, w, s = (t.float() for t in _inputs((1, 512), 8, sigma_max=1e4))
    y = ops.context_pool(x, w, s, sigma_max=1e4, causal=True)
    assert seen == [511] and y.shape == x.shape and torch.isfinite(y).all()


def _lm(**overrides):
    base = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                max_position_embeddings=40, is_causal=True, pad_token_id=0, eos_token_id=None, bos_token_id=None,
                pool_sigma_max=3000.0, initializer_range=0.2)
    base.update(overrides)
    torch.manual_seed(0)
    return ContextPoolForCausalLM(ContextPoolConfig(**base)).eval()


def test_model_radius_and_ring_are_bounded_by_max_positions():
    """pool_sigma_max = 3000 (R = 9000), max_position_embeddings = 40: radius 39, a ring of 40 slots,
    and cached decoding still equals the uncached forward."""
    model = _lm()
    for layer in model.model.layers:
        assert layer.attention.pool.radius == 39
    ids = torch.randint(1, 50, (2, 12), generator=torch.Generator().manual_seed(0))
    full = model(ids, use_cache=False).logits
    out = model(ids[:, :8], use_cache=True)
    assert out.cache.layers[0].pool_weights.shape[-1] == 40
    logits = [out.logits]
    cache = out.cache
    for t in range(8, 12):
        step = model(ids[:, t : t + 1], cache=cache, use_cache=True)
        cache = step.cache
        logits.append(step.logits)
    torch.testing.assert_close(torch.cat(logits, 1), full, rtol=1e-5, atol=1e-5)


def test_model_capped_radius_equals_the_configured_radius():
    """Uncached logits with the cap equal those with R = 9000 put back (both cheap: the op clamps to n)."""
    model = _lm()
    ids = torch.randint(1, 50, (1, 30), generator=torch.Generator().manual_seed(1))
    capped = model(ids, use_cache=False).logits
    for layer in model.model.layers:
        layer.attention.pool.radius = ops.window_radius(3000.0, 3.0)
    torch.testing.assert_close(model(ids, use_cache=False).logits, capped, rtol=0, atol=0)


def test_seq2seq_decoder_ring_is_bounded():
    config = ContextPoolSeq2SeqConfig(vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=1,
                                      encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                                      decoder_ffn_dim=32, max_position_embeddings=24, pool_sigma_max=3000.0)
    model = ContextPoolForConditionalGeneration(config).eval()
    assert model.model.decoder.layers[0].self_attn.pool.radius == 23
    src = torch.randint(3, 40, (1, 6), generator=torch.Generator().manual_seed(2))
    out = model.generate(src, max_new_tokens=5, min_new_tokens=5, do_sample=False, eos_token_id=None)
    assert out.shape == (1, 6)  # decoder start + 5 tokens
