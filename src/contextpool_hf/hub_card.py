"""The project's model card for a ContextPool checkpoint (`build_model_card`), used by `contextpool-hf push`.

The card is a `huggingface_hub.ModelCard` filled from `model_cards/contextpool_model_card.md`
(or a shorter built-in template when the data files are not installed): metadata for the Hub
(pipeline tag, `custom_code`, eval results), the pooling configuration, the loading snippet pinned
to the model commit, and the paper's citation.
"""

from __future__ import annotations

import json
import math
import re
import sys
import sysconfig
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .hub_files import TOKENIZER_FILES, CheckpointError, _auto_map_modules, _read_json, required_code_files

CARD_TEMPLATE_NAME = "contextpool_model_card.md"
# Trainer metric keys that describe the run, not the model.
_NON_METRIC_KEYS = {"epoch", "step", "total_flos", "train_runtime", "train_samples_per_second",
                    "train_steps_per_second", "train_loss", "learning_rate", "grad_norm", "loss"}
_NON_METRIC_SUFFIXES = ("_runtime", "_samples_per_second", "_steps_per_second", "_samples")

# architecture suffix -> (pipeline_tag, Auto class, words for the card)
_HEADS = (
    ("ForCausalLM", "text-generation", "AutoModelForCausalLM", "causal language"),
    ("ForMaskedLM", "fill-mask", "AutoModelForMaskedLM", "masked language"),
    ("ForSequenceClassification", "text-classification", "AutoModelForSequenceClassification", "sequence classification"),
    ("ForTokenClassification", "token-classification", "AutoModelForTokenClassification", "token classification"),
    ("ForQuestionAnswering", "question-answering", "AutoModelForQuestionAnswering", "question answering"),
    ("ForConditionalGeneration", "translation", "AutoModelForSeq2SeqLM", "sequence-to-sequence"),
    ("ForSeq2SeqLM", "translation", "AutoModelForSeq2SeqLM", "sequence-to-sequence"),
    ("ForImageClassification", "image-classification", "AutoModelForImageClassification", "image classification"),
    ("Model", "feature-extraction", "AutoModel", "encoder"),
)
# ContextPool fields are `pool_*` (text) or `pooling_*`; `use_pooler`/`classifier_pooling` are not ContextPool.
_POOLING_KEY = re.compile(r"^(pool_|pooling_|contextpool)|sigma|truncation")

CITATION = """@inproceedings{huang2022contextpool,
  title     = {Efficient Representation Learning via Adaptive Context Pooling},
  author    = {Huang, Chen and Talbott, Walter and Jaitly, Navdeep and Susskind, Joshua M.},
  booktitle = {Proceedings of the 39th International Conference on Machine Learning},
  series    = {Proceedings of Machine Learning Research},
  volume    = {162},
  publisher = {PMLR},
  year      = {2022},
  url       = {https://arxiv.org/abs/2207.01844}
}"""

# Used only when model_cards/ is not next to the package (an installed wheel
# without the data files): the same sections, shorter.
_FALLBACK_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

A **ContextPool** {{ task_label }} model ({{ architecture }}, `model_type: {{ model_type }}`){% if base_model %}, converted from `{{ base_model }}`{% endif %}.
ContextPool (Huang et al., ICML 2022) pools each token's neighbourhood with learned weights and an
input-adaptive Gaussian support before attention. The modelling code ships as flat files
({% for f in code_files %}`{{ f }}`{% if not loop.last %}, {% endif %}{% endfor %}).

## Pooling configuration

| field | value |
|---|---|
{% for key, value in pooling_config %}| `{{ key }}` | `{{ value }}` |
{% endfor %}
{% if eval_metrics %}
## Evaluation results

| metric | value |
|---|---|
{% for name, value in eval_metrics %}| {{ name }} | {{ value }} |
{% endfor %}
{% endif %}
## How to load

```python
from transformers import {{ auto_class }}

model = {{ auto_class }}.from_pretrained("{{ repo_id }}", trust_remote_code=True, revision="{{ revision }}")
```

## Citation

