"""Arguments that reached torch unchecked: token_type_ids of another shape, logits_to_keep that selects nothing.

Before, token_type_ids of another batch or length failed in the embeddings' sum ("The size of tensor a (7) must
match the size of tensor b (5)"), and a float logits_to_keep raised an IndexError from the logits' indexing; a
negative one silently dropped the first positions' logits (as transformers' Llama does).
"""

from __future__ import annotations

import re

import pytest
import torch
from helpers import random_ids, tiny_causal_lm

from contextpool_hf import (
    ContextPoolConfig,
    ContextPoolForMaskedLM,
    ContextPoolForQuestionAnswering,
    ContextPoolForSequenceClassification,
    ContextPoolForTokenClassification,
)

HEADS = [ContextPoolForMaskedLM, ContextPoolForSequenceClassification, ContextPoolForTokenClassification,
         ContextPoolForQuestionAnswering]  # fmt: skip


def encoder_head(cls):
    config = ContextPoolConfig(vocab_size=61, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                               intermediate_size=64, max_position_embeddings=32, pad_token_id=0, type_vocab_size=2)  # fmt: skip
    torch.manual_seed(0)
    return cls(config).eval()


@pytest.mark.parametrize("cls", HEADS, ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("shape", [(2, 5), (3, 7), (2, 7, 1), (5,)], ids=["shorter", "other-batch", "3-D", "(n,)-short"])
def test_token_type_ids_of_another_shape_name_the_argument(cls, shape):
    model, ids = encoder_head(cls), random_ids(n=7)
    expected = f"token_type_ids must be (batch, sequence_length) = (2, 7), (1, 7) or (7,), got shape {shape}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        model(ids, token_type_ids=torch.ones(shape, dtype=torch.long))


@pytest.mark.parametrize("cls", HEADS, ids=lambda cls: cls.__name__)
def test_token_type_ids_for_every_row_give_the_per_row_result(cls):
    """(n,) and (1, n) segment ids mean the same ids in every row: the (B, n) result, exactly."""
    model, ids = encoder_head(cls), random_ids(n=7)
    segments = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    with torch.no_grad():
        expected = model(ids, token_type_ids=segments.expand(2, 7).clone())[0]
        for given in (segments, segments[None], segments.int()):
            torch.testing.assert_close(model(ids, token_type_ids=given)[0], expected, rtol=0, atol=0)


@pytest.mark.parametrize("bad", [1.5, -1, True, "2", torch.tensor(2), torch.tensor([0.0, 1.0]), torch.ones(1, 2, dtype=torch.long)],
                         ids=["float", "negative", "bool", "str", "0-D", "float-tensor", "2-D"])  # fmt: skip
def test_logits_to_keep_that_selects_no_positions_names_the_argument(bad):
    with pytest.raises(ValueError, match="logits_to_keep must be an int k >= 0 .* or a 1-D integer tensor"):
        tiny_causal_lm()(random_ids(), logits_to_keep=bad)


def test_logits_to_keep_keeps_what_transformers_keeps():
    """0 keeps every position, k the last k (more than n: all), a 1-D tensor the positions it lists."""
    model, ids = tiny_causal_lm(), random_ids(n=7)
    with torch.no_grad():
        full = model(ids).logits
        torch.testing.assert_close(model(ids, logits_to_keep=0).logits, full)
        torch.testing.assert_close(model(ids, logits_to_keep=2).logits, full[:, -2:])
        torch.testing.assert_close(model(ids, logits_to_keep=100).logits, full)
        torch.testing.assert_close(model(ids, logits_to_keep=torch.tensor([0, 4])).logits, full[:, [0, 4]])


def image_classifier(kind):
    from contextpool_hf.configuration_contextpool_vision import ContextPoolResNetConfig, ContextPoolViTConfig
    from contextpool_hf.modeling_contextpool_vision import (
        ContextPoolResNetForImageClassification,
        ContextPoolViTForImageClassification,
    )

    torch.manual_seed(0)
    if kind == "vit":
        return ContextPoolViTForImageClassification(ContextPoolViTConfig(
            image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
            intermediate_size=64, num_labels=3)).eval()  # fmt: skip
    return ContextPoolResNetForImageClassification(ContextPoolResNetConfig(
        hidden_sizes=[8, 16], depths=[1, 1], embedding_size=8, num_labels=3)).eval()  # fmt: skip


@pytest.mark.parametrize("kind", ["text", "vit", "resnet"])
def test_a_refused_batch_leaves_the_problem_type_unset(kind):
    """With config.problem_type unset, the first labels pick it (transformers' rule: integer class ids are single-label,
    float targets multi-label) and the config keeps it. Before, a batch the check refused (float class ids of shape
    (B,), uint8 ids) stored its choice first, so every later batch of correct class ids was refused as well."""
    if kind == "text":
        model = encoder_head(ContextPoolForSequenceClassification)
        inputs = {"input_ids": random_ids(n=7)}
    else:
        model = image_classifier(kind)
        inputs = {"pixel_values": torch.randn(2, 3, 16, 16)}
    for refused in (torch.tensor([0.0, 1.0]), torch.tensor([0, 1], dtype=torch.uint8)):
        with pytest.raises(ValueError, match="labels must be"):
            model(**inputs, labels=refused)
        assert model.config.problem_type is None
    loss = model(**inputs, labels=torch.tensor([0, 1])).loss
    assert model.config.problem_type == "single_label_classification" and torch.isfinite(loss)
