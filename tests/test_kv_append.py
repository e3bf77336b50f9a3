"""ContextPoolCacheLayer's keys/values: appended in place into a buffer with room (no copy of the whole cache per
decoding step), yet equal to transformers' DynamicLayer after any sequence of cache operations, and never
writing into a tensor it handed out earlier."""

import copy
import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.cache_utils import DynamicLayer

from contextpool_hf import ContextPoolCache, ContextPoolConfig, ContextPoolForCausalLM
from contextpool_hf.cache_contextpool import ContextPoolCacheLayer

BATCH, HEADS, HEAD_DIM = 3, 2, 4


def _states(rng: random.Random, batch: int, n: int, requires_grad=False, dtype=torch.float32):
    generator = torch.Generator().manual_seed(rng.randrange(1 << 30))
    keys, values = (torch.randn(batch, HEADS, n, HEAD_DIM, generator=generator, dtype=dtype) for _ in range(2))
    return keys.requires_grad_(requires_grad), values.requires_grad_(requires_grad)


def _apply(layer, op, args):
    """One cache operation on `layer`; -> what update returned (None for the other operations)."""
    if op == "update":
        keys, values, mode = args
        if mode == "grad":
            with torch.enable_grad():
                return layer.update(keys, values)
        if mode == "inference":
            with torch.inference_mode():
                return layer.update(keys, values)
        with torch.no_grad():
            return layer.update(keys, values)
    getattr(layer, op)(*args)
    return None


def _random_ops(seed: int, count: int = 40):
    """A random sequence of the cache operations generate() and its decoding strategies use."""
    rng = random.Random(seed)
    batch, length, ops = BATCH, 0, []
    for _ in range(count):
        choice = rng.random()
        if length > 3 and choice < 0.08:
            k = rng.randint(1, length - 1)
            ops.append(("crop", (-k,)))
            length -= k
        elif length and choice < 0.13:
            ops.append(("reorder_cache", (torch.tensor(rng.sample(range(batch), batch)),)))
        elif length and choice < 0.16 and batch > 1:
            keep = sorted(rng.sample(range(batch), batch - 1))
            ops.append(("batch_select_indices", (torch.tensor(keep),)))
            batch -= 1
        elif length and choice < 0.18 and batch < 6:
            ops.append(("batch_repeat_interleave", (2,)))
            batch *= 2
        elif choice < 0.20:
            ops.append(("reset", ()))
            length = 0
        else:
            n = rng.choice([1, 1, 1, 1, 2, 5, 17, 70])
            mode = rng.choice(["no_grad"] * 6 + ["grad", "inference"])
            ops.append(("update", (*_states(rng, batch, n, requires_grad=mode == "grad"), mode)))
            length += n
    return ops


@pytest.mark.parametrize("seed", range(24))
def test_cache_operations_equal_dynamic_layer_and_leave_returned_tensors_alone(seed):
    ours, reference = ContextPoolCacheLayer(), DynamicLayer()
    handed_out = []  # (tensor update returned, its value then)
    appended_in_place = 0
    for op, args in _random_ops(seed):
        buffers_before = ours._kv_buffers
        returned = _apply(ours, op, args)
        expected = _apply(reference, op, args)
        if returned is not None:
            for got, want in zip(returned, expected, strict=True):
                torch.testing.assert_close(got, want, rtol=0, atol=0)
                assert got.requires_grad == want.requires_grad
                handed_out.append((got, got.detach().clone()))
            if buffers_before is not None and ours._kv_buffers is buffers_before:
                appended_in_place += 1
        if reference.is_initialized and reference.keys is not None:
            torch.testing.assert_close(ours.keys, reference.keys, rtol=0, atol=0)
            torch.testing.assert_close(ours.values, reference.values, rtol=0, atol=0)
            assert ours.get_seq_length() == reference.get_seq_length()
        for tensor, value in handed_out:
            assert torch.equal(tensor.detach(), value), f"an earlier result changed after {op}"
    assert appended_in_place > 0  # the in-place path ran, not only the concatenation


def test_gradients_reach_states_appended_with_autograd_on():
    """A step with autograd on concatenates: gradients reach its new keys/values and the earlier ones."""
    rng = random.Random(0)
    layer = ContextPoolCacheLayer()
    first = _states(rng, BATCH, 5, requires_grad=True)
    with torch.no_grad():
        layer.update(*(t.detach() for t in _states(rng, BATCH, 3)))  # an inference prefix...
        layer.update(*(t.detach() for t in _states(rng, BATCH, 1)))  # ...appended in place
    assert layer._kv_buffers is not None
    keys, values = layer.update(*first)
    (keys.sum() + 2 * values.sum()).backward()
    assert torch.equal(first[0].grad, torch.ones_like(first[0])) and torch.equal(first[1].grad, 2 * torch.ones_like(first[1]))


