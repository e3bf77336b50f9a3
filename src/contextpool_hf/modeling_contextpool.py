"""ContextPool Transformers for text: encoder (BERT-like), decoder-only LM (GPT-2/Llama-like), heads.

Flat, Hub-shipped file: imports only torch, transformers and its sibling flat files (relatively),
which `save_pretrained` copies with it. It keeps the model classes (the config's auto_map names
them here) and re-exports its parts' names: outputs_, cache_, layers_ (norms, rotary, the pooled
self-attention, MLP, layer), attention_ (product and masks), inputs_ and heads_contextpool.py.

Every attention layer that pools (config.pool_layers) first lets each token pool its
Gaussian neighbourhood (pooling_contextpool.ContextPool), then runs ordinary attention
between the pooled contexts (spec item 6). The residual stream is never replaced, and a
learnable per-layer mix (`pool_mix`) blends token and context, so a model converted from a
pretrained checkpoint with pool_mix = 0 is exactly the source model (spec item 7).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import logging
from transformers.utils.deprecation import deprecate_kwarg

# Several names below are only re-exported: other code and tests import them from this module.
from .attention_contextpool import (  # noqa: F401
    ATTENTION_FUNCTIONS,
    _attention_bias,
    _attention_implementation,
    _backend_mask,
    _packed_attention_bias,
    _plain_causal_prefill,
    _static_cache_attention_bias,
    eager_attention_forward,
    repeat_kv,
    sdpa_attention_forward,
)
from .cache_contextpool import (  # noqa: F401
    ContextPoolCache,
    ContextPoolCacheLayer,
    ContextPoolStaticCache,
    ContextPoolStaticLayer,
    add_pool_state_layers,
    resolve_cache,
)
from .checks_contextpool import _keep_or_none
from .configuration_contextpool import ContextPoolConfig
from .generation_contextpool import ContextPoolGenerationMixin
from .heads_contextpool import (
    ContextPoolMaskedLMHead,
    _answer_positions,
    _causal_lm_loss,
    _lm_loss,
    _sequence_representation,
)
from .inputs_contextpool import (
    _checked_labels,
    _embedded_inputs,
    _logits_positions,
    _packed_layout,
    _position_ids,
    _static_cache_positions,
    _token_type_ids,
)
from .layers_contextpool import (  # noqa: F401
    ContextPoolLayer,
    ContextPoolMLP,
    ContextPoolRMSNorm,
    ContextPoolSelfAttention,
    _dropout,
    _make_norm,
    apply_rotary,
    rotary_cos_sin,
    rotary_tables,
)
from .modeling_utils_contextpool import (
    ContextPoolHubMixin,
    _classification_loss,
    _keep_forward_signature,
)
from .outputs_contextpool import (  # noqa: F401
    ContextPoolCausalLMOutput,
    ContextPoolMaskedLMOutput,
    ContextPoolModelOutput,
    ContextPoolModelOutputWithPooling,
    ContextPoolQuestionAnsweringOutput,
    ContextPoolSequenceClassifierOutput,
    ContextPoolTokenClassifierOutput,
)
from .pooling_contextpool import ContextPool

logger = logging.get_logger(__name__)


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


class ContextPoolPreTrainedModel(ContextPoolHubMixin, PreTrainedModel):
    config_class = ContextPoolConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ContextPoolLayer"]
    # The pooling runs in our own attention module before the product; the implementation name
    # only selects the product (ATTENTION_FUNCTIONS, else transformers' ALL_ATTENTION_FUNCTIONS),
    # so every backend keeps the pooling.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, ContextPoolRMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, ContextPoolSelfAttention) and module.pool is not None:
            init.constant_(module.pool_mix, float(self.config.pool_mix_init))
        elif isinstance(module, ContextPool) and module.sigma_logit is not None:
            init.constant_(module.sigma_logit, module.initial_sigma_logit)
        elif isinstance(module, ContextPoolMaskedLMHead):
            init.zeros_(module.bias)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # generate() must not hand us a plain DynamicCache: the model creates a ContextPoolCache,
        # which also carries the pooling state, and returns it in `outputs.cache`.
        return False

    def _model_outputs(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                       output_attentions, output_hidden_states, output_pooling_sizes):  # fmt: skip
        """The heads without a cache (all but the causal LM): `self.model` run uncached, as an output object."""
        return self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            output_pooling_sizes=output_pooling_sizes,
            return_dict=True,
        )


class ContextPoolModel(ContextPoolPreTrainedModel):
    """The bare ContextPool Transformer: embeddings, layers, optional final norm (and BERT pooler)."""

    def __init__(self, config: ContextPoolConfig, add_pooling_layer: bool | None = None):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.embed_positions = (
            nn.Embedding(config.max_position_embeddings, config.hidden_size)
            if config.position_embedding_type == "absolute"
            else None
        )
        self.embed_token_types = (
            nn.Embedding(config.type_vocab_size, config.hidden_size) if config.type_vocab_size > 0 else None
        )
        self.embed_norm = _make_norm(config) if config.embedding_norm else None
        self.embed_dropout = nn.Dropout(config.embedding_dropout)
        self.layers = nn.ModuleList(ContextPoolLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = _make_norm(config) if config.final_norm else None
        if add_pooling_layer is None:
            add_pooling_layer = config.use_pooler
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size) if add_pooling_layer else None
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_pooling_sizes: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> ContextPoolModelOutputWithPooling | tuple:
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = config.return_dict if return_dict is None else return_dict
        inputs_embeds = _embedded_inputs(input_ids, inputs_embeds, self.embed_tokens, config.vocab_size,
                                         config.hidden_size)  # fmt: skip
        batch, n = inputs_embeds.shape[:2]
        device = inputs_embeds.device

        cache = cache if cache is not None else past_key_values
        use_cache = (config.use_cache if use_cache is None else use_cache) and config.is_causal
        if not config.is_causal:
            cache = None  # a bidirectional encoder has nothing to continue
        if self.gradient_checkpointing and self.training and use_cache:
            use_cache = False
        # static: fixed-size keys/values (compiled decoding); an assistant model's cache records its past
        fits = (batch, config.num_hidden_layers, config.num_key_value_heads, config.head_dim)  # a filled cache's sizes
        cache, static = resolve_cache(cache, use_cache, getattr(self, "_record_cache_past", False), fits)
        past = cache.get_seq_length() if cache is not None else 0

        position_ids_given = position_ids is not None and not static
        if static:  # positions and masks as tensors of the cache's fixed length (no shape changes per step)
            keep_all, keep_new, position_ids, positions = _static_cache_positions(
                config, cache, attention_mask, position_ids, batch, n, device
            )
        else:
            keep_all = None
            if attention_mask is not None:
                # 0/1 only: .bool() would read an additive (0 / -inf) mask inverted and 0.5 or -1 as "keep".
                # None when nothing is masked: SDPA then uses its causal kernel and the pooling skips the mask.
                keep_all = _keep_or_none(attention_mask, "attention_mask")
                if attention_mask.dim() != 2 or tuple(attention_mask.shape) != (batch, past + n):
                    raise ValueError(
                        f"attention_mask must be (batch, past + sequence_length) = {(batch, past + n)}, "
                        f"got {tuple(attention_mask.shape)}"
                    )
            keep_new = keep_all[:, past:] if keep_all is not None else None
            position_ids = _position_ids(config, position_ids, batch, n, past, device)
        hidden = inputs_embeds
        if self.embed_positions is not None:
            hidden = hidden + self.embed_positions(position_ids)
        if self.embed_token_types is not None:
            token_type_ids = _token_type_ids(token_type_ids, config.type_vocab_size, batch, n, device)
            hidden = hidden + self.embed_token_types(token_type_ids)
        if self.embed_norm is not None:
            hidden = self.embed_norm(hidden)
        hidden = _dropout(self.embed_dropout, hidden)

        position_embeddings = None
        if config.position_embedding_type == "rotary":
            position_embeddings = rotary_tables(
                *rotary_cos_sin(position_ids, config.head_dim, config.rope_theta, hidden.dtype, config=config)
            )
        implementation = _attention_implementation(config, output_attentions)
        if static and _plain_causal_prefill(implementation, past, n, keep_new, config.attention_window):
            attention_bias = None  # the layers attend over the prompt's own n slots (as Llama's prefill does)
        elif static:
            attention_bias = _static_cache_attention_bias(implementation, keep_all, positions, cache.get_max_length(),
                                                          hidden.dtype, window=config.attention_window, batch=batch)  # fmt: skip
        else:
            attention_bias = _backend_mask(implementation, keep_all, n, past + n, config.is_causal, hidden.dtype, device,
                                           window=config.attention_window, batch=batch)  # fmt: skip
        packed = _packed_layout(position_ids, keep_new, past, self) if position_ids_given else None
        if packed is not None:  # several documents per row (DataCollatorWithFlattening)
            attention_bias = _packed_attention_bias(attention_bias, packed, config.is_causal, hidden.dtype,
                                                    implementation)  # fmt: skip
            keep_new = packed

        all_hidden = (hidden,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        all_sigma = ()
        for layer in self.layers:
            hidden, weights, sigma = layer(
                hidden, attention_bias, keep_new, position_embeddings, cache=cache, output_attentions=output_attentions
            )
            all_sigma += (sigma,)
            if output_attentions:
                all_attentions += (weights,)
            if output_hidden_states:
                all_hidden += (hidden,)
        if self.norm is not None:
            hidden = self.norm(hidden)
            if output_hidden_states:
                all_hidden = all_hidden[:-1] + (hidden,)
        pooled = torch.tanh(self.pooler(hidden[:, 0])) if self.pooler is not None else None
        output = ContextPoolModelOutputWithPooling(
            last_hidden_state=hidden,
            cache=cache if use_cache else None,
            hidden_states=all_hidden,
            attentions=all_attentions,
            pooling_sizes=all_sigma if output_pooling_sizes else None,
            pooler_output=pooled,
        )
        return output if return_dict else output.to_tuple()


class ContextPoolForCausalLM(ContextPoolPreTrainedModel, ContextPoolGenerationMixin):
    """Decoder-only language model (GPT-2/Llama shape) with causal ContextPool and a cache that
    holds keys/values and each layer's pooling state."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: ContextPoolConfig):
        if not config.is_causal:
            logger.warning("ContextPoolForCausalLM needs causal attention: setting config.is_causal=True")
            config.is_causal = True
        super().__init__(config)
        self.model = ContextPoolModel(config, add_pooling_layer=False)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        inputs_embeds=None,
        cache=None,
        labels=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        output_pooling_sizes=None,
        return_dict=None,
        logits_to_keep: int | torch.Tensor = 0,
        token_type_ids=None,
        past_key_values=None,
        num_items_in_batch=None,
        **kwargs,
    ) -> ContextPoolCausalLMOutput | tuple:
        """labels (B, n): next-token targets aligned with input_ids (shifted inside), -100 = ignore.

        shift_labels (B, n): targets already shifted (position t predicts shift_labels[:, t]), as
        transformers' ForCausalLMLoss takes them (context-parallel training shards the sequence, so
        the shift must happen before the split). When given, they are the targets and `labels` is
        not used; unlike transformers (which then needs `labels` too, or returns no loss) they alone
        give the loss.
        """
        # shift_labels travels in **kwargs, as in transformers' Llama: a named `*label*` argument
        # would make Trainer guess label_names=["labels", "shift_labels"] and report no eval_loss.
        shift_labels = kwargs.pop("shift_labels", None)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            cache=cache if cache is not None else past_key_values,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            output_pooling_sizes=output_pooling_sizes,
            return_dict=True,
        )
        hidden = outputs.last_hidden_state
        logits = self.lm_head(hidden[:, _logits_positions(logits_to_keep), :])
        loss = _causal_lm_loss(logits, labels, shift_labels, self.config.vocab_size, num_items_in_batch)
        output = ContextPoolCausalLMOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            pooling_sizes=outputs.pooling_sizes,
        )
        return output if return_dict else output.to_tuple()


