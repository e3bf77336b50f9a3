"""Which model a text Trainer script trains, and what training it costs.

- `build_model`: a ContextPool checkpoint; a BERT/GPT-2/Llama checkpoint converted on the fly
  (`contextpool_hf.convert`) or, with ``--baseline llama/bert``, loaded unconverted; a config
  (``--config_name``, ``--config_overrides``); or the small default ContextPool model.
  ``--baseline contextpool-off`` is the same model with pooling off, ``llama`` / ``bert``
  transformers' own model of the same size.
- `estimate_training_flops`: the project's one definition of training FLOPs (see its docstring).
"""

from __future__ import annotations

import math
import os
from typing import Any

from .checkpoints import validate_checkpoint
from .config_overrides import apply_config_overrides, parse_config_overrides
from .training_args import BASELINES, ModelArguments
from .training_data import main_process_first as _main_first

TASK_AUTO_CLASS = {
    "clm": "AutoModelForCausalLM",
    "mlm": "AutoModelForMaskedLM",
    "classification": "AutoModelForSequenceClassification",
}

# The small default models (2-core CPU friendly). The causal default is Llama-shaped (rotary, RMSNorm,
# gated SiLU MLP, no biases) so that `--baseline contextpool-off` and `--baseline llama` are the same
# architecture and the comparison isolates the pooling. The encoder default is BERT-sized.
DEFAULT_CLM_CONFIG: dict[str, Any] = dict(
    hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=344,
    mlp_type="gated", hidden_act="silu", norm_type="rmsnorm", attention_bias=False, mlp_bias=False,
    position_embedding_type="rotary", norm_position="pre", tie_word_embeddings=True,
)  # fmt: skip
DEFAULT_ENCODER_CONFIG: dict[str, Any] = dict(
    hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512,
    mlp_type="gelu", hidden_act="gelu", norm_type="layernorm", position_embedding_type="absolute",
    norm_position="pre", tie_word_embeddings=True,
)  # fmt: skip


def _is_contextpool(config: Any) -> bool:
    return getattr(config, "model_type", None) == "contextpool"


def vanilla_config(task: str, baseline: str, cp_config: Any, num_labels: int | None = None) -> Any:
    """transformers' Llama (causal) or BERT (encoder) config of the same size as `cp_config`."""
    if baseline == "llama":
        if task != "clm":
            raise ValueError("--baseline llama is a causal LM: use it with run_clm.py (bert for MLM/classification)")
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=cp_config.vocab_size, hidden_size=cp_config.hidden_size,
            num_hidden_layers=cp_config.num_hidden_layers, num_attention_heads=cp_config.num_attention_heads,
            num_key_value_heads=cp_config.num_key_value_heads, head_dim=cp_config.head_dim,
            intermediate_size=cp_config.intermediate_size, hidden_act=cp_config.hidden_act
            if cp_config.mlp_type == "gated" else "silu",
            max_position_embeddings=cp_config.max_position_embeddings, rms_norm_eps=cp_config.norm_eps,
            rope_parameters={"rope_type": "default", "rope_theta": float(cp_config.rope_theta)},
            attention_bias=cp_config.attention_bias, mlp_bias=cp_config.mlp_bias,
            tie_word_embeddings=cp_config.tie_word_embeddings, initializer_range=cp_config.initializer_range,
            pad_token_id=cp_config.pad_token_id, bos_token_id=cp_config.bos_token_id,
            eos_token_id=cp_config.eos_token_id,
        )  # fmt: skip
    if baseline == "bert":
        if task == "clm":
            raise ValueError("--baseline bert is an encoder: use --baseline llama with run_clm.py")
        from transformers import BertConfig

        kwargs = {"num_labels": num_labels} if num_labels else {}
        return BertConfig(
            vocab_size=cp_config.vocab_size, hidden_size=cp_config.hidden_size,
            num_hidden_layers=cp_config.num_hidden_layers, num_attention_heads=cp_config.num_attention_heads,
            intermediate_size=cp_config.intermediate_size, hidden_act=cp_config.hidden_act,
            max_position_embeddings=cp_config.max_position_embeddings,
            type_vocab_size=max(cp_config.type_vocab_size, 1), layer_norm_eps=cp_config.norm_eps,
            pad_token_id=cp_config.pad_token_id if cp_config.pad_token_id is not None else 0,
            initializer_range=cp_config.initializer_range, **kwargs,
        )  # fmt: skip
    raise ValueError(f"no vanilla config for baseline {baseline!r}")


