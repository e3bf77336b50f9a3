"""accelerate's big-model offloading: every family runs with its weights offloaded, as transformers' models do.

Offloading (`from_pretrained(device_map=...)` with "cpu" or "disk" entries, `cpu_offload`, `disk_offload`) keeps
each layer's weights on the meta device and loads them in a hook around that layer's own forward. ContextPool's
fast paths read some layers' weights without calling them (the predictor's conv and projection, fused q/k/v
projections, biases added after pooling, the decoding step's kept layout, the ResNet stem conv, the mix of a
pooled block output), so until this file they met meta tensors: every family failed with "Tensor on device cpu is
not on the expected device meta". Each model here is compared with the same model not offloaded.
"""

import copy

import pytest
import torch
from accelerate import cpu_offload, dispatch_model
from helpers import random_ids, tiny_causal_lm
from test_seq2seq import batch as seq2seq_batch
from test_seq2seq import tiny_model as tiny_seq2seq
from test_vision import randomize, tiny_resnet_config, tiny_vit_config
from transformers import AutoModelForCausalLM

from contextpool_hf import (
    ContextPoolConfig,
    ContextPoolForMaskedLM,
    ContextPoolResNetForImageClassification,
    ContextPoolViTForImageClassification,
)
from contextpool_hf.predictor_contextpool import _is_plain_layer

IDS = random_ids(2, 12)

# Each reads weights outside their layers' forwards somewhere: the predictor (all), pooled projections with biases
# added after pooling (pool_groups > 1 with attention_bias), the pooled block output's mix (block_output), the
# predictor's in-projection, a layer subset with learned positions and a wider conv.
CAUSAL_VARIANTS = [
    dict(),
    dict(pool_groups=2, attention_bias=True),
    dict(pool_groups=4, pool_target="kv", attention_bias=True),
    dict(num_key_value_heads=2, pool_groups=2, mlp_type="gated", norm_type="rmsnorm", hidden_act="silu"),
    dict(pool_placement="block_output"),
    dict(pool_predictor_width=16),
    dict(position_embedding_type="absolute", pool_layers=[1], pool_kernel_size=5),
]


def _offloaded_copy(model):
    """A copy of `model` with every weight offloaded by accelerate (hooks load each layer's for its forward)."""
    offloaded = cpu_offload(copy.deepcopy(model), execution_device=torch.device("cpu"))
    assert all(p.is_meta for p in offloaded.parameters())
    return offloaded


def _assert_still_offloaded(model):
    """Nothing was left loaded: every parameter is back on meta after the calls."""
    assert all(p.is_meta for p in model.parameters())


def _greedy(model, ids, **kwargs):
    return model.generate(ids, max_new_tokens=6, do_sample=False, **kwargs)