class ContextPoolForMaskedLM(ContextPoolPreTrainedModel):
    _tied_weights_keys = {"cls.decoder.weight": "model.embed_tokens.weight"}

    def __init__(self, config: ContextPoolConfig):
        if config.is_causal:
            logger.warning("ContextPoolForMaskedLM needs bidirectional attention: set config.is_causal=False")
        super().__init__(config)
        self.model = ContextPoolModel(config, add_pooling_layer=False)
        self.cls = ContextPoolMaskedLMHead(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.decoder

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing=True):
        """Also resize the MLM head's output bias (a separate parameter, unknown to the base method)."""
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        self.cls.resize_bias(embeddings.weight.shape[0])
        return embeddings

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.cls.decoder = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        output_pooling_sizes=None,
        return_dict=None,
        num_items_in_batch=None,
        **kwargs,
    ) -> ContextPoolMaskedLMOutput | tuple:
        """labels (B, n): original ids at masked positions, -100 elsewhere."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self._model_outputs(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
            output_attentions, output_hidden_states, output_pooling_sizes,
        )  # fmt: skip
        logits = self.cls(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            labels = _checked_labels("labels", labels, tuple(logits.shape[:2]), self.config.vocab_size)
            loss = _lm_loss(logits, labels, self.config.vocab_size, num_items_in_batch)
        output = ContextPoolMaskedLMOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            pooling_sizes=outputs.pooling_sizes,
        )
        return output if return_dict else output.to_tuple()


class ContextPoolForSequenceClassification(ContextPoolPreTrainedModel):
    # the loss is a per-example mean that ignores Trainer's num_items_in_batch
    accepts_loss_kwargs = False

    def __init__(self, config: ContextPoolConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = ContextPoolModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        output_pooling_sizes=None,
        return_dict=None,
        **kwargs,
    ) -> ContextPoolSequenceClassifierOutput | tuple:
        """labels (B,): class ids (cross-entropy), floats for regression, or (B, num_labels) multi-label."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self._model_outputs(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
            output_attentions, output_hidden_states, output_pooling_sizes,
        )  # fmt: skip
        if outputs.pooler_output is not None:
            features = outputs.pooler_output
        else:
            features = _sequence_representation(self.config, outputs.last_hidden_state, attention_mask, input_ids)
        logits = self.classifier(self.dropout(features))
        loss = _classification_loss(self.config, logits, labels, float32=True) if labels is not None else None
        output = ContextPoolSequenceClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            pooling_sizes=outputs.pooling_sizes,
        )
        return output if return_dict else output.to_tuple()


