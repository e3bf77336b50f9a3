"""The text models: heads, losses, attention backends, pooling knobs, padding, gradients, compile, I/O."""

import pytest
import torch
import torch.nn.functional as F
import transformers
from remote_utils import TEXT_MODEL_FILES
from safetensors import safe_open

from contextpool_hf import (
    ContextPoolConfig,
    ContextPoolForCausalLM,
    ContextPoolForMaskedLM,
    ContextPoolForQuestionAnswering,
    ContextPoolForSequenceClassification,
    ContextPoolForTokenClassification,
    ContextPoolModel,
)

VOCAB, HIDDEN, N = 99, 32, 12


def tiny_config(**overrides) -> ContextPoolConfig:
    base = dict(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, pad_token_id=0, num_labels=3, pool_sigma_max=4.0,
    )
    base.update(overrides)
    return ContextPoolConfig(**base)


def make(cls, seed=0, **overrides):
    torch.manual_seed(seed)
    return cls(tiny_config(**overrides)).eval()


def ids(batch=2, n=N, seed=1):
    return torch.randint(1, VOCAB, (batch, n), generator=torch.Generator().manual_seed(seed))


def right_padded():
    """Two sequences, lengths 12 and 7, right padded (pad id 0)."""
    input_ids = ids()
    mask = torch.ones_like(input_ids)
    mask[1, 7:] = 0
    input_ids = input_ids.masked_fill(mask == 0, 0)
    return input_ids, mask


def main_output(out):
    return out.logits if "logits" in out else (out.start_logits if "start_logits" in out else out.last_hidden_state)


# --------------------------------------------------------------------------------------
# Heads: shapes, losses, tuples
# --------------------------------------------------------------------------------------

HEADS = {
    "base": (ContextPoolModel, {}),
    "causal": (ContextPoolForCausalLM, {"is_causal": True}),
    "masked": (ContextPoolForMaskedLM, {}),
    "seqcls": (ContextPoolForSequenceClassification, {}),
    "tokcls": (ContextPoolForTokenClassification, {}),
    "qa": (ContextPoolForQuestionAnswering, {}),
}


def _labels(name, input_ids):
    b, n = input_ids.shape
    if name in ("causal", "masked"):
        return {"labels": input_ids.clone()}
    if name == "seqcls":
        return {"labels": torch.tensor([0, 2])}
    if name == "tokcls":
        return {"labels": torch.randint(0, 3, (b, n), generator=torch.Generator().manual_seed(2))}
    if name == "qa":
        return {"start_positions": torch.tensor([1, 3]), "end_positions": torch.tensor([2, 5])}
    return {}


@pytest.mark.parametrize("name", list(HEADS))
def test_head_shapes_loss_and_tuple(name):
    cls, overrides = HEADS[name]
    model = make(cls, **overrides)
    input_ids, mask = right_padded()
    out = model(input_ids, attention_mask=mask, **_labels(name, input_ids))
    expected = {
        "base": ("last_hidden_state", (2, N, HIDDEN)),
        "causal": ("logits", (2, N, VOCAB)),
        "masked": ("logits", (2, N, VOCAB)),
        "seqcls": ("logits", (2, 3)),
        "tokcls": ("logits", (2, N, 3)),
        "qa": ("start_logits", (2, N)),
    }[name]
    assert out[expected[0]].shape == expected[1]
    if name == "qa":
        assert out.end_logits.shape == (2, N)
    if name != "base":
        assert out.loss.dim() == 0 and torch.isfinite(out.loss) and out.loss > 0
        as_tuple = model(input_ids, attention_mask=mask, return_dict=False, **_labels(name, input_ids))
        assert isinstance(as_tuple, tuple)
        assert torch.equal(as_tuple[0], out.loss) and torch.equal(as_tuple[1], main_output(out))
    else:
        as_tuple = model(input_ids, attention_mask=mask, return_dict=False)
        assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], out.last_hidden_state)


