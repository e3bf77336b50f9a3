"""Cached decoding steps of the causal pooling (spec item 10): one new token on the cached state.

Flat, Hub-shipped file: imports only torch and its flat siblings (relatively), so `save_pretrained`
copies it with the modeling files that import it (text and seq2seq). `ContextPoolSelfAttention`
(layers_contextpool.py) mixes in `CausalPoolDecoding`; the cache (cache_contextpool.py) only stores
the state these steps read and write.

A step gives the same result as pooling the whole sequence, in a few dozen small operator calls.
At batch 1 each call costs a few microseconds whatever its size, so the step is priced by its call
count and avoids what it can: a framework conv call (milliseconds of setup for these few numbers),
the offset loop (R + 1 steps), copies of the whole window, no-op casts, and Python-float operands,
which torch wraps in a new tensor on every call.
"""

from __future__ import annotations

import math
import operator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .checks_contextpool import _kept_tensors, _plain_tensors_only
from .modeling_utils_contextpool import _is_compiling
from .pooling_contextpool import DEFAULT_EPS, _sigma_floor
from .predictor_contextpool import _is_plain_layer, _predictor_input

_SQRT_HALF = math.sqrt(0.5)


def _module_memo(module: nn.Module, name: str, key, build, keep: bool = True):
    """build(), kept on `module` as the plain attribute `name` (not a buffer: never saved) and reused while `key`
    matches. Nothing is kept or read under torch.compile (the graph computes and folds it) or when `keep` is
    False, and a result holding a tensor made under a FakeTensorMode (valid only there) is never kept. What is kept
    is made outside inference mode (`_kept_tensors`): a later call may record autograd."""
    keep = keep and not _is_compiling()
    if keep:
        cached = module.__dict__.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
    value = _kept_tensors(build) if keep else build()
    if keep and _plain_tensors_only(value):
        module.__dict__[name] = (key, value)
    return value


def _storage_key(tensor: torch.Tensor | None):
    """What changes when a parameter is replaced or edited in place (an optimizer step, load_state_dict)."""
    return None if tensor is None else (tensor.data_ptr(), tensor._version)


class DecodingWeights(NamedTuple):
    """The predictor's weights as a decoding step reads them (`DecodePlan.weights`, built by `_decoding_weights`)."""

    taps: torch.Tensor  # (kernel (+ 1 bias row), width): the depthwise conv, times 1/sqrt(2)
    ones: torch.Tensor | None  # (B, 1, width): meets the bias row of `taps`; None without a conv bias
    proj_weight_t: torch.Tensor  # (width, 2G): the projection transposed, times 1/sqrt(2)
    proj_bias: torch.Tensor | None  # (2G,)


class DecodePlan(NamedTuple):
    """Everything a decoding step reads besides its inputs and the cache (`CausalPoolDecoding._decode_plan`):
    the predictor's modules and weights, and the step's constants, resolved once so that a step does not
    walk the module tree (each `nn.Module.__getattr__` hop costs about a microsecond on a CPU; a step made 22
    of them per layer before the plan, 2 now)."""

    in_proj: nn.Module | None
    conv: nn.Module  # called only when `weights` is None
    proj: nn.Module
    kernel_size: int
    weights: DecodingWeights | None  # None: wrapped layers (PEFT adapters, ...) run their own forward
    sigma_min: torch.Tensor  # 0-dim, the step's dtype
    sigma_span: torch.Tensor  # 0-dim: sigma_max - sigma_min
    floor_sigma: bool  # whether sigma may come near the operator's floor (see `_decode_pool`)
    normalize: bool
    eps: torch.Tensor  # 0-dim, float32 at least
    neg_half_distance_sq: torch.Tensor  # (R + 1, R + 1), see `_decode_tables`
    neg_half_distance_sq_rows: list  # its R + 1 rows
    slot_index: list  # R + 1 (1,) indices