class ContextPoolForTokenClassification(ContextPoolPreTrainedModel):
    # the loss is a per-example mean that ignores Trainer's num_items_in_batch
    accepts_loss_kwargs = False

    def __init__(self, config: ContextPoolConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = ContextPoolModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        output_pooling_sizes=None,
        return_dict=None,
        **kwargs,
    ) -> ContextPoolTokenClassifierOutput | tuple:
        """labels (B, n): a class per token, -100 = ignore."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self._model_outputs(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
            output_attentions, output_hidden_states, output_pooling_sizes,
        )  # fmt: skip
        logits = self.classifier(self.dropout(outputs.last_hidden_state))
        loss = None
        if labels is not None:
            labels = _checked_labels("labels", labels, tuple(logits.shape[:2]), self.num_labels)  # class ids per token
            loss = F.cross_entropy(logits.reshape(-1, self.num_labels).float(), labels.reshape(-1), ignore_index=-100)
        output = ContextPoolTokenClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            pooling_sizes=outputs.pooling_sizes,
        )
        return output if return_dict else output.to_tuple()


class ContextPoolForQuestionAnswering(ContextPoolPreTrainedModel):
    # the loss is a per-example mean that ignores Trainer's num_items_in_batch
    accepts_loss_kwargs = False

    def __init__(self, config: ContextPoolConfig):
        super().__init__(config)
        self.model = ContextPoolModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        start_positions=None,
        end_positions=None,
        output_attentions=None,
        output_hidden_states=None,
        output_pooling_sizes=None,
        return_dict=None,
        **kwargs,
    ) -> ContextPoolQuestionAnsweringOutput | tuple:
        """start_positions/end_positions (B,): answer span; positions past the input are ignored."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self._model_outputs(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
            output_attentions, output_hidden_states, output_pooling_sizes,
        )  # fmt: skip
        logits = self.qa_outputs(outputs.last_hidden_state)  # (B, n, 2)
        start_logits, end_logits = (t.squeeze(-1).contiguous() for t in logits.split(1, dim=-1))
        loss = None
        if start_positions is not None and end_positions is not None:
            n = start_logits.shape[1]
            start, end = (_answer_positions(name, positions, start_logits.shape[0], n)
                          for name, positions in (("start_positions", start_positions), ("end_positions", end_positions)))  # fmt: skip
            loss = (
                F.cross_entropy(start_logits.float(), start, ignore_index=n)
                + F.cross_entropy(end_logits.float(), end, ignore_index=n)
            ) / 2
        output = ContextPoolQuestionAnsweringOutput(
            loss=loss,
            start_logits=start_logits,
            end_logits=end_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            pooling_sizes=outputs.pooling_sizes,
        )
        return output if return_dict else output.to_tuple()


_keep_forward_signature(ContextPoolForCausalLM)  # generate() reads it on every step

__all__ = [
    "ContextPoolCache",
    "ContextPoolPreTrainedModel",
    "ContextPoolModel",
    "ContextPoolForCausalLM",
    "ContextPoolForMaskedLM",
    "ContextPoolForSequenceClassification",
    "ContextPoolForTokenClassification",
    "ContextPoolForQuestionAnswering",
]
