"""Sequence classification: ContextPool (new, or converted from BERT on the fly) or the vanilla model.

In the style of transformers' `examples/pytorch/text-classification/run_classification.py`. With no data
argument it uses the offline passage-classification set (9 labels: KJV book groups and Shakespeare
genres) from `contextpool-hf prepare-data`:

    python scripts/run_classification.py --output_dir runs/cls --num_train_epochs 1 --use_cpu
    # the pretrained MiniLM (offline package), converted to ContextPool, vs the original:
    python scripts/run_classification.py --model_name_or_path <minilm folder> ...
    python scripts/run_classification.py --model_name_or_path <minilm folder> --baseline bert ...

Reports eval_loss and eval_accuracy (numpy; evaluate's metric scripts need the Hub).
"""

from __future__ import annotations

import logging

from transformers import DataCollatorWithPadding, Trainer

from contextpool_hf.training import (
    SCRIPT_TRAINING_DEFAULTS,
    accuracy_metrics,
    build_model_for_run,
    build_tokenizer,
    run_training,
    script_main,
    start_run,
    time_budget_callbacks,
)

logger = logging.getLogger("run_classification")

TRAINING_DEFAULTS = {
    **SCRIPT_TRAINING_DEFAULTS,
    "output_dir": "runs/classification",
    "learning_rate": 5e-4,
    "warmup_steps": 10,
    "per_device_eval_batch_size": 32,
}


def main(argv: list[str] | None = None) -> dict[str, float]:
    model_args, data_args, training_args, raw, column = start_run(argv, TRAINING_DEFAULTS, "classification")
    label_column = data_args.label_column_name
    if label_column not in raw["train"].column_names:
        raise ValueError(f"--label_column_name {label_column!r} not in {raw['train'].column_names}")
    names = raw["train"].features[label_column].names if hasattr(raw["train"].features[label_column], "names") \
        else sorted(set(raw["train"][label_column]) | set(raw["validation"][label_column]))  # fmt: skip
    label2id = {str(name): index for index, name in enumerate(names)}
    id2label = {index: str(name) for index, name in enumerate(names)}
    if data_args.max_train_samples is not None:
        raw["train"] = raw["train"].shuffle(seed=training_args.seed).select(
            range(min(data_args.max_train_samples, len(raw["train"]))))  # fmt: skip
    if data_args.max_eval_samples is not None:
        raw["validation"] = raw["validation"].select(range(min(data_args.max_eval_samples, len(raw["validation"]))))

    tokenizer = build_tokenizer(model_args, raw["train"], column, training_args)
    model, n_params = build_model_for_run("classification", model_args, tokenizer, training_args, logger,
                                          max_positions=max(512, data_args.max_seq_length), num_labels=len(names),
                                          label_maps=(label2id, id2label))  # fmt: skip

    def encode(batch):
        encoded = tokenizer(batch[column], truncation=True, max_length=data_args.max_seq_length)
        encoded["labels"] = [label if isinstance(label, int) else label2id[str(label)] for label in batch[label_column]]
        return encoded

    with training_args.main_process_first(desc="tokenising"):
        data = raw.map(encode, batched=True, remove_columns=raw["train"].column_names, desc="tokenising")
    callbacks = time_budget_callbacks(model_args)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=data["train"] if training_args.do_train else None,
        eval_dataset=data["validation"] if training_args.do_eval else None,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=accuracy_metrics,
        callbacks=callbacks,
    )
    extra = {"n_parameters": n_params}
    return run_training(trainer, model_args, training_args, None, extra)


if __name__ == "__main__":
    script_main(main)  # a bad argument, damaged checkpoint or NaN loss: one line on stderr, exit 1
