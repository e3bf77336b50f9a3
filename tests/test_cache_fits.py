"""A filled cache that another model or another batch made is refused by name before anything reads it.

Before, a cache of another batch or of another model's sizes failed inside torch.cat ("Sizes of tensors must
match except in dimension 1"), and some were read silently: a cache with fewer layers left the missing layers
starting a new sequence, and pooling state with a wider window (another sigma_max) was pooled over its extra
slots. `check_cache_fits` (keys/values: layers, batch, heads, head width) runs on every forward with a filled
cache; `_check_pool_state` (the ring's window, groups and channels, the predictor's conv state) runs when a
pooling layer first continues a sequence and before every chunk.
"""

from __future__ import annotations

import pytest
import torch
from helpers import random_ids, tiny_causal_lm
from transformers import DynamicCache

from contextpool_hf import ContextPoolForConditionalGeneration
from contextpool_hf.cache_contextpool import ContextPoolStaticCache
from contextpool_hf.configuration_contextpool_seq2seq import ContextPoolSeq2SeqConfig

CACHE_NAME = r"cache \(past_key_values\)"
CACHE_MESSAGE = CACHE_NAME + " holds"


def filled_cache(model, ids, static: bool):
    """The cache `model` leaves after reading `ids`: its own dynamic one, or a static one it filled."""
    if not static:
        return model(ids, use_cache=True).cache
    cache = ContextPoolStaticCache(config=model.config, max_cache_len=24)
    model(ids, cache=cache, use_cache=True)
    return cache


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
@pytest.mark.parametrize("new_tokens", [1, 3], ids=["step", "chunk"])
@pytest.mark.parametrize(
    "other, problem",
    [
        (dict(num_hidden_layers=1), "keys/values of 1 layer, this model has 2"),
        (dict(num_hidden_layers=3), "keys/values of 3 layers, this model has 2"),
        (dict(hidden_size=64), "keys/values of 4 heads of width 16, this model's layers have 4 heads of width 8"),
        (dict(num_key_value_heads=2, pool_groups=2), "keys/values of 2 heads of width 8, this model's layers have 4 heads"),
    ],
    ids=["fewer-layers", "more-layers", "head-width", "key-value-heads"],
)
def test_another_models_keys_and_values_name_the_cache(other, problem, new_tokens, static):
    model, ids = tiny_causal_lm(), random_ids(n=6)
    cache = filled_cache(tiny_causal_lm(**other), ids, static)
    with pytest.raises(ValueError, match=f"{CACHE_MESSAGE} {problem}"):
        model(ids[:, :new_tokens], cache=cache, use_cache=True)


@pytest.mark.parametrize("new_tokens", [1, 3], ids=["step", "chunk"])
def test_a_cache_of_another_batch_names_the_cache(new_tokens):
    model = tiny_causal_lm()
    cache = model(random_ids(batch=2), use_cache=True).cache
    with pytest.raises(ValueError, match=f"{CACHE_MESSAGE} a batch of 2 sequences, the inputs have 3"):
        model(random_ids(batch=3, n=new_tokens), cache=cache)


def test_a_plain_dynamic_cache_of_another_batch_names_the_cache():
    """A transformers DynamicCache (a prefix of keys/values, as PEFT's prefix tuning gives) of another batch."""
    prefix = DynamicCache()
    for layer in range(2):  # (B, Hkv, length, dh) of the tiny model's two layers, batch 3
        prefix.update(torch.randn(3, 4, 5, 8), torch.randn(3, 4, 5, 8), layer)
    with pytest.raises(ValueError, match=f"{CACHE_MESSAGE} a batch of 3 sequences, the inputs have 2"):
        tiny_causal_lm()(random_ids(n=1), cache=prefix)


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
@pytest.mark.parametrize("new_tokens", [1, 3], ids=["step", "chunk"])
@pytest.mark.parametrize(
    "other, found, needed",
    [
        (dict(pool_sigma_max=3.0), "pooling inputs .* \\(2, 1, 7, 32\\)", "\\(2, 1, 5, 32\\)"),
        (dict(pool_groups=2), "pooling inputs .* \\(2, 2, 5, 48\\)", "\\(2, 1, 5, 32\\)"),
        (dict(pool_kernel_size=5), "predictor conv inputs .* \\(2, 4, 32\\)", "\\(2, 2, 32\\)"),
        (dict(pool_predictor_width=16), "predictor conv inputs .* \\(2, 2, 16\\)", "\\(2, 2, 32\\)"),
    ],
    ids=["wider-window", "pooling-groups", "conv-kernel", "predictor-width"],
)
def test_another_pooling_configurations_state_names_the_layer(other, found, needed, new_tokens, static):
    """Keys and values of this model's sizes, pooling state of another configuration: a wider window was read
    silently (a step pooled over 7 slots with this model's table for 5), the rest failed inside torch."""
    model, ids = tiny_causal_lm(), random_ids(n=6)
    cache = filled_cache(tiny_causal_lm(**other), ids, static)
    with pytest.raises(ValueError, match=f"{CACHE_NAME}: layer 0 holds {found}, this model's layer needs {needed}"):
        model(ids[:, :new_tokens], cache=cache, use_cache=True)


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_the_models_own_cache_still_continues_exactly(static):
    """The checks pass the cache the model filled: steps and a chunk after it equal the uncached forward."""
    model, ids = tiny_causal_lm(), random_ids(n=10)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        cache = filled_cache(model, ids[:, :5], static)
        steps = [model(ids[:, i : i + 1], cache=cache, use_cache=True).logits for i in range(5, 7)]
        chunk = model(ids[:, 7:], cache=cache, use_cache=True).logits
    torch.testing.assert_close(torch.cat(steps + [chunk], 1), full[:, 5:], atol=1e-5, rtol=1e-5)


def seq2seq_model(**overrides):
    config = dict(vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2,
                  decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32,
                  pad_token_id=0, decoder_start_token_id=0, pool_sigma_max=3.0)  # fmt: skip
    torch.manual_seed(0)
    return ContextPoolForConditionalGeneration(ContextPoolSeq2SeqConfig(**{**config, **overrides})).eval()


@pytest.mark.parametrize(
    "other, batch, problem",
    [
        (dict(), 3, "a batch of 2 sequences, the inputs have 3"),
        (dict(decoder_layers=1), 2, "keys/values of 1 layer, this model has 2"),
        (dict(d_model=32), 2, "keys/values of 2 heads of width 16, this model's layers have 2 heads of width 8"),
    ],
    ids=["batch", "fewer-layers", "head-width"],
)
def test_a_seq2seq_cache_that_does_not_fit_names_the_cache(other, batch, problem):
    model = seq2seq_model()
    source = random_ids(batch=2, n=6, vocab_size=40)
    cache = seq2seq_model(**other)(source, decoder_input_ids=source[:, :3], use_cache=True).cache
    new_source = random_ids(batch=batch, n=6, vocab_size=40)
    with pytest.raises(ValueError, match=f"{CACHE_MESSAGE} {problem}"):
        model(new_source, decoder_input_ids=new_source[:, :1], cache=cache)
