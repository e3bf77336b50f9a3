"""`contextpool-hf train TASK [script arguments]`: the training scripts, run from the installed package.

    contextpool-hf train clm --output_dir runs/clm --max_steps 200 --use_cpu
    contextpool-hf train translation --help

Each task runs the `main(argv)` of the matching `scripts/run_*.py` (transformers-examples-style files:
HfArgumentParser + TrainingArguments + Trainer), so the verb and the script are the same code and take
the same arguments. The scripts are found next to the package in a source checkout, or where the wheel
installs them as data files (`<prefix>/share/contextpool-hf/scripts`).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import sysconfig
from pathlib import Path
from types import ModuleType

TASK_SCRIPTS: dict[str, str] = {
    "clm": "run_clm.py",
    "mlm": "run_mlm.py",
    "classification": "run_classification.py",
    "translation": "run_translation.py",
    "image-classification": "run_image_classification.py",
}
SCRIPTS_SHARE = ("share", "contextpool-hf", "scripts")


def script_path(task: str) -> Path:
    """The `run_*.py` file behind `task`; FileNotFoundError names the folders searched."""
    if task not in TASK_SCRIPTS:
        raise ValueError(f"task must be one of {tuple(TASK_SCRIPTS)}, got {task!r}")
    name = TASK_SCRIPTS[task]
    folders = [
        Path(__file__).resolve().parents[2] / "scripts",  # source checkout: src/contextpool_hf/ -> scripts/
        Path(sysconfig.get_path("data")).joinpath(*SCRIPTS_SHARE),  # wheel data files
        Path(sys.prefix).joinpath(*SCRIPTS_SHARE),
    ]
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{name} not found in any of: {', '.join(map(str, folders))} (reinstall contextpool-hf)")


def load_script(task: str) -> ModuleType:
    """Import the script of `task` as a module (its `if __name__ == "__main__"` block does not run)."""
    path = script_path(task)
    module_name = f"contextpool_hf_script_{path.stem}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `contextpool-hf train`: the task, then everything the task's script takes."""
    parser.add_argument("task", choices=tuple(TASK_SCRIPTS), help="which training script to run")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, metavar="...",
                        help="the script's own arguments (`contextpool-hf train TASK --help` lists them)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Run the task's script `main(argv)` in this process; its metrics are written where it writes them."""
    module = load_script(args.task)
    # argparse inside the script names itself after argv[0] in --help and errors.
    program = sys.argv[0]
    sys.argv[0] = f"contextpool-hf train {args.task}"
    try:
        module.main(list(args.script_args))
    finally:
        sys.argv[0] = program
    return 0


__all__ = ["TASK_SCRIPTS", "add_arguments", "load_script", "run", "script_path"]
