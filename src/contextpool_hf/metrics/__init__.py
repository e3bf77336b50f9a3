"""The project's metrics as `evaluate` modules shipped inside the package, so they load offline.

Each sub-folder is an ordinary `evaluate` module (`<name>/<name>.py`), loaded by local path:

    import evaluate
    from contextpool_hf.metrics import metric_path
    accuracy = evaluate.load(metric_path("accuracy"))       # works with HF_HUB_OFFLINE=1

or through `load_metric`, which also takes a folder or a Hub metric name:

    load_metric("chrf")                    # the shipped module (offline)
    load_metric("path/to/my_metric")       # any local evaluate module
    load_metric("evaluate-metric/rouge")   # the Hub (online users)

Shipped: `accuracy` (skips -100 references), `lm_perplexity` (perplexity and bits per character from
summed losses), `bleu` and `chrf` (sacrebleu's corpus scores). A name that is not shipped goes to the Hub.

The `*_metrics` functions below are what the training scripts' `compute_metrics` call.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np

METRICS_DIR = Path(__file__).resolve().parent
SHIPPED_METRICS = ("accuracy", "lm_perplexity", "bleu", "chrf")


def metric_path(name: str) -> str:
    """The folder of a shipped metric module, for `evaluate.load(metric_path(name))`."""
    if name not in SHIPPED_METRICS:
        raise ValueError(f"name must be one of the shipped metrics {SHIPPED_METRICS}, got {name!r}")
    return str(METRICS_DIR / name)


@functools.cache
def _load_cached(path: str) -> Any:
    import evaluate

    # keep_in_memory: no arrow cache files, so several ranks or runs never share (and lock) one.
    return evaluate.load(path, keep_in_memory=True)


def load_metric(name_or_path: str | os.PathLike[str], **kwargs: Any) -> Any:
    """An `evaluate` module from a shipped name, a local module folder/script, or a Hub name.

    Shipped and local modules need no network. Anything else is passed to `evaluate.load` (the Hub);
    `kwargs` go to `evaluate.load` (shipped and local modules loaded without kwargs are cached).
    """
    name = os.fspath(name_or_path)
    path = metric_path(name) if name in SHIPPED_METRICS else name
    if os.path.exists(path) and not kwargs:
        return _load_cached(os.path.abspath(path))
    import evaluate

    return evaluate.load(path, **kwargs)


def accuracy_metrics(eval_prediction: Any) -> dict[str, float]:
    """Trainer `compute_metrics`: accuracy of argmax predictions (or ids), skipping label -100."""
    predictions, labels = eval_prediction.predictions, eval_prediction.label_ids
    if isinstance(predictions, tuple):
        predictions = predictions[0]
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    if predictions.ndim == labels.ndim + 1:  # logits (..., classes) -> ids
        predictions = predictions.argmax(-1)
    return load_metric("accuracy").compute(predictions=predictions.reshape(-1), references=labels.reshape(-1))


def perplexity_metrics(mean_loss: float, chars_per_token: float | None = None) -> dict[str, float]:
    """Perplexity (and bpc when `chars_per_token` is known) from Trainer's mean loss per token.

    The split is passed as one piece of one token, so nll = mean loss and characters = chars per token:
    the ratios are the split's totals divided by its token count.
    """
    kwargs = {"num_characters": chars_per_token} if chars_per_token else {}
    result = load_metric("lm_perplexity").compute(nll=[mean_loss], num_tokens=[1], **kwargs)
    result.pop("loss")
    return result


def bleu_chrf(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (sacrebleu, through the shipped modules), one reference per prediction."""
    return {
        **load_metric("bleu").compute(predictions=predictions, references=references),
        **load_metric("chrf").compute(predictions=predictions, references=references),
    }


__all__ = ["SHIPPED_METRICS", "accuracy_metrics", "bleu_chrf", "load_metric", "metric_path", "perplexity_metrics"]
