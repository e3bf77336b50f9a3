"""Remote code: a saved ContextPool seq2seq model loads in a fresh process that cannot import contextpool_hf."""

from __future__ import annotations

import json
import textwrap

import torch
from remote_utils import SEQ2SEQ_MODEL_FILES, run_without_package

import contextpool_hf  # noqa: F401
from contextpool_hf import ContextPoolForConditionalGeneration, ContextPoolSeq2SeqConfig

CHILD = textwrap.dedent(
    """
    import json, sys

    try:
        import contextpool_hf  # noqa: F401
        blocked = False
    except ImportError:
        blocked = True

    import torch
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    folder = sys.argv[1]
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True).eval()
    x = torch.tensor([[5, 6, 7, 8, 9, 10, 2], [11, 12, 13, 2, 0, 0, 0]])
    mask = (x != 0).long()
    with torch.no_grad():
        logits = model(input_ids=x, attention_mask=mask, decoder_input_ids=x[:, :4]).logits
    greedy = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=6, do_sample=False)
    beam = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=6, num_beams=3, do_sample=False)
    print(json.dumps({
        "blocked": blocked, "class": type(model).__name__, "module": type(model).__module__,
        "config_class": type(config).__name__, "logits": logits.tolist(),
        "greedy": greedy.tolist(), "beam": beam.tolist(),
    }))
    """
)


def test_remote_code_loads_without_the_package(tmp_path):
    torch.manual_seed(0)
    config = ContextPoolSeq2SeqConfig(vocab_size=32, d_model=32, encoder_layers=1, decoder_layers=2,
                                      encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=32,
                                      decoder_ffn_dim=32, max_position_embeddings=32, dropout=0.0,
                                      pool_sigma_max=2.0, pool_truncation=2.0, pool_mix_init=0.7)
    model = ContextPoolForConditionalGeneration(config).eval()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    saved = json.loads((folder / "config.json").read_text())
    assert saved["auto_map"]["AutoModelForSeq2SeqLM"].endswith("ContextPoolForConditionalGeneration")
    assert SEQ2SEQ_MODEL_FILES <= {p.name for p in folder.iterdir()}

    stdout = run_without_package(CHILD, timeout=300, cwd=tmp_path, args=[folder])
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["blocked"], "the child process could import contextpool_hf"
    assert result["class"] == "ContextPoolForConditionalGeneration"
    assert "contextpool_hf" not in result["module"] and "transformers_modules" in result["module"]

    x = torch.tensor([[5, 6, 7, 8, 9, 10, 2], [11, 12, 13, 2, 0, 0, 0]])
    mask = (x != 0).long()
    with torch.no_grad():
        logits = model(input_ids=x, attention_mask=mask, decoder_input_ids=x[:, :4]).logits
    torch.testing.assert_close(torch.tensor(result["logits"]), logits, atol=1e-6, rtol=0)
    greedy = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=6, do_sample=False)
    beam = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=6, num_beams=3, do_sample=False)
    assert result["greedy"] == greedy.tolist() and result["beam"] == beam.tolist()
