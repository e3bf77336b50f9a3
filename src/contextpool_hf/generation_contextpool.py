"""How the ContextPool causal LM plugs into transformers' `generate`: which cache it gets.

Flat, Hub-shipped file: imports only torch and transformers and its flat siblings (relatively);
`save_pretrained` copies it with modeling_contextpool.py, which imports it. Split out of that file
because these hooks override `GenerationMixin` internals, where a reader looks for them apart from
the model: the default (dynamic) cache is the model's own `ContextPoolCache`; a static cache
(`cache_implementation="static"`, or a StaticCache passed in) is a `ContextPoolStaticCache`, whose
fixed shapes let `torch.compile` run the decoding steps; assisted decoding crops the cache.
"""

from __future__ import annotations

import torch.nn.functional as F
from transformers.cache_utils import StaticCache
from transformers.generation import GenerationMixin

from .cache_contextpool import ContextPoolCache, ContextPoolStaticCache

# the refusal of every ContextPool model that generates (the causal LM here, the seq2seq model)
CONTINUOUS_BATCHING_UNSUPPORTED = (
    "continuous batching (generate_batch, init_continuous_batching) is not supported by ContextPool models: it packs "
    "many sequences into paged key/value blocks, and each layer's pooling keeps a window of pooled-feature inputs "
    "per sequence, which a PagedAttentionCache does not hold. Use model.generate on a padded batch"
)


class ContextPoolGenerationMixin(GenerationMixin):
    def _prepare_cache_for_generation(self, generation_config, model_kwargs, generation_mode, batch_size,
                                      max_cache_length):  # fmt: skip
        """The default (dynamic) cache is a ContextPoolCache and a static `cache_implementation` a
        ContextPoolStaticCache (transformers would build plain ones, or skip the setting: the model declines
        plain DynamicCaches); a cache passed in is checked by transformers and kept."""
        implementation = generation_config.cache_implementation
        if implementation == "dynamic":
            implementation = None  # the model's own ContextPoolCache is the dynamic one
        generation_config.cache_implementation = implementation
        if model_kwargs.get("cache") is not None or generation_config.use_cache is False:
            return super()._prepare_cache_for_generation(generation_config, model_kwargs, generation_mode, batch_size,
                                                         max_cache_length)  # fmt: skip
        if implementation is None:
            # Otherwise the model creates its ContextPoolCache at the first forward (so PEFT's prefix cache and an
            # assistant's recording cache come in first); chunked prefill needs one before it.
            if generation_config.prefill_chunk_size is not None:
                model_kwargs["cache"] = ContextPoolCache()
            return
        if implementation != "static":
            offloaded = " (the pooling state is not offloaded)" if "offloaded" in implementation else ""
            raise ValueError(
                f"cache_implementation={implementation!r} is not supported by ContextPool models{offloaded}: use "
                "'static' (fixed size, for torch.compile) or 'dynamic' (the default)"
            )
        if generation_config.max_cache_len is not None:  # as transformers: sized for the largest call
            max_cache_length = max(max_cache_length, generation_config.max_cache_len)
        cache_batch_size = max(generation_config.num_beams, generation_config.num_return_sequences) * batch_size
        model_kwargs["cache"] = self._prepare_static_cache(implementation, cache_batch_size, max_cache_length,
                                                           generation_config.prefill_chunk_size, model_kwargs)  # fmt: skip

    def init_continuous_batching(self, *args, **kwargs):
        """Refused up front: `generate_batch` and `continuous_batching_context_manager` start here, and inside the
        batching loop a failure is only logged and every request comes back empty."""
        raise NotImplementedError(CONTINUOUS_BATCHING_UNSUPPORTED)

    def _prepare_static_cache(self, cache_implementation, batch_size, max_cache_len, prefill_chunk_size, model_kwargs):
        """A ContextPoolStaticCache of at least the previous call's length (so a compiled step is reused)."""
        length = max(max_cache_len, getattr(self, "_previous_max_cache_length", -1))
        self._previous_max_cache_length = length
        return ContextPoolStaticCache(config=self.config, max_cache_len=length)

    def create_masks_for_generate(self, config, inputs_embeds, attention_mask, cache=None, **kwargs):
        """generate()'s mask for a compilable cache: the 2-D keep mask padded to the cache's fixed length.

        The model builds its own causal mask (pooling needs the keep mask, not a 4-D bias); padding
        here gives every decoding step the same mask shape, so a compiled step is not recompiled as
        the sequence grows. The padded slots are not written yet: zero, and causally in the future.
        """
        if attention_mask is None or attention_mask.dim() != 2 or not isinstance(cache, StaticCache):
            return attention_mask
        return F.pad(attention_mask, (0, cache.get_max_length() - attention_mask.shape[-1]))

    def _assisted_decoding(self, *args, **kwargs):
        """Assisted / prompt-lookup decoding: transformers needs a cache before the first forward
        (the model otherwise creates its own) and crops it after each verification; an assistant that
        is a ContextPool model records its pooling states too, since its cache is cropped as well."""
        if kwargs.get("cache") is None:
            kwargs["cache"] = ContextPoolCache()
        assistant = kwargs.get("assistant_model")
        inner = getattr(assistant, "model", None)
        records = getattr(getattr(inner, "config", None), "model_type", None) == "contextpool"
        if records:
            inner._record_cache_past = True
        try:
            return super()._assisted_decoding(*args, **kwargs)
        finally:
            if records:
                inner._record_cache_past = False
