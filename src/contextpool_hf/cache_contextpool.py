"""The ContextPool cache: keys/values plus the pooling state of every causal pooling layer (spec item 10).

Flat, Hub-shipped file: imports only torch and transformers; `save_pretrained` copies it with the
modeling files that import it (text and seq2seq). Split out of modeling_contextpool.py, which
re-exports these names. The attention module (layers_contextpool.py, its decoding steps in
decoding_contextpool.py) reads and writes this state;
the cache only stores it and rolls it back (`crop`, beam reordering).

Two kinds: `ContextPoolCache` grows (transformers' DynamicCache, the default of `generate`);
`ContextPoolStaticCache` has fixed-size keys/values and pooling state, updated in place, so that
a `torch.compile`d decoding step sees the same shapes and addresses on every call
(`generate(..., cache_implementation="static")`, or transformers' StaticCache passed by hand).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, StaticCache, StaticLayer

from .checks_contextpool import _is_exporting


class _SequenceDecodePlan:
    """The decoding plan a cache layer keeps for its sequence (`decoding_contextpool.DecodePlan`: the predictor's
    weights in decoding layout and the step's constants, built at the sequence's first decoding step).

    Kept per sequence rather than on the model, so that every new sequence reads the predictor's weights anew:
    a check between steps sees in-place updates and replaced layers, but not an edit through `param.data`
    (initialisers, EMA and model-averaging swaps), which leaves the parameter's version counter alone. Forgotten
    when the layer is reset or its batch changes, and left out of copies and pickles (`copy.deepcopy` of a
    prompt's cache would otherwise copy the predictor's modules along).
    """

    __slots__ = ()  # no layout of its own, and after StaticLayer in the bases: `add_pool_state_layers` turns a
    # StaticLayer object into a ContextPoolStaticLayer (a __class__ assignment needs the same layout)
    decode_plan = None  # (sources, key, DecodePlan) or None

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("decode_plan", None)
        return state


class ContextPoolCacheLayer(DynamicLayer, _SequenceDecodePlan):
    """A DynamicLayer that also keeps what a causal ContextPool needs to continue a sequence.

    pool_features (B, G, R + 1, C): the last R + 1 pooled-feature inputs, as a ring buffer
    whose slot `pool_next` holds the oldest one (zero where none yet);
    pool_weights (B, G, R + 1): their weights w_j, in the same slots (zero where none yet);
    conv_state (B, kernel - 1, width): the predictor's causal conv inputs, oldest first.

    A ring rather than a sliding window because a pooled sum does not depend on the order of
    its terms: a decoding step overwrites one slot instead of copying the whole window, and
    reads each slot's distance to the newest token from a table.
    """

    _POOL_STATE = ("pool_features", "pool_weights", "conv_state")
    # Rollback (assisted decoding): how many forwards back `crop` can reach once recording is on.
    _MAX_RECORDED = 64
    # Room for new tokens in the keys/values buffer: at least this many tokens, or this fraction of the
    # length, whichever is more (see `update`).
    _KV_MIN_ROOM = 64
    _KV_ROOM_FRACTION = 8

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # keys/values buffers with room for more tokens, and the views of them `update` last returned
        self._kv_buffers = self._kv_views = None
        self.pool_features = self.pool_weights = self.conv_state = None
        self.pool_next = 0
        # (features, weights): the ring a decoding step made, which later steps may overwrite in place
        # (`decoding_contextpool._may_write_ring_in_place`); a ring set by anything else is copied first
        self.owned_ring = None
        self.record_past = False
        self.past_log = []  # per forward: (length before, ring, ring weights, ring slot, conv state, inputs)
        self.pending_replay = None  # (log entry, m): replay its first m tokens on the next forward

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """DynamicLayer.update: append (B, Hkv, n, dh) keys/values, return all of them so far.

        DynamicLayer concatenates, copying the whole cache on every decoding step: at batch 8 and a prompt of
        128 that copy cost more than the step's pooling (fresh memory each time, its pages faulted in). Here a
        step writes its tokens into a buffer with room for more, and the keys/values are views of the buffer's
        filled part; the buffer grows by at least `_KV_MIN_ROOM` tokens or 1/`_KV_ROOM_FRACTION` of the
        length, so a token is copied O(1) times on average and at most about 1/8 of the buffer is unused.

        Only where nothing can see the write (`_may_append_in_place`): tensors handed out earlier are views of
        the filled part, which an append leaves alone. Anything else (the prompt, autograd on, a cache that
        crop, beam reordering or a caller replaced, torch.compile) concatenates as DynamicLayer does.
        """
        if not self._may_append_in_place(key_states, value_states):
            self._kv_buffers = None
            keys, values = super().update(key_states, value_states, *args, **kwargs)
            self._kv_views = (keys, values)
            return keys, values
        length, new_length = self.keys.shape[-2], self.keys.shape[-2] + key_states.shape[-2]
        if self._kv_buffers is None or self._kv_buffers[0].shape[-2] < new_length:
            capacity = new_length + max(self._KV_MIN_ROOM, new_length // self._KV_ROOM_FRACTION)
            self._kv_buffers = tuple(_buffer_with_room(t, capacity) for t in (self.keys, self.values))
        key_buffer, value_buffer = self._kv_buffers  # (B, Hkv, capacity, dh)
        key_buffer[..., length:new_length, :].copy_(key_states)
        value_buffer[..., length:new_length, :].copy_(value_states)
        self.keys, self.values = key_buffer[..., :new_length, :], value_buffer[..., :new_length, :]
        self._kv_views = (self.keys, self.values)
        return self.keys, self.values

    def _may_append_in_place(self, key_states: torch.Tensor, value_states: torch.Tensor) -> bool:
        """Whether `update` may write into its buffer: the keys/values are still the views it returned (not
        replaced by crop, reordering, a prefix or a caller), nothing records for autograd (a write must not
        touch a tensor saved for backward), outside torch.compile and export (a Python-side size check), the
        new tokens fit the buffer's shape, dtype and device, and an inference-mode buffer is written only in
        inference mode (elsewhere torch refuses)."""
        if torch.is_grad_enabled() or torch.compiler.is_compiling() or _is_exporting():
            return False
        views = self._kv_views
        if views is None or views[0] is not self.keys or views[1] is not self.values:
            return False
        if self.keys.requires_grad or not (_appendable(key_states, self.keys) and _appendable(value_states, self.values)):
            return False
        buffer = self._kv_buffers[0] if self._kv_buffers is not None else self.keys
        return not buffer.is_inference() or torch.is_inference_mode_enabled()

    def activate_past_recording(self, **kwargs) -> None:
        """Keep, per forward, the pooling state it started from and its inputs (references: a step
        writes its ring out of place, so nothing is copied), so that `crop` can roll back exactly. Keyword
        arguments meant for other cache kinds (transformers passes `recurrent_states_to_keep`) are ignored."""
        self.record_past = True

    def record(self, hidden, features, keep) -> None:
        """Called by the attention module before it pools n new tokens (hidden (B, n, d), features (B, G, n, C))."""
        entry = (self.get_seq_length(), self.pool_features, self.pool_weights, self.pool_next, self.conv_state,
                 hidden, features, keep)  # fmt: skip
        self.past_log.append(entry)
        if len(self.past_log) > self._MAX_RECORDED:
            self.past_log.pop(0)

    def _map_pool_state(self, fn) -> None:
        for name in self._POOL_STATE:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, fn(value))
        self.owned_ring = self.decode_plan = None

    def pool_history(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The ring in time order, oldest first: features (B, G, R + 1, C), weights (B, G, R + 1)."""
        shift = -self.pool_next
        return self.pool_features.roll(shift, dims=2), self.pool_weights.roll(shift, dims=2)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self.past_log, self.pending_replay = [], None  # recorded states are of the old batch order
        self._map_pool_state(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._map_pool_state(lambda t: t.repeat_interleave(repeats, dim=0))
        self.past_log, self.pending_replay = [], None

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._map_pool_state(lambda t: t[indices, ...])
        self.past_log, self.pending_replay = [], None

    def crop(self, tokens_to_remove: int) -> None:
        """Remove the last -tokens_to_remove tokens (transformers' convention: a negative count).

        The ring of the last R + 1 pooling inputs cannot be rewound by itself (a step overwrote the
        oldest slot), so it comes from the recorded state at the start of the forward that produced
        the new length, plus a replay of that forward's first tokens on the next forward (the
        pooling module does it: `ContextPoolSelfAttention._pool`).
        """
        if tokens_to_remove == 0 or self.pool_weights is None:
            super().crop(tokens_to_remove)
            return
        if tokens_to_remove > 0:
            super().crop(tokens_to_remove)  # transformers' own error for the legacy positive form
        if not self.record_past:
            raise NotImplementedError(
                "ContextPoolCache can only be cropped after cache.activate_past_recording() (assisted and "
                "speculative decoding call it): the pooling state of removed tokens is otherwise not kept"
            )
        target = self.get_seq_length() - abs(tokens_to_remove)
        while self.past_log and self.past_log[-1][0] > target:
            self.past_log.pop()
        if not self.past_log or target < 0:
            raise ValueError(f"cannot crop {abs(tokens_to_remove)} tokens: the recorded pooling history is shorter")
        entry = self.past_log[-1]
        _, self.pool_features, self.pool_weights, self.pool_next, self.conv_state = entry[:5]
        replay = target - entry[0]
        if replay == 0:
            self.past_log.pop()  # the next forward records this same state again
        self.pending_replay = (entry, replay) if replay else None
        super().crop(tokens_to_remove)

    def reset(self) -> None:
        super().reset()
        self.pool_features = self.pool_weights = self.conv_state = self.owned_ring = self.decode_plan = None
        self.pool_next = 0
        self.past_log, self.pending_replay = [], None
        self._kv_buffers = self._kv_views = None


def _appendable(new: torch.Tensor, filled: torch.Tensor) -> bool:
    """Whether new (B, Hkv, n, dh) states can be written after filled (B, Hkv, length, dh) in its buffer: the same
    batch, heads, head size, dtype and device, and no gradient to record."""
    return (not new.requires_grad and new.shape[:-2] == filled.shape[:-2] and new.shape[-1] == filled.shape[-1]
            and new.dtype == filled.dtype and new.device == filled.device)  # fmt: skip


def _buffer_with_room(filled: torch.Tensor, capacity: int) -> torch.Tensor:
    """A (B, Hkv, capacity, dh) buffer whose first tokens are a copy of filled (B, Hkv, length, dh)."""
    buffer = filled.new_empty(filled.shape[:-2] + (capacity, filled.shape[-1]))
    buffer[..., : filled.shape[-2], :].copy_(filled)
    return buffer


class ContextPoolCache(DynamicCache):
    """DynamicCache whose layers also carry the ContextPool state; created by the model when needed."""

    def __init__(self, *args, **kwargs):
        Cache.__init__(self, layer_class_to_replicate=ContextPoolCacheLayer)
        self.record_past = False

    def activate_past_recording(self, **kwargs) -> None:
        """Turn on rollback recording in every layer, present and created later (in `layer`). The keyword
        arguments transformers passes for other cache kinds (`recurrent_states_to_keep`, transformers >= 5.25,
        for linear-attention states) are accepted and passed on; a ContextPool layer keeps its own bounded log."""
        self.record_past = True
        for layer in self.layers:
            layer.activate_past_recording(**kwargs)

    @classmethod
    def from_prefix(cls, prefix: Cache) -> ContextPoolCache:
        """A filled cache of keys/values only (PEFT prefix tuning's virtual tokens) as a ContextPoolCache.

        The prefix is attended to but has no pooling history: the first real chunk pools alone, as
        after an empty cache (virtual tokens are keys/values, not inputs a token could pool). The
        tensors are shared, not copied or detached, so gradients reach the prefix parameters.
        """
        if not isinstance(prefix, Cache) or len(getattr(prefix, "layers", ())) == 0:
            raise ValueError(f"cache must be a ContextPoolCache or a filled transformers Cache, got {type(prefix).__name__}")
        cache = cls()
        for idx, source in enumerate(prefix.layers):
            if source.keys is None or source.keys.numel() == 0:
                continue
            layer = cache.layer(idx)
            layer.lazy_initialization(source.keys, source.values)
            layer.keys, layer.values = source.keys, source.values  # (B, Hkv, prefix, dh)
        return cache

    def layer(self, layer_idx: int) -> ContextPoolCacheLayer:
        while len(self.layers) <= layer_idx:
            self.layers.append(ContextPoolCacheLayer())
            if self.record_past:
                self.layers[-1].activate_past_recording()
        return self.layers[layer_idx]


class ContextPoolStaticLayer(StaticLayer, _SequenceDecodePlan):
    """A StaticLayer (keys/values preallocated to max_cache_len) with the pooling state beside it,
    also preallocated and updated in place (its buffers keep one address, as compiled code needs).

    pool_features (B, G, R + 1, C) and pool_weights (B, G, R + 1): the last R + 1 pooling inputs and
    their weights, as a ring: position t in slot t % (R + 1). A decoding step writes one slot in place, at an
    index computed from the layer's length tensor (`get_seq_length()`, the tokens before the forward: the
    pooling runs before the keys/values update), so every step runs the same graph; a sliding window would
    copy all R + 1 rows twice per step (shift, then store). conv_state (B, kernel - 1, width): the predictor's
    causal conv inputs, oldest first. `pool_started` is False until the first chunk has pooled (that chunk
    pools alone, as after an empty dynamic cache).
    """

    is_croppable = False  # the pooling state of removed tokens is not kept (see `crop`)
    _POOL_STATE = ("pool_features", "pool_weights", "conv_state")

    def __init__(self, max_cache_len: int, **kwargs):
        super().__init__(max_cache_len=max_cache_len, **kwargs)
        self._init_pool_state()

    def _init_pool_state(self) -> None:
        self.pool_features = self.pool_weights = self.conv_state = self.decode_plan = None
        self.pool_started = False

    def write_pool_state(self, features, weights, conv_state, new_tokens: int) -> None:
        """Store the pooling state after a chunk of `new_tokens` tokens, in place (allocated on the first call):
        features (B, G, R + 1, C) and weights (B, G, R + 1), the last R + 1 inputs oldest first, go to their ring
        slots; conv_state (B, kernel - 1, width) or None (no predictor)."""
        new = {"pool_features": features, "pool_weights": weights, "conv_state": conv_state}
        for name, value in new.items():
            if value is None:
                continue
            buffer = getattr(self, name)
            if buffer is None or buffer.shape != value.shape:
                buffer = torch.zeros_like(value, memory_format=torch.contiguous_format)
                if not torch.compiler.is_compiling():
                    torch._dynamo.mark_static_address(buffer)
                setattr(self, name, buffer)
            self._check_writable(buffer)
        # the window's input i is at position (length after the chunk) - (R + 1) + i: slot (length + i) % (R + 1)
        slots = self._ring_slots(self.pool_weights.shape[-1], new_tokens, self.pool_weights.device)
        self._write_ring(slots, features, weights, conv_state)
        self.pool_started = True

    def write_pool_step(self, slot, features, weights, conv_state) -> None:
        """A decoding step's state, in place: the newest input (features (B, G, 1, C), weights (B, G, 1)) into ring
        slot `slot` (1,) (`ring_slot`), and the conv state (B, kernel - 1, width)."""
        self._check_writable(self.pool_features)
        self._write_ring(slot, features, weights, conv_state)

    def _write_ring(self, slots, features, weights, conv_state) -> None:
        """features (B, G, k, C) and weights (B, G, k) into ring slots `slots` (k,), conv_state (or None) over the
        conv state; in place, outside autograd (inference state: a static cache is for decoding, not training)."""
        with torch.no_grad():
            self.pool_features.index_copy_(2, slots, features.to(self.pool_features.dtype))
            self.pool_weights.index_copy_(2, slots, weights.to(self.pool_weights.dtype))
            if conv_state is not None:
                self.conv_state.copy_(conv_state)

    def ring_slot(self) -> torch.Tensor:
        """(1,) the ring slot of the forward's first token: its position (the tokens before it) modulo R + 1. Two
        calls (a decoding step pays per call): the layer's length is a tensor on the buffers' device once the
        keys/values exist, which they do before any decoding step."""
        length = self.get_seq_length()
        if not isinstance(length, torch.Tensor):  # a transformers whose static layers count in Python ints
            length = torch.tensor(length, device=self.pool_weights.device)
        return torch.remainder(length, self.pool_weights.shape[-1]).view(1)

    def _ring_slots(self, count: int, offset: int, device) -> torch.Tensor:
        """(count,) the ring slots of positions length + offset + i, i < count (length: the tokens before this
        forward, `get_seq_length()`: 0 before the keys/values exist, then a tensor), modulo R + 1, never read back
        to the host."""
        window, length = self.pool_weights.shape[-1], self.get_seq_length()
        length = length.to(device) if isinstance(length, torch.Tensor) else length
        return (torch.arange(count, device=device) + (length + offset)) % window

    @staticmethod
    def _check_writable(buffer) -> None:
        if not torch.compiler.is_compiling() and buffer.is_inference() and not torch.is_inference_mode_enabled():
            raise RuntimeError(
                "cache: this ContextPoolStaticCache was filled under torch.inference_mode(), and its buffers are "
                "written in place, which torch allows only there: continue decoding on it under "
                "torch.inference_mode(), or start a new cache"
            )

    def pool_history(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The last R + 1 inputs in time order, oldest first: features (B, G, R + 1, C), weights (B, G, R + 1). The
        oldest, at position length - (R + 1), sits in slot length % (R + 1)."""
        slots = self._ring_slots(self.pool_weights.shape[-1], 0, self.pool_weights.device)
        return self.pool_features.index_select(2, slots), self.pool_weights.index_select(2, slots)

    def _map_pool_state(self, fn) -> None:
        for name in self._POOL_STATE:
            value = getattr(self, name)
            if value is not None:
                value.copy_(fn(value))  # in place: the buffers keep their addresses
        self.decode_plan = None

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        if self.pool_started:
            self._map_pool_state(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def crop(self, tokens_to_remove: int) -> None:
        if self.pool_started and tokens_to_remove != 0:
            raise NotImplementedError(
                "ContextPoolStaticCache cannot be cropped: the pooling state of the removed tokens is not kept. "
                "Assisted and speculative decoding use the default (dynamic) cache: leave cache_implementation unset"
            )
        super().crop(tokens_to_remove)

    def reset(self) -> None:
        super().reset()
        for name in self._POOL_STATE:
            value = getattr(self, name)
            if value is not None:
                value.zero_()
        self.pool_started = False
        self.decode_plan = None


class ContextPoolStaticCache(StaticCache):
    """StaticCache whose layers also carry the ContextPool state at a fixed size (`torch.compile`d decoding).

    Same arguments as transformers' StaticCache: ContextPoolStaticCache(config=model.config,
    max_cache_len=...). `generate(..., cache_implementation="static")` creates one; a plain
    StaticCache passed to the model before its first use gets these layers in place
    (`add_pool_state_layers`).
    """

    def __init__(self, config, max_cache_len: int, offloading: bool = False, **kwargs):
        if offloading:
            raise ValueError("ContextPoolStaticCache: offloading=True is not supported (the pooling state is not offloaded)")
        text_config = config.get_text_config(decoder=True)
        Cache.__init__(self, layers=[ContextPoolStaticLayer(max_cache_len=max_cache_len)
                                     for _ in range(text_config.num_hidden_layers)])  # fmt: skip


def add_pool_state_layers(cache: StaticCache) -> StaticCache:
    """Make the layers of an unused transformers StaticCache ContextPool layers, in place: each keeps its
    keys/values (allocated already if the cache was initialised early) and gains the pooling state. The
    caller keeps its object and sees it filled, as with any model. Raises when it cannot hold the state."""
    if all(isinstance(layer, ContextPoolStaticLayer) for layer in cache.layers):
        return cache
    if any(int(layer.get_seq_length()) > 0 for layer in cache.layers):
        raise ValueError(
            "cache: a StaticCache that already holds tokens has no ContextPool pooling state; pass it to the "
            "ContextPool model from its first token, or use ContextPoolStaticCache(config, max_cache_len)"
        )
    other = sorted({type(layer).__name__ for layer in cache.layers if type(layer) not in (StaticLayer, ContextPoolStaticLayer)})
    if other or getattr(cache, "offloading", False):
        raise ValueError(
            "cache: ContextPool takes a StaticCache of full-attention layers (StaticLayer) without offloading, got "
            f"{other or 'offloading=True'}"
        )
    for layer in cache.layers:
        if type(layer) is StaticLayer:
            layer.__class__ = ContextPoolStaticLayer  # the same object: its keys/values buffers stay where they are
            layer._init_pool_state()
    return cache


def resolve_cache(cache: Cache | None, use_cache: bool, record_past: bool = False,
                  fits: tuple[int, int, int, int] | None = None) -> tuple[Cache | None, bool]:
    """(the cache a causal forward uses, whether it is static).

    A `StaticCache` (compiled decoding) gains the pooling-state layers; any other transformers cache becomes a
    `ContextPoolCache` holding its keys/values (None when empty); use_cache without a cache starts a new one, which
    records its past when `record_past` (an assistant model's cache gets cropped). A filled cache must fit
    `fits` = (batch, layers, key/value heads, head width), see `check_cache_fits` (outside compilation)."""
    if cache is not None and not isinstance(cache, Cache):
        # a legacy tuple, a dict, ...: say so here, not with an AttributeError (continuous batching's
        # PagedAttentionCache never gets here: `init_continuous_batching` refuses it first)
        raise ValueError(
            "cache / past_key_values must be a transformers Cache (DynamicCache, StaticCache or ContextPoolCache), "
            f"got {type(cache).__name__}"
        )
    static = isinstance(cache, StaticCache)  # fixed-size keys/values
    if static:
        add_pool_state_layers(cache)
    elif cache is not None and not isinstance(cache, ContextPoolCache):
        cache = ContextPoolCache.from_prefix(cache) if cache.get_seq_length() > 0 else None
    if fits is not None and cache is not None and not torch.compiler.is_compiling() and (static or cache.get_seq_length() > 0):
        check_cache_fits(cache, *fits)
    if use_cache and cache is None:
        cache = ContextPoolCache()
        if record_past:
            cache.activate_past_recording()
    return cache, static


def cache_layer(cache: Cache, layer_idx: int):
    """The layer of `cache` that holds layer `layer_idx`'s keys/values and pooling state."""
    if isinstance(cache, ContextPoolCache):
        return cache.layer(layer_idx)  # created on first use
    if layer_idx >= len(cache.layers):
        raise ValueError(
            f"cache has {len(cache.layers)} layers, the model at least {layer_idx + 1}: build it with the "
            "model's config (ContextPoolStaticCache(config=model.config, max_cache_len=...))"
        )
    return cache.layers[layer_idx]


def check_cache_fits(cache: Cache, batch: int, num_layers: int, kv_heads: int, head_dim: int) -> None:
    """Refuse a filled cache that does not fit this model and batch, before a layer reads it.

    A cache holds per layer keys/values (B, Hkv, length, dh) and, for pooling layers, the pooling state. One made by
    another model (other layers, heads or widths) or for another batch would otherwise fail inside torch.cat with
    sizes that name nothing, or, with fewer layers, be read silently: the missing layers would start a new sequence
    while the others continue one. Only the first layer's keys and the layer count are read (O(1) per forward, cheap
    enough for every decoding step); each pooling layer checks its own state when it first continues a sequence
    (`CausalPoolDecoding._check_pool_state`).
    """
    layers, static = cache.layers, isinstance(cache, StaticCache)
    holding = len(layers)
    if static:  # preallocated per config layer, filled lazily: count the filled ones
        if holding == 0 or not layers[0].is_initialized:
            return  # nothing filled yet: the first forward sizes it
        holding = min(holding, num_layers + 1)
        while holding > 0 and not layers[holding - 1].is_initialized:
            holding -= 1
    problem = None
    if holding != num_layers:
        problem = f"keys/values of {holding} layer{'s' * (holding != 1)}, this model has {num_layers}"
    else:
        keys = layers[0].keys  # (B, Hkv, length, dh); a static layer's batch is checked with its positions
        if keys is not None and keys.shape[0] != batch and not static:
            problem = f"a batch of {keys.shape[0]} sequences, the inputs have {batch}"
        elif keys is not None and (keys.shape[1], keys.shape[-1]) != (kv_heads, head_dim):
            problem = (f"keys/values of {keys.shape[1]} heads of width {keys.shape[-1]}, this model's layers have "
                       f"{kv_heads} heads of width {head_dim}")  # fmt: skip
    if problem is not None:
        raise ValueError(
            f"cache (past_key_values) holds {problem}: it was filled by another model or for another batch. Pass "
            "the cache this model returned for these sequences (outputs.cache), or none to start new ones"
        )
