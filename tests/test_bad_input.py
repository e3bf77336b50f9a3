"""Bad input, one regression test per item of issue 11 (items 4, 6, 7, 8, 10, 11, 12, 14).

Every rejected input must raise a ValueError (the configs: the strict-dataclass error that wraps
it) whose message names the argument; nothing may be misread silently. The property-based
sweep over the same entry points is tests/test_bad_input_properties.py.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassError
from transformers.loss.loss_utils import ForCausalLMLoss

from contextpool_hf import ContextPoolConfig, ContextPoolForCausalLM
from contextpool_hf.configuration_contextpool_seq2seq import ContextPoolSeq2SeqConfig
from contextpool_hf.configuration_contextpool_vision import ContextPoolResNetConfig, ContextPoolViTConfig
from contextpool_hf.modeling_contextpool import (
    ContextPoolForMaskedLM,
    ContextPoolForQuestionAnswering,
    ContextPoolForSequenceClassification,
    ContextPoolForTokenClassification,
    ContextPoolModel,
)
from contextpool_hf.modeling_contextpool_seq2seq import ContextPoolForConditionalGeneration
from contextpool_hf.modeling_contextpool_vision import ContextPoolViTForImageClassification
from contextpool_hf.pooling_contextpool import (
    ContextPool,
    ContextPoolPredictor,
    context_pool,
    context_pool_2d,
)

VOCAB = 50
TEXT = dict(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=32, pad_token_id=0, num_labels=3, pool_sigma_max=3.0)  # fmt: skip
SEQ2SEQ = dict(vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
               decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32,
               pool_sigma_max=3.0)  # fmt: skip


def causal_lm(seed=0, **overrides):
    torch.manual_seed(seed)
    return ContextPoolForCausalLM(ContextPoolConfig(**{**TEXT, "is_causal": True, **overrides})).eval()


def seq2seq(seed=0, **overrides):
    torch.manual_seed(seed)
    return ContextPoolForConditionalGeneration(ContextPoolSeq2SeqConfig(**{**SEQ2SEQ, **overrides})).eval()


def token_ids(batch=2, n=6, high=VOCAB, seed=1):
    return torch.randint(1, high, (batch, n), generator=torch.Generator().manual_seed(seed))


def left_padding_mask():
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, :2] = 0
    return mask


def raises_naming(name, fn, error=ValueError):
    """fn() raises `error` and the message names `name` (the message starts with it, or quotes it)."""
    with pytest.raises(error) as info:
        fn()
    assert name in str(info.value), f"{name!r} not in: {info.value}"
    return info.value


# --------------------------------------------------------------------------------------
# Item 4: attention_mask values
# --------------------------------------------------------------------------------------

BAD_MASK_VALUES = {
    "additive": lambda keep: (1.0 - keep.float()) * torch.finfo(torch.float32).min,
    "additive_inf": lambda keep: (1.0 - keep.float()) * -math.inf,
    "half": lambda keep: keep.float() * 0.5,  # 0.5 on real tokens
    "two": lambda keep: keep.long() * 2,
    "minus_one": lambda keep: keep.long() * 2 - 1,  # 1 on real tokens, -1 on padding
    "nan": lambda keep: torch.where(keep.bool(), torch.tensor(1.0), torch.tensor(math.nan)),
}


@pytest.mark.parametrize("kind", sorted(BAD_MASK_VALUES))
def test_text_model_rejects_masks_that_are_not_0_1(kind):
    model = causal_lm()
    mask = BAD_MASK_VALUES[kind](left_padding_mask())
    error = raises_naming("attention_mask", lambda: model(token_ids(), attention_mask=mask))
    assert "0 (padding) and 1 (real token)" in str(error)


def test_every_text_head_checks_the_mask():
    additive = BAD_MASK_VALUES["additive"](left_padding_mask())
    for cls in (ContextPoolModel, ContextPoolForMaskedLM, ContextPoolForSequenceClassification,
                ContextPoolForTokenClassification, ContextPoolForQuestionAnswering):  # fmt: skip
        model = cls(ContextPoolConfig(**TEXT)).eval()
        raises_naming("attention_mask", lambda m=model: m(token_ids(), attention_mask=additive))


def test_0_1_masks_of_every_dtype_agree():
    model = causal_lm()
    keep = left_padding_mask()
    want = model(token_ids(), attention_mask=keep.bool()).logits
    for mask in (keep, keep.int(), keep.to(torch.uint8), keep.to(torch.int8), keep.float(), keep.double(),
                 keep.to(torch.bfloat16)):  # fmt: skip
        torch.testing.assert_close(model(token_ids(), attention_mask=mask).logits, want, rtol=0, atol=0)


def test_generate_rejects_an_additive_mask():
    model = causal_lm()
    additive = BAD_MASK_VALUES["additive"](left_padding_mask())
    raises_naming("attention_mask", lambda: model.generate(token_ids(), attention_mask=additive, max_new_tokens=2))
    out = model.generate(token_ids(), attention_mask=left_padding_mask(), max_new_tokens=2, do_sample=False)
    assert out.shape == (2, 8)


def test_seq2seq_checks_encoder_and_decoder_masks():
    model = seq2seq()
    src, tgt = token_ids(2, 5, 40), token_ids(2, 4, 40, seed=2)
    keep = torch.ones(2, 5, dtype=torch.long)
    keep[0, -2:] = 0
    raises_naming("attention_mask", lambda: model(src, attention_mask=keep * 0.5, labels=tgt))
    raises_naming("attention_mask", lambda: model(src, attention_mask=(1 - keep) * -1e9, labels=tgt))
    raises_naming("decoder_attention_mask", lambda: model(src, labels=tgt, decoder_attention_mask=torch.full((2, 4), 2)))
    raises_naming("attention_mask", lambda: model.generate(src, attention_mask=(1 - keep) * -1e9, max_new_tokens=2))
    want = model(src, attention_mask=keep.bool(), labels=tgt).logits
    torch.testing.assert_close(model(src, attention_mask=keep.float(), labels=tgt).logits, want, rtol=0, atol=0)


def test_operator_and_module_reject_bad_masks():
    x, w, s = torch.randn(2, 5, 3), torch.rand(2, 5), torch.full((2, 5), 1.0)
    raises_naming("attention_mask", lambda: context_pool(x, w, s, attention_mask=torch.full((2, 5), 0.5)))
    raises_naming("attention_mask", lambda: ContextPool(3)(x, attention_mask=torch.full((2, 5), -1.0)))
    raises_naming("attention_mask", lambda: context_pool(x, w, s, attention_mask=[[1] * 5] * 2))


# --------------------------------------------------------------------------------------
# Item 6: config values that compute garbage
# --------------------------------------------------------------------------------------

BAD_TEXT_FIELDS = [
    ("rope_theta", 0), ("rope_theta", -1.0), ("rope_theta", math.nan), ("rope_theta", math.inf),
    ("norm_eps", math.nan), ("norm_eps", math.inf), ("initializer_range", math.nan), ("initializer_range", -0.1),
    ("pad_token_id", -5), ("pad_token_id", VOCAB), ("bos_token_id", -1), ("eos_token_id", [1, VOCAB + 3]),
    ("hidden_dropout", math.nan), ("attention_dropout", 1.0), ("classifier_dropout", -0.5),
    ("pool_sigma_max", math.inf), ("pool_sigma_min", math.nan), ("pool_truncation", math.inf),
    ("pool_mix_init", math.nan), ("pool_fixed_sigma", math.nan), ("pool_kernel_size", 2),
]  # fmt: skip


@pytest.mark.parametrize("field, value", BAD_TEXT_FIELDS, ids=[f"{f}={v}" for f, v in BAD_TEXT_FIELDS])
def test_text_config_rejects_garbage_values(field, value):
    raises_naming(field, lambda: ContextPoolConfig(**{**TEXT, field: value}), StrictDataclassError)


BAD_SEQ2SEQ_FIELDS = [
    ("norm_eps", math.nan), ("init_std", math.nan), ("bos_token_id", -1), ("eos_token_id", 40),
    ("forced_eos_token_id", -3), ("decoder_start_token_id", 99), ("pad_token_id", -5),
    ("activation_function", "not_an_activation"), ("dropout", math.nan), ("pool_truncation", math.inf),
    ("pool_sigma_max", math.nan),
]  # fmt: skip


@pytest.mark.parametrize("field, value", BAD_SEQ2SEQ_FIELDS, ids=[f"{f}={v}" for f, v in BAD_SEQ2SEQ_FIELDS])
def test_seq2seq_config_rejects_garbage_values(field, value):
    raises_naming(field, lambda: ContextPoolSeq2SeqConfig(**{**SEQ2SEQ, field: value}), StrictDataclassError)


@pytest.mark.parametrize(
    "cls, field, value",
    [
        (ContextPoolViTConfig, "hidden_dropout_prob", 1.0),
        (ContextPoolViTConfig, "attention_probs_dropout_prob", math.nan),
        (ContextPoolViTConfig, "hidden_act", "not_an_activation"),
        (ContextPoolViTConfig, "layer_norm_eps", math.nan),
        (ContextPoolViTConfig, "pool_truncation", 1e308),
        (ContextPoolViTConfig, "initializer_range", math.nan),
        (ContextPoolResNetConfig, "hidden_act", "not_an_activation"),
        (ContextPoolResNetConfig, "pool_sigma_max", math.inf),
    ],
)
def test_vision_configs_reject_garbage_values(cls, field, value):
    raises_naming(field, lambda: cls(**{field: value}))


def test_a_valid_padding_id_is_still_the_padding_row():
    model = causal_lm(pad_token_id=3)
    assert model.model.embed_tokens.padding_idx == 3


# --------------------------------------------------------------------------------------
# Item 7: operator edge values
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", ["fast", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("tiny", [1e-3, 1e-20, 1e-30, 1e-45])
def test_tiny_sigma_is_the_identity_limit(implementation, dtype, tiny):
    """sigma -> 0: only the token itself has weight, y_i = w_i x_i / (eps + w_i), and no NaN gradient."""
    if torch.tensor(tiny).to(dtype) == 0:  # 1e-45 is 0 in bfloat16: a zero width is an error, not the limit
        raises_naming("sigma", lambda: context_pool(torch.randn(1, 3, 2), torch.rand(1, 3), torch.zeros(1, 3)))
        return
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, 4, generator=gen).to(dtype).requires_grad_()
    w = (torch.rand(2, 9, generator=gen) * 0.9 + 0.1).to(dtype).requires_grad_()
    s = torch.full((2, 9), tiny).to(dtype).requires_grad_()
    y = context_pool(x, w, s, implementation=implementation, causal=True)
    xf, wf = x.detach().double(), w.detach().double()
    want = xf * (wf / (1e-6 + wf)).unsqueeze(-1)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-6
    torch.testing.assert_close(y.double(), want, rtol=tol, atol=tol)
    y.float().square().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (x, w, s))
    assert not s.grad.any()  # the true derivative of exp(-1 / (2 sigma^2)) at sigma -> 0 is 0

    grid = context_pool_2d(x.detach()[:, :, None].expand(2, 9, 3, 4).contiguous(), w.detach()[:, :, None].expand(2, 9, 3),
                           s.detach()[:, :, None].expand(2, 9, 3), implementation=implementation)  # fmt: skip
    torch.testing.assert_close(grid.double(), want[:, :, None].expand(2, 9, 3, 4), rtol=tol, atol=tol)


@pytest.mark.parametrize(
    "name, value",
    [("causal", "no"), ("causal", 1), ("causal", None), ("normalize", "yes"), ("sigma_max", True),
     ("sigma_max", torch.tensor(8.0)), ("truncation", False), ("eps", math.inf), ("eps", math.nan), ("eps", -1e-6),
     ("implementation", ["fast"]), ("implementation", None)],  # fmt: skip
)
def test_operator_options_are_checked_strictly(name, value):
    x, w, s = torch.randn(2, 5, 3), torch.rand(2, 5), torch.full((2, 5), 1.0)
    error = raises_naming(name, lambda: context_pool(x, w, s, **{name: value}))
    assert str(error).startswith(name)
    if name != "causal":
        grid = torch.randn(1, 3, 3, 2), torch.rand(1, 3, 3), torch.ones(1, 3, 3)
        raises_naming(name, lambda: context_pool_2d(*grid, **{name: value}))


def test_window_radius_must_be_finite():
    x, w, s = torch.randn(1, 4, 2), torch.rand(1, 4), torch.ones(1, 4)
    raises_naming("truncation * sigma_max", lambda: context_pool(x, w, s, sigma_max=1e300, truncation=1e300))


# --------------------------------------------------------------------------------------
# Item 8: empty inputs. The operator and the module return the empty result of the right shape;
# the models raise a ValueError naming input_ids / inputs_embeds (as their attention cannot
# reshape 0 elements, like transformers' Llama and BART).
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", ["fast", "reference"])
@pytest.mark.parametrize("shape", [(0, 5, 3), (2, 0, 3), (2, 5, 0), (0, 2, 5, 3), (2, 2, 0, 3)])
def test_empty_1d_gives_the_empty_result(implementation, shape):
    x = torch.randn(shape, requires_grad=True)
    w, s = torch.rand(shape[:-1], requires_grad=True), torch.ones(shape[:-1], requires_grad=True)
    y = context_pool(x, w, s, implementation=implementation, causal=True)
    assert y.shape == x.shape
    assert not y.any()
    y.sum().backward()
    assert x.grad.shape == x.shape and w.grad.shape == w.shape and s.grad.shape == s.shape


@pytest.mark.parametrize("implementation", ["fast", "reference"])
@pytest.mark.parametrize("shape, stride", [((0, 4, 4, 2), 1), ((1, 0, 4, 2), 2), ((1, 4, 0, 2), 1), ((1, 5, 5, 0), 2)])
def test_empty_2d_gives_the_empty_result(implementation, shape, stride):
    b, h, w_, d = shape
    out = (b, (h - 1) // stride + 1 if h else 0, (w_ - 1) // stride + 1 if w_ else 0)
    y = context_pool_2d(torch.randn(shape), torch.rand(shape[:-1]), torch.ones(out), stride=stride,
                        implementation=implementation)  # fmt: skip
    assert y.shape == out + (d,)


def test_empty_module_inputs():
    assert ContextPool(4, causal=True)(torch.randn(0, 6, 4)).shape == (0, 6, 4)
    assert ContextPool(4)(torch.randn(2, 0, 4)).shape == (2, 0, 4)
    pool = ContextPool(4, groups=2, spatial_dims=2, stride=2)
    assert pool(torch.randn(2, 0, 5, 4)).shape == (2, 2, 0, 3, 4)
    assert pool.last_sigma.shape == (2, 2, 0, 3)


def test_empty_model_inputs_are_a_clear_error():
    model, s2s = causal_lm(), seq2seq()
    for ids in (token_ids()[:0], token_ids()[:, :0]):
        raises_naming("input_ids", lambda ids=ids: model(ids))
        raises_naming("input_ids", lambda ids=ids: s2s(ids, labels=token_ids(2, 3, 40)))
    raises_naming("inputs_embeds", lambda: model(inputs_embeds=torch.randn(0, 4, 16)))
    raises_naming("decoder_input_ids", lambda: s2s(token_ids(2, 3, 40), decoder_input_ids=token_ids(2, 3, 40)[:, :0]))


# --------------------------------------------------------------------------------------
# Item 10: unclear failures in the model and the operator
# --------------------------------------------------------------------------------------


def test_float64_inputs_embeds_into_a_float32_model():
    """Llama does not cast either (it fails inside the first matmul): a clear error, naming the fix."""
    model, s2s = causal_lm(), seq2seq()
    error = raises_naming("inputs_embeds", lambda: model(inputs_embeds=torch.randn(2, 4, 16, dtype=torch.float64)))
    assert "torch.float32" in str(error)
    raises_naming("inputs_embeds", lambda: s2s(inputs_embeds=torch.randn(2, 4, 16).double(), labels=token_ids(2, 3, 40)))
    raises_naming("decoder_inputs_embeds", lambda: s2s(token_ids(2, 3, 40), decoder_inputs_embeds=torch.randn(2, 3, 16).double()))
    raises_naming("inputs_embeds", lambda: model(inputs_embeds=torch.ones(2, 4, 16, dtype=torch.long)))
    raises_naming("input_ids", lambda: model(token_ids().float()))
    # the model's own dtype is fine, under autocast too (which does not make float64 fine)
    embeds = model.get_input_embeddings()(token_ids())
    torch.testing.assert_close(model(inputs_embeds=embeds).logits, model(token_ids()).logits)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(model(inputs_embeds=embeds).logits).all()
        raises_naming("inputs_embeds", lambda: model(inputs_embeds=embeds.double()))


@pytest.mark.parametrize(
    "name, kwargs",
    [("groups", dict(groups=0)), ("groups", dict(groups=1.0)), ("kernel_size", dict(kernel_size=0)),
     ("kernel_size", dict(kernel_size=2)), ("kernel_size", dict(kernel_size=True)), ("stride", dict(stride=0, spatial_dims=2)),
     ("stride", dict(stride=2.0, spatial_dims=2)), ("hidden_size", dict(hidden_size=0)),
     ("predictor_width", dict(predictor_width=-1)), ("spatial_dims", dict(spatial_dims=3)), ("causal", dict(causal="no")),
     ("normalize", dict(normalize=None)), ("sigma_min", dict(sigma_min=True))],  # fmt: skip
)
def test_module_sizes_are_checked(name, kwargs):
    kwargs = {"hidden_size": 8, **kwargs}
    raises_naming(name, lambda: ContextPool(**kwargs))
    if name in ("groups", "kernel_size", "hidden_size", "predictor_width", "spatial_dims"):
        predictor_kwargs = {("width" if k == "predictor_width" else k): v for k, v in kwargs.items()}
        raises_naming(name, lambda: ContextPoolPredictor(**predictor_kwargs))


def test_module_input_is_checked():
    pool = ContextPool(4)
    raises_naming("hidden", lambda: pool(torch.randn(2, 5, 6)))
    raises_naming("hidden", lambda: pool(torch.randn(2, 5, 4, dtype=torch.float64)))
    raises_naming("hidden", lambda: pool(torch.ones(2, 5, 4, dtype=torch.long)))


def test_vmap_over_the_operator_is_a_clear_error():
    x, w, s = torch.randn(3, 2, 5, 4), torch.rand(3, 2, 5), torch.ones(3, 2, 5)
    for implementation in ("fast", "reference"):
        def pool(a, b, c, implementation=implementation):
            return context_pool(a, b, c, implementation=implementation)

        raises_naming("torch.vmap", lambda: torch.vmap(pool)(x, w, s))
    raises_naming("torch.vmap", lambda: torch.vmap(lambda a, b, c: context_pool_2d(a, b, c))(x[..., None, :], w[..., None], s[..., None]))
    # what the message recommends: the leading dim is already the batch
    assert context_pool(x.flatten(0, 1), w.flatten(0, 1), s.flatten(0, 1)).shape == (6, 5, 4)


# --------------------------------------------------------------------------------------
# Item 11: shift_labels
# --------------------------------------------------------------------------------------


def test_shift_labels_are_the_targets_as_in_transformers():
    model = causal_lm()
    ids = token_ids()
    labels = token_ids(seed=5)
    labels[0, :2] = -100
    shifted = F.pad(labels[:, 1:], (0, 1), value=-100)
    logits = model(ids).logits
    for kwargs in (dict(labels=labels), dict(shift_labels=shifted), dict(labels=labels, shift_labels=shifted)):
        loss = model(ids, **kwargs).loss
        want = ForCausalLMLoss(logits, labels, VOCAB, shift_labels=kwargs.get("shift_labels"))
        torch.testing.assert_close(loss, want)
    other = token_ids(seed=9)
    loss = model(ids, labels=labels, shift_labels=other).loss
    torch.testing.assert_close(loss, ForCausalLMLoss(logits, labels, VOCAB, shift_labels=other))
    assert not torch.allclose(loss, model(ids, labels=labels).loss)
    total = model(ids, shift_labels=other, num_items_in_batch=torch.tensor(7)).loss
    torch.testing.assert_close(total, ForCausalLMLoss(logits, None, VOCAB, num_items_in_batch=torch.tensor(7), shift_labels=other))


def test_trainer_guesses_only_labels_as_label_names():
    # Trainer computes eval_loss only when every guessed label name is in the batch: a named
    # `shift_labels` argument made it guess ["labels", "shift_labels"] and drop eval_loss.
    from transformers.utils import find_labels

    for head in (ContextPoolForCausalLM, ContextPoolForMaskedLM):
        assert find_labels(head) == ["labels"], head.__name__


def test_bad_labels_name_the_argument():
    model = causal_lm()
    raises_naming("shift_labels", lambda: model(token_ids(), shift_labels=token_ids()[:, :4]))
    raises_naming("shift_labels", lambda: model(token_ids(), shift_labels=token_ids().float()))
    raises_naming("labels", lambda: model(token_ids(), labels=token_ids() + VOCAB))
    raises_naming("labels", lambda: seq2seq()(token_ids(2, 5, 40), labels=torch.full((2, 3), 40)))
    # the other per-token heads: before, an id out of range was an IndexError deep inside cross_entropy
    mlm = ContextPoolForMaskedLM(ContextPoolConfig(**TEXT)).eval()
    raises_naming("labels", lambda: mlm(token_ids(), labels=token_ids() + VOCAB))
    assert torch.isfinite(mlm(token_ids(), labels=token_ids().masked_fill(token_ids() > 20, -100)).loss)
    tagger = ContextPoolForTokenClassification(ContextPoolConfig(**TEXT)).eval()
    raises_naming("labels", lambda: tagger(token_ids(), labels=torch.full((2, 6), 3)))
    raises_naming("labels", lambda: tagger(token_ids(), labels=torch.zeros(2, 5, dtype=torch.long)))
    assert torch.isfinite(tagger(token_ids(), labels=torch.full((2, 6), 2)).loss)


def _losses_of_every_head(dtype):
    """head name -> its loss with every id, label and position tensor in `dtype` (the same values)."""
    ids, cast = token_ids(), (lambda t: t.to(dtype))
    class_cast = cast if dtype in (torch.int64, torch.int32) else (lambda t: t)
    text = {}
    for cls in (ContextPoolForMaskedLM, ContextPoolForSequenceClassification, ContextPoolForTokenClassification,
                ContextPoolForQuestionAnswering):  # fmt: skip
        torch.manual_seed(0)
        text[cls] = cls(ContextPoolConfig(**TEXT)).eval()
    positions = torch.tensor([1, 7])  # the second outside the input: ignored
    torch.manual_seed(0)
    vit = ContextPoolViTForImageClassification(ContextPoolViTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=8, patch_size=4,
        num_labels=3)).eval()  # fmt: skip
    return {
        "causal": causal_lm()(cast(ids), labels=cast(ids)).loss,
        "causal-shift": causal_lm()(cast(ids), shift_labels=cast(ids)).loss,
        "masked": text[ContextPoolForMaskedLM](cast(ids), labels=cast(ids)).loss,
        # class ids pick single-label classification only as int64 / int32, as in transformers
        "sequence": text[ContextPoolForSequenceClassification](cast(ids), labels=class_cast(torch.tensor([2, 0]))).loss,
        "token": text[ContextPoolForTokenClassification](cast(ids), labels=cast(ids % 3)).loss,
        "answer": text[ContextPoolForQuestionAnswering](cast(ids), start_positions=cast(positions),
                                                        end_positions=cast(positions + 2)).loss,  # fmt: skip
        "seq2seq": seq2seq()(cast(token_ids(2, 5, 40)), labels=cast(token_ids(2, 4, 40, seed=2))).loss,
        "vit": vit(torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)),
                   labels=class_cast(torch.tensor([2, 0]))).loss,  # fmt: skip
    }


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_ids_and_labels_of_any_integer_dtype_give_the_int64_losses(dtype):
    """int32 comes from datasets' int32 columns (`with_format("torch")` keeps the dtype). Before, every loss raised
    inside torch's cross_entropy ("expected target dtype to be Long"), and ids other than int64/int32 raised inside the
    embedding; transformers' own heads fail the same way. Now any integer dtype gives the int64 losses."""
    expected, got = _losses_of_every_head(torch.int64), _losses_of_every_head(dtype)
    for head, loss in expected.items():
        assert torch.isfinite(loss), head
        torch.testing.assert_close(got[head], loss, rtol=0, atol=0, msg=head)


