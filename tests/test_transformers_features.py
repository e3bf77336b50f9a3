"""transformers-native features (issue 12): positions past the limit in rotary models, attention
backends through ALL_ATTENTION_FUNCTIONS, PEFT prefix tuning, assisted decoding, packed training."""

import functools

import pytest
import torch
from helpers import TINY_VOCAB, random_ids, tiny_causal_lm

from contextpool_hf import ContextPoolConfig

VOCAB = TINY_VOCAB
# A 24-position table: the rotary and absolute-position tests run past it.
tiny_lm = functools.partial(tiny_causal_lm, max_position_embeddings=24)
ids = random_ids


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


# -- item 1: attention backends through transformers' ALL_ATTENTION_FUNCTIONS ------------------


@pytest.fixture
def uncompiled_flex(monkeypatch):
    """transformers compiles flex attention on first use; torch's CPU inductor build crashes on this
    machine, and compiling is beside the point here (the dispatch and the mask format are): run
    torch's flex_attention uncompiled, through transformers' own flex_attention_forward."""
    from torch.nn.attention.flex_attention import flex_attention
    from transformers.integrations import flex_attention as hf_flex

    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention", lambda q, k, v, training=False, **kw: flex_attention(q, k, v, **kw))
    with torch.no_grad():  # flex attention has no CPU backward
        yield


def _switched(model, implementation):
    model.set_attn_implementation(implementation)
    assert model.config._attn_implementation == implementation
    return model


@pytest.mark.parametrize("overrides", [dict(), dict(num_key_value_heads=2, pool_groups=2), dict(attention_window=4)],
                         ids=["mha", "gqa-groups2", "sliding4"])
def test_flex_attention_equals_eager_causal_lm(uncompiled_flex, overrides):
    model = tiny_lm(**overrides)
    input_ids = ids(n=12)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :4] = 0  # left padding
    eager = _switched(model, "eager")(input_ids, attention_mask=mask).logits
    sdpa = _switched(model, "sdpa")(input_ids, attention_mask=mask).logits
    flex = _switched(model, "flex_attention")(input_ids, attention_mask=mask).logits
    keep = mask.bool()
    torch.testing.assert_close(flex[keep], eager[keep], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sdpa[keep], eager[keep], atol=1e-5, rtol=1e-5)
    # no padding: flex gets no is_causal of its own, so the mask must carry causality
    plain_flex = model(input_ids).logits
    torch.testing.assert_close(plain_flex, _switched(model, "eager")(input_ids).logits, atol=1e-5, rtol=1e-5)
    _switched(model, "flex_attention")
    # with the cache: a prompt, then chunks and single steps, under flex == the eager forward
    out = model(input_ids[:, :6], attention_mask=mask[:, :6], use_cache=True)
    steps, cache = [out.logits], out.cache
    for start, stop in [(6, 7), (7, 10), (10, 11), (11, 12)]:
        out = model(input_ids[:, start:stop], attention_mask=mask[:, :stop], cache=cache, use_cache=True)
        steps.append(out.logits)
        cache = out.cache
    torch.testing.assert_close(torch.cat(steps, 1)[keep], eager[keep], atol=1e-5, rtol=1e-5)
    # and greedy generation under flex gives eager's tokens
    flex_tokens = model.generate(input_ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    eager_tokens = _switched(model, "eager").generate(input_ids, attention_mask=mask, max_new_tokens=5,
                                                      do_sample=False, pad_token_id=0)
    assert torch.equal(flex_tokens, eager_tokens)


def test_flex_attention_equals_eager_bidirectional(uncompiled_flex):
    from contextpool_hf import ContextPoolForMaskedLM

    torch.manual_seed(0)
    config = ContextPoolConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, max_position_embeddings=24, is_causal=False, pad_token_id=0,
                               pool_sigma_max=2.0, attn_implementation="flex_attention")
    model = ContextPoolForMaskedLM(config).eval()
    assert model.config._attn_implementation == "flex_attention"
    input_ids = ids(n=10)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[0, 7:] = 0  # right padding
    flex = model(input_ids, attention_mask=mask).logits
    eager = _switched(model, "eager")(input_ids, attention_mask=mask).logits
    keep = mask.bool()
    torch.testing.assert_close(flex[keep], eager[keep], atol=1e-5, rtol=1e-5)