def test_sequence_classification_problem_types():
    model = make(ContextPoolForSequenceClassification, classifier_pooling="mean", use_pooler=True)
    input_ids, mask = right_padded()
    assert model.model.pooler is not None
    multi = model(input_ids, attention_mask=mask, labels=torch.tensor([[1.0, 0, 1], [0, 1, 0]])).loss
    assert torch.isfinite(multi)
    model = make(ContextPoolForSequenceClassification, num_labels=1, classifier_pooling="last", is_causal=True)
    out = model(input_ids, attention_mask=mask, labels=torch.tensor([0.5, -1.0]))
    assert out.logits.shape == (2, 1) and torch.isfinite(out.loss)


def test_masked_lm_ignores_minus_100():
    model = make(ContextPoolForMaskedLM)
    input_ids = ids()
    labels = torch.full_like(input_ids, -100)
    labels[0, 3], labels[1, 5], labels[1, 9] = 7, 11, 13
    out = model(input_ids, labels=labels)
    picked = out.logits[labels != -100]
    expected = F.cross_entropy(picked, labels[labels != -100])
    torch.testing.assert_close(out.loss, expected)


def test_causal_lm_shifts_and_ignores_minus_100():
    model = make(ContextPoolForCausalLM, is_causal=True)
    input_ids = ids()
    labels = input_ids.clone()
    labels[:, :6] = -100
    out = model(input_ids, labels=labels)
    expected = F.cross_entropy(out.logits[:, 5:-1].reshape(-1, VOCAB), input_ids[:, 6:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)


def test_token_classification_ignores_minus_100():
    model = make(ContextPoolForTokenClassification)
    input_ids = ids()
    labels = torch.randint(0, 3, input_ids.shape)
    labels[:, ::2] = -100
    out = model(input_ids, labels=labels)
    keep = labels != -100
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits[keep], labels[keep]))


# --------------------------------------------------------------------------------------
# Attention backends, attention weights, pooling sizes
# --------------------------------------------------------------------------------------