def test_a_step_with_autograd_on_never_writes_into_a_tensor_saved_for_backward():
    """Frozen key/value projections (only the queries train, e.g. a LoRA on q) give states without grad, yet
    attention saves the returned keys for backward: a later step must not write into their storage."""
    rng = random.Random(2)
    layer = ContextPoolCacheLayer()
    with torch.no_grad():
        layer.update(*_states(rng, BATCH, 4))
        layer.update(*_states(rng, BATCH, 1))
    query = torch.randn(BATCH, HEADS, 1, HEAD_DIM, requires_grad=True)
    keys, _ = layer.update(*_states(rng, BATCH, 1))
    score = (query @ keys.transpose(-1, -2)).sum()  # saves keys for backward
    layer.update(*_states(rng, BATCH, 1))
    score.backward()  # torch raises here if the second step wrote into the saved keys' storage
    torch.testing.assert_close(query.grad, keys.sum(2, keepdim=True))


def test_buffer_room_is_bounded():
    """The buffer holds the filled tokens plus at most max(64, length / 8) (+ the step's own tokens) more."""
    layer = ContextPoolCacheLayer()
    rng = random.Random(1)
    with torch.no_grad():
        for n in [300] + [1] * 400:
            layer.update(*_states(rng, 1, n))
            if layer._kv_buffers is not None:
                length, capacity = layer.get_seq_length(), layer._kv_buffers[0].shape[-2]
                assert length <= capacity <= length + max(ContextPoolCacheLayer._KV_MIN_ROOM,
                                                          length // ContextPoolCacheLayer._KV_ROOM_FRACTION) + 1
                assert layer.keys.data_ptr() == layer._kv_buffers[0].data_ptr()  # a view of the buffer


def test_long_decoding_through_buffer_growth_equals_the_full_forward():
    """150 single-token steps (the buffer grows twice) give the full forward's logits."""
    torch.manual_seed(0)
    model = ContextPoolForCausalLM(ContextPoolConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=256, is_causal=True, pool_sigma_max=2.0, pool_truncation=2.0,
    )).eval()  # fmt: skip
    input_ids = torch.randint(0, 50, (2, 155), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(input_ids, use_cache=False).logits
        out = model(input_ids[:, :5], use_cache=True)
        logits, cache, buffers = [out.logits], out.cache, set()
        for i in range(5, 155):
            out = model(input_ids[:, i : i + 1], cache=cache, use_cache=True)
            logits.append(out.logits)
            buffers.add(id(cache.layers[0]._kv_buffers[0]))
    torch.testing.assert_close(torch.cat(logits, 1), full, atol=1e-5, rtol=1e-5)
    assert len(buffers) == 3  # allocated once, then grown twice: not a copy per step


def test_decoding_from_a_deep_copy_leaves_the_original_cache_alone():
    """Prompt reuse (transformers' pattern: deepcopy a filled cache per continuation): the copy appends into its own
    buffer, and the original continues exactly."""
    torch.manual_seed(0)
    model = ContextPoolForCausalLM(ContextPoolConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, is_causal=True,
    )).eval()  # fmt: skip
    input_ids = torch.randint(0, 50, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(input_ids, use_cache=False).logits
        cache = model(input_ids[:, :10], use_cache=True).cache
        cache = model(input_ids[:, 10:11], cache=cache, use_cache=True).cache  # the buffer exists from here
        kept = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
        for _ in range(2):
            other = copy.deepcopy(cache)
            for token in range(5):
                other = model(torch.full((2, 1), token), cache=other, use_cache=True).cache
        for (keys, values), layer in zip(kept, cache.layers, strict=True):
            assert torch.equal(layer.keys, keys) and torch.equal(layer.values, values)
        logits = [model(input_ids[:, i : i + 1], cache=cache, use_cache=True).logits for i in range(11, 20)]
    torch.testing.assert_close(torch.cat(logits, 1), full[:, 11:], atol=1e-5, rtol=1e-5)


def test_a_transformers_model_decodes_on_the_cache_as_on_dynamic_cache():
    """Any model that calls `cache.update` may use it (bench_model's generate_same_cache rows time Llama on it):
    Llama's greedy tokens and scores equal those on its own DynamicCache, and the buffer was used."""
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=256, attn_implementation="sdpa",
    )).eval()  # fmt: skip
    input_ids = torch.randint(1, 60, (3, 9), generator=torch.Generator().manual_seed(4))
    kwargs = dict(attention_mask=torch.ones_like(input_ids), max_new_tokens=90, do_sample=False, pad_token_id=0,
                  eos_token_id=None, output_scores=True, return_dict_in_generate=True)  # fmt: skip
    with torch.no_grad():
        plain = llama.generate(input_ids, **kwargs)
        cache = ContextPoolCache()
        ours = llama.generate(input_ids, cache=cache, **kwargs)
    assert torch.equal(ours.sequences, plain.sequences)
    torch.testing.assert_close(torch.stack(ours.scores), torch.stack(plain.scores), atol=1e-6, rtol=1e-6)
    assert all(layer._kv_buffers is not None for layer in cache.layers)
