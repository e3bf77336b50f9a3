"""Conversion checked against the source model's own forward, on perturbed weights (issue 14, item 1).

Every source here has seeded noise on every weight (tests/conversion_utils.perturb_weights), so no
two tensors are interchangeable: a norm swap or a q/k swap in a key map moves the outputs by O(0.1-1)
instead of the ~0 it moves them on a freshly initialised model. The converted model's outputs are
compared with the source's outputs computed here, per task head, on padded batches; the package's
`verify_conversion` is not the oracle but is itself tested (it must see a deliberate mis-mapping).

Tolerances come from the measured error of the correct conversion (numbers in the comments, float32,
`pytest tests/test_convert_oracle.py -k measured -s` prints them); every deliberate bug of issue 14's
table must exceed its tolerance by at least `MARGIN`.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers
from conversion_utils import layer_pairs, max_diff, perturb_weights, swap_weights
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    MarianConfig,
    MarianMTModel,
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

from contextpool_hf.convert import SUPPORTED_SOURCES, convert_model, verify_conversion

VOCAB = 97
# Measured max abs difference of the correct conversion on these perturbed tiny models (float32,
# torch 2.13 CPU, `-k measured -s`): BERT heads <= 8.9e-7, GPT-2 <= 6e-8, Llama <= 1.2e-7, Marian/BART
# logits 0.0, ViT 0.0, ResNet 0.0,
# Mistral/Qwen2/Qwen3 <= 1.8e-7. TOL = 1e-5 leaves > 10x headroom for other CPUs / BLAS builds.
TOL = 1e-5
# A mis-mapped model must differ by at least MARGIN x TOL. Measured differences of the deliberate
# bugs: GPT-2 ln_1/ln_2 swap 0.55, Llama norm swap 0.49, BERT q/k swap 0.15 (MLM) / 0.26 (base),
# seq2seq norm swap 0.25-0.39, cross-attention q/k swap 0.13, ViT norm swap 0.13, ResNet BatchNorm
# statistics swap 0.13; Mistral norm swap 1.01, Qwen2 k/v bias swap 1.52, Qwen3 q_norm/k_norm swap
# 0.11: all >= 1e4 x TOL.
MARGIN = 100


# ----------------------------------------------------------------------------------------
# Sources: tiny models of every family and head, perturbed
# ----------------------------------------------------------------------------------------


def _bert_config(**kw):
    return BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                      vocab_size=VOCAB, max_position_embeddings=64, type_vocab_size=2, pad_token_id=0, **kw)


def _gpt2_config(**kw):
    return GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64, bos_token_id=1,
                      eos_token_id=2, pad_token_id=0, **kw)


def _llama_like_config(config_class, **kw):
    base = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=64, bos_token_id=1,
                eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    base.update(kw)
    return config_class(**base)


def _llama_config(**kw):
    return _llama_like_config(LlamaConfig, attention_bias=True, mlp_bias=True, **kw)


def _family_config(model_type):
    """Config builder for a llama-like family H3a may add (None if transformers lacks it)."""
    name = {"mistral": "MistralConfig", "qwen2": "Qwen2Config", "qwen3": "Qwen3Config"}[model_type]
    config_class = getattr(transformers, name, None)
    return None if config_class is None else (lambda **kw: _llama_like_config(config_class, **kw))


# (family, source class name, head kind); head kinds name what the head returns.
TEXT_CASES = [
    ("bert", "BertModel", "base"),
    ("bert", "BertForMaskedLM", "token-logits"),
    ("bert", "BertForPreTraining", "token-logits"),
    ("bert", "BertForSequenceClassification", "sequence-logits"),
    ("bert", "BertForTokenClassification", "token-logits"),
    ("bert", "BertForQuestionAnswering", "span-logits"),
    ("gpt2", "GPT2Model", "base"),
    ("gpt2", "GPT2LMHeadModel", "token-logits"),
    ("gpt2", "GPT2ForSequenceClassification", "sequence-logits"),
    ("llama", "LlamaModel", "base"),
    ("llama", "LlamaForCausalLM", "token-logits"),
    ("llama", "LlamaForSequenceClassification", "sequence-logits"),
]
# New source families (issue 12 item 8): tested as soon as the converter lists them.
for _family, _prefix in (("mistral", "Mistral"), ("qwen2", "Qwen2"), ("qwen3", "Qwen3")):
    TEXT_CASES += [
        (_family, f"{_prefix}Model", "base"),
        (_family, f"{_prefix}ForCausalLM", "token-logits"),
        (_family, f"{_prefix}ForSequenceClassification", "sequence-logits"),
    ]

_CONFIGS = {"bert": _bert_config, "gpt2": _gpt2_config, "llama": _llama_config}


def text_source(family: str, class_name: str, seed: int = 0):
    if family not in SUPPORTED_SOURCES:
        pytest.skip(f"{family} is not (yet) a conversion source")
    builder = _CONFIGS.get(family) or _family_config(family)
    cls = getattr(transformers, class_name, None)
    if builder is None or cls is None:
        pytest.skip(f"transformers has no {class_name}")
    torch.manual_seed(seed)
    num_labels = 2 if "QuestionAnswering" in class_name else 3  # a QA head is (start, end)
    return perturb_weights(cls(builder(num_labels=num_labels)).eval(), seed=seed)


def padded_batch(family: str, seed: int = 3):
    """3 rows of 12 tokens, right padded to lengths 12, 7 and 3 (pad id 0); BERT gets segment ids."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    inputs = {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}
    if family == "bert":
        inputs["token_type_ids"] = (torch.arange(12) >= 5).long().expand(3, 12).clone()
    return inputs


