"""Which tokens a sequence-level head reads, and the longest input a learned position table takes.

The mutation check found these unpinned: mean pooling over padding as well as real tokens, the "last" token
counted from the number of real tokens (wrong for left padding), and a sequence of exactly
max_position_embeddings tokens refused; every test still passed.
"""

from __future__ import annotations

import pytest
import torch

from contextpool_hf import ContextPoolConfig, ContextPoolForSequenceClassification
from contextpool_hf.heads_contextpool import _sequence_representation

PAD = 0


def config(**overrides) -> ContextPoolConfig:
    fields = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                  max_position_embeddings=12, pad_token_id=PAD, num_labels=3)  # fmt: skip
    return ContextPoolConfig(**{**fields, **overrides})


def left_padded():
    """Row 0 is 6 real tokens; row 1 is 4 real tokens after 2 padding ids. -> ids, 0/1 mask."""
    input_ids = torch.tensor([[5, 6, 7, 8, 9, 10], [PAD, PAD, 11, 12, 13, 14]])
    return input_ids, (input_ids != PAD).long()


def test_the_last_real_token_is_found_with_left_padding_from_the_mask_or_the_ids():
    """classifier_pooling="last" (GPT-2/Llama classifiers): the rightmost real token, from the attention mask or,
    without one, from the padding id; neither is the number of real tokens minus one when padding is on the left."""
    input_ids, mask = left_padded()
    hidden = torch.arange(2 * 6, dtype=torch.float32).view(2, 6, 1).expand(2, 6, 4)  # hidden[b, i] = 6 b + i
    cfg = config(classifier_pooling="last")
    right = torch.tensor([[5, 6, 7, PAD, PAD, PAD], [11, 12, 13, 14, PAD, PAD]])
    for ids, keep, expected in ((input_ids, mask, [5, 11]), (input_ids, None, [5, 11]),
                                (right, (right != PAD).long(), [2, 9]), (right, None, [2, 9])):  # fmt: skip
        assert _sequence_representation(cfg, hidden, keep, ids)[:, 0].tolist() == expected


@pytest.mark.parametrize("pooling", ["mean", "last"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_a_padded_row_is_classified_as_the_sequence_alone(pooling, side):
    """Padding changes nothing a sequence classifier reads: a row padded on either side gives the logits of the
    same tokens alone (mean pooling over the real tokens only; "last" reading the last real token)."""
    torch.manual_seed(0)
    model = ContextPoolForSequenceClassification(config(classifier_pooling=pooling, is_causal=pooling == "last"))
    model.eval()
    tokens = torch.tensor([[11, 12, 13, 14]])
    pad = torch.full((1, 2), PAD)
    padded = torch.cat([pad, tokens], 1) if side == "left" else torch.cat([tokens, pad], 1)
    with torch.no_grad():
        alone = model(tokens).logits
        logits = model(padded, attention_mask=(padded != PAD).long()).logits
    torch.testing.assert_close(logits, alone, atol=1e-5, rtol=1e-5)


def test_learned_positions_take_exactly_max_position_embeddings_tokens():
    """A learned position table of 12 rows takes a 12-token sequence (positions 0-11); a 13th token is refused by
    name."""
    torch.manual_seed(0)
    model = ContextPoolForSequenceClassification(config(position_embedding_type="absolute")).eval()
    with torch.no_grad():
        assert model(torch.randint(1, 40, (1, 12))).logits.shape == (1, 3)
        with pytest.raises(ValueError, match="Sequence length 13 .* max_position_embeddings \\(12\\)"):
            model(torch.randint(1, 40, (1, 13)))