def _pair(cls, **overrides):
    """The same weights under eager and sdpa."""
    eager = make(cls, attn_implementation="eager", **overrides)
    sdpa = make(cls, attn_implementation="sdpa", **overrides)
    sdpa.load_state_dict(eager.state_dict())
    assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
    return eager, sdpa


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("groups", [1, 2])
def test_eager_equals_sdpa(causal, padded, groups):
    cls = ContextPoolForCausalLM if causal else ContextPoolForMaskedLM
    eager, sdpa = _pair(cls, is_causal=causal, pool_groups=groups)
    input_ids, mask = right_padded() if padded else (ids(), None)
    a = eager(input_ids, attention_mask=mask).logits
    b = sdpa(input_ids, attention_mask=mask).logits
    real = mask.bool() if mask is not None else torch.ones(a.shape[:2], dtype=torch.bool)
    torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_output_attentions(causal):
    cls = ContextPoolForCausalLM if causal else ContextPoolForMaskedLM
    model = make(cls, is_causal=causal, attn_implementation="sdpa")  # falls back to eager for the weights
    input_ids, mask = right_padded()
    out = model(input_ids, attention_mask=mask, output_attentions=True)
    assert len(out.attentions) == 2
    for weights in out.attentions:
        assert weights.shape == (2, 4, N, N)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, N))
        assert weights[1, :, :, 7:].abs().max() < 1e-6  # padded keys get no weight
        if causal:
            assert torch.triu(weights, diagonal=1).abs().max() < 1e-6
        else:
            assert weights[0].triu(1).abs().max() > 0
    # the sdpa outputs are the ones with the weights materialised
    torch.testing.assert_close(out.logits, model(input_ids, attention_mask=mask).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_output_pooling_sizes(groups):
    model = make(ContextPoolForMaskedLM, num_hidden_layers=3, pool_layers=[0, 2], pool_groups=groups,
                 pool_sigma_min=1.0, pool_sigma_max=3.0)
    input_ids, mask = right_padded()
    out = model(input_ids, attention_mask=mask, output_pooling_sizes=True)
    sizes = out.pooling_sizes
    assert len(sizes) == 3 and sizes[1] is None
    for sigma in (sizes[0], sizes[2]):
        assert sigma.shape == (2, groups, N)
        assert sigma.min() >= 1.0 and sigma.max() <= 3.0
        assert sigma.std() > 0  # input-adaptive
    assert model(input_ids).pooling_sizes is None


@pytest.mark.parametrize("groups", [1, 2])
def test_pool_target_kv_differs_from_qkv(groups):
    qkv = make(ContextPoolForMaskedLM, pool_target="qkv", pool_groups=groups)
    kv = make(ContextPoolForMaskedLM, pool_target="kv", pool_groups=groups)
    kv.load_state_dict(qkv.state_dict())
    input_ids, mask = right_padded()
    a, b = qkv(input_ids, attention_mask=mask).logits, kv(input_ids, attention_mask=mask).logits
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert not torch.allclose(a, b, atol=1e-4)


def test_gqa_with_per_head_pooling():
    eager, sdpa = _pair(ContextPoolForCausalLM, is_causal=True, num_key_value_heads=2, pool_groups=2,
                        mlp_type="gated", norm_type="rmsnorm", hidden_act="silu", attention_bias=False)
    attention = eager.model.layers[0].attention
    assert attention.k_proj.out_features == 2 * 8 and attention.pool_mix.shape == (2,)
    input_ids, mask = right_padded()
    out = eager(input_ids, attention_mask=mask, output_pooling_sizes=True, labels=input_ids)
    assert out.pooling_sizes[0].shape == (2, 2, N)
    torch.testing.assert_close(out.logits[mask.bool()], sdpa(input_ids, attention_mask=mask).logits[mask.bool()],
                               atol=1e-5, rtol=1e-5)
    out.loss.backward()
    assert attention.pool.predictor.proj.weight.grad.abs().sum() > 0


def _copy_without_pooling(model, cls, **overrides):
    vanilla = make(cls, pool_layers=[], **overrides)
    missing, unexpected = vanilla.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(".pool" in key for key in unexpected) and unexpected
    return vanilla


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("causal", [False, True])
def test_pool_mix_zero_is_the_vanilla_transformer(groups, causal):
    cls = ContextPoolForCausalLM if causal else ContextPoolForMaskedLM
    closed = make(cls, pool_mix_init=0.0, pool_groups=groups, is_causal=causal)
    opened = make(cls, pool_mix_init=1.0, pool_groups=groups, is_causal=causal)
    opened.load_state_dict(closed.state_dict(), strict=False)  # pool_mix is a parameter: keep 1.0
    for layer in opened.model.layers:
        layer.attention.pool_mix.data.fill_(1.0)
    vanilla = _copy_without_pooling(closed, cls, is_causal=causal)
    assert not any("pool" in name for name, _ in vanilla.named_parameters())
    input_ids, mask = right_padded()
    ref = vanilla(input_ids, attention_mask=mask).logits
    torch.testing.assert_close(closed(input_ids, attention_mask=mask).logits, ref, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(opened(input_ids, attention_mask=mask).logits, ref, atol=1e-4)


def test_vanilla_ignores_pool_knobs():
    a = make(ContextPoolForMaskedLM, pool_layers=[], pool_sigma_max=2.0, pool_target="kv")
    b = make(ContextPoolForMaskedLM, pool_layers=[], pool_sigma_max=6.0, pool_groups=4)
    b.load_state_dict(a.state_dict())
    input_ids = ids()
    assert torch.equal(a(input_ids).logits, b(input_ids).logits)
    assert a(input_ids, output_pooling_sizes=True).pooling_sizes == (None, None)


# --------------------------------------------------------------------------------------
# Padding invariance and causality
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "causal, attn, groups", [(False, "eager", 1), (False, "sdpa", 4), (True, "eager", 4), (True, "sdpa", 1)]
)
def test_right_padding_invariance(causal, attn, groups):
    cls = ContextPoolForCausalLM if causal else ContextPoolForMaskedLM
    model = make(cls, is_causal=causal, attn_implementation=attn, pool_groups=groups,
                 position_embedding_type="absolute" if not causal else "rotary")
    input_ids, mask = right_padded()
    batched = model(input_ids, attention_mask=mask).logits
    alone0 = model(input_ids[:1]).logits
    alone1 = model(input_ids[1:, :7]).logits
    torch.testing.assert_close(batched[0], alone0[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched[1, :7], alone1[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("groups", [1, 2])
def test_causal_lm_is_causal(groups):
    model = make(ContextPoolForCausalLM, is_causal=True, pool_groups=groups)
    input_ids = ids()
    changed = input_ids.clone()
    changed[:, 6:] = (changed[:, 6:] + 5) % VOCAB
    a, b = model(input_ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, :6], b[:, :6], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(a[:, 6:], b[:, 6:], atol=1e-4)


def test_encoder_is_bidirectional():
    model = make(ContextPoolForMaskedLM)
    input_ids = ids()
    changed = input_ids.clone()
    changed[:, -1] = (changed[:, -1] + 5) % VOCAB
    assert not torch.allclose(model(input_ids).logits[:, 0], model(changed).logits[:, 0], atol=1e-5)


# --------------------------------------------------------------------------------------
# Gradients: every parameter, checkpointing, bf16, compile
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["causal", "masked", "seqcls"])
def test_every_parameter_gets_a_finite_gradient(name):
    cls, overrides = HEADS[name]
    model = make(cls, pool_groups=2, type_vocab_size=2, use_pooler=(name == "seqcls"), **overrides).train()
    input_ids, mask = right_padded()
    model(input_ids, attention_mask=mask, **_labels(name, input_ids)).loss.backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, param_name
        assert torch.isfinite(param.grad).all(), param_name
        if "pool" in param_name or "layers" in param_name:
            assert param.grad.abs().sum() > 0, param_name


def _grads(model, input_ids, mask):
    model.zero_grad()
    model(input_ids, attention_mask=mask, labels=input_ids).loss.backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("causal", [False, True])
def test_gradient_checkpointing_same_gradients(causal):
    cls = ContextPoolForCausalLM if causal else ContextPoolForMaskedLM
    model = make(cls, is_causal=causal).train()
    input_ids, mask = right_padded()
    plain = _grads(model, input_ids, mask)
    model.gradient_checkpointing_enable()
    assert model.model.gradient_checkpointing and model.is_activation_checkpointing
    checkpointed = _grads(model, input_ids, mask)
    for key in plain:
        torch.testing.assert_close(checkpointed[key], plain[key], atol=1e-6, rtol=1e-5, msg=key)


def test_bf16_autocast_close_to_fp32():
    model = make(ContextPoolForCausalLM, is_causal=True, pool_groups=2).train()
    input_ids, mask = right_padded()
    ref = model(input_ids, attention_mask=mask, labels=input_ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(input_ids, attention_mask=mask, labels=input_ids)
    out.loss.backward()
    assert out.logits.dtype == torch.bfloat16
    real = mask.bool()
    # Bands from measurement (seeds 0-2): bf16 vs fp32 differs by <= 0.0024 in logits and <= 2.1e-4
    # in loss; a model with other random weights differs by >= 0.53 in logits and >= 4.6e-3 in loss.
    torch.testing.assert_close(out.logits.float()[real], ref.logits[real], atol=0.01, rtol=0)
    torch.testing.assert_close(out.loss.float(), ref.loss, atol=1e-3, rtol=0)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    # the bands are tighter than the distance to a wrong model
    with torch.no_grad():
        wrong = make(ContextPoolForCausalLM, seed=10, is_causal=True, pool_groups=2)(input_ids, attention_mask=mask,
                                                                                    labels=input_ids)
    assert float((wrong.logits - ref.logits)[real].abs().max()) > 0.1
    assert abs(float(wrong.loss - ref.loss)) > 1e-3


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_torch_compile_fullgraph_forward_backward(causal, backend):
    """inductor generates and compiles C++ (a minute or more on 2 cores), hence slow."""
    torch._dynamo.reset()
    cls = ContextPoolForCausalLM if causal else ContextPoolForMaskedLM
    model = make(cls, is_causal=causal, pool_groups=2, num_hidden_layers=1).train()
    input_ids, mask = right_padded()
    plain = _grads(model, input_ids, mask)
    ref_logits = model(input_ids, attention_mask=mask).logits
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    model.zero_grad()
    out = compiled(input_ids, attention_mask=mask, labels=input_ids)
    out.loss.backward()
    torch.testing.assert_close(out.logits, ref_logits, atol=1e-5, rtol=1e-5)
    for key, param in model.named_parameters():
        torch.testing.assert_close(param.grad, plain[key], atol=1e-5, rtol=1e-4, msg=key)


# --------------------------------------------------------------------------------------
# Library integration: split modules, Auto classes, embeddings, save/load
# --------------------------------------------------------------------------------------


def test_no_split_modules_exist():
    model = make(ContextPoolForCausalLM, is_causal=True)
    names = {type(m).__name__ for m in model.modules()}
    assert model._no_split_modules and set(model._no_split_modules) <= names


@pytest.mark.parametrize(
    "auto_name, cls",
    [
        ("AutoModel", ContextPoolModel),
        ("AutoModelForCausalLM", ContextPoolForCausalLM),
        ("AutoModelForMaskedLM", ContextPoolForMaskedLM),
        ("AutoModelForSequenceClassification", ContextPoolForSequenceClassification),
        ("AutoModelForTokenClassification", ContextPoolForTokenClassification),
        ("AutoModelForQuestionAnswering", ContextPoolForQuestionAnswering),
    ],
)
def test_auto_classes_resolve_in_process(auto_name, cls):
    config = tiny_config(is_causal=True)
    assert type(getattr(transformers, auto_name).from_config(config)) is cls


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(input_ids=torch.ones(1, 65, dtype=torch.long)), "max_position_embeddings"),
        (dict(input_ids=torch.ones(2, 8, dtype=torch.long), attention_mask=torch.ones(2, 7)), "attention_mask"),
        (dict(input_ids=torch.ones(2, 8, dtype=torch.long), attention_mask=torch.ones(8)), "attention_mask"),
        (dict(), "exactly one of input_ids or inputs_embeds"),
        (dict(input_ids=torch.ones(2, 8, dtype=torch.long), inputs_embeds=torch.zeros(2, 8, HIDDEN)),
         "exactly one of input_ids or inputs_embeds"),
        (dict(input_ids=torch.full((2, 8), VOCAB)), "outside \\[0, 99\\)"),
        (dict(input_ids=torch.full((2, 8), -1)), "outside \\[0, 99\\)"),
        (dict(input_ids=torch.ones(8, dtype=torch.long)), "input_ids must be \\(batch, sequence_length\\)"),
        (dict(inputs_embeds=torch.zeros(2, 8, HIDDEN + 1)), "inputs_embeds"),
        (dict(input_ids=torch.ones(1, 8, dtype=torch.long), position_ids=torch.arange(60, 68)[None]),
         "max_position_embeddings"),
    ],
)
@pytest.mark.parametrize("cls", [ContextPoolForCausalLM, ContextPoolForMaskedLM])
def test_bad_inputs_raise_clear_errors(cls, kwargs, message):
    model = make(cls, is_causal=cls is ContextPoolForCausalLM, position_embedding_type="absolute")
    with pytest.raises(ValueError, match=message):
        model(**kwargs)


def test_inputs_embeds_equal_input_ids():
    model = make(ContextPoolForCausalLM, is_causal=True)
    input_ids = ids()
    embeds = model.get_input_embeddings()(input_ids)
    torch.testing.assert_close(model(inputs_embeds=embeds).logits, model(input_ids).logits)


@pytest.mark.parametrize("cls, head", [(ContextPoolForCausalLM, "lm_head"), (ContextPoolForMaskedLM, "cls.decoder")])
def test_tied_weights_and_resize(cls, head):
    causal = cls is ContextPoolForCausalLM
    tied = make(cls, is_causal=causal)
    untied = make(cls, is_causal=causal, tie_word_embeddings=False)
    assert tied.get_output_embeddings().weight is tied.get_input_embeddings().weight
    assert untied.get_output_embeddings().weight is not untied.get_input_embeddings().weight
    tied.resize_token_embeddings(120, mean_resizing=False)
    assert tied.config.vocab_size == 120
    assert tied.get_input_embeddings().weight.shape == (120, HIDDEN)
    assert tied.get_output_embeddings().weight is tied.get_input_embeddings().weight
    out = tied(torch.tensor([[1, 110, 119]]), labels=torch.tensor([[1, 110, 119]]))
    assert out.logits.shape == (1, 3, 120) and torch.isfinite(out.loss)
    if not causal:
        assert tied.cls.bias.shape == (120,)
    untied.resize_token_embeddings(104, mean_resizing=False)
    assert untied.get_output_embeddings().weight.shape == (104, HIDDEN)


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("cls", [ContextPoolForCausalLM, ContextPoolForMaskedLM, ContextPoolForQuestionAnswering])
def test_save_load_round_trip(tmp_path, cls, tie):
    causal = cls is ContextPoolForCausalLM
    model = make(cls, is_causal=causal, tie_word_embeddings=tie, pool_groups=2, pool_layers=[1])
    # move away from the initial values so that a re-initialisation on load would show
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.01)
    model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors"} | TEXT_MODEL_FILES <= files
    with safe_open(tmp_path / "model.safetensors", "pt") as handle:
        keys = set(handle.keys())
    assert "model.layers.1.attention.pool_mix" in keys and not any("layers.0.attention.pool" in k for k in keys)
    head_key = {ContextPoolForCausalLM: "lm_head.weight", ContextPoolForMaskedLM: "cls.decoder.weight"}.get(cls)
    if head_key is not None:
        assert (head_key in keys) == (not tie)  # tied weights are stored once
    loaded = cls.from_pretrained(tmp_path).eval()
    input_ids, mask = right_padded()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert torch.equal(main_output(loaded(input_ids, attention_mask=mask)), main_output(model(input_ids, attention_mask=mask)))
    if head_key is not None and tie:
        assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight


