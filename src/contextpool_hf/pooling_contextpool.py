"""The ContextPool operator and its modules.

Flat, Hub-shipped file: it imports only torch, so a checkpoint saved with
`save_pretrained` carries it next to the modeling files.

For output position i with width sigma_i and input weights w_j (spec items 2-5):

    g_ij = exp(-|p_j - p_i|^2 / (2 sigma_i^2))   if every |p_j - p_i| <= R, else 0
    y_i  = sum_j w_j g_ij x_j / (eps + sum_j w_j g_ij)        (normalize=True)

with R = ceil(truncation * sigma_max); causal 1-D pooling also drops j > i.

Two implementations:
- "reference": dense (batch, n_out, n_in) coefficient matrix. Obviously correct, any
  dtype (float64 for the oracle), O(n^2) memory. Used by tests only.
- "fast": in 1-D, blocked banded matmuls (`_BlockedPool1d`); in 2-D, dense or tiled
  coefficient matmuls (`pooling_2d_contextpool.py`). Extra memory O(n d) (2-D: plus a
  dense n_out x n_in only on small maps); hand-written backwards recompute the Gaussian
  coefficients instead of storing them. The offset loop (`_FastContextPool`, one shifted
  view of x per window offset) is the earlier 2-D path, kept as the measured baseline.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .pooling_2d_contextpool import tiled_pool_2d

IMPLEMENTATIONS = ("fast", "reference")
DEFAULT_EPS = 1e-6
# sigma is produced as sigma_min + (sigma_max - sigma_min) * sigmoid(b); allow float rounding
# at the top of that range without letting real out-of-range widths through.
_SIGMA_MAX_SLACK = 1e-4


def window_radius(sigma_max: float, truncation: float) -> int:
    """R = ceil(truncation * sigma_max): the largest offset that may get a non-zero weight."""
    return int(math.ceil(truncation * sigma_max))


def clamped_radius(radius: int, in_sizes: Sequence[int]) -> int:
    """The radius that pooling an input of `in_sizes` actually needs: min(R, largest size - 1).

    Exact, not an approximation: no two positions of the input lie further apart than that,
    so a larger R selects the same (j, i) pairs. It keeps every path's cost bounded by the
    input (a window of R = 9000 on 8 tokens would otherwise cost 9000 tokens' work).
    """
    largest = max(in_sizes, default=0)
    return max(0, min(int(radius), largest - 1))


# --------------------------------------------------------------------------------------
# Input checking
# --------------------------------------------------------------------------------------


def _is_compiling() -> bool:
    return hasattr(torch, "compiler") and torch.compiler.is_compiling()


# Every rejected option raises a ValueError whose message starts with the argument's name and
# says what is allowed. bool is an int subclass in Python: `sigma_max=True` or `stride=True` is a
# mistake, never a number, so the number checks exclude it.


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_real(name: str, value, low=None, low_open: bool = False) -> None:
    """A finite Python int/float (not bool), >= low (> low when low_open)."""
    relation = ">" if low_open else ">="
    allowed = "a finite number" + (f" {relation} {low}" if low is not None else "")
    if not (_is_real(value) and math.isfinite(value)):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    if low is not None and (value < low or (low_open and value <= low)):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _check_int(name: str, value, low: int = 1, odd: bool = False) -> None:
    """A Python int (not bool) >= low, odd when asked."""
    allowed = f"an {'odd ' if odd else ''}int >= {low}"
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (odd and value % 2 == 0):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _check_bool(name: str, value) -> None:
    # "no", 0 or None would be truthy/falsy by accident: only True or False say what they mean
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def _check_options(sigma_max: float, truncation: float, implementation: str, eps: float,
                   causal: bool = False, normalize: bool = True) -> None:  # fmt: skip
    if not isinstance(implementation, str) or implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    _check_real("sigma_max", sigma_max, 0, low_open=True)
    _check_real("truncation", truncation, 0, low_open=True)
    if not math.isfinite(truncation * sigma_max):
        raise ValueError(
            f"truncation * sigma_max (the window radius) must be finite, got {truncation!r} * {sigma_max!r}"
        )
    _check_real("eps", eps, 0)
    _check_bool("causal", causal)
    _check_bool("normalize", normalize)


def _check_module_options(hidden_size, groups, kernel_size, causal, width, spatial_dims) -> None:
    """The predictor's sizes (ContextPoolPredictor and ContextPool), each named with its allowed values."""
    _check_int("hidden_size", hidden_size)
    _check_int("groups", groups)
    # odd: a centred depthwise conv keeps the length only with an odd kernel (an even one adds a token)
    _check_int("kernel_size", kernel_size, odd=True)
    _check_bool("causal", causal)
    if width is not None:
        _check_int("predictor_width", width)
    if spatial_dims not in (1, 2) or isinstance(spatial_dims, bool):
        raise ValueError(f"spatial_dims must be 1 (sequences) or 2 (grids), got {spatial_dims!r}")


def _check_not_transformed(*tensors: torch.Tensor) -> None:
    """torch.func transforms (vmap, grad, jacrev) cannot run the fast path's autograd Functions nor
    the value checks (they read the data): say so instead of failing deep inside torch."""
    functorch = getattr(torch._C, "_functorch", None)
    if _is_compiling() or functorch is None or not hasattr(functorch, "is_functorch_wrapped_tensor"):
        return  # dynamo cannot trace the query (and compiled code runs no transforms through here)
    if any(isinstance(t, torch.Tensor) and functorch.is_functorch_wrapped_tensor(t) for t in tensors):
        raise ValueError(
            "x, weights and sigma are torch.func-transformed tensors (torch.vmap / torch.func.grad): "
            "ContextPool does not support function transforms; its inputs are already batched along "
            "dim 0, so stack the examples instead of vmapping, and use torch.autograd.grad for gradients"
        )


# The smallest width the arithmetic sees. A smaller sigma (down to 1e-45, where sigma^2 underflows
# to 0 and 0 * inf would give NaN) means the identity: every neighbour's weight
# exp(-dist^2 / (2 sigma^2)) with dist >= 1 is below exp(-800), which is exactly 0 in float32 and
# float64, and so it already is at this floor. Flooring is therefore exact (outputs and gradients:
# the true d/dsigma is 0 there too), not an approximation.
_SIGMA_FLOOR = 0.025


def _empty_result(x: torch.Tensor, weights: torch.Tensor, sigma: torch.Tensor, shape) -> torch.Tensor:
    """The result when some size is 0 (batch, positions or features): zeros of the output shape,
    still attached to the inputs so that autograd gives them (empty or zero) gradients."""
    attached = (x.sum() + weights.sum() + sigma.sum()) * 0
    return x.new_zeros(shape) + attached.to(x.dtype)


def _check_values(name: str, tensor: torch.Tensor, low=None, high=None, low_open: bool = False) -> None:
    """Value checks (finite, in range). They read the data, so they are skipped under torch.compile.

    One pass over the data: min and max propagate nan and expose +-inf, so they answer the
    finiteness and the range questions together.
    """
    if _is_compiling():
        return
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")
    if tensor.numel() == 0:
        return
    smallest, largest = torch.stack(torch.aminmax(tensor.detach())).tolist()
    if not (math.isfinite(smallest) and math.isfinite(largest)):
        raise ValueError(f"{name} contains non-finite values (nan or inf)")
    if low is not None and (smallest < low or (low_open and smallest <= low)):
        relation = ">" if low_open else ">="
        raise ValueError(f"{name} must be {relation} {low}, got a minimum of {smallest}")
    if high is not None and largest > high:
        raise ValueError(f"{name} must be <= {high}, got a maximum of {largest}")


def _check_shape(name: str, tensor, expected: tuple[int, ...], what: str) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tuple(tensor.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)} ({what}), got {tuple(tensor.shape)}")


