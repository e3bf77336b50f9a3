"""transformers-native features (issue 12): positions past the limit in rotary models, attention
backends through ALL_ATTENTION_FUNCTIONS, PEFT prefix tuning, assisted decoding, packed training."""

import pytest
import torch

from contextpool_hf import ContextPoolConfig, ContextPoolForCausalLM

VOCAB = 61


def tiny_lm(seed=0, **overrides) -> ContextPoolForCausalLM:
    base = dict(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=24, pad_token_id=0, eos_token_id=None, bos_token_id=None, is_causal=True,
        pool_sigma_max=2.0, pool_truncation=2.0, initializer_range=0.2,
    )
    base.update(overrides)
    torch.manual_seed(seed)
    return ContextPoolForCausalLM(ContextPoolConfig(**base)).eval()


def ids(batch=2, n=7, seed=1):
    return torch.randint(1, VOCAB, (batch, n), generator=torch.Generator().manual_seed(seed))


# -- item 6: max_position_embeddings is advisory for rotary positions ---------------------------


def test_rotary_model_generates_past_max_position_embeddings():
    model = tiny_lm()
    prompt = ids(n=20)
    # 20 + 16 = 36 tokens, past the 24 of max_position_embeddings
    cached = model.generate(prompt, max_new_tokens=16, do_sample=False, pad_token_id=0)
    uncached = model.generate(prompt, max_new_tokens=16, do_sample=False, pad_token_id=0, use_cache=False)
    assert cached.shape == (2, 36) and torch.equal(cached, uncached)
    # logits of the whole 36-token sequence: one uncached forward == the cached run token by token
    full = model(cached, use_cache=False).logits
    out = model(cached[:, :20], use_cache=True)
    steps, cache = [out.logits], out.cache
    for t in range(20, 36):
        out = model(cached[:, t : t + 1], cache=cache, use_cache=True)
        steps.append(out.logits)
        cache = out.cache
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    # explicit position_ids past the limit are accepted too
    positions = torch.arange(30, 37).unsqueeze(0)
    assert torch.isfinite(model(ids(n=7), position_ids=positions).logits).all()


def test_absolute_positions_still_refuse_past_the_table():
    model = tiny_lm(position_embedding_type="absolute")
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(ids(n=25))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(ids(n=3), position_ids=torch.tensor([[22, 23, 24]]))
