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

from transformers import DataCollatorForLanguageModeling, Trainer

from contextpool_hf.training import (
    SCRIPT_TRAINING_DEFAULTS,
    accuracy_metrics,
    argmax_logits,
    build_model_for_run,
    build_tokenizer,
    check_block_size,
    lm_metrics,
    run_training,
    script_main,
    start_run,
    time_budget_callbacks,
    tokenize_and_group,
)

logger = logging.getLogger("run_mlm")

TRAINING_DEFAULTS = {
    **SCRIPT_TRAINING_DEFAULTS,
    "output_dir": "runs/mlm",
    "learning_rate": 1e-3,
    "warmup_steps": 20,
    "lr_scheduler_type": "cosine",
}


def main(argv: list[str] | None = None) -> dict[str, float]:
    model_args, data_args, training_args, raw, column = start_run(argv, TRAINING_DEFAULTS, "mlm")
    tokenizer = build_tokenizer(model_args, raw["train"], column, training_args)
    if tokenizer.mask_token is None:
        raise ValueError("the tokenizer has no mask token: masked LM needs one (pass --tokenizer_name)")
    block_size = data_args.block_size if data_args.block_size is not None else min(128, tokenizer.model_max_length)
    model, n_params = build_model_for_run("mlm", model_args, tokenizer, training_args, logger,
                                          max_positions=max(512, block_size))  # fmt: skip
    check_block_size(block_size, model)

    lm_data, chars_per_token = tokenize_and_group(raw, tokenizer, block_size, column, data_args, training_args)
    lm_data = lm_data.remove_columns("labels")  # the collator makes the masked labels
    callbacks = time_budget_callbacks(model_args)
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
    script_main(main)  # a bad argument, damaged checkpoint or NaN loss: one line on stderr, exit 1
