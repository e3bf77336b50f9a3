"""ContextPool encoder-decoder Transformer for translation (BART/Marian shaped).

Flat, Hub-shipped file: imports only torch, transformers and its sibling flat files (relatively),
which `save_pretrained` copies with it. It keeps the outputs and the model classes (the config's
auto_map names them here); the building blocks are in layers_contextpool_seq2seq.py.

- Encoder self-attention pools bidirectionally, decoder self-attention causally (the text
  model's `ContextPoolSelfAttention`, spec items 1-6 and 10).
- Cross-attention pools the encoder memory (bidirectionally) before its keys/values are
  projected (spec item 9). Each decoder layer computes its pooled memory and keys/values once
  per source and keeps them in the cross-attention half of an `EncoderDecoderCache`; the
  self-attention half is a `ContextPoolCache`, which also carries the causal pooling state.
- Every pooled path enters through a learnable mix (`pool_mix`); at 0 the model is exactly
  the vanilla Transformer, which is how BART/Marian checkpoints convert (spec item 7).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache, StaticCache
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import ModelOutput
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import logging
from transformers.utils.deprecation import deprecate_kwarg

from .attention_contextpool import _attention_bias
from .cache_contextpool import ContextPoolCache, check_cache_fits
from .checks_contextpool import _keep_or_none
from .configuration_contextpool_seq2seq import ContextPoolSeq2SeqConfig
from .generation_contextpool import CONTINUOUS_BATCHING_UNSUPPORTED
from .heads_contextpool import _lm_loss
from .inputs_contextpool import _check_label_shape, _checked_labels
from .layers_contextpool import ContextPoolSelfAttention

# sinusoidal_positions and the layers are re-exported: convert_seq2seq.py imports the former from here.
from .layers_contextpool_seq2seq import (  # noqa: F401
    ContextPoolCrossAttention,
    ContextPoolDecoderLayer,
    ContextPoolEncoderLayer,
    ContextPoolSeq2SeqMLP,
    _Embeddings,
    _StackConfig,
    sinusoidal_positions,
)
from .modeling_utils_contextpool import ContextPoolHubMixin, _keep_forward_signature

logger = logging.get_logger(__name__)

# --------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------


@dataclass
class ContextPoolEncoderOutput(ModelOutput):
    """last_hidden_state (B, m, d); pooling_sizes: per layer, sigma (B, G, m) or None."""

    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    pooling_sizes: tuple[torch.Tensor | None, ...] | None = None


@dataclass
class ContextPoolDecoderOutput(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None
    pooling_sizes: tuple[torch.Tensor | None, ...] | None = None


@dataclass
class ContextPoolSeq2SeqModelOutput(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    cache: Cache | None = None
    decoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    decoder_attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None
    decoder_pooling_sizes: tuple[torch.Tensor | None, ...] | None = None
    encoder_pooling_sizes: tuple[torch.Tensor | None, ...] | None = None


@dataclass
class ContextPoolSeq2SeqLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: Cache | None = None
    decoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    decoder_attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None
    decoder_pooling_sizes: tuple[torch.Tensor | None, ...] | None = None
    encoder_pooling_sizes: tuple[torch.Tensor | None, ...] | None = None


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """labels (B, n) -> decoder_input_ids (B, n): start token, then labels[:, :-1]; -100 becomes pad."""
    if decoder_start_token_id is None:
        raise ValueError("config.decoder_start_token_id must be set to build decoder_input_ids from labels")
    if pad_token_id is None:
        raise ValueError("config.pad_token_id must be set to build decoder_input_ids from labels")
    shifted = labels.new_zeros(labels.shape)
    shifted[:, 1:] = labels[:, :-1].clone()
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill(shifted == -100, pad_token_id)


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


class ContextPoolSeq2SeqPreTrainedModel(ContextPoolHubMixin, PreTrainedModel):
    config_class = ContextPoolSeq2SeqConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ContextPoolEncoderLayer", "ContextPoolDecoderLayer"]
    # The pooling runs in our own attention modules; "sdpa" only picks torch's fused product there.
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = False

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, (ContextPoolSelfAttention, ContextPoolCrossAttention)) and module.pool is not None:
            init.constant_(module.pool_mix, float(self.config.pool_mix_init))
        elif isinstance(module, ContextPoolForConditionalGeneration) and module.final_logits_bias is not None:
            init.zeros_(module.final_logits_bias)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # generate() must not hand us a plain DynamicCache for self-attention: the model creates
        # EncoderDecoderCache(ContextPoolCache(), DynamicCache()) and returns it in `outputs.cache`.
        return False


def _keep_mask(mask, batch, length, name):
    """(B, length) 0/1 mask -> bool, or None when nothing is masked; anything else is a ValueError."""
    if mask is None:
        return None
    # 0/1 only: .bool() would read an additive (0 / -inf) mask inverted and 0.5 or -1 as "keep"
    keep = _keep_or_none(mask, name)
    if mask.dim() != 2 or tuple(mask.shape) != (batch, length):
        raise ValueError(f"{name} must be (batch, length) = {(batch, length)}, got {tuple(mask.shape)}")
    return keep


class ContextPoolSeq2SeqEncoder(ContextPoolSeq2SeqPreTrainedModel):
    """Embeddings + encoder layers (bidirectional pooling) (+ final norm when pre-norm)."""

    def __init__(self, config: ContextPoolSeq2SeqConfig, shared: nn.Embedding):
        super().__init__(config)
        stack = _StackConfig(config, "encoder")
        self.embeddings = _Embeddings(config, shared)
        self.layers = nn.ModuleList(ContextPoolEncoderLayer(stack, i) for i in range(config.encoder_layers))
        self.layer_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps) if config.norm_position == "pre" else None
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings._shared

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, output_attentions=None,
                output_hidden_states=None, output_pooling_sizes=None, return_dict=None) -> ContextPoolEncoderOutput:
        """input_ids (B, m), attention_mask (B, m) 1 = real token."""
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        hidden = self.embeddings(input_ids, inputs_embeds, 0, "")
        batch, m = hidden.shape[:2]
        keep = _keep_mask(attention_mask, batch, m, "attention_mask")
        bias = _attention_bias(keep, m, m, False, hidden.dtype, hidden.device)
        all_hidden = (hidden,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        all_sigma = ()
        for layer in self.layers:
            hidden, weights, sigma = layer(hidden, bias, keep, output_attentions)
            all_sigma += (sigma,)
            if output_attentions:
                all_attentions += (weights,)
            if output_hidden_states:
                all_hidden += (hidden,)
        if self.layer_norm is not None:
            hidden = self.layer_norm(hidden)
            if output_hidden_states:
                all_hidden = all_hidden[:-1] + (hidden,)
        output = ContextPoolEncoderOutput(hidden, all_hidden, all_attentions, all_sigma if output_pooling_sizes else None)
        return output if return_dict is not False else output.to_tuple()


class ContextPoolSeq2SeqDecoder(ContextPoolSeq2SeqPreTrainedModel):
    """Embeddings + decoder layers (causal pooling, pooled cross-attention) (+ final norm when pre-norm)."""

    def __init__(self, config: ContextPoolSeq2SeqConfig, shared: nn.Embedding):
        super().__init__(config)
        stack = _StackConfig(config, "decoder")
        self.embeddings = _Embeddings(config, shared)
        self.layers = nn.ModuleList(ContextPoolDecoderLayer(stack, i) for i in range(config.decoder_layers))
        self.layer_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps) if config.norm_position == "pre" else None
        self.gradient_checkpointing = False
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                inputs_embeds=None, cache=None, use_cache=None, output_attentions=False, output_hidden_states=False,
                output_pooling_sizes=False) -> ContextPoolDecoderOutput:
        config = self.config
        if encoder_hidden_states is None:
            raise ValueError("the decoder needs encoder_hidden_states (run the encoder first)")
        use_cache = config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if cache is not None and not isinstance(cache, EncoderDecoderCache):
            raise ValueError(f"ContextPool seq2seq models need an EncoderDecoderCache, got {type(cache).__name__}")
        if cache is not None and isinstance(cache.self_attention_cache, StaticCache):
            raise ValueError(
                "cache: the ContextPool seq2seq model has no static cache (the causal LM has one); pass cache=None "
                "and reuse outputs.cache"
            )
        if cache is not None and not isinstance(cache.self_attention_cache, ContextPoolCache):
            if cache.get_seq_length() > 0:
                raise ValueError(
                    "the self-attention half of the cache must be a ContextPoolCache (it holds the pooling "
                    f"state); got a filled {type(cache.self_attention_cache).__name__}. Pass cache=None and "
                    "reuse outputs.cache."
                )
            cache = None
        if use_cache and cache is None:
            cache = EncoderDecoderCache(ContextPoolCache(), DynamicCache())
        if not use_cache:
            cache = None
        past = cache.get_seq_length() if cache is not None else 0

        hidden = self.embeddings(input_ids, inputs_embeds, past, "decoder_")
        batch, n = hidden.shape[:2]
        if past > 0 and not torch.compiler.is_compiling():
            heads = config.decoder_attention_heads
            check_cache_fits(cache.self_attention_cache, batch, config.decoder_layers, heads, config.d_model // heads)
        m = encoder_hidden_states.shape[1]
        if encoder_hidden_states.shape[0] != batch:
            raise ValueError(
                f"encoder_hidden_states has batch {encoder_hidden_states.shape[0]}, decoder inputs have {batch}"
            )
        keep_all = _keep_mask(attention_mask, batch, past + n, "decoder_attention_mask")
        keep_new = keep_all[:, past:] if keep_all is not None else None
        memory_keep = _keep_mask(encoder_attention_mask, batch, m, "attention_mask (encoder)")
        self_bias = _attention_bias(keep_all, n, past + n, True, hidden.dtype, hidden.device)
        cross_bias = _attention_bias(memory_keep, n, m, False, hidden.dtype, hidden.device)

        all_hidden = (hidden,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        all_cross = () if output_attentions else None
        all_sigma = ()
        for layer in self.layers:
            hidden, weights, cross_weights, sigma = layer(
                hidden, encoder_hidden_states, self_bias, keep_new, memory_keep, cross_bias, cache, output_attentions
            )
            all_sigma += (sigma,)
            if output_attentions:
                all_attentions += (weights,)
                all_cross += (cross_weights,)
            if output_hidden_states:
                all_hidden += (hidden,)
        if self.layer_norm is not None:
            hidden = self.layer_norm(hidden)
            if output_hidden_states:
                all_hidden = all_hidden[:-1] + (hidden,)
        return ContextPoolDecoderOutput(
            hidden, cache, all_hidden, all_attentions, all_cross, all_sigma if output_pooling_sizes else None
        )


def _refuse_decoder_position_ids(decoder_position_ids) -> None:
    """The decoder counts positions from its first token (as BART and Marian do); ignoring given ones would be a
    silent wrong answer for a caller who packed or offset them."""
    if decoder_position_ids is not None:
        raise ValueError(
            "decoder_position_ids is not supported by the ContextPool seq2seq model: decoder positions count from the "
            "first decoder token (0, 1, ...; continued from the cache when decoding), as in BART and Marian. Pass None"
        )


def _given_encoder_outputs(encoder_outputs, width: int) -> ModelOutput:
    """`encoder_outputs` passed in (generate's, or a caller's from `model.get_encoder()`): a ModelOutput with
    last_hidden_state, or a tuple (last_hidden_state, hidden_states, attentions, pooling_sizes) as return_dict=False
    gives, its first element (B, m, width); else a ValueError naming the argument. Before, a bare tensor was unpacked
    row by row (its first example taken for the hidden states) and a dict by its keys."""
    if isinstance(encoder_outputs, (tuple, list)) and 1 <= len(encoder_outputs) <= 4:
        encoder_outputs = ContextPoolEncoderOutput(*encoder_outputs)
    hidden = encoder_outputs.get("last_hidden_state") if isinstance(encoder_outputs, ModelOutput) else None
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3 or hidden.shape[-1] != width:
        got = f"last_hidden_state {tuple(hidden.shape)}" if isinstance(hidden, torch.Tensor) else type(encoder_outputs).__name__
        raise ValueError(
            f"encoder_outputs must be the encoder's output: a ModelOutput with last_hidden_state (batch, "
            f"source_length, {width}) (what model.get_encoder()(...) returns), or a tuple whose first element is that "
            f"tensor; got {got}"
        )
    return encoder_outputs


class ContextPoolSeq2SeqModel(ContextPoolSeq2SeqPreTrainedModel):
    """Shared embedding, encoder and decoder; returns the decoder's last hidden state."""

    def __init__(self, config: ContextPoolSeq2SeqConfig):
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.d_model, config.pad_token_id)
        self.encoder = ContextPoolSeq2SeqEncoder(config, self.shared)
        self.decoder = ContextPoolSeq2SeqDecoder(config, self.shared)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.shared

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.shared = value
        object.__setattr__(self.encoder.embeddings, "_shared", value)
        object.__setattr__(self.decoder.embeddings, "_shared", value)

    def get_encoder(self, modality: str | None = None):
        return self.encoder

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        decoder_input_ids=None,
        decoder_attention_mask=None,
        encoder_outputs=None,
        cache=None,
        inputs_embeds=None,
        decoder_inputs_embeds=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        output_pooling_sizes=None,
        return_dict=None,
        past_key_values=None,
        decoder_position_ids=None,
        **kwargs,
    ) -> ContextPoolSeq2SeqModelOutput | tuple:
        _refuse_decoder_position_ids(decoder_position_ids)
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = config.return_dict if return_dict is None else return_dict
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                inputs_embeds=inputs_embeds,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
                output_pooling_sizes=output_pooling_sizes,
                return_dict=True,
            )
        else:
            encoder_outputs = _given_encoder_outputs(encoder_outputs, config.d_model)
        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_attention_mask=attention_mask,
            inputs_embeds=decoder_inputs_embeds,
            cache=cache if cache is not None else past_key_values,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            output_pooling_sizes=output_pooling_sizes,
        )
        output = ContextPoolSeq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            cache=decoder_outputs.cache,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
            decoder_pooling_sizes=decoder_outputs.pooling_sizes,
            encoder_pooling_sizes=encoder_outputs.get("pooling_sizes"),
        )
        return output if return_dict else output.to_tuple()