```bibtex
{{ citation }}
```
"""



# ---------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------
def find_card_template() -> Path | None:
    """`model_cards/contextpool_model_card.md` from a source checkout or the installed data files."""
    candidates = [
        Path(__file__).resolve().parents[2] / "model_cards" / CARD_TEMPLATE_NAME,  # src/contextpool_hf/hub.py
        Path(sysconfig.get_path("data")) / "share" / "contextpool-hf" / "model_cards" / CARD_TEMPLATE_NAME,
        Path(sys.prefix) / "share" / "contextpool-hf" / "model_cards" / CARD_TEMPLATE_NAME,
    ]
    return next((c for c in candidates if c.is_file()), None)


def _is_metric(key: str, value: Any) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return False
    return key not in _NON_METRIC_KEYS and not key.endswith(_NON_METRIC_SUFFIXES)


def eval_metrics_from_log_history(log_history: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """The last evaluation the Trainer logged (`eval_*` keys), prefix kept."""
    last: dict[str, float] = {}
    for entry in log_history:
        if any(k.startswith("eval_") for k in entry):
            last = {k: v for k, v in entry.items() if k.startswith("eval_") and _is_metric(k, v)}
    return last


def read_eval_results(folder: str | Path) -> tuple[dict[str, float], str | None]:
    """Eval metrics the Trainer left in `folder`, and the file they came from.

    Order: `eval_results.json` (`trainer.save_metrics("eval", ...)`), the `eval_*`
    keys of `all_results.json`, then the last evaluation in `trainer_state.json`.
    """
    folder = Path(folder)
    for name in ("eval_results.json", "all_results.json"):
        data = _read_json(folder / name) or {}
        # all_results.json mixes train_* and eval_* keys; unprefixed ones such as
        # `perplexity` come from the eval metrics of the example scripts
        metrics = {k: v for k, v in data.items() if not k.startswith(("train_", "predict_", "test_")) and _is_metric(k, v)}
        if metrics:
            return metrics, name
    state = _read_json(folder / "trainer_state.json") or {}
    metrics = eval_metrics_from_log_history(state.get("log_history", []))
    return (metrics, "trainer_state.json") if metrics else ({}, None)


def _head(architecture: str) -> tuple[str, str, str]:
    for suffix, pipeline_tag, auto_class, words in _HEADS:
        if architecture.endswith(suffix):
            return pipeline_tag, auto_class, words
    return "feature-extraction", "AutoModel", "ContextPool"


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        text = repr(value)
        return text if len(text) <= 10 else f"{value:.6g}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def build_model_card(
    folder: str | Path | None = None,
    *,
    repo_id: str | None = None,
    revision: str | None = None,
    config: Mapping[str, Any] | None = None,
    base_model: str | None = None,
    datasets: str | list[str] | None = None,
    eval_results: Mapping[str, float] | None = None,
    license: str = "apache-2.0",
    language: str | list[str] | None = None,
    tags: Iterable[str] = (),
    model_name: str | None = None,
    template_path: str | Path | None = None,
):
    """The project's model card for a checkpoint, as a `huggingface_hub.ModelCard`.

    Reads `config.json` (model type, architectures, auto_map, pooling fields) from
    `folder` unless `config` is given, and the Trainer's eval metrics from the folder
    (see `read_eval_results`) unless `eval_results` is given. `revision` is the commit
    sha the loading snippet pins (`"main"` when not known yet).
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    folder = Path(folder) if folder is not None else None
    if config is None:
        if folder is None:
            raise ValueError("build_model_card needs a checkpoint folder or a config")
        config = _read_json(folder / "config.json")
        if config is None:
            raise CheckpointError(f"{folder} has no config.json")
    config = dict(config)
    architecture = (config.get("architectures") or ["ContextPoolModel"])[0]
    pipeline_tag, auto_class, task_words = _head(architecture)
    # The auto_map names the Auto class that really maps to this architecture.
    for key, value in (config.get("auto_map") or {}).items():
        if isinstance(value, str) and value.rsplit(".", 1)[-1] == architecture and key.startswith("AutoModel"):
            auto_class = key
    eval_source = None
    if eval_results is None and folder is not None:
        eval_results, eval_source = read_eval_results(folder)
    eval_results = dict(eval_results or {})
    datasets = [datasets] if isinstance(datasets, str) else list(datasets or [])
    repo_id = repo_id or (model_name or "your-name/contextpool-model")
    model_name = model_name or repo_id.split("/")[-1]

    index = []
    for key, value in eval_results.items():
        if not _is_metric(key, value):
            continue
        metric = key.removeprefix("eval_")
        index.append(EvalResult(
            task_type=pipeline_tag, dataset_type=datasets[0] if datasets else "custom",
            dataset_name=datasets[0] if datasets else "held-out split of the training data",
            metric_type=metric, metric_value=float(value), metric_name=metric, dataset_split="validation",
        ))
    card_data = ModelCardData(
        license=license, language=language, library_name="transformers", pipeline_tag=pipeline_tag,
        tags=["contextpool", "custom_code", config.get("model_type", "contextpool"), *tags],
        datasets=datasets or None, base_model=base_model, model_name=model_name if index else None,
        eval_results=index or None,
    )
    code_files = sorted(_auto_map_modules(config.get("auto_map") or {}))
    if folder is not None and folder.is_dir():
        code_files = required_code_files(folder, config)
    has_tokenizer = folder is not None and any((folder / f).is_file() for f in TOKENIZER_FILES)
    pooling_config = [(k, _format_value(v)) for k, v in sorted(config.items()) if _POOLING_KEY.search(k)]
    template = Path(template_path) if template_path else find_card_template()
    return ModelCard.from_template(
        card_data,
        template_str=template.read_text(encoding="utf-8") if template else _FALLBACK_TEMPLATE,
        model_name=model_name,
        repo_id=repo_id,
        revision=revision or "main",
        architecture=architecture,
        model_type=config.get("model_type", "contextpool"),
        task_label=task_words,
        auto_class=auto_class,
        code_files=code_files,
        pooling_config=pooling_config,
        eval_metrics=[(k.removeprefix("eval_"), _format_value(v)) for k, v in eval_results.items() if _is_metric(k, v)],
        eval_source=eval_source,
        has_tokenizer=has_tokenizer,
        datasets=datasets,
        base_model_url=f"https://huggingface.co/{base_model}" if base_model else None,
        citation=CITATION,
    )


def is_contextpool_card(text: str) -> bool:
    """Whether a README.md is a card this project generated (its tag and citation), i.e. safe to replace."""
    from huggingface_hub import ModelCard

    try:
        card = ModelCard(text)
    except Exception:  # noqa: BLE001 - whatever the parser rejects is not our card
        return False
    return "contextpool" in (card.data.tags or []) and "huang2022contextpool" in card.text
