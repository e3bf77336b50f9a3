"""The arguments of the text Trainer scripts, and the checks that turn a bad value into a clear error.

`ModelArguments` and `DataTrainingArguments` are parsed with `HfArgumentParser` next to transformers'
`TrainingArguments` (`contextpool_hf.training.parse_args`). argparse already rejects a non-number
where a number is expected; `check_arguments` rejects the values argparse lets through and the
scripts would otherwise replace or misread silently (``--block_size 0`` taken as "the default",
``--max_steps 0`` taken as "train by epochs", a misspelt file path, ``--validation_file`` without
``--train_file``, ...). It also checks values that come from a ``.json`` arguments file, which
argparse never sees. Every error names the argument and the values it accepts.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

BASELINES = ("none", "contextpool-off", "llama", "bert")
TASKS = ("clm", "mlm", "classification")
LM_CORPORA = ("kjv", "shakespeare")
DATA_FILE_EXTENSIONS = {"txt": "text", "text": "text", "json": "json", "jsonl": "json", "csv": "csv", "tsv": "csv"}
DEFAULT_LM_CORPUS = "kjv"
DEFAULT_BPE_VOCAB = 2048
# A byte-level BPE vocabulary holds the 256 byte symbols and the 5 special tokens before any merge.
MIN_BPE_VOCAB = 256 + 5
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
    # Trainer guesses label_names from forward()'s signature and computes an eval loss only when every
    # guessed name is in the batch: a forward that also takes `shift_labels` would silently lose eval_loss.
    "label_names": ["labels"],
}


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
                  'pool_layers=[0,1]"; PretrainedConfig.update_from_string rules, plus [JSON lists] and none'},
    )  # fmt: skip
    tokenizer_name: str | None = field(
        default=None,
        metadata={"help": "tokenizer folder or Hub id; default: the checkpoint's, else a byte-level BPE "
                  "tokenizer trained on the training split"},
    )  # fmt: skip
    tokenizer_vocab_size: int = field(
        default=DEFAULT_BPE_VOCAB,
        metadata={"help": f"vocabulary size of the BPE tokenizer trained when none is given (>= {MIN_BPE_VOCAB})"},
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
        default=DEFAULT_LM_CORPUS, metadata={"help": "offline corpus used when no data argument is given", "choices": LM_CORPORA}
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "root of the prepared offline data (default: $CONTEXTPOOL_HF_DATA_DIR or ./data)"}
    )
    text_column_name: str | None = field(default=None, metadata={"help": "text column (default: 'text' or the first)"})
    label_column_name: str = field(default="label", metadata={"help": "label column (classification)"})
    validation_split_percentage: int = field(
        default=5, metadata={"help": "share of train held out (1-99) when the data has no validation split"}
    )
    block_size: int | None = field(
        default=None, metadata={"help": "tokens per training block, >= 1 (default: min(256, model max length))"}
    )
    packing: bool = field(
        default=False,
        metadata={"help": "clm: padding-free packing: documents (cut to block_size) are not concatenated across their "
                          "boundaries; DataCollatorWithFlattening packs each batch into one row with position_ids "
                          "restarting per document, and the model neither attends nor pools across them"},
    )
    max_seq_length: int = field(default=128, metadata={"help": "classification: truncate inputs to this length (>= 1)"})
    max_train_samples: int | None = field(default=None, metadata={"help": "keep the first N (>= 1) training examples/blocks"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "keep the first N (>= 1) evaluation examples/blocks"})
    mlm_probability: float = field(default=0.15, metadata={"help": "MLM: share of tokens masked, in (0, 1)"})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "processes for tokenisation (>= 1)"})


# --------------------------------------------------------------------------------------------------
# Checks


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value: Any, *, minimum: int = 1, maximum: int | None = None, optional: bool = False,
              extra: str = "") -> None:  # fmt: skip
    """Raise ValueError naming ``--name`` unless `value` is an int in [minimum, maximum] (or None if optional)."""
    if value is None and optional:
        return
    allowed = f"an integer >= {minimum}" if maximum is None else f"an integer from {minimum} to {maximum}"
    if optional:
        allowed += " (or leave it unset)"
    if not _is_int(value) or value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"--{name} must be {allowed}{extra}, got {value!r}")


def check_number(name: str, value: Any, *, low: float, high: float | None = None, low_open: bool = False,
                 high_open: bool = False, optional: bool = False) -> None:  # fmt: skip
    """Raise ValueError naming ``--name`` unless `value` is a finite number in the given interval."""
    if value is None and optional:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low)
    if high is not None:
        ok = ok and (value < high if high_open else value <= high)
    if not ok:
        interval = ("(" if low_open else "[") + f"{low}, " + ("inf)" if high is None else f"{high}" + (")" if high_open else "]"))
        raise ValueError(f"--{name} must be a finite number in {interval}, got {value!r}")


def looks_like_local_path(name: str) -> bool:
    """True for strings that can only mean a local path (a Hub id is ``name`` or ``org/name``)."""
    return (
        name.startswith(("/", "./", "../", "~", "." + os.sep)) or name.endswith(("/", os.sep)) or name.count("/") > 1
        or (os.sep != "/" and os.sep in name) or name.endswith((".json", ".txt", ".jsonl", ".csv"))
    )  # fmt: skip


def check_local_or_hub(name: str, value: str | None) -> None:
    """A --model_name_or_path style value: an existing local path, or something that can be a Hub id."""
    if value is None:
        return
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"--{name} must be a folder or a Hub model id, got {value!r}")
    if not os.path.exists(value) and looks_like_local_path(value):
        raise ValueError(f"--{name} {value}: no such file or folder (and it is not a Hub id of the form name or org/name)")


def data_file_builder(name: str, path: str) -> str:
    """The `datasets` builder for a data file, after checking that the file exists and has a known extension."""
    extension = path.rsplit(".", 1)[-1].lower() if "." in os.path.basename(path) else ""
    if extension not in DATA_FILE_EXTENSIONS:
        raise ValueError(f"--{name} {path}: unsupported extension {('.' + extension) if extension else '(none)'}; "
                         f"use one of {', '.join('.' + e for e in DATA_FILE_EXTENSIONS)}")  # fmt: skip
    if not os.path.isfile(path):
        raise ValueError(f"--{name} {path}: no such file")
    if os.path.getsize(path) == 0:
        raise ValueError(f"--{name} {path} is empty")
    return DATA_FILE_EXTENSIONS[extension]


def check_data_arguments(data_args: DataTrainingArguments, task: str) -> None:
    """Reject data arguments the scripts would otherwise misread (see the module docstring)."""
    check_int("block_size", data_args.block_size, optional=True)
    check_int("max_seq_length", data_args.max_seq_length)
    check_int("max_train_samples", data_args.max_train_samples, optional=True)
    check_int("max_eval_samples", data_args.max_eval_samples, optional=True)
    check_int("validation_split_percentage", data_args.validation_split_percentage, minimum=1, maximum=99)
    check_int("preprocessing_num_workers", data_args.preprocessing_num_workers, optional=True)
    if task == "mlm":
        check_number("mlm_probability", data_args.mlm_probability, low=0.0, high=1.0, low_open=True, high_open=True)
    if data_args.lm_corpus not in LM_CORPORA:
        raise ValueError(f"--lm_corpus must be one of {', '.join(LM_CORPORA)}, got {data_args.lm_corpus!r}")
    if data_args.dataset_name is not None and data_args.train_file is not None:
        raise ValueError("give either --dataset_name or --train_file (with --validation_file), not both")
    if data_args.validation_file is not None and data_args.train_file is None:
        raise ValueError("--validation_file needs --train_file (the offline default corpus brings its own validation split)")
    if data_args.train_file is not None:
        train_builder = data_file_builder("train_file", data_args.train_file)
        if data_args.validation_file is not None:
            validation_builder = data_file_builder("validation_file", data_args.validation_file)
            if validation_builder != train_builder:
                raise ValueError(f"--validation_file {data_args.validation_file} must have the format of --train_file "
                                 f"{data_args.train_file} ({train_builder}), not {validation_builder}")  # fmt: skip
    if data_args.data_dir is not None and os.path.exists(data_args.data_dir) and not os.path.isdir(data_args.data_dir):
        raise ValueError(f"--data_dir {data_args.data_dir} is a file, not a folder")


def check_model_arguments(model_args: ModelArguments) -> None:
    if model_args.baseline not in BASELINES:
        raise ValueError(f"--baseline must be one of {', '.join(BASELINES)}, got {model_args.baseline!r}")
    check_int("tokenizer_vocab_size", model_args.tokenizer_vocab_size, minimum=MIN_BPE_VOCAB,
              extra=" (the 256 byte symbols and 5 special tokens come first)")  # fmt: skip
    check_number("max_train_seconds", model_args.max_train_seconds, low=0.0, low_open=True, optional=True)
    for name in ("model_name_or_path", "config_name", "tokenizer_name"):
        check_local_or_hub(name, getattr(model_args, name))


def check_training_arguments(training_args: Any) -> None:
    """The TrainingArguments values transformers accepts but reads as something else (or crashes on later)."""
    if not _is_int(training_args.max_steps) or (training_args.max_steps < 1 and training_args.max_steps != -1):
        raise ValueError(f"--max_steps must be a positive integer, or -1 (the default: train for "
                         f"--num_train_epochs), got {training_args.max_steps!r}")  # fmt: skip
    if training_args.do_train and training_args.max_steps == -1:
        check_number("num_train_epochs", training_args.num_train_epochs, low=0.0, low_open=True)
    check_number("learning_rate", training_args.learning_rate, low=0.0)
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        check_int(name, getattr(training_args, name))


def check_arguments(model_args: ModelArguments, data_args: DataTrainingArguments, training_args: Any, task: str) -> None:
    """All of the above; called by `contextpool_hf.training.start_run` before anything is loaded."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    check_model_arguments(model_args)
    check_data_arguments(data_args, task)
    check_training_arguments(training_args)
