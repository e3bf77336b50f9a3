"""Corpus chrF from sacrebleu as an `evaluate` module that loads offline.

The score is `sacrebleu.corpus_chrf(predictions, [references]).score` (0-100; character n-grams up to
6, beta 2), as the Hub's `evaluate-metric/chrf` reports it. One reference per prediction.
"""

import datasets
import evaluate

_DESCRIPTION = "Corpus chrF (sacrebleu, 0-100) with one reference per prediction."
_KWARGS = """
Args:
    predictions (list of str): system outputs, detokenised.
    references (list of str): one reference per prediction.
    word_order (int, optional): 0 for chrF (default), 2 for chrF++.
Returns:
    chrf (float): corpus chrF, 0-100.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Chrf(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Popovic, chrF: character n-gram F-score for automatic MT evaluation, WMT 2015.",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, word_order=0):
        import sacrebleu

        return {"chrf": sacrebleu.corpus_chrf(predictions, [references], word_order=word_order).score}
