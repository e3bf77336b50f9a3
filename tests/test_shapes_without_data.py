"""Models run on tensors without data: under a FakeTensorMode (shape and memory estimators) and on the meta device.

transformers' Llama runs both ways; ours stopped at their input checks, which read token ids, masks and positions
to check them (a DataDependentOutputException), and at autocast queries, which torch refuses for the meta device.
Checks that read values now skip tensors without data and take the path right for any value; a fake run leaves
nothing behind that later real forwards would read (the vision models' case is in test_vision.py).
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import random_ids, tiny_causal_lm
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from contextpool_hf import (
    ContextPoolConfig,
    ContextPoolForConditionalGeneration,
    ContextPoolForMaskedLM,
    ContextPoolForSequenceClassification,
    ContextPoolSeq2SeqConfig,
)


def _padded_mask(input_ids):
    mask = torch.ones_like(input_ids)
    mask[0, :3] = 0  # left padding in the first row
    return mask


def _causal_lm_case(kind):
    model = tiny_causal_lm()
    input_ids = random_ids(n=12)
    inputs = {"input_ids": input_ids}
    if kind == "padded":
        inputs["attention_mask"] = _padded_mask(input_ids)
    elif kind == "labels":
        inputs["labels"] = input_ids
    elif kind == "packed":  # positions restart: two documents in each row
        inputs["position_ids"] = torch.cat([torch.arange(5), torch.arange(7)]).expand(2, 12)
    return model, inputs


def _bidirectional_case(cls):
    torch.manual_seed(0)
    config = ContextPoolConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, max_position_embeddings=64, pad_token_id=0, num_labels=3)  # fmt: skip
    input_ids = random_ids(n=12, vocab_size=50)
    return cls(config).eval(), {"input_ids": input_ids, "attention_mask": _padded_mask(input_ids)}


def _seq2seq_case():
    torch.manual_seed(0)
    config = ContextPoolSeq2SeqConfig(vocab_size=40, d_model=32, encoder_layers=2, decoder_layers=2,
                                      encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48,
                                      decoder_ffn_dim=48, max_position_embeddings=48)  # fmt: skip
    source = random_ids(n=10, vocab_size=40)
    return ContextPoolForConditionalGeneration(config).eval(), {
        "input_ids": source, "attention_mask": _padded_mask(source), "labels": random_ids(n=6, seed=2, vocab_size=40),
    }  # fmt: skip


CASES = {
    "causal-lm": lambda: _causal_lm_case("plain"),
    "causal-lm-padded": lambda: _causal_lm_case("padded"),
    "causal-lm-labels": lambda: _causal_lm_case("labels"),
    "causal-lm-packed": lambda: _causal_lm_case("packed"),
    "masked-lm": lambda: _bidirectional_case(ContextPoolForMaskedLM),
    "sequence-classification": lambda: _bidirectional_case(ContextPoolForSequenceClassification),
    "seq2seq": _seq2seq_case,
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_forward_under_a_fake_tensor_mode_gives_the_real_shapes_and_leaves_real_forwards_exact(case):
    model, inputs = CASES[case]()
    with torch.no_grad():
        expected = model(**inputs)
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            fake = model(**{name: mode.from_tensor(value) for name, value in inputs.items()})
        again = model(**inputs)
    assert isinstance(fake.logits, FakeTensor) and fake.logits.shape == expected.logits.shape
    if "labels" in inputs:
        assert isinstance(fake.loss, FakeTensor) and fake.loss.shape == expected.loss.shape
    assert type(again.logits) is torch.Tensor
    torch.testing.assert_close(again.logits, expected.logits, rtol=0, atol=0)


@pytest.mark.parametrize("case", list(CASES))
def test_a_model_on_the_meta_device_gives_the_real_shapes(case):
    model, inputs = CASES[case]()
    with torch.no_grad():
        expected = model(**inputs)
        on_meta = copy.deepcopy(model).to("meta")(**{name: value.to("meta") for name, value in inputs.items()})
    assert on_meta.logits.is_meta and on_meta.logits.shape == expected.logits.shape


def test_checks_still_read_real_inputs():
    """Skipping the checks is for tensors without data only: a real bad input still gets its error."""
    model, inputs = _causal_lm_case("plain")
    with pytest.raises(ValueError, match="input_ids contains ids outside"):
        model(input_ids=inputs["input_ids"] + 10_000)
    with pytest.raises(ValueError, match="attention_mask must contain only 0"):
        model(input_ids=inputs["input_ids"], attention_mask=torch.full_like(inputs["input_ids"], 2))


@pytest.mark.parametrize("cache_kind", ["static", "dynamic"])
def test_decoding_steps_under_a_fake_tensor_mode_leave_real_decoding_exact(cache_kind):
    """A prompt and two decoding steps on a fake cache (static: transformers' StaticCache, which ours takes over;
    dynamic: the model's own) as a model's first run, then real greedy decoding: it equals a fresh copy's. What the
    fake steps build for later steps (the decoding tables, the rotary tables) must not be kept for real ones. Like
    transformers' Llama, `generate` itself does not run under a FakeTensorMode (it reads token values)."""
    from transformers import StaticCache

    # a rotary base no other test uses: the rotary tables are kept per process, keyed on it
    model, input_ids = tiny_causal_lm(rope_theta=4321.0 if cache_kind == "static" else 4322.0), random_ids(n=12)
    fresh = copy.deepcopy(model)
    with torch.no_grad():
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            fake_ids = mode.from_tensor(input_ids)
            cache = StaticCache(config=model.config, max_cache_len=20) if cache_kind == "static" else None
            out = model(fake_ids, cache=cache, use_cache=True)
            for position in (12, 13):
                out = model(fake_ids[:, :1], cache=out.cache, use_cache=True, cache_position=torch.tensor([position]))
        assert isinstance(out.logits, FakeTensor) and out.logits.shape == (2, 1, model.config.vocab_size)
        tokens = model.generate(input_ids, max_new_tokens=6, do_sample=False, cache_implementation=cache_kind)
        want = fresh.generate(input_ids, max_new_tokens=6, do_sample=False, cache_implementation=cache_kind)
    assert type(tokens) is torch.Tensor and torch.equal(tokens, want)
