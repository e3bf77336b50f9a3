"""Which files of a checkpoint folder `contextpool-hf push` uploads, and the checks before it does.

A push uploads what a checkpoint consists of and nothing else (an allow-list, not a list of
things to leave out): a stray `hf_token.txt`, a log or a notebook next to the weights stays
local, and is listed as skipped. Every weights file is opened with safetensors' own reader
first, so a truncated or garbage file never reaches the Hub, and a symlink that points out of
the folder is refused (its target's content would be published under the link's name).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from .weights_check import SAFETENSORS_INDEX, SAFETENSORS_WEIGHTS, CheckpointError, check_safetensors_weights

WEIGHT_FILES = (SAFETENSORS_WEIGHTS, SAFETENSORS_INDEX)
CONFIG_FILES = ("config.json", "generation_config.json")
# What tokenizers and processors save (`vocab_files_names` of transformers' fast and
# sentencepiece tokenizers, Marian's two .spm files, chat templates, image/video processors).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
    "source.spm", "target.spm", "target_vocab.json", "chat_template.jinja", "chat_template.json",
    "preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json",
)
# What the Trainer's `save_metrics` and `contextpool-hf convert` write about the model.
RESULT_FILES = (
    "all_results.json", "train_results.json", "eval_results.json", "test_results.json", "predict_results.json",
    "conversion.json",
)
# Why some common files are not uploaded (everything else: "not part of a checkpoint").
_SKIP_REASONS = {
    "README.md": "replaced by the generated model card; pass --model_card README.md to upload yours",
    "trainer_state.json": "Trainer state (it names local paths); the card carries its eval metrics",
    "training_args.bin": "pickled training arguments",
    "pytorch_model.bin": ".bin (pickle) weights are not shared; the safetensors weights are",
    "pytorch_model.bin.index.json": ".bin (pickle) weights are not shared; the safetensors weights are",
}
_SKIP_PATTERNS = (
    (re.compile(r"^(optimizer|scheduler|scaler)\.(pt|bin)$|^rng_state.*\.pth$"), "optimizer/scheduler/RNG state"),
    (re.compile(r"^\."), "hidden file"),
)


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path.name} in {path.parent} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path.name} in {path.parent} is not a JSON object")
    return data


def _auto_map_modules(auto_map: Mapping[str, Any]) -> set[str]:
    """Module file names referenced by an `auto_map` ("module.Class", "repo--module.Class", tokenizer pairs)."""
    modules = set()
    for value in auto_map.values():
        for ref in value if isinstance(value, (list, tuple)) else [value]:
            if ref:
                modules.add(ref.split("--")[-1].rsplit(".", 1)[0] + ".py")
    return modules


def _relative_imports(source: str) -> set[str]:
    found = re.findall(r"^\s*from\s+\.(\w+)\s+import", source, flags=re.MULTILINE)
    found += re.findall(r"^\s*import\s+\.(\w+)\s*$", source, flags=re.MULTILINE)
    return {f"{name}.py" for name in found}


def required_code_files(folder: str | Path, config: Mapping[str, Any] | None = None) -> list[str]:
    """The `.py` files the checkpoint needs: those in `auto_map`s plus their relative imports."""
    folder = Path(folder)
    config = config if config is not None else (_read_json(folder / "config.json") or {})
    needed = _auto_map_modules(config.get("auto_map") or {})
    for extra in ("tokenizer_config.json", "preprocessor_config.json", "processor_config.json"):
        needed |= _auto_map_modules((_read_json(folder / extra) or {}).get("auto_map") or {})
    pending, seen = list(needed), set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        if (folder / name).is_file():
            pending.extend(_relative_imports((folder / name).read_text(encoding="utf-8")) - seen)
    return sorted(seen)


def check_checkpoint(folder: str | Path) -> dict:
    """Raise `CheckpointError` naming what is missing or damaged; return the parsed config.json.

    Checks config.json, the weights (every safetensors file and the index, with safetensors' reader),
    the `auto_map` and the code files it names.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder")
    config = _read_json(folder / "config.json")
    if config is None:
        raise CheckpointError(f"{folder} has no config.json: save the model with save_pretrained() first")
    check_safetensors_weights(folder)
    if not config.get("auto_map"):
        raise CheckpointError(
            f"{folder}/config.json has no auto_map, so the Hub copy would not load with trust_remote_code=True; "
            "save a ContextPool model with save_pretrained() (it writes auto_map and the code files)"
        )
    missing = [name for name in required_code_files(folder, config) if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(f"{folder} is missing the remote-code files named in config.json: {', '.join(missing)}")
    return config


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
    except ValueError:
        return False
    return True


def _skip_reason(name: str) -> str:
    if name in _SKIP_REASONS:
        return _SKIP_REASONS[name]
    for pattern, reason in _SKIP_PATTERNS:
        if pattern.search(name):
            return reason
    return "not part of a checkpoint"


def select_files(
    folder: str | Path, config: Mapping[str, Any] | None = None, extra_files: Iterable[str] = ()
) -> tuple[list[str], list[str]]:
    """-> (files to upload, "name (why it is skipped)" for everything else in the folder).

    Uploaded: config and generation config, the safetensors weights (the index and the shards it
    names), the code files `auto_map` names and what they import, tokenizer/processor files,
    Trainer and conversion results, and `extra_files` (paths relative to the folder, asked for
    by name). Sub-folders are not entered. A selected file that is a symlink leaving the folder
    is a `CheckpointError`, as is an extra file that does not exist.
    """
    folder = Path(folder)
    root = folder.resolve()
    config = config if config is not None else (_read_json(folder / "config.json") or {})
    allowed = set(CONFIG_FILES) | set(TOKENIZER_FILES) | set(RESULT_FILES) | set(required_code_files(folder, config))
    allowed |= set(check_safetensors_weights(folder))
    extras = []
    for rel in extra_files:
        posix = PurePosixPath(str(rel).replace("\\", "/"))
        if posix.is_absolute() or ".." in posix.parts or not (folder / posix).is_file():
            raise CheckpointError(f"extra file {rel!r} is not a file inside {folder} (give a path relative to it)")
        extras.append(posix.as_posix())

    upload, skipped = [], []
    for path in sorted(folder.iterdir()):
        name = path.name
        if name in allowed and path.is_file():
            upload.append(name)
        elif name in extras:
            continue
        elif path.is_dir():
            skipped.append(f"{name}/ (a folder: checkpoints, logs and other folders are not uploaded)")
        else:
            skipped.append(f"{name} ({_skip_reason(name)})")
    upload = sorted(set(upload) | set(extras))
    leaving = [rel for rel in upload if not _inside(folder / rel, root)]
    if leaving:
        targets = ", ".join(f"{rel} -> {(folder / rel).resolve()}" for rel in leaving)
        raise CheckpointError(
            f"refusing to push {folder}: symlinks point outside the folder ({targets}); their targets' content "
            "would be uploaded under these names. Copy the files into the folder if they belong to the model"
        )
    return upload, skipped


def files_to_upload(folder: str | Path, extra_files: Iterable[str] = ()) -> list[str]:
    """Relative POSIX paths under `folder` that a push uploads (see `select_files`)."""
    return select_files(folder, extra_files=extra_files)[0]