def test_run_time_switch_changes_the_backend(monkeypatch):
    """set_attn_implementation takes effect on the next forward (the layers read the config live)."""
    from contextpool_hf import modeling_contextpool as mc

    model = tiny_lm(attn_implementation="sdpa")
    calls = []
    for name in ("eager", "sdpa"):
        original = mc.ATTENTION_FUNCTIONS[name]
        monkeypatch.setitem(mc.ATTENTION_FUNCTIONS, name,
                            lambda *a, _n=name, _f=original, **k: calls.append(_n) or _f(*a, **k))
    input_ids = ids(n=5)
    model(input_ids)
    assert set(calls) == {"sdpa"}
    calls.clear()
    model.set_attn_implementation("eager")
    model(input_ids)
    assert set(calls) == {"eager"}


def test_unavailable_backend_is_refused_clearly():
    with pytest.raises((ValueError, ImportError)):
        tiny_lm().set_attn_implementation("not_a_backend")


# -- item 5: PEFT prefix tuning (a filled DynamicCache of virtual tokens) ---------------------


def test_prefix_tuning_trains_generates_and_reloads(tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import DynamicCache

    base = tiny_lm(max_position_embeddings=64)
    model = peft.get_peft_model(base, peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    input_ids = ids(n=10)
    # a filled plain DynamicCache of keys/values is accepted: the prefix changes the logits
    with torch.no_grad():
        plain = base(input_ids).logits
        prefixed = model(input_ids=input_ids).logits
    assert not torch.allclose(plain, prefixed, atol=1e-3)
    # the prefix is attended, not pooled: the same keys/values in a DynamicCache by hand, chunk by chunk
    # (the first chunk pooling alone), give the PEFT logits
    with torch.no_grad():
        prefix = model.get_prompt(batch_size=2)  # a DynamicCache of 4 virtual tokens per layer
        assert isinstance(prefix, DynamicCache) and prefix.get_seq_length() == 4
        mask = torch.ones(2, 14, dtype=torch.long)
        first = base(input_ids[:, :6], attention_mask=mask[:, :10], cache=prefix, use_cache=True)
        second = base(input_ids[:, 6:], attention_mask=mask, cache=first.cache, use_cache=True)
    torch.testing.assert_close(torch.cat([first.logits, second.logits], 1), prefixed, atol=1e-5, rtol=1e-5)

    # training: only the prefix moves, and the loss goes down
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen = {n: p.detach().clone() for n, p in base.named_parameters()}
    optimizer = torch.optim.Adam(trainable, lr=1e-2)
    losses = []
    for _ in range(15):
        loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.1, losses
    assert all(torch.equal(p, frozen[n]) for n, p in base.named_parameters())
    model.eval()

    # generation with the prefix: cached == uncached tokens
    with torch.no_grad():
        tokens = model.generate(input_ids=input_ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
        expected = model(input_ids=input_ids).logits
        rescored = model(input_ids=tokens[:, :15]).logits  # one uncached forward over the generated text
    assert tokens.shape == (2, 16)
    assert torch.equal(tokens[:, 10], expected[:, -1].argmax(-1))
    assert torch.equal(tokens[:, 10:], rescored[:, 9:].argmax(-1))

    # save + reload the adapter: identical logits
    model.save_pretrained(tmp_path / "adapter")
    reloaded = peft.PeftModel.from_pretrained(tiny_lm(max_position_embeddings=64), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=input_ids).logits, expected, atol=1e-6, rtol=1e-6)
        assert torch.equal(reloaded.generate(input_ids=input_ids, max_new_tokens=6, do_sample=False, pad_token_id=0),
                           tokens)


# -- item 3: assisted and prompt-lookup decoding (a croppable ContextPoolCache) -------------------


@pytest.mark.parametrize("overrides", [dict(), dict(pool_groups=2, pool_kernel_size=5), dict(pool_placement="block_output")],
                         ids=["default", "groups2-kernel5", "block-output"])
def test_crop_rolls_the_pooling_state_back_exactly(overrides):
    """Chunks and single steps, crops inside a chunk, at its start and across several steps; each
    continuation equals one uncached forward over the kept tokens."""
    from contextpool_hf import ContextPoolCache

    model = tiny_lm(max_position_embeddings=96, **overrides)
    input_ids = ids(n=40, seed=5)
    with torch.no_grad():
        full = model(input_ids).logits
        cache = ContextPoolCache()
        cache.activate_past_recording()
        junk = ids(n=40, seed=9)  # tokens that get rejected
        length = 0

        def feed(start, stop, tokens=input_ids):
            return model(tokens[:, start:stop], cache=cache, use_cache=True).logits

        feed(0, 12)
        length = 12
        for keep, junk_len in [(3, 5), (1, 1), (0, 4), (2, 2), (4, 6)]:
            feed(length, length + junk_len, junk)  # a draft chunk that is rejected
            cache.crop(-junk_len)
            assert cache.get_seq_length() == length
            got = feed(length, length + keep) if keep else None  # the accepted tokens
            if keep:
                torch.testing.assert_close(got, full[:, length : length + keep], atol=1e-5, rtol=1e-5)
            length += keep
        for t in range(length, length + 4):  # single steps, then a crop across three of them
            feed(t, t + 1, junk)
        cache.crop(-3)
        got = feed(length + 1, length + 6)  # the kept junk token was junk[length]: compare with that sequence
        mixed = torch.cat([input_ids[:, : length], junk[:, length : length + 1], input_ids[:, length + 1 : length + 6]], 1)
        torch.testing.assert_close(got, model(mixed).logits[:, length + 1 :], atol=1e-5, rtol=1e-5)


def test_crop_without_recording_is_refused():
    model = tiny_lm()
    out = model(ids(n=6), use_cache=True)
    with pytest.raises(NotImplementedError, match="activate_past_recording"):
        out.cache.crop(-2)


def test_assisted_and_prompt_lookup_decoding_equal_greedy(monkeypatch):
    from contextpool_hf.modeling_contextpool import ContextPoolCacheLayer

    crops = []
    original = ContextPoolCacheLayer.crop
    monkeypatch.setattr(ContextPoolCacheLayer, "crop", lambda self, n: crops.append(n) or original(self, n))
    model = tiny_lm(max_position_embeddings=96)
    assistant = tiny_lm(seed=3, max_position_embeddings=96, num_hidden_layers=1)
    for seed in (1, 2):
        prompt = ids(batch=1, n=9, seed=seed)
        kwargs = dict(max_new_tokens=24, do_sample=False, pad_token_id=0)
        greedy = model.generate(prompt, **kwargs)
        assert torch.equal(model.generate(prompt, assistant_model=assistant, **kwargs), greedy)
        assert torch.equal(model.generate(prompt, prompt_lookup_num_tokens=3, **kwargs), greedy)
    assert any(n < 0 for n in crops)  # drafts were rejected and rolled back


# -- item 4: packed (padding-free) training with DataCollatorWithFlattening ---------------------


@pytest.mark.parametrize("overrides", [dict(), dict(pool_groups=2, pool_kernel_size=5), dict(attention_window=3),
                                       dict(position_embedding_type="absolute")],
                         ids=["default", "groups2-kernel5", "sliding3", "absolute"])
def test_packed_batch_equals_documents_one_by_one(overrides):
    from transformers import DataCollatorWithFlattening

    model = tiny_lm(max_position_embeddings=64, **overrides)
    docs = [ids(batch=1, n=n, seed=s)[0].tolist() for n, s in [(7, 1), (12, 2), (3, 3), (9, 4)]]
    batch = DataCollatorWithFlattening()([{"input_ids": d} for d in docs])
    assert batch["input_ids"].shape == (1, 31) and "attention_mask" not in batch
    packed = model(**batch)
    per_token = torch.nn.functional.cross_entropy(packed.logits[0, :-1], batch["labels"][0, 1:], ignore_index=-100,
                                                  reduction="none")  # fmt: skip
    alone_logits, alone_losses = [], []
    for d in docs:
        out = model(torch.tensor([d]), labels=torch.tensor([d]))
        alone_logits.append(out.logits[0])
        alone_losses.append(torch.nn.functional.cross_entropy(out.logits[0, :-1], torch.tensor(d[1:]), reduction="none"))
    torch.testing.assert_close(packed.logits[0], torch.cat(alone_logits), atol=1e-5, rtol=1e-5)
    # per token: the packed loss at each document's tokens equals that document's own loss
    expected = torch.cat([torch.cat([loss, torch.zeros(1)]) for loss in alone_losses])[:-1]
    torch.testing.assert_close(per_token, expected, atol=1e-5, rtol=1e-5)
    n_targets = sum(len(d) - 1 for d in docs)
    torch.testing.assert_close(packed.loss, torch.cat(alone_losses).sum() / n_targets, atol=1e-5, rtol=1e-5)
    # gradients flow through the spread-out pooling
    packed.loss.backward()
    for layer in model.model.layers:
        grads = (layer.attention.pool_mix.grad, layer.attention.pool.predictor.proj.weight.grad)
        assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_packed_bidirectional_model_does_not_mix_documents():
    from contextpool_hf import ContextPoolModel

    torch.manual_seed(0)
    config = ContextPoolConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, max_position_embeddings=24, is_causal=False, pad_token_id=0,
                               pool_sigma_max=2.0)
    model = ContextPoolModel(config).eval()
    a, b = ids(batch=1, n=6, seed=1), ids(batch=1, n=8, seed=2)
    positions = torch.cat([torch.arange(6), torch.arange(8)]).unsqueeze(0)
    packed = model(torch.cat([a, b], 1), position_ids=positions).last_hidden_state
    alone = torch.cat([model(a).last_hidden_state, model(b).last_hidden_state], 1)
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)


