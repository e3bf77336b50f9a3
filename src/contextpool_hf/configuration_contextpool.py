"""ContextPool text model configuration.

Flat, Hub-shipped file: imports only torch/transformers (huggingface_hub comes with
transformers). One config hosts BERT-, GPT-2- and Llama-shaped Transformers so that their
checkpoints convert by a key map; the `pool_*` fields are the ContextPool knobs of the spec.
"""

import math
from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.activations import ACT2FN

# Every Auto class the text models answer to; written into config.json so that users without
# this package can load any head with trust_remote_code=True.
CONTEXTPOOL_AUTO_MAP = {
    "AutoConfig": "configuration_contextpool.ContextPoolConfig",
    "AutoModel": "modeling_contextpool.ContextPoolModel",
    "AutoModelForMaskedLM": "modeling_contextpool.ContextPoolForMaskedLM",
    "AutoModelForCausalLM": "modeling_contextpool.ContextPoolForCausalLM",
    "AutoModelForSequenceClassification": "modeling_contextpool.ContextPoolForSequenceClassification",
    "AutoModelForTokenClassification": "modeling_contextpool.ContextPoolForTokenClassification",
    "AutoModelForQuestionAnswering": "modeling_contextpool.ContextPoolForQuestionAnswering",
}

Number = int | float
# Scaled rotary types whose frequencies do not depend on the sequence length ("dynamic" does).
ROPE_SCALING_TYPES = ("linear", "llama3", "yarn")


def rope_stand_in(config) -> PreTrainedConfig:
    """A bare config carrying what transformers' rope functions read (`rope_parameters` with the
    theta, head sizes), so that ROPE_INIT_FUNCTIONS and validate_rope work on ContextPool's fields."""
    stand_in = PreTrainedConfig()
    stand_in.rope_parameters = {"rope_theta": float(config.rope_theta), **dict(config.rope_scaling_params or {})}
    stand_in.head_dim, stand_in.hidden_size = config.head_dim, config.hidden_size
    stand_in.num_attention_heads = config.num_attention_heads
    stand_in.max_position_embeddings = config.max_position_embeddings
    return stand_in


def _check_finite(config, name: str, low: float, low_open: bool = False) -> None:
    """A finite number >= low (> low when low_open): NaN passes every `<` test, so test it explicitly."""
    value = getattr(config, name)
    if not math.isfinite(value) or value < low or (low_open and value <= low):
        raise ValueError(f"{name} must be a finite number {'>' if low_open else '>='} {low}, got {value!r}")


def _check_token_id_fields(config, names) -> None:
    """Token ids (or lists of them, eos) must be None or inside the vocabulary: nn.Embedding reads a
    negative padding_idx from the end (pad_token_id=-5 silently makes token vocab_size - 5 the padding row)."""
    for name in names:
        value = getattr(config, name, None)
        for token in value if isinstance(value, list) else [value]:
            if token is not None and not 0 <= token < config.vocab_size:
                raise ValueError(
                    f"{name} must be None or a token id in [0, vocab_size={config.vocab_size}), got {value!r}"
                )


def _validate_pool_fields(config) -> None:
    """The checks of the `pool_*` fields shared by the text and seq2seq configs (ValueError naming the field)."""
    # finite: an infinite width or truncation makes the window radius R = ceil(truncation * sigma_max) infinite
    for name in ("pool_sigma_min", "pool_sigma_max", "pool_truncation"):
        _check_finite(config, name, 0.0, low_open=True)
    if not math.isfinite(config.pool_truncation * config.pool_sigma_max):
        raise ValueError(
            f"pool_truncation * pool_sigma_max (the window radius) must be finite, got "
            f"{config.pool_truncation} * {config.pool_sigma_max}"
        )
    if not 0 < config.pool_sigma_min < config.pool_sigma_max:
        raise ValueError(
            f"need 0 < pool_sigma_min < pool_sigma_max, got pool_sigma_min={config.pool_sigma_min}, "
            f"pool_sigma_max={config.pool_sigma_max}"
        )
    if not config.pool_truncation > 0:
        raise ValueError(f"pool_truncation must be > 0, got {config.pool_truncation}")
    if config.pool_predictor_width is not None and config.pool_predictor_width < 1:
        raise ValueError(f"pool_predictor_width must be a positive integer or None, got {config.pool_predictor_width}")
    if config.pool_kernel_size % 2 == 0:
        raise ValueError(f"pool_kernel_size must be odd, got {config.pool_kernel_size}")
    if not 0.0 <= config.pool_mix_init <= 1.0:
        raise ValueError(f"pool_mix_init must be in [0, 1], got {config.pool_mix_init}")