class CausalPoolDecoding:
    """Decoding steps of `ContextPoolSelfAttention` (needs its causal `self.pool` with a predictor)."""

    def _decode_step(self, hidden, features, keep, layer_cache):
        """One decoding step on a growing cache layer: the causal predictor on its conv state, then the newest
        token's pooling from the ring of the last R + 1 inputs.

        hidden (B, 1, d), features (B, G, 1, C) -> pooled (B, G, 1, C), sigma (B, G, 1).
        """
        ring_features, ring_weights = layer_cache.pool_features, layer_cache.pool_weights
        window = ring_weights.shape[-1]
        out_dtype = features.dtype
        plan = self._decode_plan(features, window, layer_cache)
        weights, sigma_gate, layer_cache.conv_state = _decode_gates(plan, hidden, keep, layer_cache.conv_state)
        sigma = torch.addcmul(plan.sigma_min, sigma_gate, plan.sigma_span)  # spec item 3

        # pooling (spec items 4-5, causal): write the newest input over the oldest ring slot
        slot = layer_cache.pool_next
        index = plan.slot_index[slot]
        if ring_features.dtype != out_dtype:  # history in the step's dtype, as `_pool` does for a chunk
            ring_features, ring_weights = ring_features.to(out_dtype), ring_weights.to(weights.dtype)
        if _may_write_ring_in_place(layer_cache, ring_features, ring_weights):
            # no copy of the window (R + 1 rows): the largest cost of the step after the projections
            ring_features.index_copy_(2, index, features)
            ring_weights.index_copy_(2, index, weights)
        else:
            ring_features = ring_features.index_copy(2, index, features)
            ring_weights = ring_weights.index_copy(2, index, weights)
            layer_cache.pool_features, layer_cache.pool_weights = ring_features, ring_weights
            layer_cache.owned_ring = (ring_features, ring_weights)
        layer_cache.pool_next = (slot + 1) % window
        pooled = _decode_pool(plan, ring_features, ring_weights, sigma, plan.neg_half_distance_sq_rows[slot], out_dtype)
        return pooled, sigma

    def _decode_step_static(self, hidden, features, keep, layer_cache):
        """`_decode_step` on a fixed-size cache layer: the ring slot comes from the layer's length tensor rather than
        a Python int, so that every step runs the same graph under torch.compile. Same shapes and result."""
        ring_features, ring_weights = layer_cache.pool_features, layer_cache.pool_weights
        window = ring_weights.shape[-1]
        plan = self._decode_plan(features, window, layer_cache)
        weights, sigma_gate, conv_state = _decode_gates(plan, hidden, keep, layer_cache.conv_state)
        sigma = torch.addcmul(plan.sigma_min, sigma_gate, plan.sigma_span)  # spec item 3
        slot = layer_cache.ring_slot()  # (1,)
        if torch.is_grad_enabled():  # the step's graph must reach the newest input: pool a copy with it written in
            ring_features = ring_features.index_copy(2, slot, features.to(ring_features.dtype))
            ring_weights = ring_weights.index_copy(2, slot, weights.to(ring_weights.dtype))
        layer_cache.write_pool_step(slot, features, weights, conv_state)  # in place (without autograd)
        neg_half_age_sq = plan.neg_half_distance_sq.index_select(0, slot).view(window)  # the newest slot's row
        pooled = _decode_pool(plan, ring_features.to(features.dtype), ring_weights.to(weights.dtype), sigma,
                              neg_half_age_sq, features.dtype)  # fmt: skip
        return pooled, sigma

    def _decode_plan(self, like: torch.Tensor, window: int, layer_cache) -> DecodePlan:
        """The `DecodePlan` for steps on `like` (B, G, 1, C) with a ring of `window` = R + 1 slots.

        Kept in inference by the cache layer for its sequence (`layer_cache.decode_plan`, see
        `cache_contextpool._SequenceDecodePlan`): a new sequence builds its own, so it reads the predictor's
        weights as they are then, however they were edited. Between steps it is reused while it was built from the
        same modules and parameters (compared by identity), the parameters unchanged (storage and version counter:
        an optimizer step or `load_state_dict`, both in place, rebuild it), and for the same batch, dtype, device
        and window. Built afresh when autograd records (the weights must be the parameters' functions) and under
        torch.compile; a plan holding FakeTensors is never kept (`_plain_tensors_only`).
        """
        # the modules through their registries, not attribute hops (see DecodePlan)
        pool = self._modules["pool"]
        predictor = pool._modules["predictor"]
        modules = predictor._modules
        in_proj, conv, proj = modules.get("in_proj"), modules["conv"], modules["proj"]
        direct = _is_plain_layer(conv) and _is_plain_layer(proj)
        params = (conv._parameters["weight"], conv._parameters.get("bias"),
                  proj._parameters["weight"], proj._parameters.get("bias")) if direct else ()  # fmt: skip
        keep = not torch.is_grad_enabled() and not _is_compiling()
        if keep:
            sources = (pool, predictor, in_proj, conv, proj) + params
            key = (like.shape[0], like.dtype, like.device, window, pool.sigma_min, pool.sigma_max, pool.normalize,
                   tuple(map(_storage_key, params)))  # fmt: skip
            cached = layer_cache.decode_plan
            # identity: the cache entry holds its sources, so no other object can have taken their ids
            if cached is not None and cached[1] == key and all(map(operator.is_, cached[0], sources)):
                return cached[2]
        self._check_pool_state(layer_cache, like)  # once per sequence: a kept plan was built after this check
        tables = self._decode_tables(like, window)
        plan = DecodePlan(
            in_proj, conv, proj, predictor.kernel_size,
            _decoding_weights(*params, like, keep) if direct else None,
            tables["sigma_min"], tables["sigma_span"], pool.sigma_min < 2 * _sigma_floor(), pool.normalize,
            tables["eps"], tables["neg_half_distance_sq"], tables["neg_half_distance_sq_rows"], tables["slot_index"],
        )  # fmt: skip
        if keep and _plain_tensors_only(plan):
            layer_cache.decode_plan = (sources, key, plan)
        return plan

    def _check_pool_state(self, layer_cache, features) -> None:
        """Refuse a pooling state this layer did not leave, before reading it (features (B, G, n, C): the new inputs).

        A cache another model filled may have keys/values of this model's sizes (`check_cache_fits`) and still
        another pooling: other groups or channels, another window R + 1 (sigma_max, truncation), another predictor
        kernel or width. Pooling on it would fail inside torch, or, for a wider window, read its extra slots as if
        they were in this model's window: a silent wrong answer. Outside compilation (shapes only)."""
        if _is_compiling():
            return
        pool = self._modules["pool"]
        ring, conv_state = layer_cache.pool_features, layer_cache.conv_state  # (B, G, R + 1, C), (B, k - 1, width)
        found = expected = None
        if ring is not None:
            batch, groups, _, channels = features.shape
            expected = (batch, groups, pool.radius + 1, channels)
            found = tuple(ring.shape) if tuple(ring.shape) != expected else None
            what = "pooling inputs (batch, groups, window R + 1, channels)"
        predictor = pool._modules.get("predictor")
        if found is None and conv_state is not None and predictor is not None:
            # a predictor pickled whole by an older version has no `width`: its state's own width is then taken
            width = getattr(predictor, "width", conv_state.shape[-1])
            expected = (features.shape[0], predictor.kernel_size - 1, width)
            found = tuple(conv_state.shape) if tuple(conv_state.shape) != expected else None
            what = "predictor conv inputs (batch, kernel - 1, width)"
        if found is not None:
            raise ValueError(
                f"cache (past_key_values): layer {self.layer_idx} holds {what} {found}, this model's layer needs "
                f"{expected}: the cache was filled by another model (another pooling configuration). Pass the cache "
                "this model returned (outputs.cache), or none to start new sequences"
            )

    def _decode_tables(self, like: torch.Tensor, window: int) -> dict:
        """Constants of a decoding step, built once per device, dtype (of `like`) and ring size R + 1.

        neg_half_distance_sq (R + 1, R + 1): row s holds -(age of each slot)^2 / 2 when the newest input sits in
        slot s (float32 at least), and neg_half_distance_sq_rows its rows; slot_index: the (1,) index of each slot;
        and the step's scalars as 0-dim tensors on the device.
        """
        dtype, device = like.dtype, like.device
        compute = dtype if dtype in (torch.float32, torch.float64) else torch.float32
        pool = self._modules["pool"]
        key = (device, dtype, window, pool.sigma_min, pool.sigma_max)

        def build():
            slots = torch.arange(window, device=device)
            age = (slots[:, None] - slots[None, :]) % window  # (newest slot, slot)

            def scalar(value, scalar_dtype=dtype):
                return torch.tensor(value, dtype=scalar_dtype, device=device)

            table = (age * age).to(compute) * -0.5
            return dict(
                neg_half_distance_sq=table,  # indexed by a slot tensor (the static cache's steps)
                # the rows as ready-made views: indexing the table on every step would be one more call
                neg_half_distance_sq_rows=list(table.unbind(0)),
                slot_index=[slots[s : s + 1] for s in range(window)],
                sigma_min=scalar(pool.sigma_min),
                sigma_span=scalar(pool.sigma_max - pool.sigma_min),
                eps=scalar(DEFAULT_EPS, compute),
            )

        return _module_memo(self, "_decode_tables_cache", key, build)


