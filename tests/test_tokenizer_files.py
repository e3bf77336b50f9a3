"""Tokenizer files saved next to a ContextPool model load with transformers' own classes, no remote code.

transformers 5.x's `AutoTokenizer` reads config.json before tokenizer_config.json, so on a folder whose
config names remote code it asks about that code unless `trust_remote_code` is given. The tokenizer
itself never needs it: tokenizer_config.json names a built-in class and has no `auto_map`, so
`trust_remote_code=False` (no prompt, nothing executed) and `PreTrainedTokenizerFast` both load it.
Checked in a fresh interpreter that cannot import contextpool_hf (tests/remote_utils.py).
"""

import json

import pytest
import transformers
from remote_utils import run_without_package

from contextpool_hf import ContextPoolConfig, ContextPoolForCausalLM
from contextpool_hf.tokenization import train_bpe_tokenizer, train_wordpiece_tokenizer

TEXTS = ["In the beginning God created the heaven and the earth.", "And the earth was without form, and void."] * 20


@pytest.mark.parametrize("kind", ["bpe", "wordpiece"])
def test_saved_tokenizer_needs_no_remote_code(tmp_path, kind):
    tokenizer = train_bpe_tokenizer(TEXTS, vocab_size=300) if kind == "bpe" else train_wordpiece_tokenizer(TEXTS, vocab_size=300)
    config = ContextPoolConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, is_causal=True)  # fmt: skip
    ContextPoolForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert "auto_map" not in saved
    assert hasattr(transformers, saved["tokenizer_class"]), saved["tokenizer_class"]  # a built-in class
    expected = tokenizer("And God said, Let there be light")["input_ids"]
    out = run_without_package(
        """
        import json, sys
        from transformers import AutoTokenizer, PreTrainedTokenizerFast
        folder = sys.argv[1]
        auto = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        fast = PreTrainedTokenizerFast.from_pretrained(folder)
        remote = [name for name in sys.modules if name.startswith("transformers_modules")]
        text = "And God said, Let there be light"
        print(json.dumps({"auto": auto(text)["input_ids"], "fast": fast(text)["input_ids"], "remote": remote}))
        """,
        args=[tmp_path],
    )
    result = json.loads(out.strip().splitlines()[-1])
    assert result["remote"] == []  # no remote module was imported for the tokenizer
    assert result["auto"] == expected and result["fast"] == expected
