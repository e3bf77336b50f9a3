"""The fixed-size cache (ContextPoolStaticCache; transformers' StaticCache; cache_implementation="static").

The reference is the uncached forward in float64: a static cache fed chunk by chunk and token by
token gives its logits and pooling sizes; generation gives the dynamic cache's tokens; a decoding
step traces as one graph (torch.compile, fullgraph) that is reused from step to step.
"""

import pytest
import torch
from helpers import CACHE_VARIANTS, random_ids, tiny_causal_lm
from remote_utils import run_without_package
from transformers import CompileConfig, StaticCache

from contextpool_hf import ContextPoolStaticCache
from contextpool_hf.cache_contextpool import ContextPoolStaticLayer

VARIANTS = CACHE_VARIANTS + [
    dict(pool_placement="block_output"),
    dict(pool_mode="fixed_learned", pool_groups=2),
    dict(attention_window=4),
]
SPANS = [(0, 5), (5, 8), (8, 9), (9, 10), (10, 16), (16, 17), (17, 18), (18, 20)]


def _name(overrides):
    return ",".join(f"{k}={v}" for k, v in overrides.items()) or "default"


def _static_steps(model, input_ids, spans, max_cache_len, attention_mask=None, cache=None, **kwargs):
    cache = cache if cache is not None else ContextPoolStaticCache(config=model.config, max_cache_len=max_cache_len)
    outputs = []
    for start, stop in spans:
        mask = attention_mask[:, :stop] if attention_mask is not None else None
        out = model(input_ids[:, start:stop], attention_mask=mask, cache=cache, **kwargs)
        assert out.cache is cache and int(cache.get_seq_length()) == stop
        outputs.append(out)
    return outputs, cache


