"""Shared code of the Trainer scripts (`scripts/run_clm.py`, `run_mlm.py`, `run_classification.py`).

Nothing here is shipped to the Hub. What lives here:

- argument dataclasses (`ModelArguments`, `DataTrainingArguments`) parsed with `HfArgumentParser`
  next to transformers' `TrainingArguments`;
- model and tokenizer construction: a ContextPool checkpoint, a BERT/GPT-2/Llama checkpoint converted
  on the fly (`contextpool_hf.convert`), a config (`--config_name`, `--config_overrides`), or a small
  default ContextPool model; `--baseline` swaps in the vanilla model of the same size;
- dataset loading (Hub name, local files, or the offline KJV corpus), tokenising and grouping into blocks;
- metrics: perplexity and bits per character (total nats / (ln 2 * characters of the evaluated text));
- checkpoint validation (`validate_checkpoint`): a clear error for partial or corrupt folders,
  read from the safetensors headers, and an atomic final save (`save_model_atomically`).

Multi-process runs (DDP on gloo, `accelerate launch` or `torchrun`) load configs, remote code and
datasets under `TrainingArguments.main_process_first()`, so ranks never race on the module cache.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

BASELINES = ("none", "contextpool-off", "llama", "bert")
TASKS = ("clm", "mlm", "classification")
TASK_AUTO_CLASS = {
    "clm": "AutoModelForCausalLM",
    "mlm": "AutoModelForMaskedLM",
    "classification": "AutoModelForSequenceClassification",
}

# The small default models (2-core CPU friendly). The causal default is Llama-shaped (rotary, RMSNorm,
# gated SiLU MLP, no biases) so that `--baseline contextpool-off` and `--baseline llama` are the same
# architecture and the comparison isolates the pooling. The encoder default is BERT-sized.
DEFAULT_CLM_CONFIG: dict[str, Any] = dict(
    hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=344,
    mlp_type="gated", hidden_act="silu", norm_type="rmsnorm", attention_bias=False, mlp_bias=False,
    position_embedding_type="rotary", norm_position="pre", tie_word_embeddings=True,
)  # fmt: skip
DEFAULT_ENCODER_CONFIG: dict[str, Any] = dict(
    hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512,
    mlp_type="gelu", hidden_act="gelu", norm_type="layernorm", position_embedding_type="absolute",
    norm_position="pre", tie_word_embeddings=True,
)  # fmt: skip
DEFAULT_LM_CORPUS = "kjv"
DEFAULT_BPE_VOCAB = 2048
SHARED_TOKENIZER_DIR = ".tokenizer-trained"  # hands the trained tokenizer from rank 0 to the other ranks
# TrainingArguments defaults of run_clm/run_mlm/run_classification; each script adds its own
# output_dir, learning rate, warm-up and scheduler (and may override any of these).
SCRIPT_TRAINING_DEFAULTS: dict[str, Any] = {
    "do_train": True,
    "do_eval": True,
    "weight_decay": 0.01,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 16,
    "logging_steps": 10,
    "save_strategy": "no",
    "report_to": "none",
}


# --------------------------------------------------------------------------------------------------
# Arguments


@dataclass
class ModelArguments:
    """Which model to train: a checkpoint, a config, or the small default ContextPool model."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "a ContextPool checkpoint, or a BERT/GPT-2/Llama checkpoint (folder or Hub id) that is "
                  "converted to ContextPool on the fly (pass --baseline llama/bert to train it unconverted)"},
    )  # fmt: skip
    config_name: str | None = field(
        default=None, metadata={"help": "config (folder, file or Hub id) to train from scratch"}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": 'comma-separated config fields, e.g. "hidden_size=128,num_hidden_layers=2,pool_target=kv,'
                  'pool_layers=[0,1]"; values are coerced to the field type (JSON for lists)'},
    )  # fmt: skip
    tokenizer_name: str | None = field(
        default=None,
        metadata={"help": "tokenizer folder or Hub id; default: the checkpoint's, else a byte-level BPE "
                  "tokenizer trained on the training split"},
    )  # fmt: skip
    tokenizer_vocab_size: int = field(
        default=DEFAULT_BPE_VOCAB, metadata={"help": "vocabulary size of the BPE tokenizer trained when none is given"}
    )
    baseline: str = field(
        default="none",
        metadata={"help": "none: ContextPool; contextpool-off: the same model with pooling off (pool_layers=[]); "
                  "llama / bert: transformers' LlamaForCausalLM / Bert* of the same size", "choices": BASELINES},
    )  # fmt: skip
    trust_remote_code: bool = field(
        default=False, metadata={"help": "allow code from the checkpoint (needed for Hub ContextPool models)"}
    )
    model_revision: str = field(default="main", metadata={"help": "Hub revision (branch, tag or commit)"})
    max_train_seconds: float | None = field(
        default=None, metadata={"help": "stop training (cleanly, then evaluate and save) after this many seconds"}
    )