def test_eager_attention_in_float64_with_left_padding_is_finite_and_equals_sdpa():
    """The eager product's softmax runs in float64 for a float64 model: in float32 the mask's float64 minimum
    becomes -inf, a fully masked (left-padding) row gave NaN, and the pooling spread it (0 * NaN) to real tokens."""
    from helpers import random_ids, tiny_causal_lm

    input_ids = random_ids(n=12)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :4] = 0
    logits = {}
    for implementation in ("eager", "sdpa"):
        model = tiny_causal_lm(attn_implementation=implementation).double()
        with torch.no_grad():
            logits[implementation] = model(input_ids, attention_mask=attention_mask, use_cache=False).logits
    assert torch.isfinite(logits["eager"]).all()
    torch.testing.assert_close(logits["eager"][1, 4:], logits["sdpa"][1, 4:], atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(logits["eager"][0], logits["sdpa"][0], atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_rms_norm_is_llamas_float32_formula_bitwise(dtype):
    """float32 runs as one F.rms_norm call; it must equal Llama's formula (computed in float32, weight applied
    after the cast back) bit for bit, gradients included, and every other dtype keeps that formula."""
    from contextpool_hf.layers_contextpool import ContextPoolRMSNorm

    torch.manual_seed(0)
    norm = ContextPoolRMSNorm(64, 1e-6).to(dtype)
    with torch.no_grad():
        norm.weight.normal_()
    x = (torch.randn(3, 7, 64) * 3).to(dtype).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    h = x_ref.to(torch.float32)
    expected = norm.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)).to(dtype)
    out = norm(x)
    assert out.dtype == expected.dtype and torch.equal(out, expected)
    grad = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (x, norm.weight), grad),
                    torch.autograd.grad(expected, (x_ref, norm.weight), grad), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_rotary_tables_rotate_exactly_as_rotate_half(dtype):
    """The layers rotate with roll and a sign-folded sin (4 calls, tables built once per forward); it must be
    Llama's x * cos + rotate_half(x) * sin bit for bit, gradients included."""
    from contextpool_hf.layers_contextpool import _rotate, apply_rotary, rotary_cos_sin, rotary_tables

    torch.manual_seed(0)
    cos, sin = rotary_cos_sin(torch.arange(5, 12)[None].expand(2, -1), 16, 10000.0, dtype)
    x = torch.randn(2, 3, 7, 16, dtype=dtype, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    out, expected = _rotate(x, rotary_tables(cos, sin)), apply_rotary(x_ref, cos, sin)
    assert torch.equal(out, expected)
    grad = torch.randn_like(out)
    assert torch.equal(torch.autograd.grad(out, x, grad)[0], torch.autograd.grad(expected, x_ref, grad)[0])