@pytest.mark.parametrize("overrides", VARIANTS, ids=_name)
def test_static_cache_chunks_and_steps_equal_the_uncached_forward_in_float64(overrides):
    model = tiny_causal_lm(**overrides).double()
    input_ids = random_ids(n=20)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :3] = 0  # left padding in one row
    with torch.no_grad():
        full = model(input_ids, attention_mask=attention_mask, use_cache=False, output_pooling_sizes=True)
        outputs, cache = _static_steps(model, input_ids, SPANS, 32, attention_mask, output_pooling_sizes=True)
    assert all(isinstance(layer, ContextPoolStaticLayer) for layer in cache.layers)
    logits = torch.cat([o.logits for o in outputs], 1)
    # padded positions' outputs are not defined (fully masked rows); the real tokens' must agree
    torch.testing.assert_close(logits[0], full.logits[0], atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(logits[1, 3:], full.logits[1, 3:], atol=1e-10, rtol=1e-10)
    for layer, sigma in enumerate(full.pooling_sizes):
        if sigma is None:
            assert all(o.pooling_sizes[layer] is None for o in outputs)
            continue
        steps = torch.cat([o.pooling_sizes[layer] for o in outputs], -1)
        torch.testing.assert_close(steps[0], sigma[0], atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(steps[1, ..., 3:], sigma[1, ..., 3:], atol=1e-10, rtol=1e-10)


def test_the_mask_may_span_the_whole_cache_or_only_the_tokens_so_far():
    model = tiny_causal_lm()
    input_ids = random_ids(n=12)
    mask = torch.ones_like(input_ids)
    mask[0, :2] = 0
    spans = [(0, 6)] + [(t, t + 1) for t in range(6, 12)]
    with torch.no_grad():
        grown, _ = _static_steps(model, input_ids, spans, 16, attention_mask=mask)
        cache = ContextPoolStaticCache(config=model.config, max_cache_len=16)
        padded = torch.nn.functional.pad(mask, (0, 4))  # (B, max_cache_len): what generate() passes
        whole = [model(input_ids[:, a:b], attention_mask=padded, cache=cache) for a, b in spans]
    torch.testing.assert_close(torch.cat([o.logits for o in whole], 1), torch.cat([o.logits for o in grown], 1),
                               atol=0, rtol=0)  # fmt: skip


def _greedy(model, input_ids, attention_mask, **kwargs):
    out = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=14, do_sample=False, pad_token_id=0,
                         output_logits=True, return_dict_in_generate=True, **kwargs)  # fmt: skip
    return out.sequences, torch.stack(out.logits, 1)  # (B, n + new), (B, new, vocab)


def _assert_same_generation(got, expected):
    """The same tokens and, at every step, the same next-token logits (not only the same argmax)."""
    assert torch.equal(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("overrides", VARIANTS[:6], ids=_name)
def test_generate_with_a_static_cache_gives_the_dynamic_cache_tokens(overrides):
    model = tiny_causal_lm(**overrides)
    input_ids = random_ids(batch=3, n=9)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :4] = 0
    expected = _greedy(model, input_ids, attention_mask)
    _assert_same_generation(_greedy(model, input_ids, attention_mask, cache_implementation="static"), expected)
    # transformers' own StaticCache, built by the user: given ContextPool layers and filled in place
    cache = StaticCache(config=model.config, max_cache_len=40)
    _assert_same_generation(_greedy(model, input_ids, attention_mask, cache=cache), expected)
    assert isinstance(cache.layers[0], ContextPoolStaticLayer) and int(cache.get_seq_length()) == 9 + 14 - 1
    # reset, then reuse: the same tokens again
    cache.reset()
    assert not cache.layers[0].pool_started
    _assert_same_generation(_greedy(model, input_ids, attention_mask, cache=cache), expected)


def test_a_reused_static_cache_reads_the_predictor_weights_as_they_are_now():
    """A static cache reused after `reset()` (as generate reuses its own) starts a new sequence, which must read the
    predictor's weights anew: here after an edit through `.data`, which no check between steps can see."""
    model = tiny_causal_lm()
    input_ids = random_ids(batch=2, n=9)
    attention_mask = torch.ones_like(input_ids)
    cache = StaticCache(config=model.config, max_cache_len=40)
    before = _greedy(model, input_ids, attention_mask, cache=cache)
    assert all(layer.decode_plan is not None for layer in cache.layers)
    with torch.no_grad():
        for layer in model.model.layers:
            predictor = layer.attention.pool.predictor
            predictor.conv.weight.data.mul_(-4.0)
            predictor.proj.weight.data.mul_(8.0)
    cache.reset()
    assert all(layer.decode_plan is None for layer in cache.layers)
    expected = _greedy(model, input_ids, attention_mask)  # a new dynamic cache
    assert (expected[1] - before[1]).abs().max() > 1e-3  # the edit reaches the logits
    _assert_same_generation(_greedy(model, input_ids, attention_mask, cache=cache), expected)


def test_beam_search_and_sampling_with_a_static_cache_equal_the_dynamic_cache():
    model = tiny_causal_lm()
    input_ids = random_ids(batch=2, n=6)
    attention_mask = torch.ones_like(input_ids)
    beams = dict(num_beams=3, num_return_sequences=2)
    _assert_same_generation(_greedy(model, input_ids, attention_mask, cache_implementation="static", **beams),
                            _greedy(model, input_ids, attention_mask, **beams))  # fmt: skip
    sampled = []
    for cache_implementation in ("static", None):
        torch.manual_seed(3)
        sampled.append(model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=10, do_sample=True,
                                      top_k=20, pad_token_id=0, cache_implementation=cache_implementation))  # fmt: skip
    assert torch.equal(*sampled)


@pytest.mark.parametrize("overrides", [dict(pool_groups=2), dict(pool_placement="block_output"),
                                       dict(pool_mode="fixed_learned")], ids=_name)  # fmt: skip
def test_a_compiled_decoding_step_is_one_graph_reused_at_every_step(overrides):
    """fullgraph=True: no graph break anywhere in a step; error_on_recompile: the step's guards hold as
    the sequence grows (no Python int that changes per step, no shape that grows)."""
    torch._dynamo.reset()
    model = tiny_causal_lm(**overrides)
    input_ids = random_ids(n=20)
    attention_mask = torch.nn.functional.pad(torch.ones_like(input_ids), (0, 4))  # (B, max_cache_len)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        eager, _ = _static_steps(model, input_ids, [(0, 8)] + [(t, t + 1) for t in range(8, 20)], 24)
        cache = ContextPoolStaticCache(config=model.config, max_cache_len=24)
        steps = [model(input_ids[:, :8], attention_mask=attention_mask, cache=cache).logits]  # prefill, uncompiled
        steps.append(compiled(input_ids[:, 8:9], attention_mask=attention_mask, cache=cache).logits)  # compiles
        with torch._dynamo.config.patch(error_on_recompile=True):
            for t in range(9, 20):
                steps.append(compiled(input_ids[:, t : t + 1], attention_mask=attention_mask, cache=cache).logits)
    torch.testing.assert_close(torch.cat(steps, 1), torch.cat([o.logits for o in eager], 1), atol=1e-6, rtol=1e-5)
    torch._dynamo.reset()