@strict
class ContextPoolConfig(PreTrainedConfig):
    r"""Configuration of a ContextPool Transformer (encoder, decoder, or decoder-only LM).

    Architecture fields (enough to host BERT, GPT-2 and Llama weights):
        vocab_size, hidden_size, num_hidden_layers, num_attention_heads: the usual sizes.
        num_key_value_heads: grouped-query attention (Llama); None = num_attention_heads.
        head_dim: per-head width; None = hidden_size // num_attention_heads.
        intermediate_size: MLP width; None = 4 * hidden_size.
        mlp_type: "gelu" (up -> act -> down, BERT/GPT-2) or "gated" (act(gate) * up -> down, Llama).
        hidden_act: activation name from transformers' ACT2FN ("gelu", "gelu_new", "silu", ...).
        max_position_embeddings: longest sequence the model accepts (inputs beyond it are an error).
        position_embedding_type: "absolute" (learned, BERT/GPT-2), "rotary" (Llama) or "none".
        rope_theta: rotary base frequency.
        rope_scaling_params: None (plain rotary) or a scaled rotary type as transformers' `rope_parameters`
            hold it, less `rope_theta`: {"rope_type": "llama3" | "linear" | "yarn", "factor": ..., ...}
            (Llama 3 checkpoints use "llama3"). Frequencies come from transformers' ROPE_INIT_FUNCTIONS.
        type_vocab_size: token-type (segment) embeddings, 0 = none (BERT uses 2).
        norm_type / norm_eps / norm_bias: "layernorm" or "rmsnorm", its epsilon, LayerNorm bias.
        norm_position: "pre" (GPT-2/Llama) or "post" (BERT) residual normalisation.
        embedding_norm: normalise the embeddings (BERT). final_norm: normalise the last layer (pre-norm models).
        attention_bias / mlp_bias: biases of the attention projections / MLP linears.
        attention_output_bias: bias of the attention output projection; None = attention_bias
            (Qwen2 has q/k/v biases and none on the output).
        qk_norm: RMSNorm over each head's queries and keys before the rotation (Qwen3).
        attention_window: causal attention sees only the last `attention_window` positions (Mistral's
            sliding window); None = all of them.
        is_causal: decoder-only attention (GPT-2/Llama); False = bidirectional encoder (BERT).
        tie_word_embeddings: LM heads share the input embedding matrix.
        mlm_head_transform: BERT-style dense -> act -> norm before the MLM decoder.
        classifier_pooling: sequence representation for classification: "cls" (first token),
            "last" (last real token, decoder-only models) or "mean".
        use_pooler: BERT's dense+tanh pooler on top of classifier_pooling.

    ContextPool fields (see the spec, items 1-7):
        pool_layers: indices of the layers that pool; None = every layer, [] = none (vanilla).
        pool_groups: 1 = one pooling shared by all heads; num_key_value_heads (or any divisor of it)
            = per-head pooling, each group with its own weights and sizes.
        pool_target: "qkv" (queries, keys and values from pooled features: context-wise attention)
            or "kv" (queries from the token itself).
        pool_sigma_min / pool_sigma_max: range of the Gaussian widths, in tokens.
        pool_truncation: window radius R = ceil(pool_truncation * pool_sigma_max).
        pool_normalize: divide by the pooled weight mass (spec item 5).
        pool_kernel_size / pool_predictor_width: predictor's depthwise conv kernel and width (None = hidden_size).
        pool_mix_init: initial value of each layer's learnable mix between the token and its pooled
            context (1 = fully pooled; converted pretrained models start at 0 = exactly the source).
        pool_implementation: "fast" (O(n R d)), "reference" (dense, for testing) or "triton" (Triton kernels
            on CUDA, opt-in: needs the triton package, and has not been measured faster yet).
        pool_placement: what is pooled (ablation of issue 16). "attention_input" (the spec): the layer's
            normalised input is pooled for its attention and the residual stream is kept.
            "block_output" (the paper's Fig. 2(c) caption): the features entering a pooling layer (the
            previous block's output, i.e. the residual stream itself) are pooled and replace it, so the
            pooled features feed this layer's attention and everything after it. Needs pool_groups=1
            and pool_target="qkv".
        pool_mode: "adaptive" (the spec: the predictor gives every token its own w and sigma), "fixed"
            (ablation: w = 1 and sigma = pool_fixed_sigma for every token, no predictor) or
            "fixed_learned" (w = 1, one learned sigma per layer and pooling group, starting at
            pool_fixed_sigma). The window radius R is the same in every mode.
        pool_fixed_sigma: the width of the fixed modes, in [pool_sigma_min, pool_sigma_max]; None = the
            midpoint, where an adaptive predictor starts (sigmoid(0) = 1/2).
    """

    model_type = "contextpool"
    keys_to_ignore_at_inference = ["cache"]

    vocab_size: int = 8192
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    intermediate_size: int | None = None
    mlp_type: Literal["gelu", "gated"] = "gelu"
    hidden_act: str = "gelu"
    max_position_embeddings: int = 1024
    position_embedding_type: Literal["absolute", "rotary", "none"] = "rotary"
    rope_theta: Number = 10000.0
    type_vocab_size: int = 0
    norm_type: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: Number = 1e-5
    norm_bias: bool = True
    norm_position: Literal["pre", "post"] = "pre"
    embedding_norm: bool = False
    final_norm: bool = True
    attention_bias: bool = True
    mlp_bias: bool = True
    attention_output_bias: bool | None = None
    qk_norm: bool = False
    attention_window: int | None = None
    rope_scaling_params: dict | None = None
    is_causal: bool = False
    hidden_dropout: Number = 0.0
    attention_dropout: Number = 0.0
    embedding_dropout: Number | None = None
    classifier_dropout: Number | None = None
    initializer_range: Number = 0.02
    mlm_head_transform: bool = True
    classifier_pooling: Literal["cls", "last", "mean"] = "cls"
    use_pooler: bool = False
    tie_word_embeddings: bool = True
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    pool_layers: list[int] | None = None
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
    pool_placement: Literal["attention_input", "block_output"] = "attention_input"
    pool_mode: Literal["adaptive", "fixed", "fixed_learned"] = "adaptive"
    pool_fixed_sigma: Number | None = None

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None and self.num_attention_heads > 0:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        if self.embedding_dropout is None:
            self.embedding_dropout = self.hidden_dropout
        if self.classifier_dropout is None:
            self.classifier_dropout = self.hidden_dropout
        super().__post_init__(**kwargs)
        if getattr(self, "auto_map", None) is None:
            self.auto_map = dict(CONTEXTPOOL_AUTO_MAP)

    def validate_architecture(self):
        """Reject values that would build a broken model, naming the field."""
        positive = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                    "head_dim", "intermediate_size", "max_position_embeddings", "pool_groups", "pool_kernel_size")
        for name in positive:
            value = getattr(self, name)
            if value is None or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.num_key_value_heads % self.pool_groups:
            raise ValueError(
                f"pool_groups ({self.pool_groups}) must divide num_key_value_heads ({self.num_key_value_heads}): "
                "use 1 (shared pooling) or a per-head grouping"
            )
        if self.position_embedding_type == "rotary" and self.head_dim % 2:
            raise ValueError(f"rotary positions need an even head_dim, got {self.head_dim}")
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"hidden_act must be one of transformers' activations {sorted(ACT2FN)}, got {self.hidden_act!r}")
        if self.type_vocab_size < 0:
            raise ValueError(f"type_vocab_size must be >= 0, got {self.type_vocab_size}")
        for name in ("hidden_dropout", "attention_dropout", "embedding_dropout", "classifier_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        _validate_pool_fields(self)
        self._validate_pool_ablations()
        if self.pool_layers is not None:
            bad = [i for i in self.pool_layers if not 0 <= i < self.num_hidden_layers]
            if bad:
                raise ValueError(
                    f"pool_layers has indices outside [0, {self.num_hidden_layers}): {bad}"
                )
        self._validate_text_options()
        _check_finite(self, "norm_eps", 0.0, low_open=True)
        _check_finite(self, "initializer_range", 0.0)
        _check_finite(self, "rope_theta", 0.0, low_open=True)  # the rotary base: 0, < 0 or NaN gives NaN angles
        _check_token_id_fields(self, ("pad_token_id", "bos_token_id", "eos_token_id"))

    def _validate_text_options(self) -> None:
        """attention_window and rope_scaling_params (the Mistral / Llama 3 options), naming the field."""
        window = self.attention_window
        if window is not None and (isinstance(window, bool) or window < 1 or not self.is_causal):
            raise ValueError(
                f"attention_window must be None or a positive integer on a causal model (is_causal=True), got "
                f"{window!r} with is_causal={self.is_causal}"
            )
        if self.rope_scaling_params is None:
            return
        if self.position_embedding_type != "rotary":
            raise ValueError("rope_scaling_params needs position_embedding_type='rotary'")
        rope_type = self.rope_scaling_params.get("rope_type")
        if rope_type not in ROPE_SCALING_TYPES:
            raise ValueError(f"rope_scaling_params['rope_type'] must be one of {ROPE_SCALING_TYPES}, got {rope_type!r}")
        try:
            rope_stand_in(self).validate_rope()
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"rope_scaling_params {self.rope_scaling_params} are not valid: {error}") from None

    def _validate_pool_ablations(self) -> None:
        """pool_placement / pool_mode / pool_fixed_sigma (the issue-16 ablations), naming the field."""
        placements, modes = ("attention_input", "block_output"), ("adaptive", "fixed", "fixed_learned")
        if self.pool_placement not in placements:
            raise ValueError(f"pool_placement must be one of {placements}, got {self.pool_placement!r}")
        if self.pool_mode not in modes:
            raise ValueError(f"pool_mode must be one of {modes}, got {self.pool_mode!r}")
        if self.pool_placement == "block_output" and (self.pool_groups != 1 or self.pool_target != "qkv"):
            raise ValueError(
                "pool_placement='block_output' pools the residual stream itself, so it needs pool_groups=1 and "
                f"pool_target='qkv'; got pool_groups={self.pool_groups}, pool_target={self.pool_target!r}"
            )
        sigma = self.pool_fixed_sigma
        if sigma is not None and not self.pool_sigma_min <= sigma <= self.pool_sigma_max:
            raise ValueError(
                f"pool_fixed_sigma must be in [pool_sigma_min, pool_sigma_max] = "
                f"[{self.pool_sigma_min}, {self.pool_sigma_max}], got {sigma}"
            )
        if self.pool_mode == "fixed_learned" and sigma in (self.pool_sigma_min, self.pool_sigma_max):
            raise ValueError(
                "pool_fixed_sigma must lie strictly inside (pool_sigma_min, pool_sigma_max) for "
                f"pool_mode='fixed_learned' (it is learned through a sigmoid), got {sigma}"
            )

    def layer_pools(self, layer_idx: int) -> bool:
        """Whether layer `layer_idx` runs ContextPool before its attention."""
        return self.pool_layers is None or layer_idx in self.pool_layers


__all__ = ["ContextPoolConfig", "CONTEXTPOOL_AUTO_MAP"]