def test_class_ids_of_another_integer_dtype_name_the_problem_type():
    """transformers picks single-label classification for int64 / int32 labels and multi-label otherwise: uint8 class
    ids (B,) are multi-label targets of the wrong shape. Before, torch's "Target size ... must be the same as input
    size" from inside the loss; now a ValueError naming labels, the shapes and the rule."""
    model = ContextPoolForSequenceClassification(ContextPoolConfig(**TEXT)).eval()
    error = raises_naming("labels", lambda: model(token_ids(), labels=torch.tensor([2, 0], dtype=torch.uint8)))
    assert "multi_label_classification" in str(error) and "torch.int64 or torch.int32" in str(error)
    multi_hot = torch.tensor([[1, 0, 1], [0, 1, 0]], dtype=torch.uint8)  # multi-label targets work in any dtype
    model.config.problem_type = None
    assert torch.isfinite(model(token_ids(), labels=multi_hot).loss)


def test_bool_ids_labels_and_positions_name_the_argument():
    """A bool tensor is a mask, not ids: refused, where before it was read as ids 0 and 1 or failed inside torch."""
    ids = token_ids()
    raises_naming("input_ids", lambda: causal_lm()(ids > 20))
    raises_naming("labels", lambda: causal_lm()(ids, labels=ids > 20))
    qa = ContextPoolForQuestionAnswering(ContextPoolConfig(**TEXT)).eval()
    raises_naming("start_positions", lambda: qa(ids, start_positions=torch.tensor([1.0, 2.0]),
                                                end_positions=torch.tensor([2, 3])))  # fmt: skip
    raises_naming("end_positions", lambda: qa(ids, start_positions=torch.tensor([1, 2]),
                                              end_positions=torch.tensor([True, False])))  # fmt: skip


