"""The offset-loop pooling (`_FastContextPool`): one shifted view of x per window offset.

Flat, Hub-shipped file (imports only torch). The earlier 2-D path, kept as the measured
baseline (scripts/bench_vision.py) and for the shapes the blocked/tiled paths do not cover
(causal pooling of more than one spatial dim, 1-D strides). pooling_contextpool.py re-exports it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from .checks_contextpool import _autocast_off

# --------------------------------------------------------------------------------------
# The window: which offsets exist and which slices they touch
# --------------------------------------------------------------------------------------


def _window_offsets(radius: int, in_sizes: Sequence[int], causal: bool) -> list[tuple[int, ...]]:
    """All offsets (one int per spatial dim) that can reach an input: |offset| <= R and < size."""
    per_dim = []
    for size in in_sizes:
        reach = min(radius, size - 1)
        upper = 0 if causal else reach
        per_dim.append(range(-reach, upper + 1))
    return list(itertools.product(*per_dim))


def _offset_slices(offset: int, size_in: int, size_out: int, stride: int, origin: int = 0):
    """Outputs o whose input position origin + o * stride + offset lies in [0, size_in),
    as (output slice, input slice), or None when there are none."""
    first = origin + offset  # input position of output 0 plus the offset
    lo = max(0, (-first + stride - 1) // stride)
    hi = min(size_out, (size_in - 1 - first) // stride + 1)
    if lo >= hi:
        return None
    start = first + lo * stride
    return slice(lo, hi), slice(start, start + (hi - lo - 1) * stride + 1, stride)


def _offset_plan(radius, in_sizes, out_sizes, stride, causal, origins=None):
    """[(squared distance, output index, input index)] for every offset that touches something."""
    origins = origins or (0,) * len(in_sizes)
    plan = []
    for offset in _window_offsets(radius, in_sizes, causal):
        slices = [
            _offset_slices(o, si, so, stride, org)
            for o, si, so, org in zip(offset, in_sizes, out_sizes, origins, strict=True)
        ]
        if any(s is None for s in slices):
            continue
        out_index = (slice(None),) + tuple(s[0] for s in slices)
        in_index = (slice(None),) + tuple(s[1] for s in slices)
        plan.append((float(sum(o * o for o in offset)), out_index, in_index))
    # Offsets at the same distance (+-k in 1-D; up to 8 in 2-D) share one Gaussian, computed
    # once on all outputs and sliced: sorting makes them adjacent, so only one is kept alive.
    plan.sort(key=lambda step: step[0], reverse=True)
    return plan


# Outputs are processed in tiles along the first spatial axis so that the tile's inputs and
# outputs stay in cache across the 2R+1 offset passes (one pass over a 16 MB tensor per offset
# is memory-bound). A tile holds about this many (batch * positions * features) elements.
_TILE_ELEMENTS = 1 << 20


def _tiled_plans(radius, in_sizes, out_sizes, stride, causal, row_elements):
    """[(output rows, input rows, plan)] covering all outputs; plans are relative to the tile views."""
    rows_out, rows_in = out_sizes[0], in_sizes[0]
    tile = max(1, min(rows_out, _TILE_ELEMENTS // max(1, row_elements)))
    tiles = []
    for t0 in range(0, rows_out, tile):
        t1 = min(rows_out, t0 + tile)
        a = max(0, t0 * stride - radius)
        b = min(rows_in, (t1 - 1) * stride + radius + 1)
        origins = (t0 * stride - a,) + (0,) * (len(in_sizes) - 1)
        plan = _offset_plan(radius, (b - a,) + tuple(in_sizes[1:]), (t1 - t0,) + tuple(out_sizes[1:]), stride, causal, origins)
        tiles.append((slice(t0, t1), slice(a, b), plan))
    return tiles


class _GaussianCache:
    """exp(-sq / (2 sigma^2)) on every output for the current squared distance (None at 0)."""

    def __init__(self, sigma: torch.Tensor):
        self.inv_two_var = 0.5 / (sigma * sigma)  # (B, *out_sizes)
        self.sq, self.gauss = 0.0, None

    def __call__(self, sq: float):
        if sq != self.sq:
            self.sq, self.gauss = sq, torch.exp(self.inv_two_var * -sq)
        return self.gauss


# --------------------------------------------------------------------------------------
# Fast path
# --------------------------------------------------------------------------------------


class _FastContextPool(torch.autograd.Function):
    """Offset-loop pooling with a hand-written backward (no per-offset tensors are kept)."""

    @staticmethod
    @_autocast_off
    def forward(ctx, x, weights, sigma, radius, stride, causal, normalize, eps):
        # x: (B, *in_sizes, d); weights: (B, *in_sizes); sigma: (B, *out_sizes)
        in_sizes, out_sizes = tuple(weights.shape[1:]), tuple(sigma.shape[1:])
        row_elements = x[:, :1].numel()  # elements in one input row (all batch, features)
        tiles = _tiled_plans(radius, in_sizes, out_sizes, stride, causal, row_elements)
        y = x.new_zeros(sigma.shape + x.shape[-1:])
        total = torch.zeros_like(sigma) if normalize else None  # sum_j w_j g_ij
        for rows_out, rows_in, plan in tiles:
            x_t, w_t, y_t = x[:, rows_in], weights[:, rows_in], y[:, rows_out]
            total_t = total[:, rows_out] if normalize else None
            gaussian = _GaussianCache(sigma[:, rows_out])
            for sq, out_index, in_index in plan:
                coef = w_t[in_index]
                if sq:
                    coef = coef * gaussian(sq)[out_index]
                y_t[out_index].addcmul_(coef.unsqueeze(-1), x_t[in_index])
                if normalize:
                    total_t[out_index] += coef
        if normalize:
            denom = total.add_(eps)
            y.div_(denom.unsqueeze(-1))
        else:
            denom = None
        ctx.save_for_backward(x, weights, sigma, y, denom)
        ctx.tiles = tiles
        return y

    @staticmethod
    @_autocast_off
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        x, weights, sigma, y, denom = ctx.saved_tensors
        need_x = ctx.needs_input_grad[0]
        need_coef = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        if denom is not None:
            grad_num = grad_y / denom.unsqueeze(-1)  # dL/d(sum_j c_ij x_j)
            grad_total = torch.linalg.vecdot(grad_y, y).div_(denom).neg_()  # dL/d(sum_j c_ij)
        else:
            grad_num, grad_total = grad_y, None
        grad_x = torch.zeros_like(x) if need_x else None
        grad_w = torch.zeros_like(weights)
        grad_sq = torch.zeros_like(sigma)  # sum_j dL/dc_ij * c_ij * |p_j - p_i|^2
        for rows_out, rows_in, plan in ctx.tiles:
            x_t, w_t, g_t = x[:, rows_in], weights[:, rows_in], grad_num[:, rows_out]
            gx_t = grad_x[:, rows_in] if need_x else None
            gw_t, gsq_t = grad_w[:, rows_in], grad_sq[:, rows_out]
            gtot_t = grad_total[:, rows_out] if grad_total is not None else None
            gaussian = _GaussianCache(sigma[:, rows_out])
            for sq, out_index, in_index in plan:
                coef = w_t[in_index]
                if sq:
                    gauss = gaussian(sq)[out_index]
                    coef = coef * gauss
                g_out = g_t[out_index]
                if need_x:
                    gx_t[in_index].addcmul_(g_out, coef.unsqueeze(-1))
                if not need_coef:
                    continue
                grad_coef = torch.linalg.vecdot(g_out, x_t[in_index])  # dL/dc_ij
                if gtot_t is not None:
                    grad_coef += gtot_t[out_index]
                if sq:
                    gw_t[in_index].addcmul_(grad_coef, gauss)
                    gsq_t[out_index].addcmul_(grad_coef, coef, value=sq)
                else:
                    gw_t[in_index] += grad_coef
        # d g_ij / d sigma_i = g_ij * |p_j - p_i|^2 / sigma_i^3
        grad_sigma = grad_sq.div_(sigma * sigma * sigma)
        return grad_x, grad_w, grad_sigma, None, None, None, None, None
