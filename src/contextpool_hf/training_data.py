"""The data side of the text Trainer scripts: raw datasets, the tokenizer, tokenising and grouping.

Sources, in order: ``--dataset_name`` (Hub), ``--train_file``/``--validation_file``, else the offline
default (KJV for language modelling, the passage-classification set for classification), prepared
with `contextpool_hf.data` on first use. Multi-process runs load and tokenise under
`TrainingArguments.main_process_first()`, so ranks never race on the datasets cache.

Failures name their cause: a file whose lines are all blank, a tokenizer folder with no tokenizer
files (or a tokenizer that encodes text to nothing), a split shorter than one block.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from .checkpoints import resolve_resume_checkpoint, validate_checkpoint
from .training_args import SHARED_TOKENIZER_DIR, DataTrainingArguments, ModelArguments, data_file_builder

# Files one of which every saved tokenizer has (fast: tokenizer.json; slow BPE: vocab.json + merges.txt;
# WordPiece: vocab.txt; SentencePiece: *.model; Mistral: tekken.json).
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "merges.txt", "tekken.json")


def main_process_first(training_args: Any, desc: str):
    """`training_args.main_process_first(desc)`, or a no-op without TrainingArguments."""
    if training_args is None:
        return contextlib.nullcontext()
    return training_args.main_process_first(desc=desc)


def load_raw_datasets(data_args: DataTrainingArguments, task: str, seed: int = 42, training_args: Any = None):
    """Return a DatasetDict with "train" and "validation" (see the module docstring for the sources)."""
    from datasets import DatasetDict, load_dataset

    from .data import default_data_dir, prepare_classification, prepare_lm, split_files

    with main_process_first(training_args, "loading the dataset"):
        if data_args.dataset_name is not None:
            raw = load_dataset(data_args.dataset_name, data_args.dataset_config_name)
        elif data_args.train_file is not None:
            files = {"train": data_args.train_file}
            if data_args.validation_file is not None:
                files["validation"] = data_args.validation_file
            builder = data_file_builder("train_file", data_args.train_file)
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
    if "train" not in raw:
        raise ValueError(f"the dataset has no 'train' split (splits: {', '.join(raw)})")
    if "validation" not in raw:
        if len(raw["train"]) < 2:
            raise ValueError(f"the train split has {len(raw['train'])} row(s): too few to hold out a validation "
                             "share; pass --validation_file")  # fmt: skip
        split = raw["train"].train_test_split(test_size=data_args.validation_split_percentage / 100, seed=seed)
        raw = DatasetDict({"train": split["train"], "validation": split["test"]})
    return raw


def _source_name(data_args: DataTrainingArguments | None, split: str) -> str:
    if data_args is not None and split == "train" and data_args.train_file:
        return f"--train_file {data_args.train_file}"
    if data_args is not None and split == "validation" and data_args.validation_file:
        return f"--validation_file {data_args.validation_file}"
    return f"the {split} split"


def text_column(dataset: Any, name: str | None) -> str:
    columns = dataset.column_names
    if not columns:
        raise ValueError("the dataset has no columns (an empty file?)")
    if name is not None:
        if name not in columns:
            raise ValueError(f"--text_column_name {name!r} not in the dataset's columns {columns}")
        return name
    return "text" if "text" in columns else columns[0]


def check_has_text(raw: Any, column: str, data_args: DataTrainingArguments | None = None) -> None:
    """Raise ValueError naming the file/split whose `column` holds no non-blank text at all."""
    for split in ("train", "validation"):
        dataset = raw[split]
        found = False
        for start in range(0, len(dataset), 1000):
            if any(isinstance(t, str) and t.strip() for t in dataset[start : start + 1000][column]):
                found = True
                break
        if not found:
            raise ValueError(f"{_source_name(data_args, split)} has no text: its {len(dataset)} row(s) of column "
                             f"{column!r} are all blank or empty")  # fmt: skip


def train_tokenizer_on(dataset: Any, column: str, vocab_size: int, model_max_length: int = 1024) -> Any:
    """A byte-level BPE tokenizer trained on `dataset[column]` (pad=0, <s>, </s>, <unk>, <mask>)."""
    from .tokenization import train_bpe_tokenizer

    def texts():
        for start in range(0, len(dataset), 1000):
            yield from (t for t in dataset[start : start + 1000][column] if t)

    return train_bpe_tokenizer(texts(), vocab_size=vocab_size, model_max_length=model_max_length)


def _check_tokenizer_folder(name: str, flag: str) -> None:
    folder = Path(name)
    if not folder.is_dir():
        return
    if any((folder / f).is_file() for f in TOKENIZER_FILES) or any(folder.glob("*.model")):
        return
    raise ValueError(
        f"{flag} {name} has no tokenizer files (none of {', '.join(TOKENIZER_FILES)}, *.model): the model folder "
        "was saved without its tokenizer. Pass --tokenizer_name <folder or Hub id of the tokenizer it was "
        "trained with>, or save the tokenizer into the folder (tokenizer.save_pretrained(folder))."
    )


def _check_tokenizer_encodes(tokenizer: Any, name: str, sample: str | None) -> None:
    """A tokenizer that loads but has no vocabulary, or encodes text to nothing, is a clear error."""
    size = len(tokenizer)
    ids = tokenizer(sample or "The quick brown fox.", add_special_tokens=False)["input_ids"] if size else []
    if not size or not ids:
        raise ValueError(f"the tokenizer loaded from {name} is empty ({size} tokens; it encodes "
                         f"{(sample or 'The quick brown fox.')[:40]!r} to {len(ids)} ids): pass --tokenizer_name")  # fmt: skip


def _first_text(dataset: Any, column: str | None) -> str | None:
    if dataset is None or column is None:
        return None
    for start in range(0, min(len(dataset), 10_000), 1000):
        for text in dataset[start : start + 1000][column]:
            if isinstance(text, str) and text.strip():
                return text.strip()[:200]
    return None


def build_tokenizer(model_args: ModelArguments, train_dataset: Any = None, column: str | None = None,
                    training_args: Any = None) -> Any:  # fmt: skip
    """The tokenizer: ``--tokenizer_name``, else the checkpoint's, else BPE trained on the training split.

    The trained tokenizer is built on the main process first and the other ranks load it from
    `output_dir/.tokenizer-trained`, so every rank has the same vocabulary. A resumed run reloads the
    tokenizer saved in its checkpoint.
    """
    from transformers import AutoTokenizer

    name = model_args.tokenizer_name or model_args.model_name_or_path
    flag = "--tokenizer_name" if model_args.tokenizer_name else "--model_name_or_path"
    if model_args.model_name_or_path is not None and os.path.isdir(model_args.model_name_or_path):
        validate_checkpoint(model_args.model_name_or_path)  # a clear error before anything else reads it
    if name is not None:
        _check_tokenizer_folder(name, flag)
        with main_process_first(training_args, "loading the tokenizer"):
            try:
                tokenizer = AutoTokenizer.from_pretrained(
                    name, trust_remote_code=model_args.trust_remote_code, revision=model_args.model_revision
                )
            except (OSError, ValueError) as error:
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise ValueError(f"{flag} {name}: no tokenizer could be loaded from it ({first}). Pass "
                                 "--tokenizer_name with the tokenizer the model was trained with.") from error  # fmt: skip
        _check_tokenizer_encodes(tokenizer, name, _first_text(train_dataset, column))
    else:
        if train_dataset is None:
            raise ValueError("no --tokenizer_name and no training data to train a tokenizer on")
        resume = getattr(training_args, "resume_from_checkpoint", None) if training_args is not None else None
        if resume:
            # the run being resumed trained its tokenizer; Trainer saved it in every checkpoint
            folder = resolve_resume_checkpoint(resume, training_args.output_dir, warn=False,
                                               save_only_model=getattr(training_args, "save_only_model", False))  # fmt: skip
            if folder and (Path(folder) / "tokenizer.json").is_file():
                return AutoTokenizer.from_pretrained(folder)
        shared = Path(training_args.output_dir) / SHARED_TOKENIZER_DIR if training_args is not None else None
        with main_process_first(training_args, "training the tokenizer"):
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
        texts = [t for t in batch[column] if isinstance(t, str) and t.strip()]
        if not texts:  # a batch of blank lines (the tokenizer fails on an empty list)
            return {"input_ids": [], "n_chars": []}
        ids = tokenizer(texts, add_special_tokens=True)["input_ids"]
        if tokenizer.bos_token_id is None and tokenizer.eos_token_id is not None:
            ids = [seq + [tokenizer.eos_token_id] for seq in ids]
        return {"input_ids": ids, "n_chars": [len(t) + 1 for t in texts]}

    def group(batch):
        if getattr(data_args, "packing", False):  # documents stay apart, cut to block_size (issue 12 item 4)
            pieces = [seq[i : i + block_size] for seq in batch["input_ids"] for i in range(0, len(seq), block_size)]
            pieces = [p for p in pieces if len(p) > 1]  # a 1-token piece has no next-token target
            return {"input_ids": pieces, "labels": [list(p) for p in pieces]}
        stream = [token for seq in batch["input_ids"] for token in seq]
        total = (len(stream) // block_size) * block_size
        blocks = [stream[i : i + block_size] for i in range(0, total, block_size)]
        return {"input_ids": blocks, "labels": [list(b) for b in blocks]}

    with main_process_first(training_args, "tokenising and grouping"):
        tokenized = raw.map(tokenize, batched=True, remove_columns=raw["train"].column_names,
                            num_proc=data_args.preprocessing_num_workers, desc="tokenising")  # fmt: skip
        chars_per_token, n_tokens = {}, {}
        for split in tokenized:
            n_tokens[split] = sum(len(seq) for seq in tokenized[split]["input_ids"])
            n_chars = sum(tokenized[split]["n_chars"])
            chars_per_token[split] = n_chars / max(n_tokens[split], 1)
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
        if n_tokens.get(split, 0) == 0:
            raise ValueError(f"{_source_name(data_args, split)}: the tokenizer produced no tokens from its text "
                             f"(tokenizer of {len(tokenizer)} tokens): check --tokenizer_name")  # fmt: skip
        if len(grouped[split]) == 0:
            raise ValueError(f"{_source_name(data_args, split)} has {n_tokens[split]} tokens, fewer than "
                             f"--block_size {block_size}: lower --block_size or give more text")  # fmt: skip
    return grouped, chars_per_token


def check_block_size(block_size: int, model: Any) -> None:
    """A block longer than a model's learned (absolute) positions fails deep in the forward pass: say so
    up front. Rotary models (ContextPool's default, Llama) take longer blocks."""
    config = model.config
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    kind = getattr(config, "position_embedding_type", None)
    rotary = kind in ("rotary", "none") or (kind is None and getattr(config, "rope_parameters", None) is not None)
    if isinstance(limit, int) and block_size > limit and not rotary:
        raise ValueError(f"--block_size {block_size} is longer than the model's {limit} learned positions "
                         f"(max_position_embeddings): use --block_size <= {limit}")  # fmt: skip