@pytest.mark.parametrize("overrides", CAUSAL_VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_an_offloaded_causal_lm_gives_the_same_logits_and_tokens(overrides):
    model = tiny_causal_lm(**overrides)
    offloaded = _offloaded_copy(model)
    with torch.no_grad():
        torch.testing.assert_close(offloaded(IDS).logits, model(IDS).logits, rtol=1e-5, atol=1e-5)
        assert torch.equal(_greedy(offloaded, IDS), _greedy(model, IDS))
    _assert_still_offloaded(offloaded)


def test_an_offloaded_causal_lm_decodes_on_a_static_cache():
    model = tiny_causal_lm(pool_groups=2, attention_bias=True)
    offloaded = _offloaded_copy(model)
    with torch.no_grad():
        want = _greedy(model, IDS, cache_implementation="static")
        assert torch.equal(_greedy(offloaded, IDS, cache_implementation="static"), want)
        assert torch.equal(want, _greedy(model, IDS))


def test_an_offloaded_masked_lm_gives_the_same_logits():
    torch.manual_seed(0)
    config = ContextPoolConfig(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, max_position_embeddings=96, pad_token_id=0, pool_groups=2,
                               attention_bias=True)  # fmt: skip
    model = ContextPoolForMaskedLM(config).eval()
    offloaded = _offloaded_copy(model)
    with torch.no_grad():
        torch.testing.assert_close(offloaded(IDS).logits, model(IDS).logits, rtol=1e-5, atol=1e-5)
    _assert_still_offloaded(offloaded)


@pytest.mark.parametrize("overrides", [{}, {"pool_groups": 2}], ids=["groups1", "groups2"])
def test_an_offloaded_seq2seq_model_gives_the_same_logits_and_tokens(overrides):
    model = tiny_seq2seq(**overrides)
    offloaded = _offloaded_copy(model)
    source, mask = seq2seq_batch()
    with torch.no_grad():
        want = model(input_ids=source, attention_mask=mask, decoder_input_ids=source[:, :5]).logits
        got = offloaded(input_ids=source, attention_mask=mask, decoder_input_ids=source[:, :5]).logits
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        tokens = offloaded.generate(input_ids=source, attention_mask=mask, max_new_tokens=5, do_sample=False)
        assert torch.equal(tokens, model.generate(input_ids=source, attention_mask=mask, max_new_tokens=5, do_sample=False))
    _assert_still_offloaded(offloaded)


@pytest.mark.parametrize("family", ["vit", "vit-groups2", "resnet"])
def test_an_offloaded_vision_model_gives_the_same_logits(family):
    torch.manual_seed(0)
    if family == "resnet":  # every pooling site: the stem conv (read channels-last), the stem pool, the stages
        config = tiny_resnet_config(pool_downsampling=["stem_conv", "stem_pool", "stages"], pool_mix_init=0.7)
        model = ContextPoolResNetForImageClassification(config).eval()
    else:  # two groups: q/k/v projected without bias, pooled, then the biases added
        config = tiny_vit_config(pool_mix_init=0.7, pool_groups=2 if family == "vit-groups2" else 1)
        model = ContextPoolViTForImageClassification(config).eval()
    randomize(model)
    offloaded = _offloaded_copy(model)
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(offloaded(pixels).logits, model(pixels).logits, rtol=1e-5, atol=1e-5)
    _assert_still_offloaded(offloaded)


def test_from_pretrained_with_layers_offloaded_to_disk(tmp_path):
    """The way users meet offloading: a device map with "disk" entries (and "cpu" ones, which on this machine
    keep their weights where they are), through the Auto class."""
    model = tiny_causal_lm(pool_groups=2, attention_bias=True)
    model.save_pretrained(tmp_path / "model")
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "disk", "model.layers.1": "disk",
                  "model.norm": "cpu", "lm_head": "cpu"}  # fmt: skip
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model", device_map=device_map,
                                                  offload_folder=tmp_path / "offload")  # fmt: skip
    assert loaded.model.layers[0].attention.pool.predictor.conv.weight.is_meta  # really offloaded
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS).logits, model(IDS).logits, rtol=1e-5, atol=1e-5)
        assert torch.equal(_greedy(loaded, IDS), _greedy(model, IDS))


def test_hooks_that_do_not_offload_keep_the_fast_paths():
    """A model split over devices gets accelerate hooks on every layer that only move inputs: its weights are in
    place, so the fast paths (which read them) stay on; only offloaded layers are called instead."""
    model = tiny_causal_lm()
    dispatched = dispatch_model(copy.deepcopy(model), device_map={"": "cpu"}, force_hooks=True)
    predictor = dispatched.model.layers[0].attention.pool.predictor
    assert hasattr(predictor.conv, "_hf_hook") and _is_plain_layer(predictor.conv) and _is_plain_layer(predictor.proj)
    with torch.no_grad():
        out = dispatched(IDS, use_cache=True)
        dispatched(IDS[:, :1], cache=out.past_key_values)  # one decoding step: builds its plan
        torch.testing.assert_close(out.logits, model(IDS).logits, rtol=0, atol=0)
    plan = out.past_key_values.layers[0].decode_plan[2]
    assert plan.weights is not None  # the kept layout: the step reads the weights, it does not call the layers
    offloaded = _offloaded_copy(model).model.layers[0].attention.pool.predictor
    assert not _is_plain_layer(offloaded.conv) and not _is_plain_layer(offloaded.proj)