# --------------------------------------------------------------------------------------
# Item 12: resize_token_embeddings resizes final_logits_bias
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("new_size", [47, 33])
def test_resize_keeps_final_logits_bias_in_step(tie, new_size):
    model = seq2seq(tie_word_embeddings=tie)
    with torch.no_grad():
        model.final_logits_bias[0, 3] = 1.5
    model.resize_token_embeddings(new_size, mean_resizing=False)
    assert model.final_logits_bias.shape == (1, new_size)
    assert model.final_logits_bias[0, 3] == 1.5 and not model.final_logits_bias[0, 4:].any()
    assert model.lm_head.weight.shape[0] == new_size == model.config.vocab_size
    assert (model.lm_head.weight.data_ptr() == model.model.shared.weight.data_ptr()) == tie
    out = model(token_ids(2, 5, new_size), labels=token_ids(2, 4, new_size, seed=3))
    assert out.logits.shape == (2, 4, new_size) and torch.isfinite(out.loss)
    assert "final_logits_bias" in dict(model.named_buffers())


# --------------------------------------------------------------------------------------
# Item 14: the old past_key_values name warns, as in transformers 5
# --------------------------------------------------------------------------------------


def test_past_key_values_is_deprecated_but_still_works():
    model = causal_lm()
    ids = token_ids()
    first = model(ids[:, :5], use_cache=True)
    want = model(ids[:, 5:], cache=model(ids[:, :5], use_cache=True).cache).logits
    with pytest.warns(FutureWarning, match="past_key_values.*cache"):
        got = model(ids[:, 5:], past_key_values=first.cache).logits
    torch.testing.assert_close(got, want)
    with pytest.warns(FutureWarning, match="past_key_values"):
        model.model(ids[:, :2], past_key_values=None)

    s2s = seq2seq()
    src, tgt = token_ids(2, 5, 40), token_ids(2, 4, 40, seed=2)
    start = s2s(src, decoder_input_ids=tgt[:, :3], use_cache=True)
    again = s2s(src, decoder_input_ids=tgt[:, :3], use_cache=True)
    want = s2s(src, decoder_input_ids=tgt[:, 3:], cache=again.cache).logits
    with pytest.warns(FutureWarning, match="past_key_values.*cache"):
        got = s2s(src, decoder_input_ids=tgt[:, 3:], past_key_values=start.cache).logits
    torch.testing.assert_close(got, want)
    with pytest.warns(FutureWarning, match="past_key_values"):
        s2s.model(src, decoder_input_ids=tgt, past_key_values=None)


