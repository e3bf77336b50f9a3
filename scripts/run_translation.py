"""Train / evaluate a translation model: ContextPool encoder-decoder or transformers' Marian/BART.

In the style of transformers' `examples/pytorch/translation/run_translation.py`
(HfArgumentParser + Seq2SeqTrainingArguments + Seq2SeqTrainer). Data:
- a Hub dataset (online users): `--dataset_name wmt14 --dataset_config_name de-en`;
- local jsonl files with a `translation` field: `--train_file`, `--validation_file`, `--test_file`;
- nothing given: the offline EN-DE Bible pairs of `contextpool_hf.data.prepare_translation()`.

Without `--tokenizer_name` (or a checkpoint that has one), a shared byte-level BPE tokenizer is
trained on the training pairs (source + target) and saved with the model.

    python scripts/run_translation.py --model_type contextpool --source_lang en --target_lang de \\
        --output_dir out/cp-en-de --do_train --do_eval --do_predict --predict_with_generate \\
        --num_train_epochs 1 --per_device_train_batch_size 32 --learning_rate 1e-3 --use_cpu \\
        --config_overrides "d_model=128,encoder_layers=2,decoder_layers=2" --max_source_length 64

`--model_type marian|bart` trains transformers' own model of the same size (the baseline);
`--model_name_or_path` fine-tunes a ContextPool checkpoint, or converts a Marian/BART one on the
fly (gates closed: it starts as exactly the source model). BLEU and chrF come from sacrebleu.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from transformers import (
    AutoConfig,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    BartConfig,
    BartForConditionalGeneration,
    DataCollatorForSeq2Seq,
    HfArgumentParser,
    MarianConfig,
    MarianMTModel,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    set_seed,
)

from contextpool_hf.training_callbacks import NonFiniteLossCallback

logger = logging.getLogger(__name__)

MODEL_TYPES = ("contextpool", "marian", "bart")
# One architecture for every from-scratch model (2-core CPU friendly); --config_overrides changes it.
# Marian's shape (sinusoidal positions, scaled embeddings, post-norm): with no pooling layers the
# ContextPool model is exactly this Marian model, so the comparison isolates the pooling.
COMMON_DEFAULTS = dict(
    d_model=256, encoder_layers=3, decoder_layers=3, encoder_attention_heads=4, decoder_attention_heads=4,
    encoder_ffn_dim=1024, decoder_ffn_dim=1024, dropout=0.1, activation_function="gelu",
)


@dataclass
class ModelArguments:
    model_type: str = field(default="contextpool", metadata={"help": f"one of {MODEL_TYPES}", "choices": MODEL_TYPES})
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "a ContextPool seq2seq checkpoint, or a Marian/BART one (converted on the fly "
                          "unless --model_type marian/bart)"},
    )
    config_overrides: str | None = field(
        default=None, metadata={"help": 'comma-separated k=v for a new model, e.g. "d_model=128,encoder_layers=2"'}
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "tokenizer folder or Hub id"})
    vocab_size: int = field(default=8000, metadata={"help": "size of the BPE tokenizer trained when none is given"})
    trust_remote_code: bool = field(default=False)


@dataclass
class DataTrainingArguments:
    source_lang: str = field(default="en", metadata={"help": "source language key in `translation`"})
    target_lang: str = field(default="de", metadata={"help": "target language key in `translation`"})
    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset, e.g. wmt14"})
    dataset_config_name: str | None = field(default=None, metadata={"help": "e.g. de-en"})
    train_file: str | None = field(default=None, metadata={"help": "jsonl with a `translation` field"})
    validation_file: str | None = field(default=None)
    test_file: str | None = field(default=None)
    max_source_length: int = field(default=128, metadata={"help": "tokens per source (with </s>)"})
    max_target_length: int = field(default=128, metadata={"help": "tokens per target (with </s>)"})
    truncation: bool = field(
        default=True, metadata={"help": "truncate longer inputs (logged); --truncation False makes them an error"}
    )
    max_train_samples: int | None = field(default=None)
    max_eval_samples: int | None = field(default=None)
    max_predict_samples: int | None = field(default=None)
    num_beams: int = field(default=4, metadata={"help": "beam size for evaluation/prediction"})
    source_prefix: str = field(default="", metadata={"help": "text prepended to every source (T5-style tasks)"})


# --------------------------------------------------------------------------------------
# Pieces shared with scripts/study_translation.py
# --------------------------------------------------------------------------------------


def parse_overrides(text: str | None, config=None) -> dict:
    """``--config_overrides`` -> typed dict: `PretrainedConfig.update_from_string` rules checked against
    `config` (unknown keys, wrong types, unbalanced brackets are errors naming the item); without a
    config, JSON values (see `contextpool_hf.config_overrides`)."""
    from contextpool_hf.config_overrides import parse_config_overrides, parse_untyped_overrides

    return parse_config_overrides(text, config) if config is not None else parse_untyped_overrides(text)


def check_arguments(model_args: ModelArguments, data_args: DataTrainingArguments, training_args) -> None:
    """Values argparse lets through that would be misread or crash deep inside: errors naming the argument."""
    from contextpool_hf.training_args import (
        MIN_BPE_VOCAB,
        check_int,
        check_training_arguments,
        data_file_builder,
    )

    if model_args.model_type not in MODEL_TYPES:
        raise ValueError(f"--model_type must be one of {', '.join(MODEL_TYPES)}, got {model_args.model_type!r}")
    check_int("vocab_size", model_args.vocab_size, minimum=MIN_BPE_VOCAB)
    # one token of text plus </s>
    check_int("max_source_length", data_args.max_source_length, minimum=2)
    check_int("max_target_length", data_args.max_target_length, minimum=2)
    check_int("num_beams", data_args.num_beams)
    for name in ("max_train_samples", "max_eval_samples", "max_predict_samples"):
        check_int(name, getattr(data_args, name), optional=True)
    for name in ("train_file", "validation_file", "test_file"):
        path = getattr(data_args, name)
        if path is not None and data_file_builder(name, path) != "json":
            raise ValueError(f"--{name} {path}: translation files are .json/.jsonl with a `translation` field")
    check_training_arguments(training_args)


def _config_class(model_type: str):
    from contextpool_hf import ContextPoolSeq2SeqConfig

    return {"contextpool": ContextPoolSeq2SeqConfig, "marian": MarianConfig, "bart": BartConfig}[model_type]


def load_translation_data(data_args: DataTrainingArguments):
    """-> datasets.DatasetDict with train/validation/test where available."""
    from datasets import load_dataset

    if data_args.dataset_name is not None:
        return load_dataset(data_args.dataset_name, data_args.dataset_config_name)
    files = {"train": data_args.train_file, "validation": data_args.validation_file, "test": data_args.test_file}
    files = {k: v for k, v in files.items() if v}
    if not files:
        from contextpool_hf.data import prepare_translation

        folder = prepare_translation()
        files = {split: str(folder / f"{split}.jsonl") for split in ("train", "validation", "test")}
        logger.info("no data given: using the offline EN-DE pairs in %s", folder)
    return load_dataset("json", data_files=files)


def train_shared_tokenizer(pairs, source_lang: str, target_lang: str, vocab_size: int, model_max_length: int = 1024):
    """Byte-level BPE on sources + targets; every sequence is `text </s>` (no BOS; <s> starts decoding)."""
    from contextpool_hf.tokenization import train_bpe_tokenizer

    def texts():
        for example in pairs:
            yield example[source_lang]
            yield example[target_lang]

    return train_bpe_tokenizer(
        texts(), vocab_size=vocab_size, add_bos_token=False, add_eos_token=True, model_max_length=model_max_length
    )


def build_model(model_type: str, tokenizer, overrides: dict | None = None, max_positions: int = 256):
    """A new ContextPool / Marian / BART model with COMMON_DEFAULTS (+ overrides) for `tokenizer`."""
    import contextpool_hf  # noqa: F401
    from contextpool_hf import ContextPoolForConditionalGeneration, ContextPoolSeq2SeqConfig

    overrides = dict(overrides or {})
    # decoding starts at <s> when the tokenizer has one (ours), else at pad (Marian's convention)
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.pad_token_id
    ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
               bos_token_id=tokenizer.bos_token_id, decoder_start_token_id=start, forced_eos_token_id=None)
    vocab = len(tokenizer)
    settings = {**COMMON_DEFAULTS, "max_position_embeddings": max_positions, **overrides}
    if model_type == "contextpool":
        settings = {"position_embedding_type": "sinusoidal", "scale_embedding": True, "norm_position": "post",
                    "layernorm_embedding": False, **settings}
        return ContextPoolForConditionalGeneration(ContextPoolSeq2SeqConfig(vocab_size=vocab, **ids, **settings))
    if model_type == "marian":
        settings = {"scale_embedding": True, **settings}
        config = MarianConfig(vocab_size=vocab, decoder_vocab_size=vocab, share_encoder_decoder_embeddings=True,
                              **ids, **settings)
        return MarianMTModel(config)
    if model_type == "bart":
        return BartForConditionalGeneration(BartConfig(vocab_size=vocab, **ids, **settings))
    raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")


def encode_pairs(tokenizer, sources, targets, max_source_length, max_target_length, truncation=True):
    """Tokenize; over-long sequences are cut to the limit keeping their final </s> (counted),
    or raise a ValueError when truncation is off. -> (features dict, number truncated)."""
    features = {"input_ids": [], "attention_mask": [], "labels": []}
    truncated = 0
    src_ids = tokenizer(list(sources))["input_ids"]
    tgt_ids = tokenizer(text_target=list(targets))["input_ids"]
    for i, (s, t) in enumerate(zip(src_ids, tgt_ids, strict=True)):
        for name, ids, limit in (("source", s, max_source_length), ("target", t, max_target_length)):
            if len(ids) > limit:
                if not truncation:
                    raise ValueError(
                        f"example {i}: {name} has {len(ids)} tokens, more than max_{name}_length={limit}; "
                        "raise the limit or allow truncation (--truncation True)"
                    )
                truncated += 1
                ids[:] = ids[: limit - 1] + [ids[-1]]
        features["input_ids"].append(s)
        features["attention_mask"].append([1] * len(s))
        features["labels"].append(t)
    return features, truncated


def bleu_chrf(predictions: list[str], references: list[str]) -> dict:
    """sacrebleu's corpus BLEU and chrF through the `evaluate` modules shipped in the package (offline)."""
    from contextpool_hf.metrics import bleu_chrf as shipped_bleu_chrf

    return shipped_bleu_chrf(predictions, references)