@torch.no_grad()
def head_outputs(model, inputs, kind: str) -> dict[str, tuple[torch.Tensor, bool]]:
    """What a head returns, as name -> (tensor, compared per real token)."""
    kwargs = {"use_cache": False} if getattr(model, "can_generate", lambda: False)() else {}
    out = model(**inputs, **kwargs)
    if kind == "base":
        result = {"last_hidden_state": (out.last_hidden_state, True)}
        if getattr(out, "pooler_output", None) is not None:
            result["pooler_output"] = (out.pooler_output, False)
        return result
    if kind == "span-logits":
        return {"start_logits": (out.start_logits, True), "end_logits": (out.end_logits, True)}
    logits = out["prediction_logits"] if "prediction_logits" in out else out.logits  # BertForPreTraining
    return {"logits": (logits, kind == "token-logits")}


def output_difference(source, converted, inputs, kind: str) -> dict[str, float]:
    """Per output name, max |source - converted| (at real tokens for per-token outputs)."""
    a, b = head_outputs(source, inputs, kind), head_outputs(converted, inputs, kind)
    assert a.keys() == b.keys(), (a.keys(), b.keys())
    return {name: max_diff(a[name][0], b[name][0], inputs["attention_mask"] if a[name][1] else None) for name in a}


def convert_quietly(source, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BertForPreTraining drops its next-sentence head, with a warning
        return convert_model(source, **kw)


# ----------------------------------------------------------------------------------------
# The helper really breaks the symmetry
# ----------------------------------------------------------------------------------------


def test_perturbation_makes_every_tensor_distinct():
    fresh = transformers.GPT2LMHeadModel(_gpt2_config()).eval()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    source = perturb_weights(fresh, seed=0)
    state = source.state_dict()
    for name, value in state.items():
        if value.is_floating_point():
            assert not torch.equal(value, before[name]), f"{name} was not perturbed"
    # the norms are no longer all weight 1 / bias 0, and no two same-shape tensors are equal
    assert (state["transformer.h.0.ln_1.weight"] - 1).abs().min() > 0
    same_shape = [(a, b) for a in state for b in state if a < b and state[a].shape == state[b].shape
                  and state[a].data_ptr() != state[b].data_ptr()]  # tied weights are one tensor
    assert same_shape and all(not torch.equal(state[a], state[b]) for a, b in same_shape)


def test_perturbation_is_seeded():
    def build(seed):
        torch.manual_seed(0)
        return perturb_weights(transformers.LlamaForCausalLM(_llama_config()), seed=seed).state_dict()

    a, b, c = build(0), build(0), build(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.layers.0.input_layernorm.weight"], c["model.layers.0.input_layernorm.weight"])


# ----------------------------------------------------------------------------------------
# Text families: converted == source forward, per head
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("family,class_name,kind", TEXT_CASES, ids=[c[1] for c in TEXT_CASES])
def test_converted_text_model_reproduces_the_source_forward(family, class_name, kind):
    source = text_source(family, class_name)
    converted = convert_quietly(source)
    inputs = padded_batch(family)
    diffs = output_difference(source, converted, inputs, kind)
    assert max(diffs.values()) <= TOL, diffs
    # the outputs are not trivially equal (e.g. all zeros): the perturbed model computes something
    outputs = head_outputs(source, inputs, kind)
    assert all(float(t.std()) > 1e-2 for t, _ in outputs.values())


@pytest.mark.parametrize("family,class_name", [("gpt2", "GPT2LMHeadModel"), ("llama", "LlamaForCausalLM"),
                                               ("bert", "BertForMaskedLM")])
def test_forced_new_head_keeps_the_body(family, class_name):
    """Converted with a head the source lacks: the body's hidden states still equal the source's."""
    source = text_source(family, class_name)
    converted = convert_quietly(source, task="token-classification" if family != "bert" else "question-answering")
    inputs = padded_batch(family)
    with torch.no_grad():
        expected = source.base_model(**inputs).last_hidden_state
        got = converted.model(**inputs).last_hidden_state
    assert max_diff(expected, got, inputs["attention_mask"]) <= TOL


# Issue 14's table, as the converted model a buggy key map would produce (plus BERT's q/k swap).
MISMAPPINGS = {
    "gpt2-ln_1/ln_2-swap": ("gpt2", "GPT2LMHeadModel", "token-logits", r"\.attn_norm\.", ".mlp_norm."),
    "llama-input/post_attention_layernorm-swap": ("llama", "LlamaForCausalLM", "token-logits", r"\.attn_norm\.",
                                                  ".mlp_norm."),
    "bert-q/k-swap": ("bert", "BertForMaskedLM", "token-logits", r"\.q_proj\.", ".k_proj."),
    "bert-base-q/k-swap": ("bert", "BertModel", "base", r"\.q_proj\.", ".k_proj."),
    # the new llama-like families (skipped until the converter lists them)
    "mistral-norm-swap": ("mistral", "MistralForCausalLM", "token-logits", r"\.attn_norm\.", ".mlp_norm."),
    "qwen2-k/v-bias-swap": ("qwen2", "Qwen2ForCausalLM", "token-logits", r"\.k_proj\.bias", ".v_proj.bias"),
    "qwen3-q_norm/k_norm-swap": ("qwen3", "Qwen3ForCausalLM", "token-logits", r"\.q_norm\.", ".k_norm."),
}


@pytest.mark.parametrize("name", list(MISMAPPINGS))
def test_mismapped_conversion_is_far_outside_the_tolerance(name):
    family, class_name, kind, a, b = MISMAPPINGS[name]
    source = text_source(family, class_name)
    converted = convert_quietly(source)
    inputs = padded_batch(family)
    assert max(output_difference(source, converted, inputs, kind).values()) <= TOL
    swap_weights(converted, layer_pairs(converted, a, b))
    diffs = output_difference(source, converted, inputs, kind)
    assert max(diffs.values()) > MARGIN * TOL, (name, diffs)


@pytest.mark.parametrize("name", list(MISMAPPINGS))
def test_verify_conversion_reports_a_mismapping(name):
    """verify_conversion is an oracle only if it can fail: small for the right model, large for a wrong one."""
    family, class_name, _, a, b = MISMAPPINGS[name]
    source = text_source(family, class_name)
    converted = convert_quietly(source)
    assert verify_conversion(source, converted) <= TOL
    swap_weights(converted, layer_pairs(converted, a, b))
    assert verify_conversion(source, converted) > MARGIN * TOL


def test_verify_conversion_sees_a_wrong_head_and_a_wrong_embedding():
    source = text_source("bert", "BertForSequenceClassification")
    converted = convert_quietly(source)
    with torch.no_grad():
        converted.classifier.bias.add_(0.01)  # only the head differs
    assert verify_conversion(source, converted) == pytest.approx(0.01, rel=1e-3)
    converted = convert_quietly(source)
    with torch.no_grad():
        # one position row (not a constant shift, which the embedding LayerNorm would remove)
        converted.model.embed_positions.weight[5].add_(torch.linspace(-0.5, 0.5, 32))
    assert verify_conversion(source, converted) > MARGIN * TOL


# ----------------------------------------------------------------------------------------
# Seq2seq: Marian and BART
# ----------------------------------------------------------------------------------------

SEQ2SEQ_SIZES = dict(vocab_size=60, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                     decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=64)


def seq2seq_source(family: str):
    torch.manual_seed(0)
    if family == "marian":
        source = MarianMTModel(MarianConfig(**SEQ2SEQ_SIZES, pad_token_id=59, eos_token_id=0,
                                            decoder_start_token_id=59, activation_function="swish",
                                            scale_embedding=True))
    else:
        source = BartForConditionalGeneration(BartConfig(**SEQ2SEQ_SIZES))
    # Marian's sinusoidal position tables are fixed (requires_grad=False) and so are not perturbed;
    # final_logits_bias (a buffer) is.
    return perturb_weights(source.eval(), seed=0)


def seq2seq_inputs(source, seed: int = 4):
    g = torch.Generator().manual_seed(seed)
    pad = source.config.pad_token_id
    ids = torch.randint(4, 59, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    mask[2, 4:] = 0
    return {"input_ids": ids.masked_fill(mask == 0, pad), "attention_mask": mask,
            "decoder_input_ids": torch.randint(4, 59, (3, 7), generator=g)}


@torch.no_grad()
def seq2seq_difference(source, converted, inputs) -> dict[str, float]:
    a, b = source(**inputs, use_cache=False), converted(**inputs, use_cache=False)
    return {"logits": max_diff(a.logits, b.logits),
            "encoder": max_diff(a.encoder_last_hidden_state, b.encoder_last_hidden_state, inputs["attention_mask"])}


SEQ2SEQ_MISMAPPINGS = {
    "self_attn_layer_norm/final_layer_norm-swap": (r"\.self_attn_layer_norm\.", ".final_layer_norm."),
    "decoder-cross-attention-q/k-swap": (r"(decoder\.layers\.\d+\.encoder_attn)\.q_proj\.", r"\1.k_proj."),
}


@pytest.mark.parametrize("family", ["marian", "bart"])
def test_converted_seq2seq_reproduces_the_source_forward(family):
    from contextpool_hf.convert_seq2seq import convert_seq2seq_model

    source = seq2seq_source(family)
    converted = convert_seq2seq_model(source)
    inputs = seq2seq_inputs(source)
    diffs = seq2seq_difference(source, converted, inputs)
    assert max(diffs.values()) <= TOL, diffs
    # greedy generation, scores included
    kw = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=6,
              do_sample=False, num_beams=1, output_scores=True, return_dict_in_generate=True)
    a, b = source.generate(**kw), converted.generate(**kw)
    assert torch.equal(a.sequences, b.sequences)
    assert max_diff(torch.stack(a.scores), torch.stack(b.scores)) <= TOL
    for name, (pa, pb) in SEQ2SEQ_MISMAPPINGS.items():
        wrong = convert_seq2seq_model(source)
        swap_weights(wrong, layer_pairs(wrong, pa, pb))
        wrong_diffs = seq2seq_difference(source, wrong, inputs)
        assert wrong_diffs["logits"] > MARGIN * TOL, (name, wrong_diffs)


# ----------------------------------------------------------------------------------------
# Vision: ViT and ResNet
# ----------------------------------------------------------------------------------------


def vision_source(family: str):
    torch.manual_seed(0)
    if family == "vit":
        config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                           image_size=16, patch_size=4, num_labels=3)
        source = ViTForImageClassification(config)
    else:
        config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[2, 1], num_labels=3)
        source = ResNetForImageClassification(config)
    return perturb_weights(source.eval(), seed=0)