def test_generate_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        causal_lm().generate(token_ids(), max_new_tokens=2, do_sample=False)
        seq2seq().generate(token_ids(2, 5, 40), max_new_tokens=2, do_sample=False)


def test_tiny_pool_sigma_min_decodes_without_nan():
    """The decode step floors sigma like the operator: cached steps equal the full forward, no NaN."""
    model = causal_lm(pool_sigma_min=1e-30, pool_sigma_max=2.0)
    for module in model.modules():
        if isinstance(module, ContextPool) and module.predictor is not None:
            torch.nn.init.constant_(module.predictor.proj.bias, -200.0)  # sigmoid(b) = 0: sigma = sigma_min
    ids = token_ids()
    full = model(ids).logits
    prefix = model(ids[:, :4], use_cache=True)
    step = model(ids[:, 4:5], cache=prefix.cache).logits
    assert torch.isfinite(full).all() and torch.isfinite(step).all()
    torch.testing.assert_close(step[:, -1], full[:, 4], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("argument", ["cache", "past_key_values"])
@pytest.mark.parametrize("bad", [((torch.zeros(1, 2, 3, 8), torch.zeros(1, 2, 3, 8)),), {}, torch.zeros(2)],
                         ids=["legacy-tuple", "dict", "tensor"])  # fmt: skip
def test_a_cache_that_is_not_a_transformers_cache_names_the_argument(argument, bad):
    """Before: AttributeError "'tuple' object has no attribute 'get_seq_length'" from inside the model."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # past_key_values is the deprecated name
        with pytest.raises(ValueError, match=f"cache / past_key_values must be a transformers Cache .*got {type(bad).__name__}"):
            causal_lm()(token_ids(), use_cache=True, **{argument: bad})


def test_continuous_batching_is_refused_up_front():
    """transformers' continuous batching (generate_batch) packs sequences into paged key/value blocks, which hold no
    pooling state. Before, the causal LM's first batched forward raised inside the batching loop, which only logs
    it: generate_batch returned every request with no tokens. Now each entry point says why, at once."""
    model = causal_lm()
    with pytest.raises(NotImplementedError, match="continuous batching .* not supported by ContextPool models"):
        model.generate_batch(inputs=[[1, 2, 3], [4, 5]], max_new_tokens=2)
    with pytest.raises(NotImplementedError, match="continuous batching"):
        with model.continuous_batching_context_manager():
            pass
    with pytest.raises(NotImplementedError, match="continuous batching"):
        seq2seq().init_continuous_batching()


@pytest.mark.parametrize("positions", ["rotary", "absolute"])
def test_position_ids_of_any_integer_dtype_and_shape_give_the_same_logits(positions):
    """int32 / int16 / uint8 positions, one row for every sequence, and (n,) positions give the int64 (B, n) logits.
    Before, absolute positions other than int64/int32 failed inside the embedding, and (n,) positions with an
    IndexError from the model's own code."""
    model, ids = causal_lm(position_embedding_type=positions), token_ids()
    reference = model(ids, position_ids=torch.arange(6).expand(2, 6)).logits
    for given in (torch.arange(6, dtype=torch.int32).expand(2, 6), torch.arange(6, dtype=torch.int16).expand(2, 6),
                  torch.arange(6, dtype=torch.uint8)[None], torch.arange(6)):  # fmt: skip
        assert torch.equal(model(ids, position_ids=given).logits, reference), given.dtype


@pytest.mark.parametrize("positions", ["rotary", "absolute"])
@pytest.mark.parametrize(
    "bad",
    [torch.ones(2, 6, dtype=torch.bool), [[0, 1, 2, 3, 4, 5]] * 2, torch.arange(6).expand(3, 6), torch.arange(6)[None, None],
     torch.arange(5)],  # fmt: skip
    ids=["bool", "list", "other-batch", "3-d", "short"],
)
def test_bad_position_ids_name_the_argument(positions, bad):
    """Before: a bool mask was read as positions 0 and 1 (rotary), a list raised AttributeError, another batch size or
    a 3-D tensor a RuntimeError from inside torch."""
    raises_naming("position_ids", lambda: causal_lm(position_embedding_type=positions)(token_ids(), position_ids=bad))


def test_absolute_positions_must_be_table_indices():
    """Learned positions index a table: floats and negative positions are refused (before: torch's embedding errors,
    "Expected tensor for argument #1 'indices'" and "index out of range in self"). Rotary positions may be either."""
    absolute, rotary, ids = causal_lm(position_embedding_type="absolute"), causal_lm(), token_ids()
    error = raises_naming("position_ids", lambda: absolute(ids, position_ids=torch.arange(6.0).expand(2, 6)))
    assert "absolute" in str(error)
    error = raises_naming("position_ids", lambda: absolute(ids, position_ids=torch.arange(6).expand(2, 6) - 2))
    assert "[0, 32)" in str(error)
    for given in (torch.arange(6.0).expand(2, 6), torch.arange(6).expand(2, 6) - 2):
        assert torch.isfinite(rotary(ids, position_ids=given).logits).all()


@pytest.mark.parametrize(
    "labels, problem",
    [(torch.tensor([[1, 2], [0, 1]]), "single"), (torch.tensor([1, 2, 0]), "single"), (torch.tensor([1, 5]), "single"),
     (torch.tensor([1, -3]), "single"), (torch.rand(3), "regression"), (torch.rand(2, 4), "multi")],  # fmt: skip
    ids=["two-per-example", "three-for-two", "class-5-of-3", "negative-class", "regression-count", "multi-hot-width"],
)
def test_classification_targets_that_do_not_fit_name_labels(labels, problem):
    """Sequence and image classification: before, torch's errors from inside the loss ("Expected input batch_size (2)
    to match target batch_size (4)", "Target 5 is out of bounds", a broadcast error), none naming labels."""
    fields = dict(TEXT, num_labels=1) if problem == "regression" else dict(TEXT)
    torch.manual_seed(0)
    text = ContextPoolForSequenceClassification(ContextPoolConfig(**fields)).eval()
    raises_naming("labels", lambda: text(token_ids(), labels=labels))
    vit = ContextPoolViTForImageClassification(ContextPoolViTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=8, patch_size=4,
        num_labels=fields["num_labels"])).eval()  # fmt: skip
    raises_naming("labels", lambda: vit(torch.randn(2, 3, 8, 8), labels=labels))