class ContextPoolForConditionalGeneration(ContextPoolSeq2SeqPreTrainedModel, GenerationMixin):
    """Encoder-decoder LM head for translation; greedy/beam generation with an encoder-decoder cache.

    `labels` (B, n) are the target ids (-100 = ignore). They are shifted right behind
    `decoder_start_token_id` once, here, to build `decoder_input_ids` when none are given, and the
    loss compares logits[:, t] with labels[:, t] (no second shift).
    """

    _tied_weights_keys = {"lm_head.weight": "model.shared.weight"}
    _keys_to_ignore_on_load_missing = ["final_logits_bias"]

    def __init__(self, config: ContextPoolSeq2SeqConfig):
        super().__init__(config)
        self.model = ContextPoolSeq2SeqModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.final_logits_bias:
            self.register_buffer("final_logits_bias", torch.zeros(1, config.vocab_size))
        else:
            self.final_logits_bias = None
        self.post_init()

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        if generation_config.cache_implementation not in (None, "dynamic"):  # transformers would warn and ignore it
            raise ValueError(
                f"cache_implementation={generation_config.cache_implementation!r} is not supported by the ContextPool "
                "seq2seq model: it decodes with its own dynamic cache (leave cache_implementation unset); the "
                "static cache is the causal LM's (ContextPoolForCausalLM)"
            )
        generation_config.cache_implementation = None
        return super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)

    @property
    def encoder(self) -> ContextPoolSeq2SeqEncoder:
        return self.model.encoder

    def get_encoder(self, modality: str | None = None):
        return self.model.encoder

    def get_decoder(self):
        return self.model.decoder

    def init_continuous_batching(self, *args, **kwargs):
        """Refused up front, as in the causal LM (inside the batching loop a failure leaves every request empty)."""
        raise NotImplementedError(CONTINUOUS_BATCHING_UNSUPPORTED)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing=True):
        """Also resize `final_logits_bias` (a buffer the base method does not know), as BART does:
        kept rows keep their values, new rows start at 0."""
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        if self.final_logits_bias is not None:
            old, new_size = self.final_logits_bias, embeddings.weight.shape[0]
            if old.shape[-1] != new_size:
                bias = old.new_zeros(1, new_size)
                keep = min(new_size, old.shape[-1])
                bias[:, :keep] = old[:, :keep]
                self.register_buffer("final_logits_bias", bias)
        return embeddings

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        decoder_input_ids=None,
        decoder_attention_mask=None,
        encoder_outputs=None,
        cache=None,
        inputs_embeds=None,
        decoder_inputs_embeds=None,
        labels=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        output_pooling_sizes=None,
        return_dict=None,
        past_key_values=None,
        decoder_position_ids=None,
        num_items_in_batch=None,
        **kwargs,
    ) -> ContextPoolSeq2SeqLMOutput | tuple:
        """labels (B, n): target ids aligned with the logits (shifted into decoder_input_ids here), -100 = ignore.

        num_items_in_batch (given by Trainer): the loss is the sum over the batch divided by it.
        """
        _refuse_decoder_position_ids(decoder_position_ids)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if labels is not None:
            # ids and dtype first: shifted into decoder_input_ids, bad labels would be blamed on those
            if not isinstance(labels, torch.Tensor) or labels.dim() != 2:  # shifted right below: (B, n) only
                got = f"shape {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
                raise ValueError(f"labels must be (batch, target_length) token ids (-100 = ignore), got {got}")
            labels = _checked_labels("labels", labels, tuple(labels.shape), self.config.vocab_size)
            use_cache = False  # training: nothing to continue
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            cache=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            output_pooling_sizes=output_pooling_sizes,
            return_dict=True,
        )
        logits = self.lm_head(outputs.last_hidden_state)
        if self.final_logits_bias is not None:
            logits = logits + self.final_logits_bias.to(logits.dtype)
        loss = None
        if labels is not None:  # ids, dtype and values checked above; their length against the decoder's here
            _check_label_shape("labels", labels, tuple(logits.shape[:2]))
            loss = _lm_loss(logits, labels, self.config.vocab_size, num_items_in_batch)
        output = ContextPoolSeq2SeqLMOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
            decoder_pooling_sizes=outputs.decoder_pooling_sizes,
            encoder_pooling_sizes=outputs.encoder_pooling_sizes,
        )
        return output if return_dict else output.to_tuple()


_keep_forward_signature(ContextPoolForConditionalGeneration)  # generate() reads it on every step

__all__ = [
    "ContextPoolSeq2SeqPreTrainedModel",
    "ContextPoolSeq2SeqEncoder",
    "ContextPoolSeq2SeqDecoder",
    "ContextPoolSeq2SeqModel",
    "ContextPoolForConditionalGeneration",
    "shift_tokens_right",
    "sinusoidal_positions",
]