def default_config(task: str, tokenizer: Any, max_positions: int, overrides: str | None = None,
                   config_name: str | None = None, num_labels: int | None = None,
                   trust_remote_code: bool = False) -> Any:  # fmt: skip
    """The ContextPool config to train from scratch: `config_name` or the small default, plus overrides."""
    from transformers import AutoConfig

    from .configuration_contextpool import ContextPoolConfig

    if config_name is not None:
        config = AutoConfig.from_pretrained(config_name, trust_remote_code=trust_remote_code)
        if num_labels is not None:
            config.num_labels = num_labels
        apply_config_overrides(config, overrides)
    else:
        # Build from defaults + overrides in one go, so __post_init__ derives head_dim etc. from them.
        fields = dict(DEFAULT_CLM_CONFIG if task == "clm" else DEFAULT_ENCODER_CONFIG)
        fields.update(
            vocab_size=len(tokenizer), max_position_embeddings=max_positions, is_causal=task == "clm",
            classifier_pooling="last" if task == "clm" else "cls", pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        )  # fmt: skip
        values = parse_config_overrides(overrides, ContextPoolConfig(**fields))
        if "hidden_size" in values and "intermediate_size" not in values:
            ratio = fields["intermediate_size"] / fields["hidden_size"]
            fields["intermediate_size"] = int(math.ceil(ratio * values["hidden_size"] / 8) * 8)
        fields.update(values)
        if num_labels is not None:
            fields["num_labels"] = num_labels
        config = ContextPoolConfig(**fields)
        config.validate_architecture()
    if getattr(config, "vocab_size", None) is not None and config.vocab_size < len(tokenizer):
        raise ValueError(f"config vocab_size {config.vocab_size} < tokenizer size {len(tokenizer)}")
    return config


def _auto_class(task: str):
    import transformers

    return getattr(transformers, TASK_AUTO_CLASS[task])


def build_model(task: str, model_args: ModelArguments, tokenizer: Any, *, max_positions: int = 512,
                num_labels: int | None = None, label_maps: tuple[dict, dict] | None = None,
                training_args: Any = None) -> Any:  # fmt: skip
    """Build the model a script trains.

    - ``--model_name_or_path`` of a ContextPool checkpoint: loaded (pool overrides may be applied).
    - of another model (BERT/GPT-2/Llama): converted with `contextpool_hf.convert.convert_model`;
      ``--baseline llama/bert`` loads it unconverted instead; ``contextpool-off`` converts with pooling off.
    - otherwise a new model from ``--config_name`` or the small default config (+ ``--config_overrides``);
      ``--baseline contextpool-off`` sets ``pool_layers=[]``, ``llama``/``bert`` builds transformers' model
      of the same size.
    """
    from transformers import AutoConfig

    import contextpool_hf  # noqa: F401  (registers the Auto classes)

    auto = _auto_class(task)
    extra: dict[str, Any] = {}
    if num_labels is not None:
        extra["num_labels"] = num_labels
    if label_maps is not None:
        extra["id2label"], extra["label2id"] = label_maps[1], label_maps[0]
    baseline = model_args.baseline
    if baseline not in BASELINES:
        raise ValueError(f"--baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")

    if model_args.model_name_or_path is not None:
        path = model_args.model_name_or_path
        if os.path.isdir(path):
            validate_checkpoint(path)
        with _main_first(training_args, "loading the model"):
            config = AutoConfig.from_pretrained(path, trust_remote_code=model_args.trust_remote_code,
                                                revision=model_args.model_revision)  # fmt: skip
            if _is_contextpool(config) or baseline in ("llama", "bert"):
                if baseline in ("llama", "bert") and _is_contextpool(config):
                    raise ValueError(f"--baseline {baseline} with a ContextPool checkpoint: pass the original "
                                     "BERT/Llama checkpoint, or use --baseline contextpool-off")  # fmt: skip
                overrides = parse_config_overrides(model_args.config_overrides, config)
                if baseline == "contextpool-off":
                    overrides["pool_layers"] = []
                model = auto.from_pretrained(path, trust_remote_code=model_args.trust_remote_code,
                                             revision=model_args.model_revision, **overrides, **extra)  # fmt: skip
            else:
                try:
                    from .convert import convert_model
                except ImportError as error:
                    raise ImportError(
                        f"{path} is a {config.model_type!r} checkpoint; converting it needs contextpool_hf.convert "
                        f"({error}). Pass --baseline llama/bert to train it unconverted."
                    ) from error
                from .configuration_contextpool import ContextPoolConfig

                # only ContextPool fields make sense for a conversion: check them against that config
                pool_overrides = parse_config_overrides(model_args.config_overrides, ContextPoolConfig())
                if baseline == "contextpool-off":
                    pool_overrides["pool_layers"] = []
                source = auto.from_pretrained(path, trust_remote_code=model_args.trust_remote_code,
                                              revision=model_args.model_revision, **extra)  # fmt: skip
                model = convert_model(source, task=_convert_task(task), **pool_overrides)
        return model

    config = default_config(task, tokenizer, max_positions, model_args.config_overrides, model_args.config_name,
                            num_labels, model_args.trust_remote_code)  # fmt: skip
    if label_maps is not None:
        config.label2id, config.id2label = label_maps
    if baseline == "contextpool-off":
        config.pool_layers = []
    if baseline in ("llama", "bert"):
        config = vanilla_config(task, baseline, config, num_labels)
        if label_maps is not None:
            config.label2id, config.id2label = label_maps
    return auto.from_config(config, trust_remote_code=model_args.trust_remote_code)