def test_classification_targets_that_fit_still_train():
    """-100 is ignored and (B, 1) class ids are (B,) ones, as in transformers."""
    torch.manual_seed(0)
    model = ContextPoolForSequenceClassification(ContextPoolConfig(**TEXT)).eval()
    ids = token_ids()
    assert torch.equal(model(ids, labels=torch.tensor([[1], [2]])).loss, model(ids, labels=torch.tensor([1, 2])).loss)
    torch.testing.assert_close(model(ids, labels=torch.tensor([1, -100])).loss, model(ids[:1], labels=torch.tensor([1])).loss)


def test_answer_positions_that_do_not_fit_name_the_argument():
    """One position per example, none negative (transformers clamps a negative one to 0, the CLS token: a "no answer"
    target); past the input they are ignored, as in transformers."""
    torch.manual_seed(0)
    qa, ids = ContextPoolForQuestionAnswering(ContextPoolConfig(**TEXT)).eval(), token_ids()
    good = torch.tensor([1, 2])
    raises_naming("start_positions", lambda: qa(ids, start_positions=torch.tensor([1, 2, 3]), end_positions=good))
    raises_naming("end_positions", lambda: qa(ids, start_positions=good, end_positions=torch.tensor([-1, 2])))
    assert torch.isfinite(qa(ids, start_positions=torch.tensor([[1], [9]]), end_positions=good).loss)


