"""The Triton implementation against the float64 reference, run by tests/test_triton.py in a subprocess with
TRITON_INTERPRET=1 (Triton reads it when the package's kernels are defined, so it must be set before import).
Not collected by a plain `pytest` (the file name does not start with test_)."""

from __future__ import annotations

import pytest
import torch

from contextpool_hf import (
    ContextPoolConfig,
    ContextPoolForCausalLM,
    ContextPoolResNetConfig,
    ContextPoolResNetForImageClassification,
    ContextPoolViTConfig,
    ContextPoolViTForImageClassification,
)
from contextpool_hf.pooling_contextpool import context_pool, context_pool_2d
from contextpool_hf.pooling_triton_contextpool import INTERPRETED, triton

pytestmark = pytest.mark.skipif(not (INTERPRETED and triton is not None), reason="run by tests/test_triton.py")


def _inputs(lead, d, seed, dtype=torch.float64, sigma_max=8.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, d, generator=g, dtype=torch.float64)
    w = 0.05 + 0.95 * torch.rand(*lead, generator=g, dtype=torch.float64)
    s = 0.3 + (sigma_max - 0.3) * torch.rand(*lead, generator=g, dtype=torch.float64)
    return tuple(t.to(dtype).requires_grad_() for t in (x, w, s))


def _with_grads(implementation, x, w, s, pool=context_pool, **kwargs):
    y = pool(x, w, s, implementation=implementation, **kwargs)
    grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(99), dtype=torch.float64).to(y.dtype)
    return (y.detach(),) + torch.autograd.grad(y, (x, w, s), grad_out)


# (lead, d, sigma_max, truncation): n = 1 and 2, a window wider than the sequence, one block and a ragged
# second, d not a multiple of the feature chunk and wider than one chunk, grouped (B, G, n, d)
SHAPES = [((2, 1), 5, 8.0, 3.0), ((2, 2), 3, 8.0, 3.0), ((2, 7), 19, 8.0, 3.0), ((2, 97), 19, 8.0, 3.0),
          ((1, 130), 70, 2.0, 2.0), ((2, 2, 40), 9, 4.0, 3.0)]  # fmt: skip


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[0])) + f"-d{s[1]}")
def test_triton_equals_the_reference_with_gradients_float64(shape, causal, normalize):
    lead, d, sigma_max, truncation = shape
    inputs = _inputs(lead, d, seed=len(lead) * 100 + lead[-1], sigma_max=sigma_max)
    kwargs = dict(causal=causal, normalize=normalize, sigma_max=sigma_max, truncation=truncation)
    got = _with_grads("triton", *inputs, **kwargs)
    want = _with_grads("reference", *inputs, **kwargs)
    for name, a, b in zip(("y", "dx", "dw", "dsigma"), got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)


def test_triton_float32_padding_and_zero_weight_rows():
    """float32 against the float64 reference (the flash-attention rule: at most 2x the float32 reference's
    error), with an attention mask and a row whose weights are all zero (its outputs pool exactly 0)."""
    x, w, s = _inputs((3, 97), 13, seed=5, dtype=torch.float32)
    with torch.no_grad():
        w[2].zero_()
    mask = torch.ones(3, 97, dtype=torch.long)
    mask[1, 60:] = 0
    got = _with_grads("triton", x, w, s, attention_mask=mask, causal=True)
    fp32 = _with_grads("reference", x, w, s, attention_mask=mask, causal=True)
    exact = _with_grads("reference", *(t.detach().double().requires_grad_() for t in (x, w, s)),
                        attention_mask=mask, causal=True)  # fmt: skip
    assert torch.equal(got[0][2], torch.zeros_like(got[0][2]))
    for name, a, ref32, ref64 in zip(("y", "dx", "dw", "dsigma"), got, fp32, exact, strict=True):
        assert (a.double() - ref64).abs().max() <= 2 * (ref32.double() - ref64).abs().max() + 1e-6, name


def test_a_causal_lm_with_triton_pooling_matches_the_fast_path_cached_and_uncached():
    torch.manual_seed(0)
    config = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=64, is_causal=True, pool_sigma_max=4.0, pool_groups=2)  # fmt: skip
    fast = ContextPoolForCausalLM(ContextPoolConfig(**config)).eval()
    tri = ContextPoolForCausalLM(ContextPoolConfig(**config, pool_implementation="triton")).eval()
    tri.load_state_dict(fast.state_dict())
    ids = torch.randint(3, 50, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(tri(ids).logits, fast(ids).logits, rtol=1e-5, atol=1e-5)
        generated = [m.generate(ids[:, :12], max_new_tokens=6, do_sample=False, pad_token_id=0) for m in (fast, tri)]
    assert torch.equal(*generated)
    loss = tri(ids, labels=ids).loss
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in tri.parameters() if p.grad is not None)


# (batch, H, W, d, stride): a ViT-like grid, strided grids with odd sides (a ResNet's down-sampling), stride 3,
# d across feature chunks, a grid smaller than the window
GRIDS = [(2, 8, 8, 5, 1), (1, 6, 5, 3, 2), (2, 9, 9, 70, 2), (1, 13, 11, 4, 3), (1, 20, 20, 6, 1), (1, 3, 4, 2, 1)]


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: "x".join(map(str, g[:3])) + f"-d{g[3]}-s{g[4]}")
def test_triton_2d_equals_the_reference_with_gradients_float64(grid, normalize):
    batch, height, width, d, stride = grid
    out = ((height - 1) // stride + 1, (width - 1) // stride + 1)
    g = torch.Generator().manual_seed(height * 10 + width)
    x = torch.randn(batch, height, width, d, generator=g, dtype=torch.float64).requires_grad_()
    w = (0.05 + 0.95 * torch.rand(batch, height, width, generator=g, dtype=torch.float64)).requires_grad_()
    s = (0.3 + 1.7 * torch.rand(batch, *out, generator=g, dtype=torch.float64)).requires_grad_()
    kwargs = dict(pool=context_pool_2d, stride=stride, sigma_max=2.0, truncation=2.0, normalize=normalize)
    got, want = _with_grads("triton", x, w, s, **kwargs), _with_grads("reference", x, w, s, **kwargs)
    for name, a, b in zip(("y", "dx", "dw", "dsigma"), got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)


def test_vision_models_with_triton_pooling_match_the_fast_path():
    torch.manual_seed(0)
    vit = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=16,
               patch_size=4, num_labels=3, pool_mix_init=0.7)  # fmt: skip
    resnet = dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=3,
                  pool_downsampling=["stem_conv", "stem_pool", "stages"], pool_mix_init=0.7)  # fmt: skip
    for cls, config_cls, fields, side in ((ContextPoolViTForImageClassification, ContextPoolViTConfig, vit, 16),
                                          (ContextPoolResNetForImageClassification, ContextPoolResNetConfig, resnet,
                                           24)):  # fmt: skip
        fast = cls(config_cls(**fields)).train()
        tri = cls(config_cls(**fields, pool_implementation="triton")).train()
        tri.load_state_dict(fast.state_dict())
        x, labels = torch.randn(2, 3, side, side), torch.tensor([0, 1])
        losses = []
        for model in (fast, tri):
            loss = model(pixel_values=x, labels=labels).loss
            loss.backward()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
        for (name, p_fast), p_tri in zip(fast.named_parameters(), tri.parameters(), strict=True):
            torch.testing.assert_close(p_tri.grad, p_fast.grad, rtol=1e-4, atol=1e-5, msg=name)