# --------------------------------------------------------------------------------------


def _load_model(model_args: ModelArguments, tokenizer, max_positions: int):
    if model_args.model_name_or_path is None:
        # checked against the config the overrides change: known keys, field types
        reference = _config_class(model_args.model_type)(**COMMON_DEFAULTS)
        overrides = parse_overrides(model_args.config_overrides, reference)
        return build_model(model_args.model_type, tokenizer, overrides, max_positions)
    import contextpool_hf  # noqa: F401

    config = AutoConfig.from_pretrained(model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code)
    if config.model_type in ("marian", "bart") and model_args.model_type == "contextpool":
        from contextpool_hf.convert_seq2seq import convert_seq2seq_model

        overrides = parse_overrides(model_args.config_overrides, _config_class("contextpool")())
        other = sorted(k for k in overrides if not k.startswith("pool_"))
        if other:
            raise ValueError(f"--config_overrides {', '.join(other)}: a converted {config.model_type} checkpoint keeps "
                             "its architecture; only pool_* fields can be set")  # fmt: skip
        logger.info("converting the %s checkpoint to ContextPool (gates closed)", config.model_type)
        return convert_seq2seq_model(model_args.model_name_or_path, **overrides)
    overrides = parse_overrides(model_args.config_overrides, config)
    return AutoModelForSeq2SeqLM.from_pretrained(
        model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code, **overrides
    )