@dataclass
class DataTrainingArguments:
    """Which data: a Hub dataset, local files, or (by default) the offline KJV corpus."""

    dataset_name: str | None = field(default=None, metadata={"help": "a datasets Hub name (needs network)"})
    dataset_config_name: str | None = field(default=None, metadata={"help": "its configuration"})
    train_file: str | None = field(default=None, metadata={"help": "local .txt/.json/.jsonl/.csv training file"})
    validation_file: str | None = field(default=None, metadata={"help": "local evaluation file (same format)"})
    lm_corpus: str = field(
        default=DEFAULT_LM_CORPUS,
        metadata={"help": "offline corpus used when no data argument is given", "choices": ("kjv", "shakespeare")},
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "root of the prepared offline data (default: $CONTEXTPOOL_HF_DATA_DIR or ./data)"}
    )
    text_column_name: str | None = field(default=None, metadata={"help": "text column (default: 'text' or the first)"})
    label_column_name: str = field(default="label", metadata={"help": "label column (classification)"})
    validation_split_percentage: int = field(
        default=5, metadata={"help": "share of train held out when the data has no validation split"}
    )
    block_size: int | None = field(
        default=None, metadata={"help": "tokens per training block (default: min(256, model max length))"}
    )
    max_seq_length: int = field(default=128, metadata={"help": "classification: truncate inputs to this length"})
    max_train_samples: int | None = field(default=None, metadata={"help": "keep the first N training examples/blocks"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "keep the first N evaluation examples/blocks"})
    mlm_probability: float = field(default=0.15, metadata={"help": "MLM: share of tokens masked"})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "processes for tokenisation"})


# --------------------------------------------------------------------------------------------------
# Config overrides


def _coerce(value: str, current: Any, key: str) -> Any:
    """Turn the text of an override into the type of the field's current value."""
    text = value.strip()
    if text.lower() in ("none", "null"):
        return None
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"config override {key}={value!r}: expected true/false")
    if isinstance(current, int) and not isinstance(current, bool):
        try:
            return int(text)
        except ValueError:
            pass
        try:
            as_float = float(text)
        except ValueError as error:
            raise ValueError(f"config override {key}={value!r}: expected an integer") from error
        return as_float if not as_float.is_integer() else int(as_float)
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError as error:
            raise ValueError(f"config override {key}={value!r}: expected a number") from error
    if isinstance(current, str):
        return text
    try:
        return json.loads(text)  # lists, dicts, and fields whose current value is None
    except json.JSONDecodeError:
        return text


def _split_overrides(overrides: str) -> list[tuple[str, str]]:
    """Split "a=1,b=[0,1],c=x" at the commas that are outside brackets."""
    items, depth, start = [], 0, 0
    for index, char in enumerate(overrides + ","):
        if char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            piece = overrides[start:index].strip()
            start = index + 1
            if not piece:
                continue
            if "=" not in piece:
                raise ValueError(f"config override {piece!r} is not of the form key=value")
            key, value = piece.split("=", 1)
            items.append((key.strip(), value))
    return items


def parse_config_overrides(overrides: str | None, config: Any | None = None) -> dict[str, Any]:
    """Parse ``--config_overrides`` into a dict of typed values.

    With `config`, keys are checked against the config's fields (a clear error names the unknown key
    and lists the valid ones) and values take the type of the current field value.
    """
    if not overrides:
        return {}
    parsed = {}
    known = _config_keys(config) if config is not None else None
    for key, value in _split_overrides(overrides):
        if known is not None and key not in known:
            close = sorted(k for k in known if k.startswith(key[:4]))
            hint = f" (did you mean {', '.join(close[:5])}?)" if close else ""
            raise ValueError(
                f"unknown config field {key!r} in --config_overrides for {type(config).__name__}{hint}. "
                f"Valid fields: {', '.join(sorted(known))}"
            )
        current = getattr(config, key, None) if config is not None else None
        parsed[key] = _coerce(value, current, key)
    return parsed


def _config_keys(config: Any) -> set[str]:
    keys = set(config.to_dict())
    keys.update(name for name in getattr(type(config), "__dataclass_fields__", {}))
    keys.update(k for k in vars(config) if not k.startswith("_"))
    return keys


def apply_config_overrides(config: Any, overrides: str | dict[str, Any] | None) -> Any:
    """Set each override on `config` (in place) and re-validate it; returns the config."""
    values = overrides if isinstance(overrides, dict) else parse_config_overrides(overrides, config)
    for key, value in values.items():
        setattr(config, key, value)
    if values:
        # keep the derived sizes consistent with a changed width/head count unless they were set too
        if {"hidden_size", "num_attention_heads"} & set(values) and "head_dim" not in values and hasattr(config, "head_dim"):
            config.head_dim = config.hidden_size // config.num_attention_heads
        if "num_attention_heads" in values and "num_key_value_heads" not in values and hasattr(config, "num_key_value_heads"):
            config.num_key_value_heads = config.num_attention_heads
        validate = getattr(config, "validate_architecture", None)
        if callable(validate):
            validate()
    return config


# --------------------------------------------------------------------------------------------------
# Checkpoints