@pytest.mark.slow
def test_generate_compiled_with_inductor_gives_the_eager_tokens():
    torch._dynamo.reset()
    model = tiny_causal_lm()
    input_ids = random_ids(batch=1, n=10)
    attention_mask = torch.ones_like(input_ids)
    config = CompileConfig(fullgraph=True, mode="default")
    config._compile_all_devices = True  # transformers compiles on CUDA-like devices only unless told
    expected = _greedy(model, input_ids, attention_mask)
    for _ in range(2):  # the second call reuses the compiled step
        _assert_same_generation(_greedy(model, input_ids, attention_mask, cache_implementation="static",
                                        compile_config=config), expected)  # fmt: skip
    torch._dynamo.reset()


def test_static_cache_misuse_raises_a_clear_error():
    model = tiny_causal_lm()
    input_ids = random_ids(n=6)
    cache = ContextPoolStaticCache(config=model.config, max_cache_len=8)
    model(input_ids, cache=cache)
    with pytest.raises(ValueError, match="max_cache_len=8 tokens and 6 are used"):
        model(random_ids(n=3), cache=cache)
    with pytest.raises(ValueError, match="filled with batch 2, got batch 1"):
        model(random_ids(batch=1, n=1), cache=cache)
    with pytest.raises(ValueError, match=r"attention_mask with a static cache must be \(batch, max_cache_len\)"):
        model(random_ids(n=1), attention_mask=torch.ones(2, 5, dtype=torch.long), cache=cache)
    with pytest.raises(NotImplementedError, match="cannot be cropped"):
        cache.crop(-2)
    used = StaticCache(config=model.config, max_cache_len=8)
    used.update(torch.zeros(2, 4, 3, 8), torch.zeros(2, 4, 3, 8), 0)  # keys/values with no pooling state
    with pytest.raises(ValueError, match="already holds tokens has no ContextPool pooling state"):
        model(input_ids, cache=used)
    with pytest.raises(ValueError, match="cache_implementation='offloaded_static' is not supported"):
        model.generate(input_ids, max_new_tokens=2, cache_implementation="offloaded_static", pad_token_id=0)
    filled = ContextPoolStaticCache(config=model.config, max_cache_len=8)
    with torch.inference_mode():
        model(input_ids, cache=filled)
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"filled under torch.inference_mode\(\).*new cache"):
        model(random_ids(n=1), cache=filled)
    flash = tiny_causal_lm()
    flash.config._attn_implementation = "flash_attention_2"  # set directly: the package is not installed here
    with pytest.raises(ValueError, match="'flash_attention_2' is not supported with a static cache"):
        flash(input_ids, cache=ContextPoolStaticCache(config=flash.config, max_cache_len=8))


REMOTE = """
import sys
import torch
from transformers import AutoModelForCausalLM, StaticCache

model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
ids = torch.tensor([[5, 9, 14, 3, 22, 41, 7, 18]])
expected = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
static = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0, cache_implementation="static")
cache = StaticCache(config=model.config, max_cache_len=24)
by_hand = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0, cache=cache)
assert torch.equal(static, expected) and torch.equal(by_hand, expected), (static, by_hand, expected)
assert type(cache.layers[0]).__name__ == "ContextPoolStaticLayer"
print("ok")
"""


def test_static_cache_generation_through_remote_code(tmp_path):
    model = tiny_causal_lm()
    model.save_pretrained(tmp_path)
    assert "ok" in run_without_package(REMOTE, args=[tmp_path])


@pytest.mark.parametrize("cache_implementation", [None, "static"])
def test_chunked_prefill_gives_the_unchunked_generation(cache_implementation):
    """generate(prefill_chunk_size=k) feeds the prompt k tokens at a time through the cache before decoding."""
    model = tiny_causal_lm()
    input_ids = random_ids(batch=1, n=13)
    attention_mask = torch.ones_like(input_ids)
    expected = _greedy(model, input_ids, attention_mask)
    got = _greedy(model, input_ids, attention_mask, prefill_chunk_size=4, cache_implementation=cache_implementation)
    _assert_same_generation(got, expected)