def _mask_as_weights(attention_mask: torch.Tensor, name: str) -> torch.Tensor:
    """A 0/1 mask (bool, int, or float exactly 0/1) -> a bool keep mask; anything else is an error.

    An additive mask (0 = keep, large negative = drop) would read inverted and 0.5, 2 or -1 as
    "keep" if cast with .bool(), so those are rejected rather than guessed at. The value check
    reads the data (one pass, one host sync), so it is skipped under torch.compile / export.
    """
    if not isinstance(attention_mask, torch.Tensor):
        raise ValueError(
            f"{name} must be a torch.Tensor of 0 (padding) and 1 (real token), got {type(attention_mask).__name__}"
        )
    if attention_mask.dtype == torch.bool:
        return attention_mask
    if attention_mask.is_complex():
        raise ValueError(f"{name} must be a bool, integer or float tensor of 0 and 1, got dtype {attention_mask.dtype}")
    if not _is_compiling() and attention_mask.numel():
        bad = (attention_mask != 0) & (attention_mask != 1)
        if bool(bad.any()):
            value = attention_mask[bad][0].item()
            raise ValueError(
                f"{name} must contain only 0 (padding) and 1 (real token) (bool, int, or float exactly 0/1), "
                f"got {value!r}. An additive mask (0 = keep, large negative = drop) is not accepted: "
                "pass (additive_mask == 0) instead"
            )
    return attention_mask != 0


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


# 1-D outputs are processed in blocks of this many tokens (see _BlockedPool1d) ...
_BLOCK_1D = 64
# ... and the blocks in chunks of about this many elements per temporary, so that the
# temporaries stay cache-sized and are reused from chunk to chunk: whole-sequence temporaries
# are fresh memory on every call, and the page faults then cost more than the arithmetic.
_CHUNK_ELEMENTS = 1 << 18
# Accelerators keep freed memory in a caching allocator (no page faults to avoid) and want few,
# large kernels, so there the chunks are much larger.
_CHUNK_ELEMENTS_ACCELERATOR = 1 << 26


# exp() of -inf, or of an argument whose result is subnormal or 0 (below about -87 in float32),
# takes a slow path on CPUs: 18x (-inf) to 150x (-100) slower per element, measured. So no such
# argument reaches exp: exponents below -80 are clamped there and their results set to exactly 0.
# Such a term is below exp(-80) = 1.8e-35, under the rounding of any sum it enters (the output's
# own term has exp(0) = 1), and the reference's own exp underflows to (nearly) 0 there too; a
# zero-weight token whose neighbours are all that far still pools exactly 0.
_MIN_EXPONENT = -80.0
# q outside the window: finite (the sigma gradient multiplies by q, and 0 * inf would be NaN) and
# so negative that q / s^2 is below _MIN_EXPONENT for every s (s <= sigma_max, finite).
_OUTSIDE_Q = -1e30


def _block_tables(block, window, left, radius, causal, device, dtype):
    """(T, W) table q_ij = -dist^2 / 2 between output i and window input j of a block
    (_OUTSIDE_Q outside the window)."""
    out_pos = torch.arange(block, device=device).view(block, 1)
    in_pos = torch.arange(window, device=device).view(1, window) - left
    dist = (in_pos - out_pos).to(dtype)  # (T, W): input position minus output position
    inside = dist.abs() <= radius
    if causal:
        inside = inside & (dist <= 0)
    return torch.where(inside, dist * dist * -0.5, torch.full((), _OUTSIDE_Q, dtype=dtype, device=device))


def _chunk_coefficients(w_win, s_pad, q):
    """gauss_ij = exp(-dist^2 / (2 s_i^2)) and c_ij = w_j gauss_ij, both (B, kc, T, W)."""
    inv_var = (s_pad * s_pad).reciprocal_()  # (B, kc, T, 1)
    exponent = torch.mul(q, inv_var)
    kept = exponent >= _MIN_EXPONENT  # False outside the window and where the term is < 1.8e-35
    gauss = exponent.clamp_min_(_MIN_EXPONENT).exp_().mul_(kept)  # exactly 0 where not kept
    return gauss, gauss * w_win


