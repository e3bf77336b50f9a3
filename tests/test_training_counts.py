"""The numbers the training scripts and studies report from their data: characters per token (bits per character)
and the FLOPs estimate that equal-compute studies compare variants by.

The mutation check found nothing pinned them: counting characters without the line separator, dropping the EOS
that separates documents for a tokenizer without BOS, and a FLOPs estimate that forgot the causal half of the
attention product or the one-sided causal pooling window all passed every test.
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset, DatasetDict

from contextpool_hf import ContextPoolConfig, ContextPoolForCausalLM, ContextPoolForMaskedLM
from contextpool_hf.tokenization import train_bpe_tokenizer
from contextpool_hf.training_args import DataTrainingArguments
from contextpool_hf.training_data import tokenize_and_group
from contextpool_hf.training_models import estimate_training_flops

TEXTS = ["In the beginning God created the heaven and the earth.",
         "And the earth was without form, and void; and darkness was upon the face of the deep.",
         "And God said, Let there be light: and there was light.", "", "   "]  # fmt: skip


def raw_splits() -> DatasetDict:
    return DatasetDict(train=Dataset.from_dict({"text": TEXTS * 4}), validation=Dataset.from_dict({"text": TEXTS}))


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(TEXTS * 20, vocab_size=300, min_frequency=1)


def test_characters_per_token_counts_each_line_and_its_separator(tokenizer):
    """bits per character = loss per token / (ln 2 * characters per token): each non-blank line counts its
    characters plus one, the newline that ended it (the BOS the tokenizer puts before each line stands for it);
    blank lines count nothing. The tokens are every token of every line, special ones included."""
    grouped, chars_per_token = tokenize_and_group(raw_splits(), tokenizer, 8, "text", DataTrainingArguments())
    lines = [t for t in TEXTS if t.strip()]
    tokens = sum(len(tokenizer(t)["input_ids"]) for t in lines)
    # the token stream cut into whole blocks of 8, the remainder dropped (run_clm's group_texts)
    stream = [token for t in lines for token in tokenizer(t)["input_ids"]]
    assert grouped["validation"]["input_ids"] == [stream[i : i + 8] for i in range(0, len(stream) // 8 * 8, 8)]
    assert grouped["validation"]["labels"] == grouped["validation"]["input_ids"]
    assert tokenizer(lines[0])["input_ids"][0] == tokenizer.bos_token_id
    assert chars_per_token["validation"] == pytest.approx(sum(len(t) + 1 for t in lines) / tokens)
    assert chars_per_token["train"] == pytest.approx(chars_per_token["validation"])


def test_documents_are_separated_by_eos_when_the_tokenizer_has_no_bos(tokenizer):
    """Without a BOS token the blocks would run one document into the next with nothing between them: each
    document then ends with the EOS token, and the EOS counts as one of its tokens."""
    no_bos = train_bpe_tokenizer(TEXTS * 20, vocab_size=300, min_frequency=1, add_bos_token=False)
    no_bos.bos_token = None
    assert no_bos.bos_token_id is None and no_bos.eos_token_id is not None
    grouped, chars_per_token = tokenize_and_group(raw_splits(), no_bos, 4, "text", DataTrainingArguments(packing=True))
    lines = [t for t in TEXTS if t.strip()]
    encoded = [no_bos(t)["input_ids"] + [no_bos.eos_token_id] for t in lines]
    assert chars_per_token["validation"] == pytest.approx(sum(len(t) + 1 for t in lines) / sum(map(len, encoded)))
    # packing keeps documents apart: the last block of each document ends with its EOS
    blocks = grouped["validation"]["input_ids"]
    expected = [seq[i : i + 4] for seq in encoded for i in range(0, len(seq), 4)]
    assert blocks == [b for b in expected if len(b) > 1]


def tiny_config(causal: bool, **overrides) -> ContextPoolConfig:
    fields = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                  max_position_embeddings=64, is_causal=causal, pool_sigma_max=2.0, pool_truncation=1.5)  # fmt: skip
    return ContextPoolConfig(**{**fields, **overrides})


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_flops_estimate_counts_attention_and_pooling_per_direction(causal):
    """Per token, 6x a forward's multiply-adds: dense 6 N; attention 6 * 2 * L * d * context with context n / 2
    (causal: the lower triangle) or n; pooling 3 * 4 * pooled layers * window * d with window R + 1 (causal: the
    past only) or 2R + 1, R = ceil(1.5 * 2.0) = 3. Worked out by hand for L = 2, d = 16, n = 32, 1000 tokens."""
    torch.manual_seed(0)
    model = (ContextPoolForCausalLM if causal else ContextPoolForMaskedLM)(tiny_config(causal))
    flops = estimate_training_flops(model, tokens=1000, block_size=32)
    assert flops["flops_attention"] == (6 * 2 * 2 * 16 * 16 * 1000 if causal else 6 * 2 * 2 * 16 * 32 * 1000)
    assert flops["flops_pooling"] == (3 * 4 * 2 * 4 * 16 * 1000 if causal else 3 * 4 * 2 * 7 * 16 * 1000)
    assert flops["flops_dense"] == 6 * model.num_parameters(exclude_embeddings=True) * 1000
    assert flops["flops_total"] == flops["flops_dense"] + flops["flops_attention"] + flops["flops_pooling"]
    one_layer = estimate_training_flops((ContextPoolForCausalLM if causal else ContextPoolForMaskedLM)(
        tiny_config(causal, pool_layers=[1])), tokens=1000, block_size=32)  # fmt: skip
    assert one_layer["flops_pooling"] == flops["flops_pooling"] / 2


@pytest.mark.parametrize("task", ["mlm", "clm"])
def test_baselines_are_the_contextpool_models_size(task):
    """--baseline bert / llama builds transformers' model of the ContextPool model's sizes: with pooling off
    (pool_layers=[]) both have the same non-embedding parameter count (the N of the FLOPs estimate), so a study
    compares like with like. A non-default MLP width catches a baseline that takes its own."""
    from transformers import BertForMaskedLM, LlamaForCausalLM

    from contextpool_hf.training_models import vanilla_config

    shape = dict(mlp_type="gated", norm_type="rmsnorm", hidden_act="silu", position_embedding_type="rotary") \
        if task == "clm" else {}  # fmt: skip
    config = tiny_config(task == "clm", intermediate_size=40, pool_layers=[], **shape)
    baseline = vanilla_config(task, "llama" if task == "clm" else "bert", config)
    ours = (ContextPoolForCausalLM if task == "clm" else ContextPoolForMaskedLM)(config)
    theirs = (LlamaForCausalLM if task == "clm" else BertForMaskedLM)(baseline)
    assert theirs.num_parameters(exclude_embeddings=True) == ours.num_parameters(exclude_embeddings=True)