# CheckpointError and the safetensors check (safetensors' own reader) are shared with hub.py.
from .weights_check import CheckpointError, check_safetensors_file  # noqa: E402

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def validate_checkpoint(path: str | os.PathLike[str], *, trainer_checkpoint: bool = False) -> Path:
    """Check that `path` is a complete model folder (or Trainer checkpoint); raise a clear error if not.

    Checks: the folder exists; config.json exists and is valid JSON; a weights file exists; every
    safetensors file (and every shard a `.index.json` lists) is complete per its header. With
    `trainer_checkpoint=True` also trainer_state.json (Trainer writes it last, so a checkpoint without
    it was interrupted while saving).

    Returns:
        The folder as a `Path`.

    Raises:
        CheckpointError: what is missing or corrupt, and what to do about it.
    """
    folder = Path(path)
    what = "Trainer checkpoint" if trainer_checkpoint else "model checkpoint"
    if not folder.is_dir():
        raise CheckpointError(f"{what} {folder} does not exist or is not a folder")
    problems: list[str] = []
    config = folder / "config.json"
    if not config.is_file():
        problems.append("config.json is missing")
    else:
        try:
            json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            problems.append(f"config.json is not valid JSON ({error})")
    weights = [name for name in _WEIGHT_FILES if (folder / name).is_file()]
    if not weights:
        problems.append(f"no weights file (expected one of {', '.join(_WEIGHT_FILES)})")
    for name in weights:
        file = folder / name
        try:
            if name == "model.safetensors":
                check_safetensors_file(file)
            elif name.endswith(".index.json"):
                index = json.loads(file.read_text(encoding="utf-8"))
                for shard in sorted(set(index.get("weight_map", {}).values())):
                    shard_path = folder / shard
                    if not shard_path.is_file():
                        problems.append(f"shard {shard} listed in {name} is missing")
                    elif shard.endswith(".safetensors"):
                        check_safetensors_file(shard_path)
            elif file.stat().st_size == 0:
                problems.append(f"{name} is empty")
        except CheckpointError as error:
            problems.append(str(error).replace(str(folder) + os.sep, ""))
        except (OSError, ValueError) as error:
            problems.append(f"{name} is unreadable ({error})")
    if trainer_checkpoint:
        state = folder / "trainer_state.json"
        if not state.is_file():
            problems.append("trainer_state.json is missing (Trainer writes it last: the save was interrupted)")
        else:
            try:
                json.loads(state.read_text(encoding="utf-8"))
            except ValueError as error:
                problems.append(f"trainer_state.json is not valid JSON ({error})")
    if problems:
        raise CheckpointError(
            f"{what} {folder} is partial or corrupt: " + "; ".join(problems) + ". "
            "Resume from an earlier checkpoint, or delete this folder and start again."
        )
    return folder


