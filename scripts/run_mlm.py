"""Masked-language-model pre-training or fine-tuning: ContextPool, or BERT / pooling-off of the same size.

In the style of transformers' `examples/pytorch/language-modeling/run_mlm.py`. With no data argument it
trains the small default ContextPool encoder on the offline KJV corpus with a BPE tokenizer trained on it:

    python scripts/run_mlm.py --output_dir runs/mlm --max_steps 200 --use_cpu
    python scripts/run_mlm.py --baseline bert ...                       # transformers' BERT, same size
    python scripts/run_mlm.py --model_name_or_path <bert folder> ...    # converted to ContextPool

Evaluation logs eval_loss, eval_perplexity, eval_bpc (over the masked tokens' characters, an estimate)
and eval_accuracy (masked-token accuracy).
"""

from __future__ import annotations

import logging
import sys

from transformers import DataCollatorForLanguageModeling, Trainer, set_seed

from contextpool_hf.training import (
    TimeBudgetCallback,
    accuracy_metrics,
    argmax_logits,
    build_model,
    build_tokenizer,
    count_parameters,
    lm_metrics,
    load_raw_datasets,
    parse_args,
    run_training,
    setup_logging,
    text_column,
    tokenize_and_group,
)

logger = logging.getLogger("run_mlm")

TRAINING_DEFAULTS = {
    "output_dir": "runs/mlm",
    "do_train": True,
    "do_eval": True,
    "learning_rate": 1e-3,
    "warmup_steps": 20,
    "lr_scheduler_type": "cosine",
    "weight_decay": 0.01,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 16,
    "logging_steps": 10,
    "save_strategy": "no",
    "report_to": "none",
}


def main(argv: list[str] | None = None) -> dict[str, float]:
    model_args, data_args, training_args = parse_args(argv, TRAINING_DEFAULTS)
    setup_logging(training_args)
    set_seed(training_args.seed)

    raw = load_raw_datasets(data_args, "mlm", training_args.seed, training_args)
    column = text_column(raw["train"], data_args.text_column_name)
    tokenizer = build_tokenizer(model_args, raw["train"], column, training_args)
    if tokenizer.mask_token is None:
        raise ValueError("the tokenizer has no mask token: masked LM needs one (pass --tokenizer_name)")
    block_size = data_args.block_size or min(128, tokenizer.model_max_length)
    set_seed(training_args.seed)
    model = build_model("mlm", model_args, tokenizer, max_positions=max(512, block_size), training_args=training_args)
    n_params = count_parameters(model)
    logger.info("model %s: %s parameters", type(model).__name__, f"{n_params:,}")

    lm_data, chars_per_token = tokenize_and_group(raw, tokenizer, block_size, column, data_args, training_args)
    lm_data = lm_data.remove_columns("labels")  # the collator makes the masked labels
    callbacks = [TimeBudgetCallback(model_args.max_train_seconds)] if model_args.max_train_seconds else []
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=lm_data["train"] if training_args.do_train else None,
        eval_dataset=lm_data["validation"] if training_args.do_eval else None,
        processing_class=tokenizer,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=data_args.mlm_probability,
                                                      seed=training_args.seed),  # fmt: skip
        compute_metrics=accuracy_metrics,
        preprocess_logits_for_metrics=argmax_logits,
        callbacks=callbacks,
    )

    def after_eval(metrics):
        return lm_metrics(metrics, chars_per_token["validation"])

    extra = {"n_parameters": n_params, "block_size": block_size}
    return run_training(trainer, model_args, training_args, after_eval, extra)


if __name__ == "__main__":
    main(sys.argv[1:])
