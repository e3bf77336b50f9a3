"""Convert pretrained BERT, GPT-2 and Llama-family checkpoints into ContextPool models.

The ContextPool text models host these architectures (see configuration_contextpool), so a
conversion is a config translation plus a key map over the weights, one module per source
family: convert_bert, convert_gpt2, convert_llama (Llama with or without rope scaling, Mistral,
Qwen2, Qwen3), all through the strict map of convert_keymap. Every source weight must land
somewhere (or be on an explicit ignore list: buffers, masks, aliases of tied weights), and every
target weight except the new pooling parameters must be set; anything else is an error. The
converted model starts with each layer's pooled path closed (`pool_mix_init=0.0`, spec item 7),
so at conversion time it reproduces the source model (checked by convert_verify); fine-tuning
then opens the pooled path (`pool_mix` receives gradients from the first step).

ViT/ResNet (contextpool_hf.convert_vision) and Marian/BART (contextpool_hf.convert_seq2seq)
checkpoints are dispatched to their own modules.

    from contextpool_hf.convert import convert_checkpoint
    convert_checkpoint("path/to/bert", "out/contextpool-bert", task="sequence-classification")

or, on the command line, `contextpool-hf convert SRC OUT [--task ...] [--pool_target kv] ...`.
The source folder is never written to, and an OUT that exists and is not empty needs
`--overwrite` (`overwrite=True`).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import json
import os
import sys
import warnings
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, PreTrainedConfig, PreTrainedModel

from .configuration_contextpool import CONTEXTPOOL_AUTO_MAP, ContextPoolConfig
from .convert_families import FAMILIES, SOURCE_ARCHITECTURES, SUPPORTED_SOURCES
from .convert_keymap import (
    TARGET_CLASSES,
    TASKS,
    TOLERANCE,
    ConversionError,
    UnsupportedArchitectureError,
    build_state_dict,
    check_pool_overrides,
    common_fields,
    source_body_prefix,
)
from .convert_verify import verify_conversion

# model_types converted by sibling modules: model_type -> (module, checkpoint function, model function).
DISPATCHED_SOURCES: dict[str, tuple[str, str, str]] = {
    "vit": ("contextpool_hf.convert_vision", "convert_vision_checkpoint", "convert_vit"),
    "resnet": ("contextpool_hf.convert_vision", "convert_vision_checkpoint", "convert_resnet"),
    "marian": ("contextpool_hf.convert_seq2seq", "convert_seq2seq_checkpoint", "convert_seq2seq_model"),
    "bart": ("contextpool_hf.convert_seq2seq", "convert_seq2seq_checkpoint", "convert_seq2seq_model"),
}


class OutputFolderError(ValueError):
    """The output folder is (inside) the source folder, or exists and is not empty without overwrite."""


# ----------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------


def _supported_list() -> str:
    return ", ".join(SUPPORTED_SOURCES + tuple(DISPATCHED_SOURCES))


def _unsupported_type(model_type: str | None, what: str = "source") -> UnsupportedArchitectureError:
    return UnsupportedArchitectureError(
        f"cannot convert {what} of model_type {model_type!r} to ContextPool: supported model_types are "
        f"{_supported_list()} (text classes: {', '.join(SOURCE_ARCHITECTURES)})"
    )


def convert_config(source_config: PreTrainedConfig, **pool_overrides) -> ContextPoolConfig:
    """A BERT / GPT-2 / Llama / Mistral / Qwen2 / Qwen3 config -> the equivalent `ContextPoolConfig`.

    `pool_overrides` sets any `pool_*` field; `pool_mix_init` defaults to 0.0 so that the
    converted model reproduces the source. Labels, problem type and special token ids carry over.
    Raises UnsupportedArchitectureError for other model types or for source options that have
    no exact ContextPool counterpart.
    """
    model_type = getattr(source_config, "model_type", None)
    if model_type not in FAMILIES:
        raise _unsupported_type(model_type, "config")
    fields = FAMILIES[model_type].config_fields(source_config)
    fields.update(common_fields(source_config))
    fields.update(check_pool_overrides(pool_overrides))
    config = ContextPoolConfig(**fields)
    config.auto_map = dict(CONTEXTPOOL_AUTO_MAP)
    return config


def _source_task(source: PreTrainedModel) -> str:
    name = type(source).__name__
    if name not in SOURCE_ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"cannot convert {name} (model_type {source.config.model_type!r}): supported classes are "
            f"{', '.join(SOURCE_ARCHITECTURES)}; pass task='base' (or another task) to convert its body only"
        )
    return SOURCE_ARCHITECTURES[name][1]


# ----------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------


def _dispatch_module(model_type: str):
    module_name = DISPATCHED_SOURCES[model_type][0]
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        if error.name not in (module_name, None) and not str(module_name).endswith(str(error.name)):
            raise
        raise UnsupportedArchitectureError(
            f"model_type {model_type!r} converts with {module_name}, which is not available in this "
            f"installation ({error}); text conversion supports {', '.join(SUPPORTED_SOURCES)}"
        ) from error


def _is_path(source) -> bool:
    return isinstance(source, (str, os.PathLike))


def _source_model_type(source) -> str | None:
    if _is_path(source):
        return AutoConfig.from_pretrained(source).model_type
    if isinstance(source, PreTrainedModel):
        return source.config.model_type
    raise TypeError(f"source must be a PreTrainedModel or a path, got {type(source).__name__}")


def _load_source(path, task: str | None, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """Load a BERT/GPT-2/Llama folder (or Hub name) with the class its config names."""
    config = AutoConfig.from_pretrained(path)
    if config.model_type not in SUPPORTED_SOURCES:
        raise _unsupported_type(config.model_type)
    architectures = list(getattr(config, "architectures", None) or [])
    kwargs = {"dtype": dtype} if dtype is not None else {}
    known = [a for a in architectures if a in SOURCE_ARCHITECTURES]
    if known:
        return getattr(transformers, known[0]).from_pretrained(path, **kwargs)
    if architectures and task is None:
        raise UnsupportedArchitectureError(
            f"cannot convert {architectures[0]} (model_type {config.model_type!r}): supported classes are "
            f"{', '.join(SOURCE_ARCHITECTURES)}; pass task=... to convert its body with a new head"
        )
    if architectures:
        warnings.warn(f"{architectures[0]} is not a supported class: converting its body only", stacklevel=3)
    return transformers.AutoModel.from_pretrained(path, **kwargs)


def convert_model(
    source: PreTrainedModel | str | os.PathLike, *, task: str | None = None, **pool_overrides
) -> PreTrainedModel:
    """A BERT / GPT-2 / Llama model (or its folder / Hub name) -> the ContextPool equivalent.

    The head follows the source class (BertModel -> ContextPoolModel with pooler,
    BertForMaskedLM/BertForPreTraining -> ContextPoolForMaskedLM, GPT2LMHeadModel/
    LlamaForCausalLM -> ContextPoolForCausalLM, ...). `task` ("base", "causal-lm", "masked-lm",
    "sequence-classification", "token-classification", "question-answering") forces a head: a
    head the source does not have is freshly initialised (with a warning). Every source weight is
    used and every target weight except the pooling parameters is set, or ConversionError.
    ViT/ResNet and Marian/BART sources are handed to their own conversion modules.
    The returned model is in eval mode, in the source's dtype and attention implementation.
    """
    model_type = _source_model_type(source)
    if model_type in DISPATCHED_SOURCES:
        module = _dispatch_module(model_type)
        return getattr(module, DISPATCHED_SOURCES[model_type][2])(source, **pool_overrides)
    if model_type not in SUPPORTED_SOURCES:
        raise _unsupported_type(model_type)
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if _is_path(source):
        source = _load_source(source, task)
    # An unknown class (e.g. BertForMultipleChoice) converts only with a forced task: its body.
    source_task = _source_task(source) if task is None or type(source).__name__ in SOURCE_ARCHITECTURES else None
    task = task or source_task
    if task not in FAMILIES[model_type].tasks:
        raise UnsupportedArchitectureError(
            f"a {model_type} model cannot become a {task!r} model without changing what it computes; "
            f"{model_type} converts to {', '.join(FAMILIES[model_type].tasks)}"
        )

    config = convert_config(source.config, **pool_overrides)
    if model_type == "bert":
        # BERT's pooler (dense + tanh on [CLS]) lives in the body; keep it where the target uses it:
        # the bare model (if the source has one) and sequence classification (new if needed).
        has_pooler = f"{source_body_prefix(source)}pooler.dense.weight" in source.state_dict()
        config.use_pooler = task == "sequence-classification" or (task == "base" and has_pooler)
    config._attn_implementation = getattr(source.config, "_attn_implementation", None) or "sdpa"
    if config._attn_implementation not in ("eager", "sdpa"):
        config._attn_implementation = "sdpa"
    target_class = TARGET_CLASSES[task]
    target = target_class(config).to(source.dtype)
    state, fresh = build_state_dict(source, target, FAMILIES[model_type], source_task, task)
    if fresh:
        warnings.warn(
            f"{type(source).__name__} -> {target_class.__name__}: newly initialised weights {fresh} "
            "(train them before use)",
            stacklevel=2,
        )
    result = target.load_state_dict(state, strict=False)
    if result.unexpected_keys:  # guarded above; kept as a last line of defence
        raise ConversionError(f"unexpected keys when loading the converted weights: {result.unexpected_keys}")
    if config.tie_word_embeddings:
        target.tie_weights()
    if getattr(source, "generation_config", None) is not None and target.can_generate():
        target.generation_config = copy.deepcopy(source.generation_config)
    target._contextpool_conversion = {
        "source_class": type(source).__name__,
        "source_model_type": model_type,
        "source_task": source_task,
        "task": task,
        "new_weights": fresh,
    }
    return target.eval()



# ----------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------


def _source_name(src) -> str:
    """The source as conversion.json records it: a Hub id as given, a local folder by its name only.
    conversion.json is uploaded with the checkpoint, and a machine path must not be published."""
    if _is_path(src):
        name = str(src)
    else:
        name = getattr(src, "name_or_path", None) or getattr(src.config, "_name_or_path", "") or type(src).__name__
    return os.path.basename(os.path.normpath(name)) if os.path.exists(name) else name


def _ensure_auto_map(out: Path) -> None:
    """save_pretrained writes only the saved class's auto_map entry; make it list every head."""
    path = out / "config.json"
    config = json.loads(path.read_text())
    auto_map = dict(config.get("auto_map") or {})
    if all(auto_map.get(k) == v for k, v in CONTEXTPOOL_AUTO_MAP.items()):
        return
    auto_map.update(CONTEXTPOOL_AUTO_MAP)
    config["auto_map"] = auto_map
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _source_folder(src) -> Path | None:
    """The local folder the source was read from, if any (a path, or a model loaded from one)."""
    if _is_path(src):
        path = Path(src)
    else:
        name = getattr(getattr(src, "config", None), "_name_or_path", None) or getattr(src, "name_or_path", None)
        path = Path(name) if name else None
    return path if path is not None and path.is_dir() else None


