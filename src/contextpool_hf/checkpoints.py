"""Is a checkpoint folder whole? Model folders, Trainer checkpoints, resume and the final save.

- `validate_checkpoint(path)`: config.json parses, the weights are complete (safetensors' own reader;
  `.bin` weights through `torch.load(weights_only=True)`); with ``trainer_checkpoint=True`` also the
  files `Trainer.train(resume_from_checkpoint=...)` restores: trainer_state.json, the optimizer,
  the learning-rate scheduler, the RNG states and (if present) the fp16 grad scaler, each loaded
  the way Trainer loads it (``weights_only=True``, numpy allow-listed for the RNG states).
- `resolve_resume_checkpoint(resume, output_dir)`: ``--resume_from_checkpoint`` as a validated
  folder. ``latest`` (or ``true``/``last``) starts at transformers' `get_last_checkpoint` and walks
  back past damaged checkpoints, warning about each one by name; an explicit damaged path raises.
- `save_model_atomically(trainer, output_dir)`: the final save never leaves a half-written model.

Why check the optimizer: Trainer restores it only if the file is there, so a missing
``optimizer.pt`` resumes silently with a fresh optimizer (and a fresh Adam state is a different
run), and an empty one fails with a bare ``EOFError`` deep inside torch.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .weights_check import CheckpointError, check_safetensors_file, check_safetensors_index

logger = logging.getLogger(__name__)

__all__ = ["CheckpointError", "check_trainer_files", "resolve_resume_checkpoint", "save_model_atomically",
           "validate_checkpoint"]  # fmt: skip

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
# The names Trainer writes (transformers.trainer's OPTIMIZER_NAME etc.); spelled here so that importing
# this module does not import the whole Trainer.
OPTIMIZER_FILE, SCHEDULER_FILE, SCALER_FILE = "optimizer.pt", "scheduler.pt", "scaler.pt"
TRAINER_STATE_FILE = "trainer_state.json"
RESUME_LATEST = ("true", "latest", "last")
_NO_RESUME = ("", "false", "no", "none")


def _torch_load_problem(file: Path, *, numpy_states: bool = False) -> str | None:
    """None if `file` deserialises as Trainer would load it, else what is wrong (for the message)."""
    import torch

    if file.stat().st_size == 0:
        return f"{file.name} is empty"
    try:
        if numpy_states:
            from transformers.trainer_pt_utils import safe_globals

            with safe_globals():  # numpy's RNG state, allow-listed exactly as Trainer does
                torch.load(file, map_location="cpu", weights_only=True)
        else:
            try:
                # mmap: the tensors are not read into memory; the archive and its pickle are still checked
                torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as error:
                if "mmap" not in str(error):
                    raise
                torch.load(file, map_location="cpu", weights_only=True)  # legacy (pre-zip) format: no mmap
    except Exception as error:  # EOFError, RuntimeError (bad zip), UnpicklingError, ...: all mean "damaged"
        return f"{file.name} cannot be loaded ({type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else 'no detail'})"
    return None


def check_trainer_files(folder: str | os.PathLike[str], *, save_only_model: bool = False) -> list[str]:
    """What is wrong with the resume files of Trainer checkpoint `folder` ([] when nothing is).

    Checked: trainer_state.json (Trainer writes it last: without it the save was interrupted) parses;
    unless `save_only_model` (such checkpoints hold only the model): optimizer.pt, scheduler.pt and
    the RNG state(s) exist and load; scaler.pt loads if present. DeepSpeed / FSDP checkpoints keep
    the optimizer in their own sub-folders: for those only the files that exist are checked.
    """
    folder = Path(folder)
    problems: list[str] = []
    state = folder / TRAINER_STATE_FILE
    if not state.is_file():
        problems.append(f"{TRAINER_STATE_FILE} is missing (Trainer writes it last: the save was interrupted)")
    else:
        try:
            json.loads(state.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            problems.append(f"{TRAINER_STATE_FILE} is not valid JSON ({error})")
    if save_only_model:
        return problems
    sharded = any(folder.glob("global_step*")) or any(folder.glob("optimizer_*")) or any(folder.glob("rank*-of-*"))
    for name, required in ((OPTIMIZER_FILE, not sharded), (SCHEDULER_FILE, True), (SCALER_FILE, False)):
        file = folder / name
        if not file.is_file():
            if required:
                what = "optimizer" if name == OPTIMIZER_FILE else "learning-rate scheduler"
                problems.append(f"{name} is missing (resuming would start a fresh {what}, a different run)")
            continue
        problem = _torch_load_problem(file)
        if problem:
            problems.append(problem)
    rng_files = sorted(glob.glob(str(folder / "rng_state*.pth")))
    if not rng_files:
        problems.append("no rng_state*.pth (resuming would not continue the same random stream)")
    for rng_file in rng_files:
        problem = _torch_load_problem(Path(rng_file), numpy_states=True)
        if problem:
            problems.append(problem)
    return problems


def validate_checkpoint(path: str | os.PathLike[str], *, trainer_checkpoint: bool = False,
                        save_only_model: bool = False) -> Path:  # fmt: skip
    """Check that `path` is a complete model folder (or Trainer checkpoint); raise a clear error if not.

    Checks: the folder exists; config.json exists and is valid JSON; a weights file exists; every
    safetensors file (and every shard a `.index.json` lists) passes safetensors' reader; `.bin`
    weights load with ``weights_only=True``. With `trainer_checkpoint=True` also the resume files
    (`check_trainer_files`; `save_only_model` as the run's TrainingArguments say).

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
    weights = [name for name in WEIGHT_FILES if (folder / name).is_file()]
    if not weights:
        problems.append(f"no weights file (expected one of {', '.join(WEIGHT_FILES)})")
    for name in weights:
        file = folder / name
        try:
            if name == "model.safetensors":
                check_safetensors_file(file)
            elif name == "model.safetensors.index.json":
                check_safetensors_index(file)
            elif name == "pytorch_model.bin":
                problem = _torch_load_problem(file)
                if problem:
                    problems.append(problem)
            else:  # a .bin index: the shards must be there and load
                index = json.loads(file.read_text(encoding="utf-8"))
                for shard in sorted(set(index.get("weight_map", {}).values())):
                    if not (folder / shard).is_file():
                        problems.append(f"shard {shard} listed in {name} is missing")
                    elif problem := _torch_load_problem(folder / shard):
                        problems.append(problem)
        except CheckpointError as error:
            problems.append(str(error).replace(str(folder) + os.sep, ""))
        except (OSError, ValueError) as error:
            problems.append(f"{name} is unreadable ({error})")
    if trainer_checkpoint:
        problems += check_trainer_files(folder, save_only_model=save_only_model)
    if problems:
        raise CheckpointError(
            f"{what} {folder} is partial or corrupt: " + "; ".join(problems) + ". "
            "Resume from an earlier checkpoint, or delete this folder and start again."
        )
    return folder


def _checkpoint_folders(output_dir: str) -> list[str]:
    """checkpoint-N folders of `output_dir`, newest first: transformers' `get_last_checkpoint`, then the
    older ones in transformers' `sort_checkpoints` order (by step)."""
    from transformers.trainer_utils import get_last_checkpoint, sort_checkpoints

    newest = get_last_checkpoint(output_dir)
    if newest is None:
        return []
    older = [path for path in reversed(sort_checkpoints(output_dir)) if not os.path.samefile(path, newest)]
    return [newest, *older]


def resolve_resume_checkpoint(resume: str | bool | None, output_dir: str, *, save_only_model: bool = False,
                              warn: bool = True) -> str | None:  # fmt: skip
    """Turn ``--resume_from_checkpoint`` into a validated folder (or None for a fresh run).

    ``True`` / ``"latest"`` / ``"last"`` / ``"true"``: the newest checkpoint-N under `output_dir` (as
    `transformers.trainer_utils.get_last_checkpoint` finds it) that passes `validate_checkpoint`; a
    damaged newer one is skipped with a warning naming it and what is wrong (`warn=False` silences
    that, for a second lookup in the same run). Any other value is a path that must itself be a
    complete Trainer checkpoint.

    Raises:
        CheckpointError: no checkpoint-N folder, every one damaged, or the explicit path damaged.
    """
    if resume is None or resume is False or (isinstance(resume, str) and resume.strip().lower() in _NO_RESUME):
        return None
    if resume is True or (isinstance(resume, str) and resume.strip().lower() in RESUME_LATEST):
        if not os.path.isdir(output_dir):
            raise CheckpointError(f"--resume_from_checkpoint {resume}: the output folder {output_dir} does not exist")
        folders = _checkpoint_folders(output_dir)
        if not folders:
            raise CheckpointError(f"--resume_from_checkpoint {resume}: no checkpoint-* folder in {output_dir}")
        skipped = []
        for folder in folders:
            try:
                found = str(validate_checkpoint(folder, trainer_checkpoint=True, save_only_model=save_only_model))
            except CheckpointError as error:
                skipped.append(os.path.basename(folder))
                if warn:
                    logger.warning("--resume_from_checkpoint %s: skipping the damaged checkpoint %s: %s",
                                   resume, os.path.basename(folder), error)  # fmt: skip
                continue
            if skipped and warn:
                logger.warning("resuming from %s (newer damaged: %s)", os.path.basename(found), ", ".join(skipped))
            return found
        raise CheckpointError(
            f"--resume_from_checkpoint {resume}: every checkpoint in {output_dir} is partial or corrupt "
            f"({', '.join(skipped)}); start a fresh run without --resume_from_checkpoint"
        )
    return str(validate_checkpoint(str(resume), trainer_checkpoint=True, save_only_model=save_only_model))


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
            if os.path.isdir(source) and os.path.isdir(target):
                shutil.rmtree(target)
            os.replace(source, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