def _same_shape_pair(model, suffix: str) -> list[tuple[str, str]]:
    """The first two state entries ending in `suffix` with one shape (two BatchNorms, say)."""
    keys = [k for k in model.state_dict() if k.endswith(suffix)]
    state = model.state_dict()
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            if state[a].shape == state[b].shape:
                return [(a, b)]
    raise KeyError(f"no two {suffix} tensors of one shape")


@pytest.mark.parametrize("family", ["vit", "resnet"])
def test_converted_vision_model_reproduces_the_source_forward(family):
    from contextpool_hf.convert_vision import convert_resnet, convert_vit

    convert = convert_vit if family == "vit" else convert_resnet
    source = vision_source(family)
    converted = convert(source)
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = source(pixel_values=pixels).logits
        assert max_diff(expected, converted(pixel_values=pixels).logits) <= TOL
        wrong = convert(source)
        if family == "vit":
            swap_weights(wrong, layer_pairs(wrong, r"\.layernorm_before\.", ".layernorm_after."))
        else:  # the running statistics of two BatchNorms swapped
            swap_weights(wrong, _same_shape_pair(wrong, "running_var") + _same_shape_pair(wrong, "running_mean"))
        assert max_diff(expected, wrong(pixel_values=pixels).logits) > MARGIN * TOL


