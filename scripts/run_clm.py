"""Train or fine-tune a causal language model: ContextPool, or the vanilla baseline of the same size.

In the style of transformers' `examples/pytorch/language-modeling/run_clm.py` (HfArgumentParser +
TrainingArguments + Trainer). With no arguments besides `--output_dir` it trains the small default
ContextPool model on the offline KJV corpus (prepared on first use) with a BPE tokenizer trained on it:

    python scripts/run_clm.py --output_dir runs/clm --max_steps 200 --use_cpu
    python scripts/run_clm.py --train_file my.txt --validation_file my_val.txt --output_dir runs/mine
    python scripts/run_clm.py --config_overrides "num_hidden_layers=2,pool_target=kv" ...
    python scripts/run_clm.py --baseline llama ...            # transformers' Llama of the same size
    python scripts/run_clm.py --model_name_or_path gpt2 ...   # converted to ContextPool on the fly

Evaluation logs eval_loss, eval_perplexity and eval_bpc (bits per character); eval_results.json and
all_results.json are written next to the model. Multi-process CPU runs:
`accelerate launch --config_file accelerate_configs/cpu_ddp_2proc.yaml scripts/run_clm.py ... --use_cpu`
or `torchrun --nproc_per_node 2 scripts/run_clm.py ... --use_cpu`.
"""

from __future__ import annotations

import logging
import math

import torch
from transformers import DataCollatorWithFlattening, Trainer

from contextpool_hf.training import (
    SCRIPT_TRAINING_DEFAULTS,
    build_model_for_run,
    build_tokenizer,
    check_block_size,
    estimate_training_flops,
    lm_metrics,
    run_training,
    script_main,
    start_run,
    time_budget_callbacks,
    tokenize_and_group,
)

logger = logging.getLogger("run_clm")

TRAINING_DEFAULTS = {
    **SCRIPT_TRAINING_DEFAULTS,
    "output_dir": "runs/clm",
    "eval_strategy": "no",
    "learning_rate": 1e-3,
    "warmup_steps": 20,
    "lr_scheduler_type": "cosine",
}


def main(argv: list[str] | None = None) -> dict[str, float]:
    model_args, data_args, training_args, raw, column = start_run(argv, TRAINING_DEFAULTS, "clm")
    tokenizer = build_tokenizer(model_args, raw["train"], column, training_args)
    block_size = data_args.block_size if data_args.block_size is not None else min(256, tokenizer.model_max_length)
    # The model must take a block; a new model gets room for longer prompts at generation time.
    max_positions = max(512, block_size)
    model, n_params = build_model_for_run("clm", model_args, tokenizer, training_args, logger,
                                          max_positions=max_positions)  # fmt: skip
    check_block_size(block_size, model)

    lm_data, chars_per_token = tokenize_and_group(raw, tokenizer, block_size, column, data_args, training_args)
    callbacks = time_budget_callbacks(model_args)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=lm_data["train"] if training_args.do_train else None,
        eval_dataset=lm_data["validation"] if training_args.do_eval else None,
        processing_class=tokenizer,
        # Blocks have no padding: labels are input_ids (the model shifts them). --packing: one row of
        # whole documents per batch, position_ids restarting at 0 for each (no padding either).
        data_collator=DataCollatorWithFlattening() if data_args.packing else block_collator,
        callbacks=callbacks,
    )

    def after_eval(metrics):
        return lm_metrics(metrics, chars_per_token["validation"])

    extra = {"n_parameters": n_params, "block_size": block_size, "chars_per_token": chars_per_token["train"]}

    def train_extra(trainer):
        args = trainer.args
        tokens = trainer.state.global_step * args.per_device_train_batch_size * args.gradient_accumulation_steps
        tokens *= max(args.world_size, 1) * block_size
        return {"train_tokens": tokens, **estimate_training_flops(model, tokens, block_size)}

    results = run_training(trainer, model_args, training_args, after_eval, extra, train_extra)
    if training_args.should_save and "eval_loss" in results:
        logger.info("eval loss %.4f  perplexity %.2f  bpc %.4f", results["eval_loss"],
                    results.get("eval_perplexity", math.nan), results.get("eval_bpc", math.nan))  # fmt: skip
    return results


def block_collator(features):
    ids = torch.tensor([f["input_ids"] for f in features], dtype=torch.long)
    return {"input_ids": ids, "labels": ids.clone()}


if __name__ == "__main__":
    script_main(main)  # a bad argument, damaged checkpoint or NaN loss: one line on stderr, exit 1
