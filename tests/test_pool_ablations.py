"""The issue-16 ablation knobs: pool_placement="block_output" and the fixed (non-adaptive) pool modes.

Each must be exact under the cache (chunked and token-by-token == one uncached pass), survive a
remote-code save/load without the package, and mean what its docstring says: block_output pools the
residual stream entering the layer; the fixed modes give every token w = 1 and one sigma.
"""

import functools
import os

import pytest
import torch
from helpers import TINY_VOCAB, random_ids, tiny_causal_lm
from remote_utils import run_without_package

from contextpool_hf import ContextPoolConfig
from contextpool_hf.pooling_contextpool import ContextPool, context_pool

VOCAB = TINY_VOCAB
tiny_lm = tiny_causal_lm
ids = functools.partial(random_ids, n=20)


VARIANTS = [
    dict(pool_placement="block_output"),
    dict(pool_placement="block_output", pool_layers=[1], mlp_type="gated", norm_type="rmsnorm", hidden_act="silu"),
    dict(pool_placement="block_output", pool_mode="fixed_learned", pool_fixed_sigma=1.2),
    dict(pool_mode="fixed"),
    dict(pool_mode="fixed_learned", pool_groups=2),
    dict(pool_mode="fixed", pool_target="kv", position_embedding_type="absolute"),
]


def _name(overrides):
    return ",".join(f"{k}={v}" for k, v in overrides.items())


@pytest.mark.parametrize("overrides", VARIANTS, ids=_name)
def test_cached_chunks_and_steps_equal_one_pass(overrides):
    model = tiny_lm(**overrides)
    input_ids = ids()
    full = model(input_ids, use_cache=False, output_pooling_sizes=True)
    cache, logits, sigmas = None, [], []
    for start, stop in [(0, 6), (6, 7), (7, 8), (8, 15), (15, 16), (16, 20)]:
        out = model(input_ids[:, start:stop], cache=cache, use_cache=True, output_pooling_sizes=True)
        cache = out.cache
        logits.append(out.logits)
        sigmas.append(out.pooling_sizes)
    torch.testing.assert_close(torch.cat(logits, 1), full.logits, atol=1e-5, rtol=1e-5)
    for layer, sigma in enumerate(full.pooling_sizes):
        if sigma is not None:
            torch.testing.assert_close(torch.cat([s[layer] for s in sigmas], -1), sigma)


@pytest.mark.parametrize("overrides", VARIANTS[:1] + VARIANTS[3:4], ids=_name)
def test_generate_with_cache_equals_without(overrides):
    model = tiny_lm(**overrides)
    prompt = ids(n=7)
    mask = torch.ones_like(prompt)
    prompt[0, :2], mask[0, :2] = 0, 0  # left padding on one row
    kwargs = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0,
                  output_logits=True, return_dict_in_generate=True)  # fmt: skip
    cached = model.generate(prompt, use_cache=True, **kwargs)
    uncached = model.generate(prompt, use_cache=False, **kwargs)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(torch.stack(cached.logits), torch.stack(uncached.logits), atol=1e-5, rtol=1e-5)


def test_block_output_pools_the_residual_stream():
    """One block_output layer with fixed pooling == the same layer without pooling, fed the pooled embeddings."""
    common = dict(num_hidden_layers=1, pool_implementation="reference")
    pooled_model = tiny_lm(pool_placement="block_output", pool_mode="fixed", pool_fixed_sigma=1.5, **common)
    plain = tiny_lm(pool_layers=[], **common)
    missing, unexpected = plain.load_state_dict(pooled_model.state_dict(), strict=False)
    assert not missing and unexpected == ["model.layers.0.attention.pool_mix"]
    input_ids = ids(n=12)
    embeddings = pooled_model.model.embed_tokens(input_ids)
    ones = torch.ones(input_ids.shape)
    pooled = context_pool(embeddings, ones, torch.full(input_ids.shape, 1.5), causal=True, sigma_max=2.0,
                          truncation=2.0, implementation="reference")  # fmt: skip
    with torch.no_grad():
        expected = plain(inputs_embeds=pooled, use_cache=False).logits
        got = pooled_model(input_ids, use_cache=False).logits
        unpooled = plain(input_ids, use_cache=False).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, unpooled, atol=1e-3)  # the pooling did something


def test_block_output_with_closed_mix_is_the_plain_model():
    pooled_model = tiny_lm(pool_placement="block_output", pool_mix_init=0.0)
    plain = tiny_lm(pool_layers=[])
    plain.load_state_dict(pooled_model.state_dict(), strict=False)
    input_ids = ids()
    with torch.no_grad():
        torch.testing.assert_close(pooled_model(input_ids).logits, plain(input_ids).logits)