def test_encoder_outputs_that_are_not_the_encoders_name_the_argument():
    """The encoder's ModelOutput, transformers' BaseModelOutput and a return_dict=False tuple are read alike. Before, a
    bare tensor was unpacked row by row (its first example taken for the hidden states: "encoder_hidden_states has
    batch 6") and a dict by its keys."""
    from transformers.modeling_outputs import BaseModelOutput

    model, src, tgt = seq2seq(), token_ids(2, 6, 40), token_ids(2, 4, 40, seed=3)
    encoded = model.get_encoder()(src)
    hidden = encoded.last_hidden_state
    reference = model(decoder_input_ids=tgt, encoder_outputs=encoded).logits
    for same in ((hidden,), [hidden], BaseModelOutput(last_hidden_state=hidden)):
        assert torch.equal(model(decoder_input_ids=tgt, encoder_outputs=same).logits, reference)
    for bad in (hidden, {"last_hidden_state": hidden}, (hidden[0],), (torch.randn(2, 6, 7),), BaseModelOutput()):
        raises_naming("encoder_outputs", lambda b=bad: model(decoder_input_ids=tgt, encoder_outputs=b))


def test_seq2seq_labels_must_be_a_batch_of_sequences():
    """Labels are shifted right into decoder_input_ids: (B, n) only. Before, (n,) labels raised "too many indices" from
    the shift and a list an AttributeError."""
    model, src, tgt = seq2seq(), token_ids(2, 6, 40), token_ids(2, 4, 40, seed=3)
    for bad in (tgt[0], tgt.tolist(), tgt[None]):
        raises_naming("labels", lambda b=bad: model(src, labels=b))
    # labels of another length than the decoder inputs given beside them
    raises_naming("labels", lambda: model(src, decoder_input_ids=token_ids(2, 5, 40), labels=tgt))
    assert torch.isfinite(model(src, labels=tgt).loss)
