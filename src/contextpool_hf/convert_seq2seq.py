"""Convert MarianMT / BART checkpoints into ContextPool encoder-decoders.

The ContextPool seq2seq model keeps BART's weight names except for a few renames (the key map
below), so every source tensor lands somewhere. The new ContextPool tensors (predictors, mix
gates) start with the gates closed (`pool_mix_init=0.0`, spec item 7): at conversion time the
converted model computes exactly what the source computes; fine-tuning opens the gates.

    from contextpool_hf.convert_seq2seq import convert_seq2seq_checkpoint
    convert_seq2seq_checkpoint("Helsinki-NLP/opus-mt-en-de", "out/contextpool-opus-en-de")
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedModel

from .configuration_contextpool_seq2seq import ContextPoolSeq2SeqConfig
from .convert import _source_name
from .modeling_contextpool_seq2seq import ContextPoolForConditionalGeneration

SUPPORTED_SEQ2SEQ = ("marian", "bart")

# source key (regex) -> target key; applied in order, first match wins.
_KEY_MAP = [
    (r"^model\.(encoder|decoder)\.embed_tokens\.weight$", None),  # tied to model.shared
    (r"^model\.(encoder|decoder)\.embed_positions\.weight$", r"model.\1.embeddings.embed_positions.weight"),
    (r"^model\.(encoder|decoder)\.layernorm_embedding\.(weight|bias)$", r"model.\1.embeddings.layernorm_embedding.\2"),
    (r"^(.*\.(?:self_attn|encoder_attn))\.out_proj\.(weight|bias)$", r"\1.o_proj.\2"),
    (r"^(.*\.layers\.\d+)\.(fc1|fc2)\.(weight|bias)$", r"\1.mlp.\2.\3"),
]


def _map_key(key: str) -> str | None:
    for pattern, target in _KEY_MAP:
        if re.match(pattern, key):
            return None if target is None else re.sub(pattern, target, key)
    return key


def _seq2seq_config(cfg, overrides: dict) -> ContextPoolSeq2SeqConfig:
    model_type = cfg.model_type
    if model_type not in SUPPORTED_SEQ2SEQ:
        raise ValueError(f"convert_seq2seq handles model_type {SUPPORTED_SEQ2SEQ}, got {model_type!r}")
    bad = sorted(k for k in overrides if not k.startswith("pool_"))
    if bad:
        raise ValueError(f"only pool_* fields can be overridden at conversion, got {bad}")
    if model_type == "marian":
        if not getattr(cfg, "share_encoder_decoder_embeddings", True) or cfg.decoder_vocab_size not in (None, cfg.vocab_size):
            raise ValueError("only Marian checkpoints with one shared source/target vocabulary convert")
        arch = {"position_embedding_type": "sinusoidal", "position_offset": 0, "layernorm_embedding": False}
    else:
        arch = {"position_embedding_type": "learned", "position_offset": 2, "layernorm_embedding": True}
    return ContextPoolSeq2SeqConfig(
        vocab_size=cfg.vocab_size,
        d_model=cfg.d_model,
        encoder_layers=cfg.encoder_layers,
        decoder_layers=cfg.decoder_layers,
        encoder_attention_heads=cfg.encoder_attention_heads,
        decoder_attention_heads=cfg.decoder_attention_heads,
        encoder_ffn_dim=cfg.encoder_ffn_dim,
        decoder_ffn_dim=cfg.decoder_ffn_dim,
        activation_function=cfg.activation_function,
        max_position_embeddings=cfg.max_position_embeddings,
        scale_embedding=bool(cfg.scale_embedding),
        norm_position="post",
        norm_eps=1e-5,
        dropout=float(cfg.dropout),
        attention_dropout=float(cfg.attention_dropout),
        activation_dropout=float(cfg.activation_dropout),
        init_std=float(cfg.init_std),
        tie_word_embeddings=bool(getattr(cfg, "tie_word_embeddings", True)),
        final_logits_bias=True,
        pad_token_id=cfg.pad_token_id,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        decoder_start_token_id=cfg.decoder_start_token_id,
        forced_eos_token_id=getattr(cfg, "forced_eos_token_id", None),
        **arch,
        **{"pool_mix_init": 0.0, **overrides},
    )


def convert_seq2seq_model(
    source_model_or_path: PreTrainedModel | str | os.PathLike, **pool_overrides
) -> ContextPoolForConditionalGeneration:
    """A `MarianMTModel` / `BartForConditionalGeneration` (or a path to one) -> ContextPool model.

    `pool_overrides` sets `pool_*` fields (default `pool_mix_init=0.0`: outputs match the source).
    Raises ValueError if a source weight has no place in the target or a target weight is missing.
    """
    source = source_model_or_path
    if isinstance(source, (str, os.PathLike)):
        source = AutoModelForSeq2SeqLM.from_pretrained(source)
    config = _seq2seq_config(source.config, pool_overrides)
    target = ContextPoolForConditionalGeneration(config).to(source.dtype)
    state, dropped = {}, []
    for key, value in source.state_dict().items():
        mapped = _map_key(key)
        if mapped is None:
            dropped.append(key)
        else:
            state[mapped] = value
    # Marian's sinusoidal table is computed on the fly here; check it instead of copying it.
    if config.position_embedding_type == "sinusoidal":
        for stack in ("encoder", "decoder"):
            table = state.pop(f"model.{stack}.embeddings.embed_positions.weight", None)
            if table is not None and table.abs().sum() > 0:
                from .modeling_contextpool_seq2seq import sinusoidal_positions

                ids = torch.arange(table.shape[0]).unsqueeze(0)
                ours = sinusoidal_positions(ids, config.d_model, table.dtype)[0]
                if not torch.allclose(ours, table, atol=1e-6):
                    raise ValueError(f"the source's {stack} position table is not Marian's sinusoidal table")
    for stack in ("encoder", "decoder"):  # the dropped embeddings must really be the shared matrix
        key = f"model.{stack}.embed_tokens.weight"
        if key in dropped and not torch.equal(source.state_dict()[key], state["model.shared.weight"]):
            raise ValueError(f"{key} differs from model.shared.weight: untied embeddings do not convert")
    result = target.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if ".pool." not in k and not k.endswith("pool_mix")]
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if result.unexpected_keys or missing:
        raise ValueError(f"weights do not map: unexpected {result.unexpected_keys}, missing {missing}")
    if config.tie_word_embeddings:
        target.tie_weights()
    elif "lm_head.weight" not in state:
        raise ValueError("the source has an untied lm_head but no lm_head.weight")
    target.generation_config = copy.deepcopy(source.generation_config)
    return target.eval()


@torch.no_grad()
def compare_seq2seq(source, converted, *, batch: int = 2, src_len: int = 11, tgt_len: int = 7, seed: int = 0,
                    max_new_tokens: int = 8) -> dict:
    """Max |logits difference| on a padded random batch, and whether greedy generations agree."""
    source.eval()
    converted.eval()
    gen = torch.Generator().manual_seed(seed)
    vocab = source.config.vocab_size
    low = 4 if vocab > 8 else 0
    input_ids = torch.randint(low, vocab, (batch, src_len), generator=gen)
    attention_mask = torch.ones_like(input_ids)
    if batch > 1:
        attention_mask[-1, -3:] = 0
        input_ids[-1, -3:] = source.config.pad_token_id
    decoder_input_ids = torch.randint(low, vocab, (batch, tgt_len), generator=gen)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "decoder_input_ids": decoder_input_ids}
    diff = float((source(**inputs).logits - converted(**inputs).logits).abs().max())
    kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False, "num_beams": 1}
    a = source.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    b = converted.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    return {"max_abs_logit_diff": diff, "generations_equal": bool(a.shape == b.shape and torch.equal(a, b))}


def convert_seq2seq_checkpoint(
    src, out, *, check: bool = True, tolerance: float = 1e-5, overwrite: bool = False, **overrides
) -> Path:
    """Convert a Marian/BART checkpoint (folder, Hub name or model) and save it to `out` with remote code,
    the source tokenizer (when it loads) and `conversion.json`. With `check`, the converted model must
    reproduce the source's logits within `tolerance` and its greedy generations exactly."""
    import contextpool_hf  # noqa: F401  (registers the classes so save_pretrained writes the code files)

    from .convert import check_output_folder

    check_output_folder(src, out, overwrite)  # never into the source folder; non-empty OUT needs overwrite
    source = src if isinstance(src, PreTrainedModel) else AutoModelForSeq2SeqLM.from_pretrained(src)
    model = convert_seq2seq_model(source, **overrides)
    report = {"source": _source_name(src) if not isinstance(src, PreTrainedModel) else type(src).__name__,
              "source_model_type": source.config.model_type,
              "pool_overrides": {"pool_mix_init": 0.0, **overrides}}
    if check:
        report.update(compare_seq2seq(source.float(), model.float()))
        if report["max_abs_logit_diff"] > tolerance or not report["generations_equal"]:
            raise ValueError(f"converted model does not reproduce the source: {report}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer_files = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "source.spm")
    local_without_tokenizer = os.path.isdir(src) and not any((Path(src) / f).exists() for f in tokenizer_files) \
        if not isinstance(src, PreTrainedModel) else True
    report["tokenizer"] = False
    if not local_without_tokenizer:  # never save a tokenizer guessed for a folder that has none
        try:
            AutoTokenizer.from_pretrained(src).save_pretrained(out)
            report["tokenizer"] = True
        except (OSError, ValueError, TypeError):
            pass
    (out / "conversion.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return out


def is_seq2seq_source(src) -> bool:
    """Whether `src` (model or path) is a checkpoint this module converts."""
    cfg = src.config if isinstance(src, PreTrainedModel) else AutoConfig.from_pretrained(src)
    return cfg.model_type in SUPPORTED_SEQ2SEQ


__all__ = ["convert_seq2seq_model", "convert_seq2seq_checkpoint", "compare_seq2seq", "is_seq2seq_source",
           "SUPPORTED_SEQ2SEQ"]