def _inside(path: Path, folder: Path) -> bool:
    """Whether `path` (existing or not) is `folder` or lies inside it, whatever the spelling: the
    resolved paths are compared (symlinks, `..`, relative paths), and each existing ancestor is
    compared with `os.path.samefile` (bind mounts, case-insensitive file systems)."""
    resolved, folder_resolved = path.resolve(), folder.resolve()
    if resolved == folder_resolved or folder_resolved in resolved.parents:
        return True
    for candidate in (resolved, *resolved.parents):
        if candidate.exists():
            try:
                if os.path.samefile(candidate, folder_resolved):
                    return True
            except OSError:
                continue
    return False


def check_output_folder(src, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse an output folder that would overwrite the source or a user's files. -> Path(out).

    OUT must not be the source folder or inside it (by any spelling or symlink); an OUT that
    exists must be a folder, and one that is not empty needs `overwrite=True` (`--overwrite`).
    """
    out = Path(out)
    source = _source_folder(src)
    if source is not None and _inside(out, source):
        raise OutputFolderError(
            f"output folder {out} is the source folder {source} or inside it: converting would overwrite the "
            "source checkpoint; choose another output folder"
        )
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputFolderError(
            f"output folder {out} exists and is not empty; pass --overwrite (overwrite=True) to write the "
            "converted model into it (files of the same name are replaced)"
        )
    return out


def _dispatch_checkpoint(model_type, src, out, task, check, overwrite, pool_overrides) -> Path:
    module = _dispatch_module(model_type)
    function = getattr(module, DISPATCHED_SOURCES[model_type][1])
    parameters = inspect.signature(function).parameters
    kwargs = dict(pool_overrides)
    if "overwrite" in parameters:
        kwargs["overwrite"] = overwrite
    if "task" in parameters and task is not None:
        kwargs["task"] = task
    if "check" in parameters:
        kwargs["check"] = check
    result = function(src, out, **kwargs)
    return Path(result) if isinstance(result, (str, os.PathLike)) else Path(out)


def convert_checkpoint(
    src: PreTrainedModel | str | os.PathLike,
    out: str | os.PathLike,
    *,
    task: str | None = None,
    check: bool = True,
    overwrite: bool = False,
    **pool_overrides,
) -> Path:
    """Convert `src` (a folder, Hub name or model), check it, and save it to `out`.

    `out` must not be (inside) the source folder, and if it exists and is not empty `overwrite`
    must be True (OutputFolderError otherwise, raised before anything is loaded or written).

    Saves the converted model with its remote code (config.json's auto_map lists every head),
    the source tokenizer when AutoTokenizer can load it, and `conversion.json` (source,
    max abs difference measured, pool overrides, base_model). With `check`, the source and the
    converted model are compared in float32 on random inputs and ConversionError is raised if
    they differ by more than 1e-5. Returns the output folder.
    """
    check_output_folder(src, out, overwrite)
    model_type = _source_model_type(src)
    if model_type in DISPATCHED_SOURCES:
        return _dispatch_checkpoint(model_type, src, out, task, check, overwrite, pool_overrides)
    if model_type not in SUPPORTED_SOURCES:
        raise _unsupported_type(model_type)
    saved_dtype = None
    if _is_path(src):
        source_config = AutoConfig.from_pretrained(src)
        saved_dtype = getattr(source_config, "dtype", None)
        source = _load_source(src, task, dtype=torch.float32)
    else:
        source = src
    converted = convert_model(source, task=task, **pool_overrides)

    max_diff = None
    if check:
        if source.dtype != torch.float32:
            source_check, converted_check = copy.deepcopy(source).float(), copy.deepcopy(converted).float()
        else:
            source_check, converted_check = source, converted
        max_diff = verify_conversion(source_check, converted_check)
        if not max_diff <= TOLERANCE:
            raise ConversionError(
                f"converted model differs from the source by {max_diff:.3g} (allowed {TOLERANCE:g}); not saved"
            )
    if isinstance(saved_dtype, str):
        saved_dtype = getattr(torch, saved_dtype, None)
    if isinstance(saved_dtype, torch.dtype) and saved_dtype.is_floating_point and saved_dtype != converted.dtype:
        converted = converted.to(saved_dtype)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    converted.config.auto_map = dict(CONTEXTPOOL_AUTO_MAP)
    converted.save_pretrained(out)
    _ensure_auto_map(out)

    tokenizer_saved = False
    if _is_path(src):
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(src)
        except (OSError, ValueError, KeyError, TypeError) as error:
            warnings.warn(f"no tokenizer saved: AutoTokenizer could not load {src} ({error})", stacklevel=2)
        else:
            tokenizer.save_pretrained(out)
            tokenizer_saved = True

    from . import __version__

    info = converted._contextpool_conversion
    record = {
        "base_model": _source_name(src),
        "source_model_type": model_type,
        "source_class": info["source_class"],
        "task": info["task"],
        "target_class": type(converted).__name__,
        "new_weights": info["new_weights"],
        "max_abs_diff": max_diff,
        "tolerance": TOLERANCE,
        "checked": bool(check),
        "pool_overrides": {k: v for k, v in pool_overrides.items()},
        "pool_mix_init": converted.config.pool_mix_init,
        "tokenizer_saved": tokenizer_saved,
        "dtype": str(converted.dtype).replace("torch.", ""),
        "contextpool_hf_version": __version__,
        "transformers_version": transformers.__version__,
    }
    (out / "conversion.json").write_text(json.dumps(record, indent=2) + "\n")
    return out


# ----------------------------------------------------------------------------------------
# ----------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    text = text.strip()
    if text.lower() in ("", "none"):
        return []
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices like 0,2, got {text!r}") from error


_POOL_OPTIONS = (
    ("pool_target", str, "qkv or kv: what the pooled features feed"),
    ("pool_groups", int, "1 = shared pooling, num_key_value_heads = per-head pooling"),
    ("pool_sigma_min", float, "smallest Gaussian width (tokens)"),
    ("pool_sigma_max", float, "largest Gaussian width (tokens)"),
    ("pool_truncation", float, "window radius R = ceil(truncation * sigma_max)"),
    ("pool_kernel_size", int, "predictor's depthwise conv kernel (odd)"),
    ("pool_predictor_width", int, "predictor width (default hidden_size)"),
    ("pool_mix_init", float, "initial pooled mix (0 = exactly the source model, the default)"),
    ("pool_implementation", str, "fast, reference or triton (CUDA)"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `contextpool-hf convert`."""
    parser.add_argument("src", help="source checkpoint: a local folder or a Hub model name")
    parser.add_argument("out", help="output folder")
    parser.add_argument("--task", choices=TASKS, default=None, help="force a head (default: the source's)")
    parser.add_argument("--no_check", "--no-check", dest="check", action="store_false",
                        help="skip the equivalence check")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into OUT even if it exists and is not empty (never into the source folder)")
    for name, kind, help_text in _POOL_OPTIONS:
        parser.add_argument(f"--{name}", type=kind, default=None, help=help_text)
    parser.add_argument("--pool_layers", type=_int_list, default=None, help="layers that pool, e.g. 0,2 (default all)")
    # Two flags instead of BooleanOptionalAction, whose negative form would be spelled --no-pool_normalize.
    parser.add_argument("--pool_normalize", dest="pool_normalize", default=None, action="store_true",
                        help="normalise by pooled weight mass")
    parser.add_argument("--no_pool_normalize", dest="pool_normalize", default=None, action="store_false",
                        help="do not normalise by pooled weight mass")


def run(args: argparse.Namespace) -> int:
    names = [name for name, _, _ in _POOL_OPTIONS] + ["pool_layers", "pool_normalize"]
    overrides = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    try:
        out = convert_checkpoint(
            args.src, args.out, task=args.task, check=args.check, overwrite=args.overwrite, **overrides
        )
    except (UnsupportedArchitectureError, ConversionError, ValueError, TypeError, OSError) as error:
        print(f"contextpool-hf convert: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    record_path = Path(out) / "conversion.json"
    max_diff = json.loads(record_path.read_text()).get("max_abs_diff") if record_path.exists() else None
    if max_diff is not None:
        print(f"max abs difference (source vs converted): {max_diff:.3e}")
    elif args.check:
        print("max abs difference: not reported by this converter")
    else:
        print("equivalence check skipped (--no_check)")
    print(f"saved to {out}")
    return 0


__all__ = [
    "SUPPORTED_SOURCES",
    "DISPATCHED_SOURCES",
    "TASKS",
    "SOURCE_ARCHITECTURES",
    "TARGET_CLASSES",
    "TOLERANCE",
    "FAMILIES",
    "UnsupportedArchitectureError",
    "ConversionError",
    "OutputFolderError",
    "check_output_folder",
    "convert_config",
    "convert_model",
    "convert_checkpoint",
    "verify_conversion",
    "add_arguments",
    "run",
]