def main(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, Seq2SeqTrainingArguments))
    args = sys.argv[1:] if argv is None else list(argv)
    if len(args) == 1 and args[0].endswith(".json"):
        model_args, data_args, training_args = parser.parse_json_file(os.path.abspath(args[0]))
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=args)
    check_arguments(model_args, data_args, training_args)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    set_seed(training_args.seed)
    src, tgt = data_args.source_lang, data_args.target_lang

    raw = load_translation_data(data_args)
    tokenizer_source = model_args.tokenizer_name or model_args.model_name_or_path
    tokenizer = None
    if tokenizer_source is not None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, trust_remote_code=model_args.trust_remote_code)
        except (OSError, ValueError):
            if model_args.tokenizer_name:
                raise
    if tokenizer is None:
        if "train" not in raw:
            raise ValueError("no tokenizer given and no training data to train one on")
        logger.info("training a shared BPE tokenizer (vocab %d) on the training pairs", model_args.vocab_size)
        tokenizer = train_shared_tokenizer(raw["train"]["translation"], src, tgt, model_args.vocab_size)

    max_positions = max(data_args.max_source_length, data_args.max_target_length)
    model = _load_model(model_args, tokenizer, max_positions)
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, the model {model.config.vocab_size}")

    def preprocess(batch):
        sources = [data_args.source_prefix + ex[src] for ex in batch["translation"]]
        targets = [ex[tgt] for ex in batch["translation"]]
        features, truncated = encode_pairs(tokenizer, sources, targets, data_args.max_source_length,
                                           data_args.max_target_length, data_args.truncation)
        features["n_truncated"] = [truncated] + [0] * (len(sources) - 1)
        return features

    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples,
              "test": data_args.max_predict_samples}
    datasets = {}
    for split in ("train", "validation", "test"):
        if split not in raw:
            continue
        data = raw[split]
        if limits[split] is not None:
            data = data.select(range(min(limits[split], len(data))))
        data = data.map(preprocess, batched=True, remove_columns=data.column_names, desc=f"tokenizing {split}")
        n_truncated = int(sum(data["n_truncated"]))
        if n_truncated:
            logger.warning(
                "%s: %d sequences longer than max_source_length=%d / max_target_length=%d were truncated",
                split, n_truncated, data_args.max_source_length, data_args.max_target_length,
            )
        datasets[split] = data.remove_columns("n_truncated")

    if training_args.generation_max_length is None:
        training_args.generation_max_length = data_args.max_target_length
    if training_args.generation_num_beams is None:
        training_args.generation_num_beams = data_args.num_beams
    collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100, pad_to_multiple_of=None)

    def compute_metrics(eval_preds):
        preds, labels = eval_preds
        preds = preds[0] if isinstance(preds, tuple) else preds
        preds = np.where(preds != -100, preds, tokenizer.pad_token_id)
        labels = np.where(labels != -100, labels, tokenizer.pad_token_id)
        hyps = [s.strip() for s in tokenizer.batch_decode(preds, skip_special_tokens=True)]
        refs = [s.strip() for s in tokenizer.batch_decode(labels, skip_special_tokens=True)]
        result = bleu_chrf(hyps, refs)
        result["gen_len"] = float(np.mean([np.count_nonzero(p != tokenizer.pad_token_id) for p in preds]))
        return result

    trainer = Seq2SeqTrainer(
        model=model,
        args=training_args,
        train_dataset=datasets.get("train") if training_args.do_train else None,
        eval_dataset=datasets.get("validation") if training_args.do_eval else None,
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=compute_metrics if training_args.predict_with_generate else None,
        callbacks=[NonFiniteLossCallback()],  # a NaN/inf loss stops the run with an error naming the step
    )
    results: dict = {"num_parameters": model.num_parameters()}  # tied weights counted once
    if training_args.do_train:
        train_result = trainer.train()
        trainer.save_model()
        results.update(train_result.metrics)
    if training_args.do_eval and "validation" in datasets:
        results.update(trainer.evaluate(metric_key_prefix="eval"))
    if training_args.do_predict and "test" in datasets:
        prediction = trainer.predict(datasets["test"], metric_key_prefix="test")
        results.update(prediction.metrics)
        if trainer.is_world_process_zero() and training_args.predict_with_generate:
            preds = np.where(prediction.predictions != -100, prediction.predictions, tokenizer.pad_token_id)
            lines = [s.strip() for s in tokenizer.batch_decode(preds, skip_special_tokens=True)]
            Path(training_args.output_dir).mkdir(parents=True, exist_ok=True)
            (Path(training_args.output_dir) / "generated_predictions.txt").write_text("\n".join(lines) + "\n")
    if trainer.is_world_process_zero():
        Path(training_args.output_dir).mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(training_args.output_dir)
        (Path(training_args.output_dir) / "all_results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    from contextpool_hf.training import script_main

    script_main(main)  # a bad argument or NaN loss: one line on stderr, exit 1
