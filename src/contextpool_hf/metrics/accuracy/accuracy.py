"""Accuracy as an `evaluate` module that loads offline: `evaluate.load("<this folder>")`.

The same definition as the Hub's `evaluate-metric/accuracy` (fraction of predictions equal to their
reference, optionally weighted), plus `ignore_index`: references equal to it (the -100 that
transformers puts on unlabelled positions) are left out instead of counted as misses.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Fraction of predictions equal to their reference; references equal to ignore_index are skipped."
_KWARGS = """
Args:
    predictions (list of int): predicted labels (or token ids).
    references (list of int): true labels; positions equal to `ignore_index` are skipped.
    sample_weight (list of float, optional): a weight per example.
    ignore_index (int, optional, default -100): the reference value that marks "no label".
Returns:
    accuracy (float): in [0, 1]; NaN when every reference is ignored.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, sample_weight=None, ignore_index=-100):
        predictions = np.asarray(predictions)
        references = np.asarray(references)
        keep = references != ignore_index
        weights = np.ones(len(references)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        if not keep.any():
            return {"accuracy": float("nan")}
        hits = (predictions[keep] == references[keep]).astype(np.float64)
        return {"accuracy": float((hits * weights[keep]).sum() / weights[keep].sum())}