def _overlap_add_(out: torch.Tensor, windows: torch.Tensor, first: int, block: int) -> None:
    """out[:, (first + k) * T + j] += windows[:, k, j]: the adjoint of unfold(1, W, T).

    out (B, rows, ...); windows (B, kc, W, ...). Done as ceil(W / T) strided adds of whole
    blocks rather than one add per window.
    """
    n_windows, window = windows.shape[1:3]
    chunks = -(-window // block)
    region = out[:, first * block : (first + n_windows + chunks - 1) * block]
    region = region.unflatten(1, (n_windows + chunks - 1, block))  # (B, kc + C - 1, T, ...), a view
    for c in range(chunks):
        rows = min(block, window - c * block)
        region[:, c : c + n_windows, :rows] += windows[:, :, c * block : c * block + rows]


class _BlockedPool1d(torch.autograd.Function):
    """1-D pooling as small banded matmuls, in cache-sized chunks, with a hand-written backward.

    Outputs are cut into blocks of T tokens; block b only reads the inputs
    [bT - R, bT + T + R) (causal: up to bT + T), a window of W = T + 2R tokens, so each block
    is one (T, W) x (W, d) matmul: no n x n and no n x (2R+1) x d tensor. On a CPU one BLAS
    call per chunk beats 2R+1 elementwise passes over x (2-8x, scripts/bench_op.py). The
    coefficients are recomputed in the backward rather than saved, so the extra memory is
    O(n d) plus one chunk's temporaries.
    """

    @staticmethod
    def forward(ctx, x, weights, sigma, radius, causal, normalize, eps):
        batch, n, d = x.shape
        block = min(_BLOCK_1D, n)
        n_blocks = -(-n // block)
        left = radius
        window = block + left + (0 if causal else radius)
        # room for every window, and whole blocks for _overlap_add_ in the backward
        rows = (n_blocks + -(-window // block) - 1) * block
        x_pad = F.pad(x, (0, 0, left, rows - n - left))  # (B, rows, d)
        w_pad = F.pad(weights, (left, rows - n - left))  # zero weight: padding adds nothing
        s_pad = F.pad(sigma, (0, n_blocks * block - n), value=1.0).view(batch, n_blocks, block, 1)
        x_win = x_pad.unfold(1, window, block)  # (B, nb, d, W), a view
        w_win = w_pad.unfold(1, window, block).unsqueeze(2)  # (B, nb, 1, W)
        q_table = _block_tables(block, window, left, radius, causal, x.device, x.dtype)
        y = x.new_empty(batch, n_blocks, block, d)
        denom = x.new_empty(batch, n_blocks, block, 1) if normalize else None
        chunk_elements = _CHUNK_ELEMENTS if x.device.type == "cpu" else _CHUNK_ELEMENTS_ACCELERATOR
        step = max(1, chunk_elements // (batch * block * max(window, d)))  # blocks per chunk
        for k0 in range(0, n_blocks, step):
            k = slice(k0, k0 + step)
            _, coef = _chunk_coefficients(w_win[:, k], s_pad[:, k], q_table)
            y_k = torch.matmul(coef, x_win[:, k].transpose(-1, -2))  # (B, kc, T, d)
            if normalize:
                total = coef.sum(-1, keepdim=True).add_(eps)  # (B, kc, T, 1)
                y_k.div_(total)
                denom[:, k] = total
            y[:, k] = y_k
        # x, not x_pad: x is usually alive anyway (the layer's input), the padded copy is not
        ctx.save_for_backward(x, w_pad, s_pad, y, denom, q_table)
        ctx.layout = (n, block, window, left, step, rows)
        y = y.view(batch, n_blocks * block, d)
        return y if n == n_blocks * block else y[:, :n]  # a slice would copy its gradient back

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, w_pad, s_pad, y, denom, q_table = ctx.saved_tensors
        n, block, window, left, step, rows = ctx.layout
        x_pad = F.pad(x, (0, 0, left, rows - n - left))  # (B, rows, d), as in the forward
        batch, n_blocks, _, d = y.shape
        need_x, need_w, need_sigma = ctx.needs_input_grad[:3]
        if n == n_blocks * block:
            grad = grad_out.reshape(batch, n_blocks, block, d)
        else:
            grad = grad_out.new_zeros(batch, n_blocks * block, d)
            grad[:, :n] = grad_out
            grad = grad.view(batch, n_blocks, block, d)
        x_win = x_pad.unfold(1, window, block)  # (B, nb, d, W)
        w_win = w_pad.unfold(1, window, block).unsqueeze(2)  # (B, nb, 1, W)
        grad_x_pad = torch.zeros_like(x_pad) if need_x else None
        grad_w_pad = torch.zeros_like(w_pad) if need_w else None
        grad_inv_var = s_pad.new_empty(batch, n_blocks, block) if need_sigma else None
        for k0 in range(0, n_blocks, step):
            k = slice(k0, k0 + step)
            gauss, coef = _chunk_coefficients(w_win[:, k], s_pad[:, k], q_table)
            grad_num = grad[:, k]  # dL/d(sum_j c_ij x_j)
            grad_total = None
            if denom is not None:
                grad_num = grad_num / denom[:, k]
                grad_total = torch.linalg.vecdot(grad_num, y[:, k]).neg_().unsqueeze(-1)  # dL/d(sum_j c_ij)
            if need_x:
                _overlap_add_(grad_x_pad, torch.matmul(coef.transpose(-1, -2), grad_num), k0, block)
            if need_w or need_sigma:
                grad_coef = torch.matmul(grad_num, x_win[:, k])  # (B, kc, T, W): dL/dc_ij
                if grad_total is not None:
                    grad_coef.add_(grad_total)
                if need_w:
                    _overlap_add_(grad_w_pad, (grad_coef * gauss).sum(2), k0, block)
                if need_sigma:  # c_ij = w_j exp(q_ij / s_i^2), q = -dist^2 / 2
                    grad_inv_var[:, k] = torch.linalg.vecdot(grad_coef.mul_(coef), q_table)
        grad_x = grad_x_pad[:, left : left + n] if need_x else None
        grad_w = grad_w_pad[:, left : left + n] if need_w else None
        grad_sigma = None
        if need_sigma:  # d(1/s^2)/ds = -2/s^3
            s = s_pad.squeeze(-1)
            grad_sigma = (grad_inv_var * -2.0 / (s * s * s)).view(batch, -1)[:, :n]
        return grad_x, grad_w, grad_sigma, None, None, None, None


def _is_exporting() -> bool:
    return hasattr(torch.compiler, "is_exporting") and torch.compiler.is_exporting()


def _pool_1d_export(x, weights, sigma, radius, causal, normalize, eps):
    """1-D pooling as plain tensor ops for `torch.export` / ONNX with a dynamic length.

    The blocked path decides block counts with `//` on the length, and export cannot carry such
    shapes without guards that fix n. Here every shape is linear in n: the (B, n, K) band of
    coefficients for the K = 2R + 1 (causal: R + 1) offsets, computed as in `_chunk_coefficients`
    (same clamp, same exact zeros), and the output as K shifted multiply-adds of x (O(n d) memory,
    no (n, K, d) tensor). The radius is not clamped to n - 1: a radius past the input selects
    the same pairs. Autograd runs through the ops (export is for inference anyway).
    """
    n = x.shape[1]
    right = 0 if causal else radius
    offsets = torch.arange(-radius, right + 1, device=x.device, dtype=x.dtype)  # (K,)
    x_pad = F.pad(x, (0, 0, radius, right))  # (B, R + n + right, d): zero weight outside
    w_band = F.pad(weights, (radius, right)).unfold(1, offsets.numel(), 1)  # (B, n, K), a view
    exponent = (sigma * sigma).reciprocal().unsqueeze(-1) * (offsets * offsets * -0.5)  # (B, n, K)
    gauss = exponent.clamp_min(_MIN_EXPONENT).exp() * (exponent >= _MIN_EXPONENT)
    coef = gauss * w_band  # (B, n, K)
    y = coef[..., 0:1] * x_pad[:, 0:n]
    for c in range(1, offsets.numel()):
        y = y + coef[..., c : c + 1] * x_pad[:, c : c + n]  # (B, n, d)
    if normalize:
        y = y / (coef.sum(-1, keepdim=True) + eps)
    return y


def _pool_fast(x, weights, sigma, radius, stride, causal, normalize, eps):
    if x.dim() == 3 and stride == 1 and _is_exporting():
        return _pool_1d_export(x, weights, sigma, radius, causal, normalize, eps)
    if x.dim() == 3 and stride == 1:
        return _BlockedPool1d.apply(x, weights, sigma, radius, causal, normalize, eps)
    if x.dim() == 4 and not causal:  # 2-D: dense or tiled coefficient matmuls (pooling_2d_contextpool)
        return tiled_pool_2d(x, weights, sigma, radius, stride, normalize, eps)
    return _FastContextPool.apply(x, weights, sigma, radius, stride, causal, normalize, eps)


# --------------------------------------------------------------------------------------
# Dense reference
# --------------------------------------------------------------------------------------


def _grid_positions(sizes: Sequence[int], stride: int, device, dtype) -> torch.Tensor:
    """(prod(sizes), ndim) coordinates of a grid whose points sit `stride` apart."""
    axes = [torch.arange(s, device=device, dtype=dtype) * stride for s in sizes]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(sizes))


def _pool_reference(x, weights, sigma, radius, stride, causal, normalize, eps):
    batch, d = x.shape[0], x.shape[-1]
    in_sizes, out_sizes = weights.shape[1:], sigma.shape[1:]
    p_in = _grid_positions(in_sizes, 1, x.device, x.dtype)  # (n_in, ndim)
    p_out = _grid_positions(out_sizes, stride, x.device, x.dtype)  # (n_out, ndim)
    diff = p_in.unsqueeze(0) - p_out.unsqueeze(1)  # (n_out, n_in, ndim)
    inside = (diff.abs() <= radius).all(-1)
    if causal:
        inside = inside & (diff[..., 0] <= 0)
    sq = (diff * diff).sum(-1)  # (n_out, n_in)
    s = sigma.reshape(batch, -1, 1)  # (B, n_out, 1)
    gauss = torch.exp(-sq / (2 * s * s)) * inside  # (B, n_out, n_in)
    coef = gauss * weights.reshape(batch, 1, -1)
    y = coef @ x.reshape(batch, -1, d)  # (B, n_out, d)
    if normalize:
        y = y / (coef.sum(-1, keepdim=True) + eps)
    return y.reshape(sigma.shape + (d,))


_IMPLEMENTATION_FUNCTIONS = {"fast": _pool_fast, "reference": _pool_reference}


def _run(x, weights, sigma, radius, stride, causal, normalize, eps, implementation):
    """Compute in float32 at least: a 49-term sum in bf16/fp16 loses too much."""
    out_dtype = x.dtype
    if x.numel() == 0 or sigma.numel() == 0:  # batch, positions or features are 0 (the paths divide by them)
        return _empty_result(x, weights, sigma, tuple(sigma.shape) + tuple(x.shape[-1:]))
    compute_dtype = torch.promote_types(x.dtype, torch.float32)
    x, weights, sigma = (t.to(compute_dtype) for t in (x, weights, sigma))
    sigma = sigma.clamp_min(_SIGMA_FLOOR)  # exact: see _SIGMA_FLOOR (a tiny sigma is the identity, not NaN)
    if not _is_exporting():  # exported graphs keep R: min(R, n - 1) would fix the length
        radius = clamped_radius(radius, weights.shape[1:])
    fn = _IMPLEMENTATION_FUNCTIONS[implementation]
    return fn(x, weights, sigma, radius, stride, causal, normalize, eps).to(out_dtype)


# --------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------


def context_pool(
    x: torch.Tensor,
    weights: torch.Tensor,
    sigma: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    causal: bool = False,
    sigma_max: float = 8.0,
    truncation: float = 3.0,
    normalize: bool = True,
    implementation: str = "fast",
    eps: float = DEFAULT_EPS,
) -> torch.Tensor:
    """Pool every token's Gaussian neighbourhood of a sequence (ContextPool, 1-D).

    Args:
        x: (batch, n, d), or grouped (batch, groups, n, d).
        weights: per-token weights w_j in [0, 1], (batch, n) or (batch, groups, n).
        sigma: per-output-token Gaussian widths in (0, sigma_max], same shape as `weights`.
        attention_mask: (batch, n), 1 = real token, 0 = padding. Padded tokens get weight 0.
        causal: output i pools tokens j <= i only.
        sigma_max, truncation: the window radius is R = ceil(truncation * sigma_max).
        normalize: divide by eps + sum_j w_j g_ij (spec item 5).
        implementation: "fast" (blocked banded matmuls, O(n (T + 2R) d) time, O(n d) extra memory) or
            "reference" (dense n x n).

    Returns:
        y with the shape of x.
    """
    _check_options(sigma_max, truncation, implementation, eps, causal, normalize)
    if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4):
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be (batch, n, d) or (batch, groups, n, d), got {got}")
    lead = tuple(x.shape[:-1])
    what = "x's shape without the feature dim"
    _check_shape("weights", weights, lead, what)
    _check_shape("sigma", sigma, lead, what)
    _check_not_transformed(x, weights, sigma)
    _check_values("x", x)
    _check_values("weights", weights, 0.0, 1.0)
    _check_values("sigma", sigma, 0.0, sigma_max * (1 + _SIGMA_MAX_SLACK), low_open=True)
    if attention_mask is not None:
        _check_shape("attention_mask", attention_mask, (x.shape[0], x.shape[-2]), "(batch, n)")
        keep = _mask_as_weights(attention_mask, "attention_mask")
        if x.dim() == 4:
            keep = keep.unsqueeze(1)  # (B, 1, n): the same mask for every group
        weights = weights * keep.to(weights.dtype)
    if x.numel() == 0 or weights.numel() == 0:  # batch, n or d is 0: the empty result, no pooling
        return _empty_result(x, weights, sigma, x.shape)
    d = x.shape[-1]
    if x.dim() == 4:  # (B, G, n, d) -> (B*G, n, d)
        x, weights, sigma = (
            x.reshape(-1, x.shape[-2], d),
            weights.reshape(-1, lead[-1]),
            sigma.reshape(-1, lead[-1]),
        )
    radius = window_radius(sigma_max, truncation)
    y = _run(x, weights, sigma, radius, 1, causal, normalize, eps, implementation)
    return y.reshape(lead + (d,))


def strided_size(size: int, stride: int) -> int:
    """Number of outputs when outputs sit at input positions 0, stride, 2*stride, ..."""
    return (size - 1) // stride + 1


def context_pool_2d(
    x: torch.Tensor,
    weights: torch.Tensor,
    sigma: torch.Tensor,
    *,
    stride: int = 1,
    attention_mask: torch.Tensor | None = None,
    sigma_max: float = 8.0,
    truncation: float = 3.0,
    normalize: bool = True,
    implementation: str = "fast",
    eps: float = DEFAULT_EPS,
) -> torch.Tensor:
    """Pool a 2-D grid of features (ContextPool on image tokens or as a ConvNet pooling layer).

    Args:
        x: (batch, H, W, d) features on a grid.
        weights: (batch, H, W) input weights in [0, 1].
        sigma: (batch, H_out, W_out) widths of the outputs, which sit at input positions
            (r * stride, c * stride); H_out = ceil(H / stride), W_out = ceil(W / stride).
        stride: distance between outputs on the input grid (1 = pool in place).
        attention_mask: optional (batch, H, W), 1 = real pixel/patch, 0 = padding.

    Returns:
        (batch, H_out, W_out, d).
    """
    _check_options(sigma_max, truncation, implementation, eps, normalize=normalize)
    if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be (batch, H, W, d), got {got}")
    batch, height, width, _ = x.shape
    _check_shape("weights", weights, (batch, height, width), "(batch, H, W)")
    out_shape = (batch, strided_size(height, stride), strided_size(width, stride))
    _check_shape("sigma", sigma, out_shape, f"(batch, H_out, W_out) for stride {stride}")
    _check_not_transformed(x, weights, sigma)
    _check_values("x", x)
    _check_values("weights", weights, 0.0, 1.0)
    _check_values("sigma", sigma, 0.0, sigma_max * (1 + _SIGMA_MAX_SLACK), low_open=True)
    if attention_mask is not None:
        _check_shape("attention_mask", attention_mask, (batch, height, width), "(batch, H, W)")
        weights = weights * _mask_as_weights(attention_mask, "attention_mask").to(weights.dtype)
    if x.numel() == 0 or sigma.numel() == 0:  # batch, H, W or d is 0: the empty result, no pooling
        return _empty_result(x, weights, sigma, out_shape + (x.shape[-1],))
    radius = window_radius(sigma_max, truncation)
    return _run(x, weights, sigma, radius, stride, False, normalize, eps, implementation)


# --------------------------------------------------------------------------------------
# Fused 1-D predictor: depthwise conv -> GELU -> projection -> sigmoid
# --------------------------------------------------------------------------------------


def _depthwise_conv_1d(h_pad: torch.Tensor, weight: torch.Tensor, bias, n: int) -> torch.Tensor:
    """out[:, t] = bias + sum_j weight[:, j] * h_pad[:, t + j]: nn.Conv1d's cross-correlation,
    computed in the (B, n, C) layout as kernel_size multiply-adds. h_pad (B, n + k - 1, C)."""
    out = h_pad[:, :n] * weight[:, 0]
    for j in range(1, weight.shape[1]):
        out.addcmul_(h_pad[:, j : j + n], weight[:, j])
    if bias is not None:
        out += bias
    return out


def _tap_shifts(kernel: int, pad_left: int, n: int):
    """(tap j, shift s = j - pad_left) for the taps that reach the sequence (|s| < n): tap j reads
    h[t + s] for output t, zero outside (the padding)."""
    return [(j, j - pad_left) for j in range(kernel) if abs(j - pad_left) < n]


def _depthwise_conv_1d_unpadded(h, weight, bias, pad_left):
    """`_depthwise_conv_1d` of the zero-padded h without building the padded copy: the centre
    tap writes every output (bias included), the others add into the outputs they reach."""
    n = h.shape[1]
    centre = weight[:, pad_left]
    out = torch.addcmul(bias, h, centre) if bias is not None else h * centre  # (B, n, C)
    for j, shift in _tap_shifts(weight.shape[1], pad_left, n):
        if shift < 0:
            out[:, -shift:].addcmul_(h[:, : n + shift], weight[:, j])
        elif shift > 0:
            out[:, : n - shift].addcmul_(h[:, shift:], weight[:, j])
    return out


class _FusedPredictor1d(torch.autograd.Function):
    """sigmoid(proj(gelu(depthwise_conv(h)))) for 1-D sequences, with a hand-written backward.

    One function instead of four autograd nodes: on a CPU the depthwise conv's backward alone
    cost more than the pooling, and the layout changes around nn.Conv1d ((B, n, C) <-> (B, C, n))
    copied the input twice. The conv runs on shifted slices of h (no padded copy). Saved: the
    input, the conv output (B, n, C) and the (B, 2G, n) gates, O(n C); the GELU is recomputed.
    """

    @staticmethod
    def forward(ctx, h, conv_weight, conv_bias, proj_weight, proj_bias, pad_left):
        # h (B, n, C); conv_weight (C, k); proj_weight (2G, C) -> gates (B, 2G, n)
        if _is_exporting():  # shifted slices would decide on n (|shift| < n): pad instead
            n, kernel = h.shape[1], conv_weight.shape[1]
            h_pad = F.pad(h, (0, 0, pad_left, kernel - 1 - pad_left))  # (B, n + k - 1, C)
            conv = _depthwise_conv_1d(h_pad, conv_weight, conv_bias, n)
        else:
            conv = _depthwise_conv_1d_unpadded(h, conv_weight, conv_bias, pad_left)
        gates = torch.sigmoid(F.linear(F.gelu(conv), proj_weight, proj_bias)).transpose(1, 2)  # (B, 2G, n)
        ctx.save_for_backward(h, conv_weight, conv, proj_weight, gates)
        ctx.pad_left = pad_left
        ctx.has_proj_bias, ctx.has_conv_bias = proj_bias is not None, conv_bias is not None
        return gates

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_gates):
        h, conv_weight, conv, proj_weight, gates = ctx.saved_tensors
        n, kernel = h.shape[1], conv_weight.shape[1]
        grad_logits = torch.ops.aten.sigmoid_backward(grad_gates, gates).transpose(1, 2)  # (B, n, 2G)
        act = F.gelu(conv)  # recomputed: (B, n, C)
        flat_grad = grad_logits.reshape(-1, grad_logits.shape[-1])  # (B*n, 2G)
        grad_proj_weight = flat_grad.t() @ act.reshape(-1, act.shape[-1])  # (2G, C)
        grad_proj_bias = flat_grad.sum(0) if ctx.has_proj_bias else None
        grad_conv = torch.ops.aten.gelu_backward(grad_logits @ proj_weight, conv)  # (B, n, C)
        grad_conv_bias = grad_conv.sum((0, 1)) if ctx.has_conv_bias else None
        # the adjoint of the shifted multiply-adds: out[t] += w_j h[t + s]  =>  grad_h[t + s] += w_j grad_conv[t]
        pad_left = ctx.pad_left
        grad_h = grad_conv * conv_weight[:, pad_left]
        grad_conv_weight = torch.zeros_like(conv_weight)  # (C, k); taps that reach nothing stay 0
        grad_conv_weight[:, pad_left] = torch.linalg.vecdot(grad_conv, h, dim=1).sum(0)
        for j, shift in _tap_shifts(kernel, pad_left, n):
            if shift < 0:
                g, x = grad_conv[:, -shift:], h[:, : n + shift]
                grad_h[:, : n + shift].addcmul_(g, conv_weight[:, j])
            elif shift > 0:
                g, x = grad_conv[:, : n - shift], h[:, shift:]
                grad_h[:, shift:].addcmul_(g, conv_weight[:, j])
            else:
                continue
            grad_conv_weight[:, j] = torch.linalg.vecdot(g, x, dim=1).sum(0)
        return grad_h, grad_conv_weight, grad_conv_bias, grad_proj_weight, grad_proj_bias, None


# --------------------------------------------------------------------------------------
# Modules: predictor and ContextPool
# --------------------------------------------------------------------------------------


class ContextPoolPredictor(nn.Module):
    """m(X) -> (a, b): depthwise conv -> GELU -> linear to 2 * groups logits (spec item 1).

    `a` gives the token weights (w = sigmoid(a)), `b` the pooling sizes. The causal variant
    pads on the left only, so a token's logits never see later tokens; its conv state (the
    last kernel_size - 1 inputs) is what incremental decoding carries between steps.
    """

    def __init__(
        self,
        hidden_size: int,
        groups: int = 1,
        kernel_size: int = 3,
        causal: bool = False,
        width: int | None = None,
        spatial_dims: int = 1,
    ):
        super().__init__()
        _check_module_options(hidden_size, groups, kernel_size, causal, width, spatial_dims)
        width = width or hidden_size
        self.groups, self.kernel_size, self.causal, self.spatial_dims = (
            groups,
            kernel_size,
            causal,
            spatial_dims,
        )
        # A narrower predictor first projects down; at full width it reads the input directly.
        self.in_proj = nn.Linear(hidden_size, width, bias=False) if width != hidden_size else None
        conv = nn.Conv1d if spatial_dims == 1 else nn.Conv2d
        padding = 0 if causal else kernel_size // 2
        self.conv = conv(width, width, kernel_size, padding=padding, groups=width)
        self.proj = nn.Linear(width, 2 * groups)

    @property
    def state_size(self) -> int:
        """How many past conv inputs a causal predictor needs to continue a sequence."""
        return self.kernel_size - 1

    def forward(self, hidden: torch.Tensor, keep: torch.Tensor | None = None, conv_state=None):
        """hidden: (B, n, d) or (B, H, W, d); keep: (B, n) / (B, H, W) real-token mask.

        Returns a, b of shape (B, groups, n) / (B, groups, H, W), and the new conv state
        (B, width, kernel_size - 1) for causal 1-D predictors (else None).
        """
        h = self.in_proj(hidden) if self.in_proj is not None else hidden
        if keep is not None:  # padding must not leak into real tokens' logits
            h = h * keep.unsqueeze(-1).to(h.dtype)
        # explicit non-negative permutations: movedim(-1, 1) exports to ONNX as a negative one,
        # which onnxruntime rejects
        to_channels = (0, 2, 1) if self.spatial_dims == 1 else (0, 3, 1, 2)
        to_last = (0, 2, 1) if self.spatial_dims == 1 else (0, 2, 3, 1)
        h = h.permute(to_channels)  # (B, width, n) or (B, width, H, W)
        new_state = None
        if self.causal:
            if conv_state is None:
                conv_state = h.new_zeros(h.shape[:2] + (self.state_size,))
            h = torch.cat([conv_state.to(h.dtype), h], dim=-1)  # (B, width, k - 1 + n)
            new_state = h[..., h.shape[-1] - self.state_size :]
        h = F.gelu(self.conv(h)).permute(to_last)  # (B, n, width) or (B, H, W, width)
        logits = self.proj(h).permute(to_channels)  # (B, 2G, n) or (B, 2G, H, W)
        a, b = logits.chunk(2, dim=1)
        return a, b, new_state

    def _fusable(self, h: torch.Tensor, conv_state) -> bool:
        """The fused 1-D function covers a sequence without carried conv state, in the weights' dtype."""
        conv = self.conv
        return (
            self.spatial_dims == 1
            and conv_state is None
            and (self.causal or self.kernel_size % 2 == 1)
            and h.dtype == conv.weight.dtype == self.proj.weight.dtype
            and not torch.is_autocast_enabled(h.device.type)
        )

    def gates(self, hidden: torch.Tensor, keep: torch.Tensor | None = None, conv_state=None):
        """(sigmoid(a), sigmoid(b)) stacked as (B, 2 * groups, n) / (B, 2 * groups, H, W), and the conv state.

        Equal to `forward` followed by a sigmoid; 1-D sequences without carried state take the
        fused function (`_FusedPredictor1d`).
        """
        if not self._fusable(hidden, conv_state):
            a, b, new_state = self.forward(hidden, keep, conv_state)
            return torch.sigmoid(torch.cat([a, b], dim=1)), new_state
        h = self.in_proj(hidden) if self.in_proj is not None else hidden
        if keep is not None:  # padding must not leak into real tokens' logits
            h = h * keep.unsqueeze(-1).to(h.dtype)
        new_state = None
        if self.causal:  # the last k - 1 inputs, zeros before the sequence: (B, width, k - 1)
            if _is_exporting():  # no Python max on the symbolic length: pad first, then take the tail
                padded = F.pad(h, (0, 0, self.state_size, 0))  # (B, k - 1 + n, width)
                new_state = padded[:, padded.shape[1] - self.state_size :].transpose(1, 2)
            else:
                tail = h[:, max(0, h.shape[1] - self.state_size) :].transpose(1, 2)
                new_state = F.pad(tail, (self.state_size - tail.shape[-1], 0))
        pad_left = self.kernel_size - 1 if self.causal else self.kernel_size // 2
        gates = _FusedPredictor1d.apply(
            h, self.conv.weight.squeeze(1), self.conv.bias, self.proj.weight, self.proj.bias, pad_left
        )
        return gates, new_state


POOL_MODES = ("adaptive", "fixed", "fixed_learned")


def _fixed_sigma(fixed_sigma, sigma_min, sigma_max, mode) -> float:
    """The fixed modes' width: given, or the midpoint (where an adaptive predictor starts)."""
    if fixed_sigma is None:
        return sigma_min + 0.5 * (sigma_max - sigma_min)
    low_ok = fixed_sigma > sigma_min if mode == "fixed_learned" else fixed_sigma >= sigma_min
    high_ok = fixed_sigma < sigma_max if mode == "fixed_learned" else fixed_sigma <= sigma_max
    if not (isinstance(fixed_sigma, (int, float)) and low_ok and high_ok):
        interval = "(sigma_min, sigma_max)" if mode == "fixed_learned" else "[sigma_min, sigma_max]"
        raise ValueError(
            f"fixed_sigma must be in {interval} = ({sigma_min}, {sigma_max}) for mode={mode!r}, got {fixed_sigma!r}"
        )
    return float(fixed_sigma)


class ContextPool(nn.Module):
    """Features (+ mask) -> pooled features, with learned weights and pooling sizes.

    The op module knows nothing about attention: the attention layer owns the projections
    and decides what to pool (spec item 6). After `forward`, `last_sigma` holds the
    pooling sizes it used, (B, groups, n) / (B, groups, H_out, W_out), for inspection.
    """

    def __init__(
        self,
        hidden_size: int,
        groups: int = 1,
        sigma_min: float = 0.5,
        sigma_max: float = 8.0,
        truncation: float = 3.0,
        normalize: bool = True,
        causal: bool = False,
        kernel_size: int = 3,
        predictor_width: int | None = None,
        spatial_dims: int = 1,
        stride: int = 1,
        implementation: str = "fast",
        mode: str = "adaptive",
        fixed_sigma: float | None = None,
    ):
        super().__init__()
        _check_module_options(hidden_size, groups, kernel_size, causal, predictor_width, spatial_dims)
        _check_real("sigma_min", sigma_min, 0, low_open=True)
        _check_int("stride", stride)
        if not 0 < sigma_min < sigma_max:
            raise ValueError(
                f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}"
            )
        if mode not in POOL_MODES:
            raise ValueError(f"mode must be one of {POOL_MODES}, got {mode!r}")
        if spatial_dims == 2 and causal:
            raise ValueError("causal pooling is only defined for 1-D sequences")
        if stride != 1 and spatial_dims != 2:
            raise ValueError("stride is only supported for 2-D pooling")
        _check_options(sigma_max, truncation, implementation, DEFAULT_EPS, causal, normalize)
        self.hidden_size = hidden_size
        self.groups, self.sigma_min, self.sigma_max = groups, sigma_min, sigma_max
        self.truncation, self.normalize, self.causal = truncation, normalize, causal
        self.spatial_dims, self.stride, self.implementation = spatial_dims, stride, implementation
        self.radius = window_radius(sigma_max, truncation)
        self.mode = mode
        # The fixed modes (an ablation) have no predictor: w = 1 and one sigma for every token,
        # a constant ("fixed") or a learned scalar per group ("fixed_learned"), same window.
        self.predictor = self.sigma_logit = None
        if mode == "adaptive":
            self.predictor = ContextPoolPredictor(
                hidden_size, groups, kernel_size, causal, predictor_width, spatial_dims
            )
        else:
            self.fixed_sigma = _fixed_sigma(fixed_sigma, sigma_min, sigma_max, mode)
            if mode == "fixed_learned":
                self.sigma_logit = nn.Parameter(torch.full((groups,), self.initial_sigma_logit))
        self.last_sigma: torch.Tensor | None = None

    def _check_hidden(self, hidden: torch.Tensor) -> None:
        """hidden's feature size and dtype against the module's (else a shape/dtype error deep in a conv)."""
        if hidden.shape[-1] != self.hidden_size:
            raise ValueError(f"hidden must have {self.hidden_size} features (hidden_size), got shape {tuple(hidden.shape)}")
        if not hidden.is_floating_point():
            raise ValueError(f"hidden must be a floating-point tensor, got dtype {hidden.dtype}")
        param = next(self.parameters(), None)
        if param is not None and hidden.dtype != param.dtype and not torch.is_autocast_enabled(hidden.device.type):
            raise ValueError(
                f"hidden has dtype {hidden.dtype} but the ContextPool parameters are {param.dtype}: "
                f"cast one to the other (hidden.to({param.dtype}) or module.to({hidden.dtype}))"
            )

    @property
    def initial_sigma_logit(self) -> float:
        """b with sigma_from_logits(b) = fixed_sigma (where a "fixed_learned" sigma starts)."""
        share = (self.fixed_sigma - self.sigma_min) / (self.sigma_max - self.sigma_min)
        return math.log(share / (1.0 - share))

    def _fixed_prediction(self, hidden, keep):
        """w = 1 (0 on padding) and one sigma for all tokens, both (B, groups, *spatial)."""
        spatial = tuple(hidden.shape[1:-1])
        shape = (hidden.shape[0], self.groups) + spatial
        weights = hidden.new_ones(shape)
        if keep is not None:
            weights = weights * keep.unsqueeze(1).to(weights.dtype)
        if self.sigma_logit is None:
            sigma = hidden.new_full(shape, self.fixed_sigma)
        else:
            sigma = self.sigma_from_logits(self.sigma_logit).to(hidden.dtype)
            sigma = sigma.view((1, self.groups) + (1,) * len(spatial)).expand(shape)
        return weights, sigma

    def sigma_from_logits(self, b: torch.Tensor) -> torch.Tensor:
        """sigma = sigma_min + (sigma_max - sigma_min) * sigmoid(b)  (spec item 3)."""
        return self.sigma_min + (self.sigma_max - self.sigma_min) * torch.sigmoid(b)

    def predict(self, hidden, keep=None, conv_state=None):
        """(weights, sigma, conv_state): w = sigmoid(a), zero exactly on padding (spec item 2)."""
        if self.predictor is None:
            weights, sigma = self._fixed_prediction(hidden, keep)
            if self.stride > 1:
                sigma = sigma[..., :: self.stride, :: self.stride]
            return weights, sigma, None
        if self.spatial_dims == 1:  # the fused predictor (sigmoids included) where it applies
            gates, conv_state = self.predictor.gates(hidden, keep, conv_state)  # (B, 2G, n)
            weights, sigma = gates[:, : self.groups], gates[:, self.groups :]
            if keep is not None:
                weights = weights * keep.unsqueeze(1).to(weights.dtype)
            return weights, self.sigma_min + (self.sigma_max - self.sigma_min) * sigma, conv_state  # spec item 3
        a, b, conv_state = self.predictor(hidden, keep, conv_state)
        weights = torch.sigmoid(a)
        if keep is not None:
            weights = weights * keep.unsqueeze(1).to(weights.dtype)
        sigma = self.sigma_from_logits(b)
        if self.stride > 1:
            sigma = sigma[..., :: self.stride, :: self.stride]
        return weights, sigma, conv_state

    def pool(self, features: torch.Tensor, weights: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Pool already-predicted weights/sigma. features: (B, G, n, c) / (B, G, H, W, c)."""
        batch, groups = weights.shape[:2]
        c = features.shape[-1]
        x = features.reshape((batch * groups,) + features.shape[2:])  # (B*G, *spatial, c)
        w = weights.reshape((batch * groups,) + weights.shape[2:])
        s = sigma.reshape((batch * groups,) + sigma.shape[2:])
        y = _run(
            x, w, s, self.radius, self.stride, self.causal, self.normalize, DEFAULT_EPS, self.implementation
        )
        return y.reshape((batch, groups) + y.shape[1:-1] + (c,))

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """hidden (B, n, d) or (B, H, W, d) -> pooled, same layout (H, W strided when stride > 1).

        With groups > 1 every group pools the whole feature vector with its own weights
        and sizes: the output gets a group axis, (B, G, n, d) / (B, G, H_out, W_out, d).
        """
        expected_dims = self.spatial_dims + 2
        if not isinstance(hidden, torch.Tensor) or hidden.dim() != expected_dims:
            got = tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__
            raise ValueError(f"ContextPool expects a {expected_dims}-D input, got shape {got}")
        self._check_hidden(hidden)
        keep = None
        if attention_mask is not None:
            _check_shape(
                "attention_mask",
                attention_mask,
                tuple(hidden.shape[:-1]),
                "the input without its feature dim",
            )
            keep = _mask_as_weights(attention_mask, "attention_mask")
        if hidden.numel() == 0:  # batch or positions are 0: the empty result (the conv cannot run on it)
            spatial = tuple(strided_size(size, self.stride) for size in hidden.shape[1:-1])
            self.last_sigma = hidden.new_zeros((hidden.shape[0], self.groups) + spatial)
            groups = (self.groups,) if self.groups > 1 else ()
            return hidden.new_zeros(hidden.shape[:1] + groups + spatial + hidden.shape[-1:]) + hidden.sum() * 0
        weights, sigma, _ = self.predict(hidden, keep)
        self.last_sigma = sigma.detach()
        features = hidden.unsqueeze(1).expand((-1, self.groups) + hidden.shape[1:])
        pooled = self.pool(features, weights, sigma)
        return pooled.squeeze(1) if self.groups == 1 else pooled
