"""The 1-D fast path of the ContextPool operator: banded coefficient matmuls in blocks (`_BlockedPool1d`),
and its export form (`_pool_1d_export`).

Flat, Hub-shipped file: imports only torch and its flat sibling checks file (relatively). Split out of
pooling_contextpool.py, which dispatches to it and re-exports the two entry points (the tuning constants
below live here only: patch them here). The definition it computes
is in that file's docstring; its float64 oracle is `pooling_contextpool._pool_reference`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks_contextpool import _autocast_off, _define_op, _is_compiling, _op_namespace

# 1-D outputs are processed in blocks of this many tokens (see _BlockedPool1d) ...
_BLOCK_1D = 64
# ... except sequences with at most this many (output x input) coefficients, which run dense: one block
# of all n outputs against all n inputs, with no padded copy of x and no overlap-add (n <= 160 here,
# e.g. a translation batch; the crossover, between 160 and 192 at R = 24, is measured by
# `python scripts/bench_op.py --dense-1d`).
_DENSE_1D_MAX_COEFS = 160 * 160
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
# zero-weight token whose neighbours are all that far still pools exactly 0. (Literals returned by
# functions, as dynamo needs them inside the Functions: see checks_contextpool.default_eps.)
def _min_exponent() -> float:
    return -80.0


def _outside_q() -> float:
    """q outside the window: finite (the sigma gradient multiplies by q, and 0 * inf would be NaN) and so
    negative that q / s^2 is below _min_exponent() for every s (s <= sigma_max, finite)."""
    return -1e30


def _plan_1d(n: int, radius: int, causal: bool) -> tuple[int, int, int, int]:
    """(block, left, window, rows) of `_BlockedPool1d`: T outputs per block, each reading W = T + left (+ R
    when not causal) inputs that start `left` before it, from x padded to `rows` (every window inside,
    and whole blocks for the overlap-add). A short sequence is one dense block: T = W = rows = n."""
    if n * n <= _DENSE_1D_MAX_COEFS:
        return n, 0, n, n
    block = min(_BLOCK_1D, n)
    n_blocks = -(-n // block)
    window = block + radius + (0 if causal else radius)
    return block, radius, window, (n_blocks + -(-window // block) - 1) * block


def _pad_rows(t: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """t (B, n[, d]) zero-padded along n (zero weight: padding adds nothing); t itself when nothing is added."""
    if before == after == 0:
        return t
    return F.pad(t, (0, 0, before, after) if t.dim() == 3 else (before, after))


def _block_tables(block, window, left, radius, causal, device, dtype):
    """(T, W) table q_ij = -dist^2 / 2 between output i and window input j of a block
    (_outside_q() outside the window)."""
    out_pos = torch.arange(block, device=device).view(block, 1)
    in_pos = torch.arange(window, device=device).view(1, window) - left
    dist = (in_pos - out_pos).to(dtype)  # (T, W): input position minus output position
    inside = dist.abs() <= radius
    if causal:
        inside = inside & (dist <= 0)
    return torch.where(inside, dist * dist * -0.5, torch.full((), _outside_q(), dtype=dtype, device=device))


def _chunk_coefficients(w_win, s_pad, q):
    """gauss_ij = exp(-dist^2 / (2 s_i^2)) and c_ij = w_j gauss_ij, both (B, kc, T, W)."""
    inv_var = (s_pad * s_pad).reciprocal_()  # (B, kc, T, 1)
    exponent = torch.mul(q, inv_var)
    low = _min_exponent()
    kept = exponent >= low  # False outside the window and where the term is < 1.8e-35
    gauss = exponent.clamp_min_(low).exp_().mul_(kept)  # exactly 0 where not kept
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


def _pool_1d_forward(x, weights, sigma, radius, causal, normalize, eps):
    """The forward of `_BlockedPool1d`: x (B, n, d), weights and sigma (B, n) -> the output in blocks
    y (B, nb, T, d) (rows past n are padding) and the normalisers denom (B, nb, T, 1) (None without
    normalisation); both are what the backward reads."""
    batch, n, d = x.shape
    block, left, window, rows = _plan_1d(n, radius, causal)
    n_blocks = -(-n // block)
    x_pad = _pad_rows(x, left, rows - n - left)  # (B, rows, d)
    w_pad = _pad_rows(weights, left, rows - n - left)  # zero weight: padding adds nothing
    s_pad = _pad_sigma(sigma, n_blocks, block)
    x_win = x_pad.unfold(1, window, block)  # (B, nb, d, W), a view
    w_win = w_pad.unfold(1, window, block).unsqueeze(2)  # (B, nb, 1, W)
    q_table = _block_tables(block, window, left, radius, causal, x.device, x.dtype)
    step = _blocks_per_chunk(x, block, window)
    y = denom = None
    for k0 in range(0, n_blocks, step):
        k = slice(k0, k0 + step)
        _, coef = _chunk_coefficients(w_win[:, k], s_pad[:, k], q_table)
        y_k = torch.matmul(coef, x_win[:, k].transpose(-1, -2))  # (B, kc, T, d)
        total = coef.sum(-1, keepdim=True).add_(eps) if normalize else None  # (B, kc, T, 1)
        if normalize:
            y_k.div_(total)
        if step >= n_blocks:  # one chunk (a dense sequence, or a short one): no copy into a full-size buffer
            return y_k, total
        if y is None:
            y = x.new_empty(batch, n_blocks, block, d)
            denom = x.new_empty(batch, n_blocks, block, 1) if normalize else None
        y[:, k] = y_k
        if normalize:
            denom[:, k] = total
    return y, denom


def _pool_1d_backward(grad, x, weights, sigma, y, denom, radius, causal, need_x, need_w, need_sigma):
    """The backward of `_BlockedPool1d`: grad (B, nb, T, d), the gradient of the blocked output y (zero on
    its padding rows); x, weights, sigma, y, denom as in `_pool_1d_forward`. -> (grad_x (B, n, d),
    grad_weights (B, n), grad_sigma (B, n)), each None where not needed. The coefficients are recomputed."""
    batch, n, d = x.shape
    block, left, window, rows = _plan_1d(n, radius, causal)
    n_blocks = y.shape[1]
    x_pad = _pad_rows(x, left, rows - n - left)  # (B, rows, d), as in the forward
    w_pad = _pad_rows(weights, left, rows - n - left)
    s_pad = _pad_sigma(sigma, n_blocks, block)
    q_table = _block_tables(block, window, left, radius, causal, x.device, x.dtype)
    step = _blocks_per_chunk(x, block, window)
    dense = rows == n  # one block reading the whole sequence: its window gradients are the gradients
    x_win = x_pad.unfold(1, window, block)  # (B, nb, d, W)
    w_win = w_pad.unfold(1, window, block).unsqueeze(2)  # (B, nb, 1, W)
    grad_x_pad = torch.zeros_like(x_pad) if need_x and not dense else None
    grad_w_pad = torch.zeros_like(w_pad) if need_w and not dense else None
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
            grad_x_win = torch.matmul(coef.transpose(-1, -2), grad_num)  # (B, kc, W, d)
            if dense:
                grad_x_pad = grad_x_win.view(batch, n, d)
            else:
                _overlap_add_(grad_x_pad, grad_x_win, k0, block)
        if need_w or need_sigma:
            grad_coef = torch.matmul(grad_num, x_win[:, k])  # (B, kc, T, W): dL/dc_ij
            if grad_total is not None:
                grad_coef.add_(grad_total)
            if need_w:
                grad_w_win = (grad_coef * gauss).sum(2)  # (B, kc, W)
                if dense:
                    grad_w_pad = grad_w_win.view(batch, n)
                else:
                    _overlap_add_(grad_w_pad, grad_w_win, k0, block)
            if need_sigma:  # c_ij = w_j exp(q_ij / s_i^2), q = -dist^2 / 2
                grad_inv_var[:, k] = torch.linalg.vecdot(grad_coef.mul_(coef), q_table)
    grad_x = grad_x_pad[:, left : left + n] if need_x else None
    grad_w = grad_w_pad[:, left : left + n] if need_w else None
    grad_sigma = None
    if need_sigma:  # d(1/s^2)/ds = -2/s^3
        s = s_pad.squeeze(-1)
        grad_sigma = (grad_inv_var * -2.0 / (s * s * s)).view(batch, -1)[:, :n]
    return grad_x, grad_w, grad_sigma


def _pad_sigma(sigma, n_blocks, block):
    """sigma (B, n) -> (B, nb, T, 1), padded with 1 (any finite width: those outputs are dropped)."""
    batch, n = sigma.shape
    s_pad = sigma if n == n_blocks * block else F.pad(sigma, (0, n_blocks * block - n), value=1.0)
    return s_pad.view(batch, n_blocks, block, 1)


def _blocks_per_chunk(x, block, window) -> int:
    chunk_elements = _CHUNK_ELEMENTS if x.device.type == "cpu" else _CHUNK_ELEMENTS_ACCELERATOR
    return max(1, chunk_elements // (x.shape[0] * block * max(window, x.shape[-1])))


def _blocked_grad(grad_out, n, n_blocks, block):
    """grad_out (B, n, d) -> (B, nb, T, d), zero on the padding rows."""
    batch, _, d = grad_out.shape
    if n == n_blocks * block:
        return grad_out.reshape(batch, n_blocks, block, d)
    grad = grad_out.new_zeros(batch, n_blocks * block, d)
    grad[:, :n] = grad_out
    return grad.view(batch, n_blocks, block, d)


def _unblocked(y, n):
    """y (B, nb, T, d) -> its first n rows, (B, n, d)."""
    batch, n_blocks, block, d = y.shape
    y = y.view(batch, n_blocks * block, d)
    return y if n == n_blocks * block else y[:, :n]  # a slice would copy its gradient back


# --------------------------------------------------------------------------------------
# The backward as a custom operator, for torch.compile
# --------------------------------------------------------------------------------------
# Traced through, the whole Function is inlined into the compiled graph, and the partitioner then
# keeps whatever forward intermediates the traced backward reads (measured: the unfolded windows and
# chunks of coefficients, about two more (B, n, d) tensors per pooled layer than the eager step). With
# the backward an opaque operator, the backward reads only what the forward saved, as in eager,
# while the forward is still traced and fused by the compiler.


def _pool_1d_backward_op_impl(grad: torch.Tensor, x: torch.Tensor, weights: torch.Tensor, sigma: torch.Tensor,
                              y: torch.Tensor, denom: torch.Tensor, radius: int, causal: bool, need_x: bool,
                              need_w: bool, need_sigma: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`_pool_1d_backward` as an operator, which takes and returns tensors, never None: an empty denom means
    "not normalised", and a gradient not needed comes back empty."""
    grads = _pool_1d_backward(grad, x, weights, sigma, y, denom if denom.numel() else None, radius, causal,
                              need_x, need_w, need_sigma)  # fmt: skip
    # contiguous: the fake's layout (slices of padded buffers are not)
    return tuple(x.new_empty(0) if g is None else g.contiguous() for g in grads)