def test_run_clm_packing_trains_on_flattened_documents(tmp_path, monkeypatch):
    import importlib
    import math
    import sys
    from pathlib import Path

    from test_training import clm_args
    from transformers import DataCollatorWithFlattening

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "scripts"))
    run_clm = importlib.import_module("run_clm")
    assert "run_clm" in sys.modules

    seen = []
    original = DataCollatorWithFlattening.__call__
    monkeypatch.setattr(DataCollatorWithFlattening, "__call__", lambda self, f, *a, **k: seen.append(
        original(self, f, *a, **k)) or seen[-1])  # fmt: skip
    results = run_clm.main(clm_args(tmp_path, "out", "--packing", "true", "--max_steps", "3", "--do_eval", "false"))
    assert seen and all(batch["input_ids"].shape[0] == 1 for batch in seen)
    restarts = [(batch["position_ids"][0] == 0).sum().item() for batch in seen]
    assert all(r == 4 for r in restarts), restarts  # 4 documents (per_device_train_batch_size) per packed row
    assert math.isfinite(results["train_loss"])


def test_rotary_frequencies_built_under_a_fake_tensor_mode_are_not_kept():
    """The rotary frequencies are memoised per device (a decoding step would rebuild them in every forward);
    ones computed under FakeTensorMode (shape and memory estimators) must not be kept for real forwards."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from contextpool_hf.layers_contextpool import _PLAIN_ROPE_CACHE, rotary_cos_sin

    model = tiny_lm(position_embedding_type="rotary")
    input_ids = ids(n=6)
    expected = model(input_ids).logits
    _PLAIN_ROPE_CACHE.clear()
    config = model.config
    with FakeTensorMode():
        cos, _ = rotary_cos_sin(torch.arange(6)[None], config.head_dim, config.rope_theta, torch.float32)
    assert type(cos) is not torch.Tensor and not _PLAIN_ROPE_CACHE
    torch.testing.assert_close(model(input_ids).logits, expected, rtol=0, atol=0)
    assert _PLAIN_ROPE_CACHE and all(type(t) is torch.Tensor for t in _PLAIN_ROPE_CACHE.values())