def _decoding_weights(conv_weight, conv_bias, proj_weight, proj_bias, like, kept: bool) -> DecodingWeights:
    """The predictor's conv and projection weights in decoding layout, in the dtype of `like` (B, ...)."""
    taps = conv_weight.squeeze(1).t()  # (width, 1, kernel) -> (kernel, width)
    ones = None
    if conv_bias is not None:
        taps = torch.cat([taps, conv_bias.unsqueeze(0)], dim=0)  # (kernel + 1, width)
        ones = like.new_ones(like.shape[0], 1, taps.shape[-1])
    # a kept bias is the parameter's detached view (same storage: the plan's key sees its edits); with autograd
    # recording, the parameter itself
    bias = proj_bias.detach() if proj_bias is not None and kept else proj_bias
    return DecodingWeights((taps * _SQRT_HALF).to(like.dtype), ones,
                           (proj_weight.t() * _SQRT_HALF).to(like.dtype), bias)  # fmt: skip


def _decode_gates(plan: DecodePlan, hidden, keep, conv_state):
    """The causal predictor (spec items 1-2) for one new token on its conv state.

    hidden (B, 1, d), conv_state (B, kernel - 1, width) -> weights (B, G, 1), the sigma gate
    sigmoid(b) (B, G, 1), and the next conv state (B, kernel - 1, width).
    """
    h = _predictor_input(plan.in_proj, hidden, keep)
    if conv_state.dtype != h.dtype:
        conv_state = conv_state.to(h.dtype)
    weights = plan.weights
    if weights is not None:
        taps, ones, proj_weight_t, proj_bias = weights
        if taps.dtype != h.dtype:  # an in-projection under autocast: its output's dtype
            taps, ones, proj_weight_t = taps.to(h.dtype), ones.to(h.dtype) if ones is not None else None, proj_weight_t.to(h.dtype)
        # the depthwise conv as one multiply-add over the window's rows; with a bias, a row of ones in the
        # window meets the bias row of `taps`, so the bias costs no call of its own
        rows = [conv_state, h] if ones is None else [conv_state, h, ones]
        conv_window = torch.cat(rows, dim=1)  # (B, kernel (+ 1), width), token-major: no transpose
        scaled = (conv_window * taps).sum(1)  # (B, width): s = conv output / sqrt(2) (the taps carry the factor)
        # GELU(x) = x (1 + erf(x / sqrt 2)) / 2 = s (1 + erf(s)) / sqrt 2: two calls, the last 1/sqrt(2) in the
        # projection weight. F.gelu is one call but costs 3-5x erf + addcmul on a vector of a few hundred.
        activated = torch.addcmul(scaled, scaled, torch.erf(scaled))
        logits = activated @ proj_weight_t if proj_bias is None else torch.addmm(proj_bias, activated, proj_weight_t)
    else:  # wrapped layers (PEFT adapters, ...) run their own forward: the causal conv (no padding) on the window
        conv_window = torch.cat([conv_state, h], dim=1)  # (B, kernel, width)
        logits = plan.proj(F.gelu(plan.conv(conv_window.transpose(1, 2)).squeeze(-1)))  # (B, 2G)
    # (B, 2G, 1) -> sigmoid(a), sigmoid(b), each (B, G, 1): chunk is one C++ call (Tensor.split is Python)
    weights, sigma_gate = torch.sigmoid(logits).unsqueeze(-1).chunk(2, dim=1)
    if keep is not None:
        weights = weights * keep.unsqueeze(1).to(weights.dtype)
    return weights, sigma_gate, conv_window[:, 1 : plan.kernel_size]