def _pool_1d_backward_op_fake(grad, x, weights, sigma, y, denom, radius, causal, need_x, need_w, need_sigma):
    # contiguous, as the operator returns them (empty_like would copy a permuted input's strides)
    return tuple(t.new_empty(t.shape if needed else (0,))
                 for t, needed in ((x, need_x), (weights, need_w), (sigma, need_sigma)))  # fmt: skip


_pool_1d_backward_op = _define_op(_op_namespace(__name__), "pool_1d_backward", _pool_1d_backward_op_impl,
                                  _pool_1d_backward_op_fake)  # fmt: skip


class _BlockedPool1d(torch.autograd.Function):
    """1-D pooling as small banded matmuls, in cache-sized chunks, with a hand-written backward.

    Outputs are cut into blocks of T tokens; block b only reads the inputs
    [bT - R, bT + T + R) (causal: up to bT + T), a window of W = T + 2R tokens, so each block
    is one (T, W) x (W, d) matmul: no n x n and no n x (2R+1) x d tensor. On a CPU one BLAS
    call per chunk beats 2R+1 elementwise passes over x (2-8x, scripts/bench_op.py). The
    coefficients are recomputed in the backward rather than saved, so the extra memory is
    O(n d) plus one chunk's temporaries. Under torch.compile the backward is a custom operator
    (`_pool_1d_backward_op`), so that the compiled step saves these same tensors.
    """

    @staticmethod
    @_autocast_off
    def forward(ctx, x, weights, sigma, radius, causal, normalize, eps):
        y, denom = _pool_1d_forward(x, weights, sigma, radius, causal, normalize, eps)
        # x, not x_pad: x is usually alive anyway (the layer's input), the padded copy is not
        ctx.save_for_backward(x, weights, sigma, y, denom)
        ctx.options = (radius, causal)
        return _unblocked(y, x.shape[1])

    @staticmethod
    @_autocast_off
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, weights, sigma, y, denom = ctx.saved_tensors
        grad = _blocked_grad(grad_out, x.shape[1], y.shape[1], y.shape[2])
        needs = ctx.needs_input_grad[:3]
        if not _is_compiling():
            grads = _pool_1d_backward(grad, x, weights, sigma, y, denom, *ctx.options, *needs)
            return (*grads, None, None, None, None)
        denom = y.new_empty(0) if denom is None else denom
        grads = _pool_1d_backward_op(grad, x, weights, sigma, y, denom, *ctx.options, *needs)
        return (*(g if needed else None for g, needed in zip(grads, needs, strict=True)), None, None, None, None)


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
    low = _min_exponent()
    gauss = exponent.clamp_min(low).exp() * (exponent >= low)
    coef = gauss * w_band  # (B, n, K)
    y = coef[..., 0:1] * x_pad[:, 0:n]
    for c in range(1, offsets.numel()):
        y = y + coef[..., c : c + 1] * x_pad[:, c : c + n]  # (B, n, d)
    if normalize:
        y = y / (coef.sum(-1, keepdim=True) + eps)
    return y
