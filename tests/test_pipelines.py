"""transformers.pipeline on tiny ContextPool models, in process and from a saved folder.

The tokenizer is a word-level `tokenizers` model trained here on a toy corpus (no Hub access).
"""

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, pipeline

from contextpool_hf import (
    ContextPoolConfig,
    ContextPoolForCausalLM,
    ContextPoolForMaskedLM,
    ContextPoolForSequenceClassification,
    ContextPoolForTokenClassification,
)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CORPUS = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "the bird sang a song in the tree",
    "my friend read a book on the train",
    "we ate bread and cheese at noon",
]


@pytest.fixture(scope="module")
def tokenizer():
    backend = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=SPECIALS))
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", backend.token_to_id("[CLS]")), ("[SEP]", backend.token_to_id("[SEP]"))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=32,
    )


LABELS = {0: "negative", 1: "positive"}
TAGS = {0: "O", 1: "B-THING", 2: "I-THING"}


def _model(cls, tokenizer, **overrides):
    config = ContextPoolConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=32, pad_token_id=tokenizer.pad_token_id, pool_sigma_max=3.0, **overrides,
    )
    torch.manual_seed(0)
    return cls(config).eval()


def _make(task, tokenizer):
    if task == "fill-mask":
        return _model(ContextPoolForMaskedLM, tokenizer)
    if task == "text-generation":
        return _model(ContextPoolForCausalLM, tokenizer, is_causal=True, initializer_range=0.2,
                      eos_token_id=tokenizer.sep_token_id)
    if task == "text-classification":
        return _model(ContextPoolForSequenceClassification, tokenizer, id2label=LABELS,
                      label2id={v: k for k, v in LABELS.items()})
    return _model(ContextPoolForTokenClassification, tokenizer, id2label=TAGS, label2id={v: k for k, v in TAGS.items()})


def _check(task, pipe, model):
    if task == "fill-mask":
        out = pipe("the cat [MASK] on the mat", top_k=3)
        assert len(out) == 3 and all(set(o) >= {"score", "token", "token_str", "sequence"} for o in out)
        assert out[0]["score"] >= out[1]["score"] >= out[2]["score"]
        return [(o["token"], round(o["score"], 5)) for o in out]
    if task == "text-generation":
        out = pipe("the cat sat", max_new_tokens=5, do_sample=False)
        assert out[0]["generated_text"].startswith("the cat sat")
        return out[0]["generated_text"]
    if task == "text-classification":
        out = pipe(["the cat sat on the mat", "a dog ran"])
        assert [o["label"] in LABELS.values() for o in out] == [True, True]
        return [(o["label"], round(o["score"], 5)) for o in out]
    out = pipe("the bird sang a song", ignore_labels=[])  # keep "O" tokens too
    assert len(out) == 5 and all(o["entity"] in TAGS.values() for o in out)
    assert [o["word"] for o in out] == ["the", "bird", "sang", "a", "song"]
    return [(o["entity"], round(float(o["score"]), 5)) for o in out]


TASKS = ["fill-mask", "text-generation", "text-classification", "token-classification"]


@pytest.mark.parametrize("task", TASKS)
def test_pipeline_in_process_and_from_folder(task, tokenizer, tmp_path):
    model = _make(task, tokenizer)
    in_process = _check(task, pipeline(task, model=model, tokenizer=tokenizer), model)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    from_folder = _check(task, pipeline(task, model=str(tmp_path), trust_remote_code=True), model)
    assert from_folder == in_process


def test_text_generation_pipeline_batches_with_left_padding(tokenizer):
    model = _make("text-generation", tokenizer)
    tokenizer.padding_side = "left"
    try:
        pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
        prompts = ["the cat sat on the mat", "a dog"]
        batched = pipe(prompts, batch_size=2, max_new_tokens=4, do_sample=False)
        alone = [pipe(p, max_new_tokens=4, do_sample=False) for p in prompts]
    finally:
        tokenizer.padding_side = "right"
    assert [b[0]["generated_text"] for b in batched] == [a[0]["generated_text"] for a in alone]