def _checkpoint_step(path: Path) -> int:
    try:
        return int(path.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def resolve_resume_checkpoint(resume: str | bool | None, output_dir: str) -> str | None:
    """Turn ``--resume_from_checkpoint`` into a validated folder (or None).

    An explicit path must be a complete Trainer checkpoint (else `CheckpointError`). ``True``/"latest"/
    "last" picks the newest complete ``checkpoint-N`` under `output_dir`, skipping (with a warning)
    newer ones that an interrupted run left partial; with none complete it raises.
    """
    if resume in (None, False, "", "False", "false", "no", "none", "None"):
        return None
    if resume in (True, "True", "true", "latest", "last"):
        folders = sorted(
            (p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and _checkpoint_step(p) >= 0),
            key=_checkpoint_step,
            reverse=True,
        )
        if not folders:
            raise CheckpointError(f"--resume_from_checkpoint: no checkpoint-* folder in {output_dir}")
        for folder in folders:
            try:
                return str(validate_checkpoint(folder, trainer_checkpoint=True))
            except CheckpointError as error:
                logger.warning("skipping %s: %s", folder.name, error)
        raise CheckpointError(f"--resume_from_checkpoint: every checkpoint in {output_dir} is partial or corrupt")
    return str(validate_checkpoint(str(resume), trainer_checkpoint=True))


def save_model_atomically(trainer: Any, output_dir: str) -> None:
    """Save model + tokenizer so that an interrupted save never destroys what `output_dir` held.

    The files are written into a temporary folder beside `output_dir` and then moved into place one by
    one with `os.replace` (atomic per file); checkpoint-* sub-folders are untouched. All ranks must call
    it (`Trainer.save_model` synchronises them); only the main process writes.
    """
    args = trainer.args
    if not args.should_save:
        trainer.save_model(os.path.join(output_dir, ".unused"))  # collective calls on non-main ranks
        return
    os.makedirs(output_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".saving-", dir=output_dir)
    try:
        trainer.save_model(staging)
        for name in sorted(os.listdir(staging)):
            source = os.path.join(staging, name)
            target = os.path.join(output_dir, name)
            if os.path.isdir(source):
                if os.path.isdir(target):
                    shutil.rmtree(target)
                os.replace(source, target)
            else:
                os.replace(source, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Data


def _main_first(training_args: Any, desc: str):
    import contextlib

    if training_args is None:
        return contextlib.nullcontext()
    return training_args.main_process_first(desc=desc)


def _file_builder(path: str) -> str:
    extension = path.rsplit(".", 1)[-1].lower()
    if extension in ("txt", "text"):
        return "text"
    if extension in ("json", "jsonl"):
        return "json"
    if extension in ("csv", "tsv"):
        return "csv"
    raise ValueError(f"unsupported data file {path!r}: use .txt, .json/.jsonl or .csv")


def load_raw_datasets(data_args: DataTrainingArguments, task: str, seed: int = 42, training_args: Any = None):
    """Return a DatasetDict with "train" and "validation".

    Source, in order: ``--dataset_name`` (Hub), ``--train_file``/``--validation_file``, else the offline
    default (KJV for language modelling, the passage-classification set for classification), prepared
    with `contextpool_hf.data` if missing.
    """
    from datasets import DatasetDict, load_dataset

    from .data import default_data_dir, prepare_classification, prepare_lm, split_files

    with _main_first(training_args, "loading the dataset"):
        if data_args.dataset_name is not None:
            raw = load_dataset(data_args.dataset_name, data_args.dataset_config_name)
        elif data_args.train_file is not None:
            files = {"train": data_args.train_file}
            if data_args.validation_file is not None:
                files["validation"] = data_args.validation_file
            builder = _file_builder(data_args.train_file)
            kwargs = {"keep_linebreaks": True} if builder == "text" else {}
            raw = load_dataset(builder, data_files=files, **kwargs)
        else:
            root = Path(data_args.data_dir) if data_args.data_dir else default_data_dir()
            if task == "classification":
                folder = prepare_classification(root)
                files = {k: v for k, v in split_files(folder, "jsonl").items() if k != "test"}
                print(f"[contextpool-hf] no data argument: training on the offline classification set in {folder}")
                raw = load_dataset("json", data_files=files)
            else:
                folder = prepare_lm(root, data_args.lm_corpus)
                files = {k: v for k, v in split_files(folder, "txt").items() if k != "test"}
                print(f"[contextpool-hf] no data argument: training on the offline '{data_args.lm_corpus}' corpus "
                      f"in {folder}")  # fmt: skip
                raw = load_dataset("text", data_files=files)
    if "validation" not in raw:
        split = raw["train"].train_test_split(test_size=data_args.validation_split_percentage / 100, seed=seed)
        raw = DatasetDict({"train": split["train"], "validation": split["test"]})
    return raw


def text_column(dataset: Any, name: str | None) -> str:
    columns = dataset.column_names
    if name is not None:
        if name not in columns:
            raise ValueError(f"--text_column_name {name!r} not in the dataset's columns {columns}")
        return name
    return "text" if "text" in columns else columns[0]


def train_tokenizer_on(dataset: Any, column: str, vocab_size: int, model_max_length: int = 1024) -> Any:
    """A byte-level BPE tokenizer trained on `dataset[column]` (pad=0, <s>, </s>, <unk>, <mask>)."""
    from .tokenization import train_bpe_tokenizer

    def texts():
        for start in range(0, len(dataset), 1000):
            yield from (t for t in dataset[start : start + 1000][column] if t)

    return train_bpe_tokenizer(texts(), vocab_size=vocab_size, model_max_length=model_max_length)


def build_tokenizer(model_args: ModelArguments, train_dataset: Any = None, column: str | None = None,
                    training_args: Any = None) -> Any:  # fmt: skip
    """The tokenizer: ``--tokenizer_name``, else the checkpoint's, else BPE trained on the training split.

    The trained tokenizer is built on the main process first and the other ranks load it from
    `output_dir/.tokenizer-trained`, so every rank has the same vocabulary. A resumed run reloads the
    tokenizer saved in its checkpoint.
    """
    from transformers import AutoTokenizer

    name = model_args.tokenizer_name or model_args.model_name_or_path
    if model_args.model_name_or_path is not None and os.path.isdir(model_args.model_name_or_path):
        validate_checkpoint(model_args.model_name_or_path)  # a clear error before anything else reads it
    if name is not None:
        with _main_first(training_args, "loading the tokenizer"):
            tokenizer = AutoTokenizer.from_pretrained(
                name, trust_remote_code=model_args.trust_remote_code, revision=model_args.model_revision
            )
    else:
        if train_dataset is None:
            raise ValueError("no --tokenizer_name and no training data to train a tokenizer on")
        resume = getattr(training_args, "resume_from_checkpoint", None) if training_args is not None else None
        if resume:
            # the run being resumed trained its tokenizer; Trainer saved it in every checkpoint
            folder = resolve_resume_checkpoint(resume, training_args.output_dir)
            if folder and (Path(folder) / "tokenizer.json").is_file():
                return AutoTokenizer.from_pretrained(folder)
        shared = Path(training_args.output_dir) / SHARED_TOKENIZER_DIR if training_args is not None else None
        with _main_first(training_args, "training the tokenizer"):
            if shared is not None and training_args.local_process_index != 0:
                tokenizer = AutoTokenizer.from_pretrained(str(shared))  # the main process trained it
            else:
                start = time.perf_counter()
                tokenizer = train_tokenizer_on(train_dataset, column, model_args.tokenizer_vocab_size)
                print(f"[contextpool-hf] no --tokenizer_name: trained a byte-level BPE tokenizer "
                      f"({len(tokenizer)} tokens) on the training split in {time.perf_counter() - start:.1f} s")  # fmt: skip
                if shared is not None and training_args.world_size > 1:
                    tokenizer.save_pretrained(str(shared))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def tokenize_and_group(raw: Any, tokenizer: Any, block_size: int, column: str, data_args: DataTrainingArguments,
                       training_args: Any = None) -> tuple[Any, dict[str, float]]:  # fmt: skip
    """Tokenise every line/document and pack the token stream into `block_size` blocks.

    Returns the grouped DatasetDict and, per split, characters per token (for bits per character):
    the characters counted are each text plus one separator (the newline that ended the line, which
    the tokenizer's BOS/EOS token stands for).
    """

    def tokenize(batch):
        texts = [t for t in batch[column] if t and t.strip()]
        encoded = tokenizer(texts, add_special_tokens=True)
        ids = encoded["input_ids"]
        if tokenizer.bos_token_id is None and tokenizer.eos_token_id is not None:
            ids = [seq + [tokenizer.eos_token_id] for seq in ids]
        return {"input_ids": ids, "n_chars": [len(t) + 1 for t in texts]}

    def group(batch):
        stream = [token for seq in batch["input_ids"] for token in seq]
        total = (len(stream) // block_size) * block_size
        blocks = [stream[i : i + block_size] for i in range(0, total, block_size)]
        return {"input_ids": blocks, "labels": [list(b) for b in blocks]}

    with _main_first(training_args, "tokenising and grouping"):
        tokenized = raw.map(tokenize, batched=True, remove_columns=raw["train"].column_names,
                            num_proc=data_args.preprocessing_num_workers, desc="tokenising")  # fmt: skip
        chars_per_token = {}
        for split in tokenized:
            n_tokens = sum(len(seq) for seq in tokenized[split]["input_ids"])
            n_chars = sum(tokenized[split]["n_chars"])
            chars_per_token[split] = n_chars / max(n_tokens, 1)
        tokenized = tokenized.remove_columns("n_chars")
        grouped = tokenized.map(group, batched=True, batch_size=2000, remove_columns=["input_ids"],
                                num_proc=data_args.preprocessing_num_workers, desc=f"grouping into blocks of {block_size}")  # fmt: skip
    if data_args.max_train_samples is not None:
        grouped["train"] = grouped["train"].select(range(min(data_args.max_train_samples, len(grouped["train"]))))
    if data_args.max_eval_samples is not None:
        grouped["validation"] = grouped["validation"].select(
            range(min(data_args.max_eval_samples, len(grouped["validation"])))
        )
    for split in ("train", "validation"):
        if len(grouped[split]) == 0:
            raise ValueError(f"the {split} split has fewer than block_size={block_size} tokens: lower --block_size")
    return grouped, chars_per_token


# --------------------------------------------------------------------------------------------------
# Models


def _is_contextpool(config: Any) -> bool:
    return getattr(config, "model_type", None) == "contextpool"


def vanilla_config(task: str, baseline: str, cp_config: Any, num_labels: int | None = None) -> Any:
    """transformers' Llama (causal) or BERT (encoder) config of the same size as `cp_config`."""
    if baseline == "llama":
        if task != "clm":
            raise ValueError("--baseline llama is a causal LM: use it with run_clm.py (bert for MLM/classification)")
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=cp_config.vocab_size, hidden_size=cp_config.hidden_size,
            num_hidden_layers=cp_config.num_hidden_layers, num_attention_heads=cp_config.num_attention_heads,
            num_key_value_heads=cp_config.num_key_value_heads, head_dim=cp_config.head_dim,
            intermediate_size=cp_config.intermediate_size, hidden_act=cp_config.hidden_act
            if cp_config.mlp_type == "gated" else "silu",
            max_position_embeddings=cp_config.max_position_embeddings, rms_norm_eps=cp_config.norm_eps,
            rope_parameters={"rope_type": "default", "rope_theta": float(cp_config.rope_theta)},
            attention_bias=cp_config.attention_bias, mlp_bias=cp_config.mlp_bias,
            tie_word_embeddings=cp_config.tie_word_embeddings, initializer_range=cp_config.initializer_range,
            pad_token_id=cp_config.pad_token_id, bos_token_id=cp_config.bos_token_id,
            eos_token_id=cp_config.eos_token_id,
        )  # fmt: skip
    if baseline == "bert":
        if task == "clm":
            raise ValueError("--baseline bert is an encoder: use --baseline llama with run_clm.py")
        from transformers import BertConfig

        kwargs = {"num_labels": num_labels} if num_labels else {}
        return BertConfig(
            vocab_size=cp_config.vocab_size, hidden_size=cp_config.hidden_size,
            num_hidden_layers=cp_config.num_hidden_layers, num_attention_heads=cp_config.num_attention_heads,
            intermediate_size=cp_config.intermediate_size, hidden_act=cp_config.hidden_act,
            max_position_embeddings=cp_config.max_position_embeddings,
            type_vocab_size=max(cp_config.type_vocab_size, 1), layer_norm_eps=cp_config.norm_eps,
            pad_token_id=cp_config.pad_token_id if cp_config.pad_token_id is not None else 0,
            initializer_range=cp_config.initializer_range, **kwargs,
        )  # fmt: skip
    raise ValueError(f"no vanilla config for baseline {baseline!r}")


def default_config(task: str, tokenizer: Any, max_positions: int, overrides: str | None = None,
                   config_name: str | None = None, num_labels: int | None = None,
                   trust_remote_code: bool = False) -> Any:  # fmt: skip
    """The ContextPool config to train from scratch: `config_name` or the small default, plus overrides."""
    from transformers import AutoConfig

    from .configuration_contextpool import ContextPoolConfig

    if config_name is not None:
        config = AutoConfig.from_pretrained(config_name, trust_remote_code=trust_remote_code)
        if num_labels is not None:
            config.num_labels = num_labels
        apply_config_overrides(config, overrides)
    else:
        # Build from defaults + overrides in one go, so __post_init__ derives head_dim etc. from them.
        fields = dict(DEFAULT_CLM_CONFIG if task == "clm" else DEFAULT_ENCODER_CONFIG)
        fields.update(
            vocab_size=len(tokenizer), max_position_embeddings=max_positions, is_causal=task == "clm",
            classifier_pooling="last" if task == "clm" else "cls", pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        )  # fmt: skip
        values = parse_config_overrides(overrides, ContextPoolConfig(**fields))
        if "hidden_size" in values and "intermediate_size" not in values:
            ratio = fields["intermediate_size"] / fields["hidden_size"]
            fields["intermediate_size"] = int(math.ceil(ratio * values["hidden_size"] / 8) * 8)
        fields.update(values)
        if num_labels is not None:
            fields["num_labels"] = num_labels
        config = ContextPoolConfig(**fields)
        config.validate_architecture()
    if getattr(config, "vocab_size", None) is not None and config.vocab_size < len(tokenizer):
        raise ValueError(f"config vocab_size {config.vocab_size} < tokenizer size {len(tokenizer)}")
    return config


def _auto_class(task: str):
    import transformers

    return getattr(transformers, TASK_AUTO_CLASS[task])


def build_model(task: str, model_args: ModelArguments, tokenizer: Any, *, max_positions: int = 512,
                num_labels: int | None = None, label_maps: tuple[dict, dict] | None = None,
                training_args: Any = None) -> Any:  # fmt: skip
    """Build the model a script trains.

    - ``--model_name_or_path`` of a ContextPool checkpoint: loaded (pool overrides may be applied).
    - of another model (BERT/GPT-2/Llama): converted with `contextpool_hf.convert.convert_model`;
      ``--baseline llama/bert`` loads it unconverted instead; ``contextpool-off`` converts with pooling off.
    - otherwise a new model from ``--config_name`` or the small default config (+ ``--config_overrides``);
      ``--baseline contextpool-off`` sets ``pool_layers=[]``, ``llama``/``bert`` builds transformers' model
      of the same size.
    """
    from transformers import AutoConfig

    import contextpool_hf  # noqa: F401  (registers the Auto classes)

    auto = _auto_class(task)
    extra: dict[str, Any] = {}
    if num_labels is not None:
        extra["num_labels"] = num_labels
    if label_maps is not None:
        extra["id2label"], extra["label2id"] = label_maps[1], label_maps[0]
    baseline = model_args.baseline
    if baseline not in BASELINES:
        raise ValueError(f"--baseline must be one of {BASELINES}, got {baseline!r}")

    if model_args.model_name_or_path is not None:
        path = model_args.model_name_or_path
        if os.path.isdir(path):
            validate_checkpoint(path)
        with _main_first(training_args, "loading the model"):
            config = AutoConfig.from_pretrained(path, trust_remote_code=model_args.trust_remote_code,
                                                revision=model_args.model_revision)  # fmt: skip
            if _is_contextpool(config) or baseline in ("llama", "bert"):
                if baseline in ("llama", "bert") and _is_contextpool(config):
                    raise ValueError(f"--baseline {baseline} with a ContextPool checkpoint: pass the original "
                                     "BERT/Llama checkpoint, or use --baseline contextpool-off")  # fmt: skip
                overrides = parse_config_overrides(model_args.config_overrides, config)
                if baseline == "contextpool-off":
                    overrides["pool_layers"] = []
                model = auto.from_pretrained(path, trust_remote_code=model_args.trust_remote_code,
                                             revision=model_args.model_revision, **overrides, **extra)  # fmt: skip
            else:
                try:
                    from .convert import convert_model
                except ImportError as error:
                    raise ImportError(
                        f"{path} is a {config.model_type!r} checkpoint; converting it needs contextpool_hf.convert "
                        f"({error}). Pass --baseline llama/bert to train it unconverted."
                    ) from error
                pool_overrides = parse_config_overrides(model_args.config_overrides)
                if baseline == "contextpool-off":
                    pool_overrides["pool_layers"] = []
                source = auto.from_pretrained(path, trust_remote_code=model_args.trust_remote_code,
                                              revision=model_args.model_revision, **extra)  # fmt: skip
                model = convert_model(source, task=_convert_task(task), **pool_overrides)
        return model

    config = default_config(task, tokenizer, max_positions, model_args.config_overrides, model_args.config_name,
                            num_labels, model_args.trust_remote_code)  # fmt: skip
    if label_maps is not None:
        config.label2id, config.id2label = label_maps
    if baseline == "contextpool-off":
        config.pool_layers = []
    if baseline in ("llama", "bert"):
        config = vanilla_config(task, baseline, config, num_labels)
        if label_maps is not None:
            config.label2id, config.id2label = label_maps
    return auto.from_config(config, trust_remote_code=model_args.trust_remote_code)


def _convert_task(task: str) -> str:
    return {"clm": "causal-lm", "mlm": "masked-lm", "classification": "sequence-classification"}[task]


def count_parameters(model: Any) -> int:
    """Unique trainable parameters (tied embeddings counted once)."""
    seen, total = set(), 0
    for parameter in model.parameters():
        if parameter.requires_grad and id(parameter) not in seen:
            seen.add(id(parameter))
            total += parameter.numel()
    return total


def estimate_training_flops(model: Any, tokens: int, block_size: int) -> dict[str, float]:
    """FLOPs of training on `tokens` tokens (forward + backward = 3x forward), by formula.

    - dense: 6 * N * tokens, N = non-embedding parameters + the output projection (the LM head);
    - attention scores and weighted sum: 6 * 2 * L * d_attn * block_size * tokens / 2 per causal layer
      (the causal half of the n x n product; the encoder uses the full square);
    - pooling (ContextPool layers): per token and layer, the window of 2R+1 (causal: R+1) neighbours
      times the pooled width d (weights, mask, sum, normaliser: ~4 FLOPs each), times 3 for training,
      plus the predictor (counted in N).
    """
    config = model.config
    layers = getattr(config, "num_hidden_layers", 0)
    hidden = getattr(config, "hidden_size", 0)
    heads = getattr(config, "num_attention_heads", 1)
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    d_attn = heads * head_dim
    vocab = getattr(config, "vocab_size", 0)
    embed = vocab * hidden
    n_params = count_parameters(model)
    dense_params = n_params - embed + vocab * hidden  # embeddings are a lookup; the head is a matmul
    position = getattr(config, "max_position_embeddings", 0) * hidden if getattr(
        config, "position_embedding_type", "absolute") == "absolute" else 0  # fmt: skip
    dense_params -= position
    causal = getattr(config, "is_causal", False) or getattr(config, "model_type", "") == "llama"
    context = block_size / 2 if causal else block_size
    attention = 6 * 2 * layers * d_attn * context * tokens
    pooling = 0.0
    if _is_contextpool(config):
        pool_layers = config.pool_layers
        n_pool = layers if pool_layers is None else len(pool_layers)
        radius = math.ceil(config.pool_truncation * config.pool_sigma_max)
        window = radius + 1 if config.is_causal else 2 * radius + 1
        pooling = 3 * 4 * n_pool * window * hidden * tokens
    dense = 6 * dense_params * tokens
    return {"flops_dense": dense, "flops_attention": attention, "flops_pooling": pooling,
            "flops_total": dense + attention + pooling}  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Metrics


def lm_metrics(metrics: dict[str, float], chars_per_token: float | None, prefix: str = "eval") -> dict[str, float]:
    """Add perplexity and bits per character to Trainer's `<prefix>_loss` (mean nats per predicted token).

    bpc = total nats / (ln 2 * characters) = loss / (ln 2 * chars_per_token), with characters per token
    measured over the whole evaluated split (each text plus its line separator).
    """
    loss = metrics.get(f"{prefix}_loss")
    if loss is None:
        return metrics
    metrics[f"{prefix}_perplexity"] = math.exp(loss) if loss < 700 else float("inf")
    if chars_per_token:
        metrics[f"{prefix}_bpc"] = loss / (math.log(2) * chars_per_token)
    return metrics


def accuracy_metrics(eval_prediction: Any) -> dict[str, float]:
    """Accuracy with numpy (evaluate's metric scripts need the Hub); ignores label -100."""
    predictions, labels = eval_prediction.predictions, eval_prediction.label_ids
    if isinstance(predictions, tuple):
        predictions = predictions[0]
    predictions = np.asarray(predictions)
    if predictions.ndim == np.asarray(labels).ndim + 1:
        predictions = predictions.argmax(-1)
    labels = np.asarray(labels)
    keep = labels != -100
    return {"accuracy": float((predictions[keep] == labels[keep]).mean()) if keep.any() else float("nan")}


def argmax_logits(logits: Any, labels: Any) -> Any:
    """`preprocess_logits_for_metrics`: keep argmax ids, not (B, n, V) logits, on the evaluation loop."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


class TimeBudgetCallback:
    """Stop training after `seconds` (then the script evaluates and saves as usual)."""

    def __new__(cls, seconds: float):
        from transformers import TrainerCallback

        class _Budget(TrainerCallback):
            def __init__(self):
                self.start = None

            def on_train_begin(self, args, state, control, **kwargs):
                self.start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                if self.start is not None and time.perf_counter() - self.start > seconds:
                    control.should_training_stop = True
                    control.should_save = False
                return control

        return _Budget()


def setup_logging(training_args: Any) -> None:
    import datasets
    import transformers

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO if training_args.should_log else logging.WARNING)  # fmt: skip
    level = training_args.get_process_log_level()
    logger.setLevel(level)
    datasets.utils.logging.set_verbosity(max(level, logging.WARNING))
    transformers.utils.logging.set_verbosity(max(level, logging.WARNING))


def parse_args(argv: Sequence[str] | None, training_defaults: dict[str, Any] | None = None):
    """Parse (ModelArguments, DataTrainingArguments, TrainingArguments) from argv or a .json file.

    `training_defaults` change TrainingArguments' defaults (e.g. output_dir, use_cpu) without hiding them.
    """
    import sys

    from transformers import HfArgumentParser, TrainingArguments

    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    for action in parser._actions:
        if training_defaults and action.dest in training_defaults:
            action.default = training_defaults[action.dest]
            action.required = False
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(json_file=os.path.abspath(argv[0]))
    return parser.parse_args_into_dataclasses(args=argv)


def start_run(argv: Sequence[str] | None, training_defaults: dict[str, Any], task: str):
    """The opening of every text script: parse the arguments, set up logging, seed, load the raw
    datasets and find the text column. Returns (model_args, data_args, training_args, raw, column)."""
    from transformers import set_seed

    model_args, data_args, training_args = parse_args(argv, training_defaults)
    setup_logging(training_args)
    set_seed(training_args.seed)
    raw = load_raw_datasets(data_args, task, training_args.seed, training_args)
    column = text_column(raw["train"], data_args.text_column_name)
    return model_args, data_args, training_args, raw, column


def build_model_for_run(task: str, model_args: ModelArguments, tokenizer: Any, training_args: Any,
                        log: logging.Logger, **kwargs: Any) -> tuple[Any, int]:  # fmt: skip
    """`build_model` after re-seeding (the same initial weights whatever the data preparation
    consumed); logs the size on the script's logger `log`. Returns (model, parameter count)."""
    from transformers import set_seed

    set_seed(training_args.seed)
    model = build_model(task, model_args, tokenizer, training_args=training_args, **kwargs)
    n_params = count_parameters(model)
    log.info("model %s: %s parameters", type(model).__name__, f"{n_params:,}")
    return model, n_params


def time_budget_callbacks(model_args: ModelArguments) -> list[Any]:
    """[TimeBudgetCallback] when `--max_train_seconds` is set, else []."""
    return [TimeBudgetCallback(model_args.max_train_seconds)] if model_args.max_train_seconds else []


def finish(trainer: Any, train_result: Any, metrics_eval: dict[str, float] | None, extra: dict[str, Any],
           output_dir: str) -> dict[str, float]:  # fmt: skip
    """Save the model atomically and write train/eval/all results (`Trainer.save_metrics`)."""
    save_model_atomically(trainer, output_dir)
    results: dict[str, float] = {}
    if train_result is not None:
        train_metrics = dict(train_result.metrics)
        train_metrics.update(extra)
        trainer.log_metrics("train", train_metrics)
        trainer.save_metrics("train", train_metrics)
        trainer.save_state()
        results.update(train_metrics)
    if metrics_eval is not None:
        trainer.log_metrics("eval", metrics_eval)
        trainer.save_metrics("eval", metrics_eval)
        results.update(metrics_eval)
    return results


def run_training(trainer: Any, model_args: ModelArguments, training_args: Any,
                 after_eval: Callable[[dict[str, float]], dict[str, float]] | None = None,
                 extra: dict[str, Any] | None = None,
                 train_extra: Callable[[Any], dict[str, Any]] | None = None) -> dict[str, float]:  # fmt: skip
    """train (with resume) -> evaluate -> save; returns all metrics.

    `extra` and `train_extra(trainer)` (called after training) add entries to the train metrics.
    """
    train_result = None
    if training_args.do_train:
        resume = resolve_resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
        if resume:
            logger.info("resuming from %s", resume)
        start = time.perf_counter()
        train_result = trainer.train(resume_from_checkpoint=resume)
        train_result.metrics["train_wall_seconds"] = time.perf_counter() - start
        if train_extra is not None:
            train_result.metrics.update(train_extra(trainer))
    metrics = None
    if training_args.do_eval:
        metrics = trainer.evaluate()
        if after_eval is not None:
            metrics = after_eval(metrics)
        trainer.log({k: v for k, v in metrics.items() if k.endswith(("perplexity", "bpc"))})
    results = finish(trainer, train_result, metrics, extra or {}, training_args.output_dir)
    shared = Path(training_args.output_dir) / SHARED_TOKENIZER_DIR
    if training_args.should_save and shared.is_dir():
        shutil.rmtree(shared, ignore_errors=True)
    return results
