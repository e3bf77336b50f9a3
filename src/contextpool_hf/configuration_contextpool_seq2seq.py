"""ContextPool encoder-decoder (translation) configuration.

Flat, Hub-shipped file: imports only transformers (huggingface_hub comes with it). One config
hosts BART-shaped (learned positions with offset 2, `layernorm_embedding`, post-norm, GELU) and
Marian-shaped (sinusoidal positions, scaled embeddings, post-norm, swish) Transformers, so both
convert by a key map; the `pool_*` fields are the ContextPool knobs of the spec (items 1-10).
"""


from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.activations import ACT2FN

from .configuration_contextpool import _check_finite, _check_token_id_fields, _validate_pool_fields

CONTEXTPOOL_SEQ2SEQ_AUTO_MAP = {
    "AutoConfig": "configuration_contextpool_seq2seq.ContextPoolSeq2SeqConfig",
    "AutoModel": "modeling_contextpool_seq2seq.ContextPoolSeq2SeqModel",
    "AutoModelForSeq2SeqLM": "modeling_contextpool_seq2seq.ContextPoolForConditionalGeneration",
}

Number = int | float


@strict
class ContextPoolSeq2SeqConfig(PreTrainedConfig):
    r"""Configuration of a ContextPool encoder-decoder Transformer (one shared vocabulary).

    Architecture fields:
        vocab_size, d_model: shared source/target vocabulary and model width.
        encoder_layers / decoder_layers, encoder_attention_heads / decoder_attention_heads,
            encoder_ffn_dim / decoder_ffn_dim: stack sizes.
        activation_function: ACT2FN name ("gelu" for BART, "swish" for Marian).
        max_position_embeddings: longest source or target the model accepts.
        position_embedding_type: "learned" (BART) or "sinusoidal" (Marian; no weights).
        position_offset: learned position ids start here (BART keeps 2 unused rows).
        scale_embedding: multiply token embeddings by sqrt(d_model) (Marian).
        layernorm_embedding: LayerNorm after token + position embeddings (BART).
        norm_position: "post" (BART/Marian) or "pre" residual normalisation (pre adds a final norm).
        norm_eps: LayerNorm epsilon. attention_bias: biases of the attention projections.
        dropout / attention_dropout / activation_dropout: residual, attention-weight and MLP dropouts.
        init_std: normal init std. tie_word_embeddings: output head shares the embedding matrix.
        final_logits_bias: keep a (1, vocab) bias added to the logits (BART/Marian checkpoints carry one).
        decoder_start_token_id: first decoder input (BART: eos, Marian: pad); labels are shifted
            right once behind it to form decoder_input_ids.

    ContextPool fields (the spec; same meaning as in ContextPoolConfig):
        pool_encoder_layers / pool_decoder_layers: indices of the layers that pool; None = every
            layer, [] = none. The encoder pools bidirectionally, the decoder causally.
        pool_cross_attention: pool the encoder memory (bidirectionally) before each decoder layer's
            cross-attention keys/values are computed (spec item 9), in the decoder layers that pool.
        pool_groups, pool_target, pool_sigma_min, pool_sigma_max, pool_truncation, pool_normalize,
        pool_kernel_size, pool_predictor_width, pool_mix_init, pool_implementation: see ContextPoolConfig.
            pool_mix_init = 0 gives exactly the vanilla model (converted checkpoints start there).
    """

    model_type = "contextpool_seq2seq"
    keys_to_ignore_at_inference = ["cache", "encoder_last_hidden_state"]
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "encoder_attention_heads",
        "num_hidden_layers": "encoder_layers",
    }

    vocab_size: int = 8000
    d_model: int = 256
    encoder_layers: int = 3
    decoder_layers: int = 3
    encoder_attention_heads: int = 4
    decoder_attention_heads: int = 4
    encoder_ffn_dim: int = 1024
    decoder_ffn_dim: int = 1024
    activation_function: str = "gelu"
    max_position_embeddings: int = 256
    position_embedding_type: Literal["learned", "sinusoidal"] = "sinusoidal"
    position_offset: int = 0
    scale_embedding: bool = True
    layernorm_embedding: bool = False
    norm_position: Literal["pre", "post"] = "pre"
    norm_eps: Number = 1e-5
    attention_bias: bool = True
    dropout: Number = 0.1
    attention_dropout: Number = 0.0
    activation_dropout: Number = 0.0
    init_std: Number = 0.02
    tie_word_embeddings: bool = True
    final_logits_bias: bool = True
    use_cache: bool = True
    is_encoder_decoder: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    decoder_start_token_id: int | None = 1
    forced_eos_token_id: int | None = None

    pool_encoder_layers: list[int] | None = None
    pool_decoder_layers: list[int] | None = None
    pool_cross_attention: bool = True
    pool_groups: int = 1
    pool_target: Literal["qkv", "kv"] = "qkv"
    pool_sigma_min: Number = 0.5
    pool_sigma_max: Number = 8.0
    pool_truncation: Number = 3.0
    pool_normalize: bool = True
    pool_kernel_size: int = 3
    pool_predictor_width: int | None = None
    pool_mix_init: Number = 1.0
    pool_implementation: Literal["fast", "reference", "triton"] = "fast"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if getattr(self, "auto_map", None) is None:
            self.auto_map = dict(CONTEXTPOOL_SEQ2SEQ_AUTO_MAP)

    def validate_architecture(self):
        """Reject values that would build a broken model, naming the field."""
        positive = ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
                    "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "max_position_embeddings",
                    "pool_groups", "pool_kernel_size")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for heads in ("encoder_attention_heads", "decoder_attention_heads"):
            if self.d_model % getattr(self, heads):
                raise ValueError(f"d_model ({self.d_model}) must be a multiple of {heads} ({getattr(self, heads)})")
            if getattr(self, heads) % self.pool_groups:
                raise ValueError(f"pool_groups ({self.pool_groups}) must divide {heads} ({getattr(self, heads)})")
        if self.position_offset < 0:
            raise ValueError(f"position_offset must be >= 0, got {self.position_offset}")
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        _validate_pool_fields(self)
        for name, count in (("pool_encoder_layers", self.encoder_layers), ("pool_decoder_layers", self.decoder_layers)):
            layers = getattr(self, name)
            if layers is not None and any(not 0 <= i < count for i in layers):
                raise ValueError(f"{name} has indices outside [0, {count}): {layers}")
        _check_finite(self, "norm_eps", 0.0, low_open=True)
        _check_finite(self, "init_std", 0.0)
        _check_token_id_fields(
            self, ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "forced_eos_token_id")
        )
        if self.activation_function not in ACT2FN:
            raise ValueError(
                f"activation_function must be one of transformers' activations {sorted(ACT2FN)}, "
                f"got {self.activation_function!r}"
            )

    def pool_layers_of(self, stack: str) -> list[int] | None:
        """The pooling layer indices of the "encoder" or "decoder" stack (None = all)."""
        return self.pool_encoder_layers if stack == "encoder" else self.pool_decoder_layers


__all__ = ["ContextPoolSeq2SeqConfig", "CONTEXTPOOL_SEQ2SEQ_AUTO_MAP"]
