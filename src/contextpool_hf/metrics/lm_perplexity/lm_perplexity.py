"""Perplexity and bits per character of a language model, from its losses (`evaluate` module, offline).

Unlike the Hub's `evaluate-measurement/perplexity`, which loads a model and runs it, this module takes
what an evaluation loop already has: the total negative log-likelihood (nats) of each evaluated piece
of text and the number of tokens it predicted. Pieces may be texts, batches or a whole split:

    perplexity = exp(sum(nll) / sum(num_tokens))
    bpc        = sum(nll) / (ln 2 * num_characters)     (only when num_characters is given)

Bits per character compare models with different tokenizers: the total information is divided by
the characters of the evaluated text, not by a tokenizer-dependent token count.
"""

import math

import datasets
import evaluate

_DESCRIPTION = "Perplexity (per token) and bits per character from summed negative log-likelihoods."
_KWARGS = """
Args:
    nll (list of float): total negative log-likelihood in nats of each piece of text.
    num_tokens (list of int): tokens predicted in each piece (the count the nll is summed over).
    num_characters (float, optional): characters of all the evaluated text; adds `bpc`.
Returns:
    loss (float): mean nats per token; perplexity (float): exp(loss); bpc (float, with num_characters).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class LmPerplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"nll": datasets.Value("float64"), "num_tokens": datasets.Value("int64")}),
        )

    def _compute(self, nll, num_tokens, num_characters=None):
        tokens = sum(num_tokens)
        if tokens <= 0:
            raise ValueError(f"num_tokens must add up to a positive count, got {tokens}")
        total = float(sum(nll))
        loss = total / tokens
        result = {"loss": loss, "perplexity": math.exp(loss) if loss < 700 else float("inf")}
        if num_characters is not None:
            if num_characters <= 0:
                raise ValueError(f"num_characters must be positive, got {num_characters}")
            result["bpc"] = total / (math.log(2) * num_characters)
        return result
