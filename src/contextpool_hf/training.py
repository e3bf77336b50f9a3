"""Trainer wiring of the text scripts (`scripts/run_clm.py`, `run_mlm.py`, `run_classification.py`).

Nothing here is shipped to the Hub. The parts live in their own modules, re-exported here so that
``from contextpool_hf.training import X`` keeps working for every name it ever offered:

- `contextpool_hf.training_args`: `ModelArguments`, `DataTrainingArguments`, defaults, argument checks;
- `contextpool_hf.config_overrides`: ``--config_overrides`` (`PretrainedConfig.update_from_string` rules);
- `contextpool_hf.checkpoints`: checkpoint validation, ``--resume_from_checkpoint``, the atomic save;
- `contextpool_hf.training_data`: datasets, the tokenizer, tokenising and grouping into blocks;
- `contextpool_hf.training_models`: model building, baselines, parameter count, training FLOPs;
- `contextpool_hf.training_callbacks`: the time budget and the stop on a NaN/inf loss.

What stays here: metrics (perplexity and bits per character = total nats / (ln 2 * characters)),
the opening every script shares (`start_run`), and train -> evaluate -> save (`run_training`).
Multi-process runs (DDP on gloo, `accelerate launch` or `torchrun`) load configs, remote code and
datasets under `TrainingArguments.main_process_first()`, so ranks never race on the module cache.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .checkpoints import (  # noqa: F401  (re-exported)
    CheckpointError,
    check_trainer_files,
    resolve_resume_checkpoint,
    save_model_atomically,
    validate_checkpoint,
)
from .config_overrides import apply_config_overrides, parse_config_overrides, split_overrides  # noqa: F401
from .metrics import accuracy_metrics as _accuracy_metrics  # noqa: E402
from .metrics import perplexity_metrics  # noqa: E402
from .training_args import (  # noqa: F401
    BASELINES,
    DEFAULT_BPE_VOCAB,
    DEFAULT_LM_CORPUS,
    SCRIPT_TRAINING_DEFAULTS,
    SHARED_TOKENIZER_DIR,
    TASKS,
    DataTrainingArguments,
    ModelArguments,
    check_arguments,
)
from .training_callbacks import NonFiniteLossCallback, NonFiniteLossError, TimeBudgetCallback  # noqa: F401
from .training_data import (  # noqa: F401
    build_tokenizer,
    check_block_size,
    check_has_text,
    load_raw_datasets,
    text_column,
    tokenize_and_group,
    train_tokenizer_on,
)
from .training_models import (  # noqa: F401
    DEFAULT_CLM_CONFIG,
    DEFAULT_ENCODER_CONFIG,
    TASK_AUTO_CLASS,
    build_model,
    count_parameters,
    default_config,
    estimate_training_flops,
    vanilla_config,
)

logger = logging.getLogger(__name__)

# Errors that mean "the input or the run is bad", not "the code is broken": `script_main` prints them
# as one line and exits 1 (CheckpointError is a ValueError).
USER_ERRORS = (ValueError, NonFiniteLossError)


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
    # The shipped `evaluate` module (contextpool_hf/metrics/lm_perplexity) computes both.
    for key, value in perplexity_metrics(loss, chars_per_token).items():
        metrics[f"{prefix}_{key}"] = value
    return metrics


def accuracy_metrics(eval_prediction: Any) -> dict[str, float]:
    """Accuracy through the shipped `evaluate` module (offline; contextpool_hf/metrics/accuracy); ignores label -100."""
    return _accuracy_metrics(eval_prediction)


def argmax_logits(logits: Any, labels: Any) -> Any:
    """`preprocess_logits_for_metrics`: keep argmax ids, not (B, n, V) logits, on the evaluation loop."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


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
    """The opening of every text script: parse and check the arguments, set up logging, seed, load the raw
    datasets, find the text column and check it holds text. Returns (model_args, data_args, training_args,
    raw, column)."""
    from transformers import set_seed

    model_args, data_args, training_args = parse_args(argv, training_defaults)
    check_arguments(model_args, data_args, training_args, task)
    setup_logging(training_args)
    set_seed(training_args.seed)
    raw = load_raw_datasets(data_args, task, training_args.seed, training_args)
    column = text_column(raw["train"], data_args.text_column_name)
    check_has_text(raw, column, data_args)
    return model_args, data_args, training_args, raw, column


def build_model_for_run(task: str, model_args: ModelArguments, tokenizer: Any, training_args: Any,
                        log: logging.Logger, **kwargs: Any) -> tuple[Any, int]:  # fmt: skip
    """`build_model` after re-seeding (the same initial weights whatever the data preparation
    consumed); logs the size on the script's logger `log`. Returns (model, trainable parameter count)."""
    from transformers import set_seed

    set_seed(training_args.seed)
    model = build_model(task, model_args, tokenizer, training_args=training_args, **kwargs)
    n_params = model.num_parameters(only_trainable=True)
    log.info("model %s: %s parameters", type(model).__name__, f"{n_params:,}")
    return model, n_params


def time_budget_callbacks(model_args: ModelArguments) -> list[Any]:
    """[TimeBudgetCallback] when `--max_train_seconds` is set, else []. (`run_training` adds the
    `NonFiniteLossCallback` itself.)"""
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


def ensure_nan_guard(trainer: Any) -> None:
    """Attach a `NonFiniteLossCallback` to `trainer` unless it has one."""
    if not any(isinstance(cb, NonFiniteLossCallback) for cb in trainer.callback_handler.callbacks):
        trainer.add_callback(NonFiniteLossCallback())


def run_training(trainer: Any, model_args: ModelArguments, training_args: Any,
                 after_eval: Callable[[dict[str, float]], dict[str, float]] | None = None,
                 extra: dict[str, Any] | None = None,
                 train_extra: Callable[[Any], dict[str, Any]] | None = None) -> dict[str, float]:  # fmt: skip
    """train (with a validated resume) -> evaluate -> save; returns all metrics.

    `extra` and `train_extra(trainer)` (called after training) add entries to the train metrics.

    Raises:
        NonFiniteLossError: the loss went NaN/inf; names the step; nothing is saved.
        CheckpointError: ``--resume_from_checkpoint`` names a damaged checkpoint, or none is intact.
    """
    train_result = None
    if training_args.do_train:
        resume = resolve_resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir,
                                           save_only_model=training_args.save_only_model)  # fmt: skip
        if resume:
            logger.info("resuming from %s", resume)
        ensure_nan_guard(trainer)
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


def script_main(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None) -> None:
    """Run a script's `main(argv)`; a user error (bad argument, damaged checkpoint, NaN loss) becomes one
    line on stderr and exit status 1 instead of a traceback (``CONTEXTPOOL_HF_TRACEBACK=1`` shows it)."""
    try:
        main(list(sys.argv[1:] if argv is None else argv))
    except USER_ERRORS as error:
        if os.environ.get("CONTEXTPOOL_HF_TRACEBACK"):
            raise
        name = os.path.basename(sys.argv[0]) or "contextpool-hf"
        print(f"{name}: error: {error}", file=sys.stderr)
        sys.exit(1)
