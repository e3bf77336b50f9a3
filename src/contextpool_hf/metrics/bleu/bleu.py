"""Corpus BLEU from sacrebleu as an `evaluate` module that loads offline.

The score is `sacrebleu.corpus_bleu(predictions, [references]).score` (0-100, sacrebleu's default
13a tokenisation), the number the Hub's `evaluate-metric/sacrebleu` reports as `score`.
One reference per prediction (the translation scripts have one).
"""

import datasets
import evaluate

_DESCRIPTION = "Corpus BLEU (sacrebleu, 0-100) with one reference per prediction."
_KWARGS = """
Args:
    predictions (list of str): system outputs, detokenised.
    references (list of str): one reference per prediction.
    tokenize (str, optional): sacrebleu tokeniser name (default "13a").
Returns:
    bleu (float): corpus BLEU, 0-100.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Bleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Post, A Call for Clarity in Reporting BLEU Scores, WMT 2018.",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, tokenize="13a"):
        import sacrebleu

        return {"bleu": sacrebleu.corpus_bleu(predictions, [references], tokenize=tokenize).score}