@pytest.mark.parametrize("mode", ["fixed", "fixed_learned"])
def test_fixed_modes_give_every_token_the_same_sigma(mode):
    model = tiny_lm(pool_mode=mode, pool_fixed_sigma=0.9, pool_groups=2)
    model.train()
    out = model(ids(), labels=ids(), output_pooling_sizes=True, use_cache=False)
    for layer in model.model.layers:
        pool = layer.attention.pool
        assert pool.predictor is None  # nothing input-adaptive
    for sigma in out.pooling_sizes:
        assert sigma.shape == (2, 2, 20)
        torch.testing.assert_close(sigma, torch.full_like(sigma, 0.9))
    out.loss.backward()
    learned = [layer.attention.pool.sigma_logit for layer in model.model.layers]
    if mode == "fixed":
        assert all(p is None for p in learned)
    else:  # one learned scalar per layer and group, and it gets a gradient
        assert all(p.shape == (2,) and p.grad is not None and p.grad.abs().sum() > 0 for p in learned)


def test_fixed_learned_sigma_is_the_learned_scalar():
    model = tiny_lm(pool_mode="fixed_learned")
    with torch.no_grad():
        model.model.layers[1].attention.pool.sigma_logit.fill_(-1.0)
    sigma = model(ids(), output_pooling_sizes=True).pooling_sizes[1]
    expected = 0.5 + (2.0 - 0.5) * torch.sigmoid(torch.tensor(-1.0))
    torch.testing.assert_close(sigma, torch.full_like(sigma, expected.item()))
    # the default width is the midpoint, where an adaptive predictor starts
    default = tiny_lm(pool_mode="fixed").model.layers[0].attention.pool.fixed_sigma
    assert default == pytest.approx(1.25)


def test_fixed_pool_weights_are_one_and_zero_on_padding():
    pool = ContextPool(8, groups=1, sigma_max=2.0, mode="fixed", causal=False)
    hidden = torch.randn(2, 5, 8)
    keep = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    weights, sigma, _ = pool.predict(hidden, keep)
    assert torch.equal(weights, keep.unsqueeze(1).float())
    torch.testing.assert_close(sigma, torch.full((2, 1, 5), 1.25))


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(pool_placement="after"), "pool_placement"),
        (dict(pool_mode="learned"), "pool_mode"),
        (dict(pool_placement="block_output", pool_groups=2), "pool_groups"),
        (dict(pool_placement="block_output", pool_target="kv"), "pool_target"),
        (dict(pool_mode="fixed", pool_fixed_sigma=9.0), "pool_fixed_sigma"),
        (dict(pool_mode="fixed_learned", pool_fixed_sigma=2.0), "pool_fixed_sigma"),
    ],
)
def test_bad_ablation_values_name_the_field(overrides, match):
    with pytest.raises(Exception, match=match):
        tiny_lm(**overrides)


def test_contextpool_module_rejects_bad_mode_and_sigma():
    with pytest.raises(ValueError, match="mode must be one of"):
        ContextPool(8, mode="constant")
    with pytest.raises(ValueError, match="fixed_sigma"):
        ContextPool(8, sigma_max=2.0, mode="fixed", fixed_sigma=0.1)


def test_defaults_unchanged():
    config = ContextPoolConfig()
    assert (config.pool_placement, config.pool_mode, config.pool_fixed_sigma) == ("attention_input", "adaptive", None)


REMOTE = """
import sys
import torch
from transformers import AutoModelForCausalLM

root = sys.argv[1]
inputs = torch.load(root + "/inputs.pt")
results = {}
for name in ("block_output", "fixed_learned"):
    model = AutoModelForCausalLM.from_pretrained(root + "/" + name, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    with torch.no_grad():
        out = model(inputs, output_pooling_sizes=True, use_cache=False)
    results[name + ".logits"] = out.logits
    results[name + ".sigma"] = out.pooling_sizes[1]
    results[name + ".generate"] = model.generate(inputs, max_new_tokens=6, do_sample=False, pad_token_id=0)
torch.save(results, root + "/remote.pt")
"""


def test_remote_code_round_trip(tmp_path):
    models = {
        "block_output": tiny_lm(pool_placement="block_output", pool_mode="fixed"),
        "fixed_learned": tiny_lm(pool_mode="fixed_learned", pool_groups=2),
    }
    with torch.no_grad():  # a trained-looking learned sigma, not the initial one
        models["fixed_learned"].model.layers[1].attention.pool.sigma_logit.copy_(torch.tensor([0.7, -1.3]))
    inputs = ids(n=9)
    torch.save(inputs, tmp_path / "inputs.pt")
    for name, model in models.items():
        model.save_pretrained(tmp_path / name)
    run_without_package(REMOTE, args=[tmp_path])
    remote = torch.load(tmp_path / "remote.pt")
    # The child runs on OMP_NUM_THREADS threads (1 unless set; remote_utils); a float32 matmul splits its
    # reduction differently on another thread count, so the bit-exact comparison uses the child's count.
    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    try:
        local = {}
        for name, model in models.items():
            with torch.no_grad():
                local[name] = model(inputs, output_pooling_sizes=True, use_cache=False)
    finally:
        torch.set_num_threads(threads)
    for name, model in models.items():
        out = local[name]
        torch.testing.assert_close(remote[name + ".logits"], out.logits, atol=0, rtol=0)
        torch.testing.assert_close(remote[name + ".sigma"], out.pooling_sizes[1], atol=0, rtol=0)
        expected = model.generate(inputs, max_new_tokens=6, do_sample=False, pad_token_id=0)
        assert torch.equal(remote[name + ".generate"], expected)
