"""Trainer callbacks of the training scripts: a wall-clock budget and a stop on a diverged run.

Both work with any `transformers.Trainer` (``Trainer(..., callbacks=[NonFiniteLossCallback()])``).
"""

from __future__ import annotations

import math
import time

import torch
from transformers import TrainerCallback


class NonFiniteLossError(RuntimeError):
    """Training reached a NaN/inf loss (or NaN/inf weights); the message names the step."""


class TimeBudgetCallback(TrainerCallback):
    """Stop training after `seconds` (then the script evaluates and saves as usual)."""

    def __init__(self, seconds: float):
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not math.isfinite(seconds) or seconds <= 0:
            raise ValueError(f"--max_train_seconds must be a positive number of seconds, got {seconds!r}")
        self.seconds = float(seconds)
        self.start: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.start is not None and time.perf_counter() - self.start > self.seconds:
            control.should_training_stop = True
            control.should_save = False
        return control


class NonFiniteLossCallback(TrainerCallback):
    """Stop a run whose loss went NaN/inf, and make `trainer.train()` raise `NonFiniteLossError`.

    Why not just read the logged loss: Trainer's default ``logging_nan_inf_filter=True`` drops NaN/inf
    step losses from the logs, so a diverged run logs ``loss 0`` and ends with ``train_loss 0.0``.
    A NaN/inf loss makes NaN/inf gradients, and the optimizer step turns them into NaN/inf weights
    (gradient clipping multiplies by NaN too), so after every optimizer step this checks that the
    weights are finite: a fused norm over all weights (a per-tensor look only if that norm is not
    finite), ~0.1% of a training step of the default model. It also checks every logged ``loss``, which catches a non-finite
    loss when the filter is off. On detection it stops at once (no further step, no checkpoint of
    the broken weights) and `on_train_end` raises, so the script exits non-zero instead of saving
    and reporting a model of NaNs. fp16's grad scaler skips steps with inf gradients before they
    reach the weights: such a skipped step is not an error.
    """

    def __init__(self) -> None:
        self.failure: str | None = None

    def _fail(self, control, message: str):
        if self.failure is None:
            self.failure = message
        control.should_training_stop = True
        control.should_save = False
        control.should_evaluate = False
        return control

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is None or self.failure is not None:
            return control
        with torch.no_grad():
            params = [p.detach() for p in model.parameters() if p.numel()]
            if not params:
                return control
            # One fused (foreach) norm over all weights: NaN/inf anywhere makes it non-finite. Per-tensor
            # isfinite().all() is two orders of magnitude slower on a loaded CPU (many small parallel ops).
            if bool(torch.isfinite(torch.nn.utils.get_total_norm(params, foreach=None))):
                return control
            # Confirm tensor by tensor: a huge but finite norm can overflow in low precision.
            bad = next((name for name, p in model.named_parameters() if p.numel() and not bool(p.isfinite().all())), None)
        if bad is not None:
            return self._fail(
                control,
                f"training diverged at step {state.global_step} of {state.max_steps}: after that optimizer step "
                f"the weights hold NaN/inf (first: {bad}), so that step's loss or gradient was NaN/inf "
                f"(learning rate {_lr(kwargs)}). The model was not saved. Lower --learning_rate, check the "
                "data, or train in bf16/fp32 instead of fp16.",
            )
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if isinstance(loss, (int, float)) and not math.isfinite(loss) and self.failure is None:
            return self._fail(
                control,
                f"training loss is {loss} at step {state.global_step} of {state.max_steps} (the mean over the "
                f"last {args.logging_steps} logging steps). The model was not saved. Lower --learning_rate or "
                "check the data.",
            )
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.failure is not None:  # the default flow asks for an epoch-end save: not of broken weights
            control.should_save = False
            control.should_evaluate = False
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.failure is not None:
            raise NonFiniteLossError(self.failure)
        return control


def _lr(kwargs) -> str:
    scheduler = kwargs.get("lr_scheduler")
    try:
        return f"{scheduler.get_last_lr()[0]:.3g}"
    except (AttributeError, IndexError, TypeError):
        return "unknown"
