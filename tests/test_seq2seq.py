"""ContextPool encoder-decoder: cache equivalence, loss/label handling, conversion, Trainer, pipeline."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import BartConfig, BartForConditionalGeneration, MarianConfig, MarianMTModel

import contextpool_hf  # noqa: F401  (registers the Auto classes)
from contextpool_hf import ContextPoolForConditionalGeneration, ContextPoolSeq2SeqConfig
from contextpool_hf.convert_seq2seq import compare_seq2seq, convert_seq2seq_checkpoint, convert_seq2seq_model
from contextpool_hf.modeling_contextpool import ContextPoolCache
from contextpool_hf.modeling_contextpool_seq2seq import shift_tokens_right

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(vocab_size=40, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=48,
            dropout=0.0, pool_sigma_max=2.0, pool_truncation=2.0)


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    model = ContextPoolForConditionalGeneration(ContextPoolSeq2SeqConfig(**{**TINY, **overrides})).eval()
    with torch.no_grad():  # non-trivial pooling: random predictors, half-open gates, a logits bias
        for name, p in model.named_parameters():
            if "pool_mix" in name:
                p.uniform_(0.3, 1.0)
        model.final_logits_bias.normal_()
    return model


def batch(seed=1, b=3, n=9, vocab=40):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab, (b, n), generator=g)
    mask = torch.ones_like(input_ids)
    mask[1, -3:] = 0
    input_ids[1, -3:] = 0
    return input_ids, mask


@pytest.mark.parametrize("overrides", [{}, {"pool_groups": 2, "norm_position": "post", "position_embedding_type": "learned",
                                            "position_offset": 2, "layernorm_embedding": True}])
def test_incremental_logits_match_full_forward(overrides):
    model = tiny_model(**overrides)
    x, mask = batch()
    dec = torch.randint(3, 40, (3, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(input_ids=x, attention_mask=mask, decoder_input_ids=dec, use_cache=False).logits
        out = model(input_ids=x, attention_mask=mask, decoder_input_ids=dec[:, :3], use_cache=True)
        cache = out.cache
        assert isinstance(cache.self_attention_cache, ContextPoolCache)
        assert cache.is_updated.get(0) and cache.cross_attention_cache.get_seq_length() == x.shape[1]
        steps = [out.logits]
        for t in range(3, 7):
            out = model(encoder_outputs=(out.encoder_last_hidden_state,), attention_mask=mask,
                        decoder_input_ids=dec[:, t : t + 1], cache=cache, use_cache=True)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_cached_and_uncached_generation_agree(num_beams):
    model = tiny_model()
    x, mask = batch()
    kwargs = dict(input_ids=x, attention_mask=mask, max_new_tokens=10, num_beams=num_beams, do_sample=False)
    cached = model.generate(**kwargs, use_cache=True)
    uncached = model.generate(**kwargs, use_cache=False)
    assert torch.equal(cached, uncached)
    assert (cached[:, 0] == model.config.decoder_start_token_id).all()


def test_labels_shifted_once_and_padding_ignored():
    model = tiny_model()
    x, mask = batch()
    labels = torch.randint(3, 40, (3, 6), generator=torch.Generator().manual_seed(3))
    labels[0, -2:] = -100
    out = model(input_ids=x, attention_mask=mask, labels=labels)
    dec = shift_tokens_right(labels, model.config.pad_token_id, model.config.decoder_start_token_id)
    assert dec[0, 0] == model.config.decoder_start_token_id and torch.equal(dec[:, 1:3], labels[:, :2])
    assert (dec[0, -1] == model.config.pad_token_id).item()
    logits = model(input_ids=x, attention_mask=mask, decoder_input_ids=dec).logits
    manual = F.cross_entropy(logits.reshape(-1, 40), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, manual)
    # -100 positions contribute nothing: changing the logits' targets there leaves the loss alone
    kept = labels[labels != -100]
    flat = logits.reshape(-1, 40)[(labels != -100).reshape(-1)]
    torch.testing.assert_close(out.loss, F.cross_entropy(flat, kept))
    # num_items_in_batch (Trainer) divides the summed loss
    summed = model(input_ids=x, attention_mask=mask, labels=labels, num_items_in_batch=torch.tensor(kept.numel())).loss
    torch.testing.assert_close(summed, manual)


def test_bad_inputs_raise_clear_errors():
    model = tiny_model()
    x, mask = batch()
    with pytest.raises(ValueError, match="attention_mask"):
        model(input_ids=x, attention_mask=mask[:, :-1], decoder_input_ids=x[:, :2])
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(input_ids=torch.randint(3, 40, (1, 60)), decoder_input_ids=x[:1, :2])
    # @strict wraps the ValueError of validate_architecture in its own error class
    with pytest.raises((ValueError, StrictDataclassClassValidationError), match="pool_groups"):
        ContextPoolSeq2SeqConfig(**{**TINY, "pool_groups": 3})
    with pytest.raises((ValueError, StrictDataclassClassValidationError), match="pool_decoder_layers"):
        ContextPoolSeq2SeqConfig(**{**TINY, "pool_decoder_layers": [5]})


def test_gates_closed_equals_no_pooling():
    closed = tiny_model(pool_mix_init=0.0)
    with torch.no_grad():
        for name, p in closed.named_parameters():
            if "pool_mix" in name:
                p.zero_()
    plain = ContextPoolForConditionalGeneration(
        ContextPoolSeq2SeqConfig(**{**TINY, "pool_encoder_layers": [], "pool_decoder_layers": [],
                                    "pool_cross_attention": False})
    ).eval()
    plain.load_state_dict(closed.state_dict(), strict=False)
    x, mask = batch()
    dec = x[:, :4]
    torch.testing.assert_close(plain(input_ids=x, attention_mask=mask, decoder_input_ids=dec).logits,
                               closed(input_ids=x, attention_mask=mask, decoder_input_ids=dec).logits)


SOURCE_SIZES = dict(vocab_size=60, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                    decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=64)


@pytest.mark.parametrize("family", ["marian", "bart"])
def test_conversion_reproduces_source(family, tmp_path):
    torch.manual_seed(0)
    if family == "marian":
        source = MarianMTModel(MarianConfig(**SOURCE_SIZES, pad_token_id=59, eos_token_id=0, decoder_start_token_id=59,
                                            activation_function="swish", scale_embedding=True))
    else:
        source = BartForConditionalGeneration(BartConfig(**SOURCE_SIZES))
    source.eval()
    with torch.no_grad():
        source.final_logits_bias.normal_()
    converted = convert_seq2seq_model(source)
    report = compare_seq2seq(source, converted, batch=3, src_len=12, tgt_len=8)
    assert report["max_abs_logit_diff"] <= 1e-5 and report["generations_equal"], report
    n_source = len({k for k in source.state_dict() if "embed_tokens" not in k and not
                    (family == "marian" and "embed_positions" in k)})
    carried = {k for k in converted.state_dict() if ".pool." not in k and "pool_mix" not in k}
    assert len(carried) == n_source  # every source tensor has its place, nothing else is new
    out = convert_seq2seq_checkpoint(source, tmp_path / "cp")
    info = json.loads((out / "conversion.json").read_text())
    assert info["max_abs_logit_diff"] <= 1e-5
    reloaded = ContextPoolForConditionalGeneration.from_pretrained(out).eval()
    x = torch.randint(4, 59, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=x, decoder_input_ids=x[:, :5]).logits,
                                   source(input_ids=x, decoder_input_ids=x[:, :5]).logits, atol=1e-5, rtol=0)


def _toy_data(tmp_path, n=24):
    words = ["the", "lord", "said", "unto", "moses", "and", "god", "saw", "light", "was", "good"]
    german = ["der", "herr", "sprach", "zu", "mose", "und", "gott", "sah", "licht", "war", "gut"]
    g = torch.Generator().manual_seed(0)
    lines = []
    for _ in range(n):
        idx = torch.randint(0, len(words), (6,), generator=g).tolist()
        pair = {"en": " ".join(words[i] for i in idx), "de": " ".join(german[i] for i in idx)}
        lines.append(json.dumps({"translation": pair}))
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _run_translation():
    spec = importlib.util.spec_from_file_location("run_translation", ROOT / "scripts" / "run_translation.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_translation"] = module
    spec.loader.exec_module(module)
    return module


def test_seq2seq_trainer_predict_with_generate_and_pipeline(tmp_path):
    data = _toy_data(tmp_path)
    rt = _run_translation()
    out_dir = tmp_path / "run"
    results = rt.main([
        "--model_type", "contextpool", "--train_file", str(data), "--validation_file", str(data),
        "--test_file", str(data), "--vocab_size", "300", "--max_source_length", "16", "--max_target_length", "16",
        "--config_overrides", "d_model=32,encoder_layers=1,decoder_layers=1,encoder_ffn_dim=32,decoder_ffn_dim=32,"
                              "pool_sigma_max=2.0,pool_truncation=2.0",
        "--output_dir", str(out_dir), "--do_train", "--do_eval", "--do_predict", "--predict_with_generate",
        "--num_train_epochs", "3", "--learning_rate", "1e-2", "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "12", "--num_beams", "2", "--generation_max_length", "10", "--use_cpu", "--report_to", "none", "--save_strategy", "no", "--max_eval_samples", "12",
        "--max_predict_samples", "12", "--seed", "0",
    ])
    assert "eval_bleu" in results and "test_chrf" in results and results["train_loss"] > 0
    # the word-for-word toy task is learnable in 9 steps: measured eval loss 3.63 (untrained 5.66 = ln 300)
    # and chrF 9.1 (untrained 0.0)
    assert results["eval_loss"] < math.log(300) - 1.0 and results["eval_chrf"] > 2.0, results
    assert (out_dir / "generated_predictions.txt").exists()

    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, pipeline
    from transformers.pipelines import REMOVED_TASKS

    model = AutoModelForSeq2SeqLM.from_pretrained(out_dir)
    assert isinstance(model, ContextPoolForConditionalGeneration)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    texts = ["the lord said unto moses", "god saw light"]
    if "translation" in REMOVED_TASKS:
        # transformers 5.x removed pipeline("translation") for every model (Marian included);
        # what it did is tokenizer -> generate -> batch_decode, which works here.
        with pytest.raises(KeyError, match="translation"):
            pipeline("translation", model=model, tokenizer=tokenizer)
        enc = tokenizer(texts, return_tensors="pt", padding=True)
        decoded = tokenizer.batch_decode(model.generate(**enc, max_new_tokens=8), skip_special_tokens=True)
        result = [{"translation_text": text} for text in decoded]
    else:
        result = pipeline("translation", model=model, tokenizer=tokenizer, max_new_tokens=8)(texts)
    assert len(result) == 2 and all(isinstance(r["translation_text"], str) for r in result)


def test_script_truncation_off_is_a_clear_error(tmp_path):
    rt = _run_translation()
    tok = rt.train_shared_tokenizer([{"en": "a b c d e f g", "de": "a b"}] * 4, "en", "de", 270)
    with pytest.raises(ValueError, match="max_source_length"):
        rt.encode_pairs(tok, ["a b c d e f g h i j k"], ["a"], 4, 8, truncation=False)
    feats, n = rt.encode_pairs(tok, ["a b c d e f g h i j k"], ["a"], 4, 8, truncation=True)
    assert n == 1 and len(feats["input_ids"][0]) == 4 and feats["input_ids"][0][-1] == tok.eos_token_id


def test_a_static_cache_is_refused_with_a_clear_error():
    """The seq2seq model decodes with its own dynamic cache; transformers would only warn and ignore the setting."""
    from transformers import EncoderDecoderCache, StaticCache

    model = tiny_model()
    src, src_mask = batch()
    with pytest.raises(ValueError, match="cache_implementation='static' is not supported by the ContextPool seq2seq"):
        model.generate(input_ids=src, attention_mask=src_mask, max_new_tokens=3, cache_implementation="static")
    static = EncoderDecoderCache(StaticCache(config=model.config, max_cache_len=8),
                                 StaticCache(config=model.config, max_cache_len=9))  # fmt: skip
    with pytest.raises(ValueError, match="the ContextPool seq2seq model has no static cache"):
        model(input_ids=src, attention_mask=src_mask, decoder_input_ids=src[:, :2], cache=static)
    # "dynamic" names the default and is accepted
    model.generate(input_ids=src, attention_mask=src_mask, max_new_tokens=3, cache_implementation="dynamic")


def test_decoder_position_ids_are_refused_not_ignored():
    model = tiny_model()
    src, src_mask = batch()
    positions = torch.arange(2).expand(src.shape[0], 2) + 5
    for call in (model, model.model):
        with pytest.raises(ValueError, match="decoder_position_ids is not supported"):
            call(input_ids=src, attention_mask=src_mask, decoder_input_ids=src[:, :2], decoder_position_ids=positions)