def _convert_task(task: str) -> str:
    return {"clm": "causal-lm", "mlm": "masked-lm", "classification": "sequence-classification"}[task]


def count_parameters(model: Any) -> int:
    """Trainable parameters, tied embeddings counted once: transformers' ``model.num_parameters(only_trainable=True)``.

    Kept as a name for the scripts and studies that import it.
    """
    if hasattr(model, "num_parameters"):
        return model.num_parameters(only_trainable=True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)  # a plain torch module


def estimate_training_flops(model: Any, tokens: int, block_size: int) -> dict[str, float]:
    """Training FLOPs on `tokens` tokens in blocks of `block_size`: the project's one definition.

    Training costs 3x the forward pass (backward = 2x forward), 2 FLOPs per multiply-add:

    - ``flops_dense`` = 6 * N * tokens with N = ``model.num_parameters(exclude_embeddings=True)``:
      exactly what transformers' `Trainer` reports as ``total_flos`` (`PreTrainedModel.floating_point_ops`),
      so the two agree for a run trained in one go (a resumed run's ``total_flos`` also counts the steps
      before the resume). Embedding lookups are not matmuls; by this convention a head tied to the
      embedding is not counted either.
    - ``flops_attention`` = 6 * 2 * L * d_attn * context * tokens: scores and weighted sum, with
      context = block_size / 2 for causal models (the causal half of the n x n product), block_size
      for encoders. ``total_flos`` leaves this out.
    - ``flops_pooling`` (ContextPool layers only) = 3 * 4 * n_pool * window * hidden * tokens: per token and
      pooling layer, a window of 2R+1 (causal: R+1) neighbours, R = ceil(pool_truncation * pool_sigma_max),
      times the pooled width, ~4 FLOPs each (weight, mask, sum, normaliser); the predictor's parameters
      are in N. ``total_flos`` leaves this out.
    - ``flops_total`` = the sum: what the studies compare pooled and unpooled models by.
    """
    config = model.config
    layers = getattr(config, "num_hidden_layers", 0)
    hidden = getattr(config, "hidden_size", 0)
    heads = getattr(config, "num_attention_heads", 1)
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    d_attn = heads * head_dim
    causal = getattr(config, "is_causal", False) or getattr(config, "model_type", "") == "llama"
    context = block_size / 2 if causal else block_size
    attention = 6 * 2 * layers * d_attn * context * tokens
    pooling = 0.0
    if _is_contextpool(config):
        pool_layers = config.pool_layers
        n_pool = layers if pool_layers is None else len(pool_layers)
        radius = math.ceil(config.pool_truncation * config.pool_sigma_max)
        window = radius + 1 if config.is_causal else 2 * radius + 1
        pooling = 3 * 4 * n_pool * window * hidden * tokens
    dense = 6 * model.num_parameters(exclude_embeddings=True) * tokens
    return {"flops_dense": float(dense), "flops_attention": float(attention), "flops_pooling": float(pooling),
            "flops_total": float(dense + attention + pooling)}  # fmt: skip