def test_an_early_initialized_static_cache_keeps_its_buffers():
    """StaticCache.early_initialization allocates keys/values before the first forward (torch.export does it):
    the layers become ContextPool layers in place, with the same tensors."""
    model = tiny_causal_lm()
    input_ids = random_ids(n=9)
    cache = StaticCache(config=model.config, max_cache_len=16)
    cache.early_initialization(batch_size=2, num_heads=4, head_dim=8, dtype=torch.float32, device="cpu")
    keys = cache.layers[0].keys
    with torch.no_grad():
        got = model(input_ids, cache=cache).logits
        expected = model(input_ids, use_cache=False).logits
    assert isinstance(cache.layers[0], ContextPoolStaticLayer) and cache.layers[0].keys is keys
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("overrides", [{}, dict(pool_groups=2)], ids=_name)
def test_a_step_with_autograd_on_a_static_cache_has_the_dynamic_caches_gradients(overrides):
    """The pooling state is written outside autograd, so with autograd on a step pools its newest input as itself:
    after a prefix and some steps (no gradients), a decoding step's logits and parameter gradients, float64, equal
    those of the same step on the dynamic cache, at every slot of its ring (R + 1 = 5 here: the slot wraps)."""
    model = tiny_causal_lm(**overrides).double()
    input_ids = random_ids(n=14)
    for t in range(6, 14):
        results = {}
        for name in ("static", "dynamic"):
            cache = ContextPoolStaticCache(config=model.config, max_cache_len=16) if name == "static" else None
            with torch.no_grad():
                cache = model(input_ids[:, :6], cache=cache, use_cache=True).cache
                for s in range(6, t):
                    model(input_ids[:, s : s + 1], cache=cache, use_cache=True)
            model.zero_grad()
            logits = model(input_ids[:, t : t + 1], cache=cache, use_cache=True).logits
            logits.square().sum().backward()
            results[name] = logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        torch.testing.assert_close(results["static"][0], results["dynamic"][0], atol=1e-10, rtol=1e-10)
        assert results["static"][1].keys() == results["dynamic"][1].keys()
        assert any("predictor" in n for n in results["static"][1])  # the newest input's weight reached the predictor
        for n, grad in results["static"][1].items():
            torch.testing.assert_close(grad, results["dynamic"][1][n], atol=1e-10, rtol=1e-10, msg=n)


@pytest.mark.parametrize(
    ("overrides", "pad", "plain"),
    [({"attn_implementation": "sdpa"}, False, True), ({"attn_implementation": "sdpa"}, True, False),
     ({"attn_implementation": "sdpa", "attention_window": 4}, False, False),
     ({"attn_implementation": "eager"}, False, False)],
    ids=["sdpa", "sdpa-padded", "sdpa-window", "eager"],
)  # fmt: skip
def test_a_prompt_on_an_empty_static_cache_attends_over_its_own_slots(monkeypatch, overrides, pad, plain):
    """Without padding or a shorter window, sdpa's prompt on an empty static cache takes SDPA's causal kernel over
    its n keys (no mask), as Llama's does; otherwise the mask over every slot. Either way, and for the steps and
    chunks that follow, the logits equal the uncached forward's (float64)."""
    model = tiny_causal_lm(**overrides).double()
    input_ids = random_ids(n=12)
    attention_mask = torch.ones_like(input_ids)
    if pad:
        attention_mask[1, :2] = 0
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, **kwargs):
        calls.append((query.shape[2], key.shape[2], attn_mask is None, kwargs.get("is_causal")))
        return sdpa(query, key, value, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        full = model(input_ids, attention_mask=attention_mask, use_cache=False).logits
        calls.clear()
        outputs, _ = _static_steps(model, input_ids, [(0, 6), (6, 7), (7, 10), (10, 11), (11, 12)], 16, attention_mask)
    got = torch.cat([o.logits for o in outputs], 1)
    rows = slice(None) if not pad else 0
    torch.testing.assert_close(got[rows], full[rows], atol=1e-10, rtol=1e-10)
    if pad:
        torch.testing.assert_close(got[1, 2:], full[1, 2:], atol=1e-10, rtol=1e-10)
    if overrides["attn_implementation"] == "sdpa":
        prompt = calls[: model.config.num_hidden_layers]
        later = calls[model.config.num_hidden_layers :]
        assert all(c == ((6, 6, True, True) if plain else (6, 16, False, False)) for c in prompt), prompt
        assert later and all(kv == 16 and not no_mask for _, kv, no_mask, _ in later)  # after the prompt: the mask