def test_converted_vit_interpolates_its_positions_as_the_source_does():
    """interpolate_pos_encoding=True at other image sizes (a larger, a non-square and a smaller grid): the same
    bicubic resize of the position table as transformers' ViT, so the converted model gives the source's logits."""
    from contextpool_hf.convert_vision import convert_vit

    source = vision_source("vit")
    converted = convert_vit(source)
    for size in [(24, 24), (16, 32), (8, 8)]:
        pixels = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            expected = source(pixel_values=pixels, interpolate_pos_encoding=True).logits
            assert max_diff(expected, converted(pixel_values=pixels, interpolate_pos_encoding=True).logits) <= TOL


# ----------------------------------------------------------------------------------------
# Measured numbers (run with -s to print them; also a check that the margins hold)
# ----------------------------------------------------------------------------------------


def test_measured_errors_and_margins(capsys):
    rows = []
    for family, class_name, kind in TEXT_CASES:
        if family not in SUPPORTED_SOURCES or not hasattr(transformers, class_name):
            continue
        source = text_source(family, class_name)
        rows.append((class_name, max(output_difference(source, convert_quietly(source), padded_batch(family),
                                                       kind).values())))
    wrong = {}
    for name, (family, class_name, kind, a, b) in MISMAPPINGS.items():
        if family not in SUPPORTED_SOURCES:
            continue
        source = text_source(family, class_name)
        converted = convert_quietly(source)
        swap_weights(converted, layer_pairs(converted, a, b))
        wrong[name] = max(output_difference(source, converted, padded_batch(family), kind).values())
    with capsys.disabled():
        print("\ncorrect conversion, max abs diff:", {k: f"{v:.2e}" for k, v in rows})
        print("mis-mapped conversion, max abs diff:", {k: f"{v:.3g}" for k, v in wrong.items()})
    assert max(v for _, v in rows) <= TOL and min(wrong.values()) > MARGIN * TOL