def _decode_pool(plan: DecodePlan, ring_features, ring_weights, sigma, neg_half_age_sq, out_dtype):
    """The newest token's pooled feature (spec items 4-5) from the last R + 1 inputs.

    ring_features (B, G, R + 1, C), ring_weights (B, G, R + 1), sigma (B, G, 1), neg_half_age_sq
    (R + 1,): -(distance of each slot to the newest token)^2 / 2 -> pooled (B, G, 1, C).
    """
    if out_dtype not in (torch.float32, torch.float64):  # computed in float32 at least, like the operator
        ring_features, ring_weights, sigma = ring_features.float(), ring_weights.float(), sigma.float()
    # floored as in the operator: a width whose square underflows would give 0 * inf = NaN at distance 0.
    # sigma = sigma_min + gate * span never falls below sigma_min (less a rounding of the step's dtype),
    # so the floor is a call only when sigma_min lies near it.
    if plan.floor_sigma:
        sigma = sigma.clamp_min(_sigma_floor())
    coef = ring_weights * torch.exp(neg_half_age_sq * sigma.pow(-2))  # (B, G, R + 1)
    if plan.normalize:  # normalise the R + 1 coefficients rather than the C outputs: fewer calls
        coef = coef / (coef.sum(-1, keepdim=True) + plan.eps)
    # the weighted sum over R + 1 slots as one bmm on 3-D views (4 dispatches; torch.matmul on the 4-D
    # tensors issues 7, a broadcast multiply and sum 3 but about twice the time: 6.3 against 4.5 us at batch 1,
    # 13.8 against 6.8 at batch 8, this CPU)
    batch, groups, window, channels = ring_features.shape
    pooled = torch.bmm(coef.view(batch * groups, 1, window), ring_features.reshape(batch * groups, window, channels))
    pooled = pooled.view(batch, groups, 1, channels)
    return pooled if pooled.dtype == out_dtype else pooled.to(out_dtype)


def _may_write_ring_in_place(layer_cache, ring_features, ring_weights) -> bool:
    """Whether a step may overwrite a ring slot in place instead of copying the ring.

    Only a ring an earlier step made (`owned_ring`; a chunk's ring may be a view of that chunk's
    inputs, which the caller may still hold, e.g. as returned hidden states), only in inference
    (a step taken with autograd on must never edit a tensor saved for backward, nor one a later
    backward reads), and not while the cache records its states for `crop` (the log holds the rings
    by reference). A ring made under torch.inference_mode only under inference_mode: torch refuses the write
    elsewhere, and decoding may go on under no_grad after steps under inference_mode (as with transformers'
    DynamicCache, the ring is then copied once, and that copy is written in place from then on).
    """
    return (
        layer_cache.owned_ring is not None
        and layer_cache.owned_ring[0] is ring_features
        and layer_cache.owned_ring[1] is ring_weights
        and not torch.is_grad_enabled()
        and not ring_features.requires_grad
        and not ring_weights.requires_grad
        and not layer_cache.record_past
        and (not ring_features.is_inference() or torch.is_inference_mode_enabled())
    )
