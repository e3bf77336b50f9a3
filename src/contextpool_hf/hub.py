"""Share ContextPool checkpoints on the Hugging Face Hub: `contextpool-hf push`.

A checkpoint folder (what `save_pretrained` or the Trainer writes) is checked,
given the project's model card, and uploaded with its weights, tokenizer or
processor files, config and the flat remote-code files named in
`config.json`'s `auto_map`, so that

    AutoModelForCausalLM.from_pretrained(repo_id, trust_remote_code=True, revision=sha)

works on a machine without this package. The upload is two commits on the
target branch: the model files, then the README whose loading snippet pins the
first commit's sha (a card cannot name the commit it is in).

Token: `--token`/`token=` or `huggingface_hub`'s own lookup (`HF_TOKEN`, then
the login stored by `hf auth login`). It is passed to `huggingface_hub` only;
never printed, logged or written.

The local folder is only read: the card is uploaded from memory.

Also here: the function `model.push_to_hub()` of the ContextPool classes
delegates to (`push_model`), and `prepare_trainer_for_hub`, which makes
`Trainer(push_to_hub=True)` upload the code files and this card.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import math
import re
import sys
import sysconfig
import tempfile
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CARD_TEMPLATE_NAME = "contextpool_model_card.md"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
# Never uploaded from a checkpoint folder: optimizer/RNG state, nested
# checkpoints, logs, hidden files, and a README (the card replaces it).
DEFAULT_IGNORE_PATTERNS = (
    "README.md", ".*", "*/.*", "__pycache__", "*.pyc", "checkpoint-*", "runs",
    "optimizer.pt", "optimizer.bin", "scheduler.pt", "scaler.pt", "rng_state*.pth", "training_args.bin",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json")
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


class CheckpointError(ValueError):
    """The folder is not a shareable checkpoint (missing config, weights or code)."""


class HubAuthError(RuntimeError):
    """No Hugging Face token, or the Hub rejected it."""


class HubPushError(RuntimeError):
    """The Hub answered an error while uploading; nothing past the failing commit was written."""


@dataclass(frozen=True)
class PushResult:
    """Where a push landed. Pin `commit_sha` (the commit with the model files) in `revision=`."""

    repo_id: str
    revision: str  # branch (or refs/pr/N) the commits went to
    commit_sha: str  # model files; the card's loading snippet pins this
    head_sha: str  # branch head after the card commit
    commit_url: str
    pr_url: str | None = None

    @property
    def oid(self) -> str:  # `CommitInfo` compatibility
        return self.commit_sha


# ---------------------------------------------------------------------------
# Checkpoint inspection
# ---------------------------------------------------------------------------
def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path.name} in {path.parent} is not valid JSON: {error}") from error


def _auto_map_modules(auto_map: Mapping[str, Any]) -> set[str]:
    """Module file names referenced by an `auto_map` ("module.Class", "repo--module.Class", tokenizer pairs)."""
    modules = set()
    for value in auto_map.values():
        for ref in value if isinstance(value, (list, tuple)) else [value]:
            if ref:
                modules.add(ref.split("--")[-1].rsplit(".", 1)[0] + ".py")
    return modules


def _relative_imports(source: str) -> set[str]:
    found = re.findall(r"^\s*from\s+\.(\w+)\s+import", source, flags=re.MULTILINE)
    found += re.findall(r"^\s*import\s+\.(\w+)\s*$", source, flags=re.MULTILINE)
    return {f"{name}.py" for name in found}


def required_code_files(folder: str | Path, config: Mapping[str, Any] | None = None) -> list[str]:
    """The `.py` files the checkpoint needs: those in `auto_map`s plus their relative imports."""
    folder = Path(folder)
    config = config if config is not None else (_read_json(folder / "config.json") or {})
    needed = _auto_map_modules(config.get("auto_map") or {})
    for extra in ("tokenizer_config.json", "preprocessor_config.json", "processor_config.json"):
        needed |= _auto_map_modules((_read_json(folder / extra) or {}).get("auto_map") or {})
    pending, seen = list(needed), set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        if (folder / name).is_file():
            pending.extend(_relative_imports((folder / name).read_text(encoding="utf-8")) - seen)
    return sorted(seen)


def check_checkpoint(folder: str | Path) -> dict:
    """Raise `CheckpointError` naming what is missing; return the parsed config.json."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder")
    config = _read_json(folder / "config.json")
    if config is None:
        raise CheckpointError(f"{folder} has no config.json: save the model with save_pretrained() first")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise CheckpointError(
            f"{folder} has no weights: expected model.safetensors or model.safetensors.index.json "
            "(save with save_pretrained(); .bin weights are not shared)"
        )
    index = _read_json(folder / "model.safetensors.index.json")
    if index is not None:
        missing = sorted(f for f in set(index.get("weight_map", {}).values()) if not (folder / f).is_file())
        if missing:
            raise CheckpointError(f"{folder} is missing weight shards listed in its index: {', '.join(missing)}")
    if not config.get("auto_map"):
        raise CheckpointError(
            f"{folder}/config.json has no auto_map, so the Hub copy would not load with trust_remote_code=True; "
            "save a ContextPool model with save_pretrained() (it writes auto_map and the code files)"
        )
    missing = [name for name in required_code_files(folder, config) if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(f"{folder} is missing the remote-code files named in config.json: {', '.join(missing)}")
    return config


def files_to_upload(folder: str | Path, ignore_patterns: Iterable[str] = DEFAULT_IGNORE_PATTERNS) -> list[str]:
    """Relative POSIX paths under `folder` that a push uploads (README.md excluded: the card replaces it)."""
    folder = Path(folder)
    patterns = tuple(ignore_patterns)
    selected = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        parts = rel.split("/")
        if any(fnmatch.fnmatch(rel, p) or any(fnmatch.fnmatch(part, p) for part in parts) for p in patterns):
            continue
        if path.is_file():
            selected.append(rel)
    return selected


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


# ---------------------------------------------------------------------------
# Upload
# ---------------------------------------------------------------------------
def resolve_token(token: str | None = None) -> str:
    """`token`, else huggingface_hub's lookup (HF_TOKEN, then the stored login). Never logged."""
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise HubAuthError(
            "no Hugging Face token: pass --token (or token=...), set HF_TOKEN, or log in with `hf auth login`"
        )
    return token


def _check_token(api, token: str) -> str:
    """The user name behind `token`; `HubAuthError` when the Hub rejects it."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return api.whoami(token=token)["name"]
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status == 401:
            raise HubAuthError(f"the Hub at {api.endpoint} rejected the token (401): check HF_TOKEN or --token") from None
        raise HubPushError(f"could not check the token with {api.endpoint}: {error}") from error


def push_checkpoint(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    token: str | None = None,
    create_pr: bool = False,
    ignore_patterns: Iterable[str] = DEFAULT_IGNORE_PATTERNS,
    card=None,
    **card_kwargs: Any,
) -> PushResult:
    """Upload a saved checkpoint folder, its code files and the project's card; the folder is only read.

    Args:
        folder: what `save_pretrained`/the Trainer wrote (config.json, model.safetensors
            or a sharded index, the flat `*.py` code files, tokenizer or processor files).
        repo_id: "namespace/name" or "name" (the token's user namespace).
        private: create the repo private (ignored when it exists).
        revision: branch to commit to, created from main when missing.
        commit_message, commit_description: for the model commit.
        token: a Hub token; default: HF_TOKEN or the stored login.
        create_pr: open a pull request instead of committing to the branch.
        card: a ready `ModelCard`; default: `build_model_card(folder, **card_kwargs)`
            with the loading snippet pinned to the model commit.
        **card_kwargs: `base_model`, `datasets`, `eval_results`, `license`, `language`, `tags`, ...

    Returns the `PushResult`; `commit_sha` is the revision to pin.
    """
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import validate_repo_id

    validate_repo_id(repo_id)  # HFValidationError is a ValueError
    folder = Path(folder)
    config = check_checkpoint(folder)
    paths = files_to_upload(folder, ignore_patterns)
    if not any(name in paths for name in TOKENIZER_FILES):
        logger.warning("%s has no tokenizer or processor files; users will need to bring their own", folder)
    if card is None:
        build_model_card(folder, repo_id=repo_id, config=config, **card_kwargs)  # fail on bad card args before any upload
    token = resolve_token(token)
    api = HfApi(token=token)
    user = _check_token(api, token)
    step = "create the repository"
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision and not create_pr and not revision.startswith("refs/"):
            step = f"create branch {revision!r}"
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        step = "upload the model files"
        operations = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(folder / rel)) for rel in paths]
        model_commit = api.create_commit(
            repo_id, operations, revision=revision, create_pr=create_pr,
            commit_message=commit_message or f"Upload {config.get('architectures', ['model'])[0]} with remote code",
            commit_description=commit_description,
        )
        target = model_commit.pr_revision if create_pr else (revision or "main")
        if target is None:  # create_pr, but every file was already there: the client made no commit
            logger.warning("%s: nothing changed since %s, no pull request opened", repo_id, model_commit.oid)
            return PushResult(repo_id=repo_id, revision=revision or "main", commit_sha=model_commit.oid,
                              head_sha=model_commit.oid, commit_url=model_commit.commit_url)
        if card is None:
            card = build_model_card(folder, repo_id=repo_id, revision=model_commit.oid, config=config, **card_kwargs)
        step = "upload the model card"
        card_commit = api.create_commit(
            repo_id, [CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card).encode("utf-8"))],
            revision=target, commit_message="Add ContextPool model card",
        )
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        raise HubPushError(
            f"push of {folder} to {repo_id} failed while trying to {step} (HTTP {status}): "
            f"{str(error).splitlines()[0]}. The local folder was not changed; rerun the push to retry."
        ) from error
    logger.info("pushed %s to %s@%s as %s", folder, repo_id, target, user)
    return PushResult(
        repo_id=repo_id, revision=target, commit_sha=model_commit.oid, head_sha=card_commit.oid,
        commit_url=model_commit.commit_url, pr_url=model_commit.pr_url,
    )


# ---------------------------------------------------------------------------
# model.push_to_hub() and Trainer(push_to_hub=True)
# ---------------------------------------------------------------------------
def write_code_files(model, folder: str | Path) -> list[str]:
    """Copy the flat modules defining `model` and its config (and their relative imports) into `folder`."""
    from transformers.dynamic_module_utils import get_relative_import_files

    folder = Path(folder)
    written = []
    for obj in (model, getattr(model, "config", None)):
        if obj is None:
            continue
        module = sys.modules.get(type(obj).__module__)
        source = getattr(module, "__file__", None)
        if module is None or source is None or type(obj).__module__.startswith("transformers."):
            continue
        for path in [source, *get_relative_import_files(source)]:
            dest = folder / Path(path).name
            if not dest.exists() or dest.read_bytes() != Path(path).read_bytes():
                dest.write_bytes(Path(path).read_bytes())
            written.append(dest.name)
    return sorted(set(written))


def push_model(
    model,
    repo_id: str,
    *,
    processing_class=None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    max_shard_size: int | str | None = "50GB",
    tags: list[str] | None = None,
    **card_kwargs: Any,
) -> PushResult:
    """`model.push_to_hub()` for ContextPool models: save to a temp folder with the code files, push with the card.

    Same arguments as `transformers`' `push_to_hub`, plus `processing_class` (a
    tokenizer or processor saved alongside) and the card arguments of `build_model_card`.
    """
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        write_code_files(model, tmp)  # save_pretrained copies them only for classes registered for auto
        if processing_class is not None:
            processing_class.save_pretrained(tmp)
        return push_checkpoint(
            tmp, repo_id, private=private, revision=revision, commit_message=commit_message or "Upload model",
            commit_description=commit_description, token=token if isinstance(token, str) else None,
            create_pr=create_pr,
            tags=[*(getattr(model, "model_tags", None) or []), *(tags or []), *card_kwargs.pop("tags", [])],
            **card_kwargs,
        )


def _trainer_card(trainer, folder: str | Path, card_kwargs: Mapping[str, Any]):
    model = trainer.accelerator.unwrap_model(trainer.model) if hasattr(trainer, "accelerator") else trainer.model
    eval_results = card_kwargs.get("eval_results") or eval_metrics_from_log_history(trainer.state.log_history)
    kwargs = {k: v for k, v in card_kwargs.items() if k != "eval_results"}
    return build_model_card(folder, repo_id=trainer.hub_model_id or trainer.args.hub_model_id,
                            config=model.config.to_dict(), eval_results=eval_results, **kwargs)


def prepare_trainer_for_hub(trainer, **card_kwargs: Any):
    """Make a `Trainer`'s hub uploads carry the flat code files and the project's card.

    `Trainer._push_from_checkpoint` (hub_strategy "every_save", "checkpoint", ...)
    copies only config/weights into `output_dir`, and `Trainer.push_to_hub` writes
    its own README there; this adds a callback that writes the code files and the
    card at every `on_push_begin`, and replaces this trainer's `create_model_card`
    so the end-of-training push keeps the project's card. Returns the callback.
    `card_kwargs` go to `build_model_card` (base_model, datasets, license, ...).
    """
    from transformers import TrainerCallback

    class ContextPoolHubCallback(TrainerCallback):
        def on_push_begin(self, args, state, control, **kwargs):
            if not args.should_save:
                return
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            model = trainer.accelerator.unwrap_model(trainer.model)
            write_code_files(model, args.output_dir)
            _trainer_card(trainer, args.output_dir, card_kwargs).save(Path(args.output_dir) / "README.md")

    def create_model_card(self, *args, **kwargs) -> None:
        if self.is_world_process_zero():
            _trainer_card(self, self.args.output_dir, card_kwargs).save(Path(self.args.output_dir) / "README.md")

    callback = ContextPoolHubCallback()
    trainer.add_callback(callback)
    trainer.create_model_card = types.MethodType(create_model_card, trainer)
    return callback


# ---------------------------------------------------------------------------
# CLI: contextpool-hf push
# ---------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="checkpoint folder written by save_pretrained or the Trainer")
    parser.add_argument("--repo_id", "--repo-id", required=True, help="namespace/name on the Hub")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--revision", default=None, help="branch to push to (created from main if missing)")
    parser.add_argument("--commit_message", "--commit-message", default=None)
    parser.add_argument("--commit_description", "--commit-description", default=None)
    parser.add_argument("--token", default=None,
                        help="Hub token (default: HF_TOKEN or the stored `hf auth login`); never printed")
    parser.add_argument("--create_pr", "--create-pr", action="store_true", help="open a pull request instead")
    parser.add_argument("--base_model", "--base-model", default=None, help="the checkpoint this was converted from")
    parser.add_argument("--dataset", action="append", default=None, dest="datasets",
                        help="dataset id the model was trained on (repeatable)")
    parser.add_argument("--license", default="apache-2.0")
    parser.add_argument("--language", action="append", default=None)
    parser.add_argument("--tag", action="append", default=[], dest="tags", help="extra card tag (repeatable)")
    parser.add_argument("--eval_results", "--eval-results", default=None,
                        help="JSON file of eval metrics (default: what the Trainer wrote in the folder)")


def run(args: argparse.Namespace) -> int:
    eval_results = None
    if args.eval_results:
        eval_results = json.loads(Path(args.eval_results).read_text(encoding="utf-8"))
    try:
        result = push_checkpoint(
            args.folder, args.repo_id, private=args.private or None, revision=args.revision,
            commit_message=args.commit_message, commit_description=args.commit_description,
            token=args.token, create_pr=args.create_pr, base_model=args.base_model, datasets=args.datasets,
            eval_results=eval_results, license=args.license, language=args.language, tags=args.tags,
        )
    except (CheckpointError, HubAuthError, HubPushError, ValueError) as error:
        print(f"contextpool-hf push: error: {error}", file=sys.stderr)
        return 2 if isinstance(error, ValueError) else 1
    print(f"pushed {args.folder} to {result.repo_id} ({result.revision})")
    print(f"model commit: {result.commit_sha}  (load with revision=\"{result.commit_sha}\")")
    if result.pr_url:
        print(f"pull request: {result.pr_url}")
    return 0
