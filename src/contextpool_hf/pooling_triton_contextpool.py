"""The pooling (spec items 4-5) as Triton kernels: `implementation="triton"`, opt-in, for CUDA devices.

Flat, Hub-shipped file: imports torch, its flat sibling pooling_1d_contextpool (relatively), and triton
when it is installed (the optional accelerator; without it this implementation refuses to run and says why). `pooling_contextpool` dispatches to it for 1-D
sequences (x (B, n, d), stride 1) and 2-D grids (x (B, H, W, d), any stride); the other cases (a strided
1-D pooling) keep the fast path.

One set of kernels serves both: a sequence is a grid of n rows and one column. Inputs and outputs are
flattened row-major; output o sits at input position (row(o) * stride, col(o) * stride). Every block of
outputs reads the band of input rows its windows reach, in chunks, and never materialises the
(n_out x window) coefficients in memory: each program recomputes its coefficients in registers and feeds
them to `tl.dot`. With d_oj the offset between output o and input j (d^2 = rows^2 + columns^2) and
c_oj = w_j exp(-d_oj^2 / (2 s_o^2)) inside the window (both offsets at most R; in 1-D causal pooling also
j <= o), N_o = sum_j c_oj x_j, S_o = sum_j c_oj and y_o = N_o / (S_o + eps):

- forward: y and S (saved for the backward);
- backward, with G_o = dL/dN_o = g_o / (S_o + eps) and t_o = dL/dS_o = -G_o . y_o (both computed in torch;
  without normalisation G = g and t = 0):
  dL/ds_o = (G_o . sum_j c_oj d_oj^2 x_j + t_o sum_j c_oj d_oj^2) / s_o^3, one program per output block;
  dL/dx_j = w_j sum_o gauss_oj G_o and dL/dw_j = x_j . sum_o gauss_oj G_o + sum_o gauss_oj t_o, one program
  per input block, over the band of outputs whose windows reach it.

Matmuls run with input_precision="ieee" (no TF32): the operator computes in float32 at least. Exponents
below -80 give exactly 0, as in the fast path. Correctness is tested on the CPU under Triton's interpreter
(`TRITON_INTERPRET=1`, tests/test_triton.py), against the float64 reference, gradients included. Its
speed has not been measured (no GPU was lent to this work): `scripts/bench_op.py --triton` compares it
with the fast path (`scripts/bench_gpu.sh` runs that), and until a GPU run shows it faster it stays opt-in.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch

from .pooling_1d_contextpool import _min_exponent

_MIN_EXPONENT = _min_exponent()  # smaller exponents give exactly 0, as in the fast path

try:  # the optional accelerator: everything else in the package runs without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where triton is missing
    triton = tl = None

# Triton decides at import (at each kernel's decoration) whether kernels run on the GPU or in its
# interpreter (numpy, on the CPU): the tests set TRITON_INTERPRET=1 before importing the package.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
_BLOCK_OUT, _BLOCK_WINDOW, _BLOCK_FEATURES = 64, 32, 64  # outputs per program, input chunk, feature chunk
# Warps per program. At these blocks the backward kernels need 255 registers per thread with 4 warps and spill
# (92 and 208 bytes per thread); with 8 they use 140 and 180 and spill nothing. The forward uses 164 with 4
# warps, no spill. (ptxas -v on the sm_90a PTX of float32 kernels; not yet timed on a GPU.)
_FORWARD_WARPS, _BACKWARD_WARPS = 4, 8


def triton_unavailable_reason(x: torch.Tensor) -> str | None:
    """Why `implementation="triton"` cannot run on x here, or None when it can."""
    if triton is None:
        return "the triton package is not installed (pip install triton)"
    if not INTERPRETED and x.device.type != "cuda":
        return f"it runs on CUDA devices (x is on {x.device.type}; TRITON_INTERPRET=1 runs it on the CPU, slowly)"
    if x.dtype not in (torch.float32, torch.float64):
        return f"it computes in float32 or float64, got {x.dtype}"
    return None


if triton is not None:
    _MIN_EXPONENT_TL = tl.constexpr(_MIN_EXPONENT)  # a kernel reads module globals only as constexpr

    @triton.jit
    def _coefficients(o, j, inv_var, w, n_in, W, Wo, stride, radius, CAUSAL: tl.constexpr):
        """gauss (len(o), len(j)) between outputs o (inv_var = 1 / s_o^2) and inputs j, c = gauss * w_j, and
        the squared offsets d^2. A grid's W (Wo) is its input (output) width; a sequence has W = Wo = 1."""
        rows = ((j // W)[None, :] - ((o // Wo) * stride)[:, None]).to(inv_var.dtype)  # input minus output row
        cols = ((j % W)[None, :] - ((o % Wo) * stride)[:, None]).to(inv_var.dtype)
        inside = (tl.abs(rows) <= radius) & (tl.abs(cols) <= radius) & (j[None, :] < n_in)
        if CAUSAL:
            inside = inside & (rows <= 0)
        dist_sq = rows * rows + cols * cols
        exponent = dist_sq * -0.5 * inv_var[:, None]
        kept = inside & (exponent >= _MIN_EXPONENT_TL)
        gauss = tl.where(kept, tl.exp(tl.maximum(exponent, _MIN_EXPONENT_TL)), 0.0)
        return gauss, gauss * w[None, :], dist_sq

    @triton.jit
    def _widths(s_ptr, base, o, o_ok):
        """s_o and 1 / s_o^2 of outputs o (1 for an output past the end)."""
        s = tl.load(s_ptr + base + o, mask=o_ok, other=1.0)
        return s, 1.0 / (s * s)

    @triton.jit
    def _input_span(first_out, last_out, H, W, Wo, stride, radius, after):
        """[start, stop) of the flattened inputs that outputs first_out..last_out read: whole input rows."""
        low = tl.maximum((first_out // Wo) * stride - radius, 0)
        high = tl.minimum((last_out // Wo) * stride + after + 1, H)
        return low * W, high * W

    @triton.jit
    def _output_span(first_in, last_in, W, Ho, Wo, stride, radius, after):
        """[start, stop) of the flattened outputs whose windows reach inputs first_in..last_in: whole output
        rows, those at input rows within [row - after, row + R] of them."""
        low = (tl.maximum(first_in // W - after, 0) + stride - 1) // stride
        high = tl.minimum((last_in // W + radius) // stride + 1, Ho)
        return low * Wo, high * Wo

    @triton.jit
    def _outputs_reading(o0, j, w, s_ptr, base, n_in, n_out, W, Wo, stride, radius, CAUSAL: tl.constexpr,
                         BLOCK_O: tl.constexpr):  # fmt: skip
        """Outputs o = o0 .. o0 + BLOCK_O - 1, which of them exist, and their gauss (BLOCK_O, len(j)) against
        inputs j (0 for outputs past the end)."""
        o = o0 + tl.arange(0, BLOCK_O)
        o_ok = o < n_out
        _, inv_var = _widths(s_ptr, base, o, o_ok)
        gauss, _, _ = _coefficients(o, j, inv_var, w, n_in, W, Wo, stride, radius, CAUSAL)
        return o, o_ok, tl.where(o_ok[:, None], gauss, 0.0)

    @triton.jit
    def _inputs_read(j0, o, inv_var, w_ptr, base_in, n_in, W, Wo, stride, radius, CAUSAL: tl.constexpr,
                     BLOCK_J: tl.constexpr):  # fmt: skip
        """Inputs j = j0 .. j0 + BLOCK_J - 1, which of them exist, and the coefficients c (len(o), BLOCK_J) and
        squared offsets of outputs o against them."""
        j = j0 + tl.arange(0, BLOCK_J)
        j_ok = j < n_in
        w = tl.load(w_ptr + base_in + j, mask=j_ok, other=0.0)
        _, c, dist_sq = _coefficients(o, j, inv_var, w, n_in, W, Wo, stride, radius, CAUSAL)
        return j, j_ok, c, dist_sq

    @triton.jit
    def _load_tile(ptr, base, rows, rows_ok, cols, cols_ok, d):
        """The (len(rows), len(cols)) tile of a (B, positions, d) tensor at batch offset `base`, 0 outside."""
        return tl.load(ptr + (base + rows[:, None]) * d + cols[None, :], mask=rows_ok[:, None] & cols_ok[None, :],
                       other=0.0)  # fmt: skip

    @triton.jit
    def _forward_kernel(x_ptr, w_ptr, s_ptr, y_ptr, total_ptr, n_in, n_out, H, W, Wo, stride, d, radius, after,
                        eps, CAUSAL: tl.constexpr, NORMALIZE: tl.constexpr,
                        BLOCK_O: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
        batch, block, chunk = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        o = block * BLOCK_O + tl.arange(0, BLOCK_O)
        cols = chunk * BLOCK_D + tl.arange(0, BLOCK_D)
        o_ok, col_ok = o < n_out, cols < d
        base_in, base_out = batch.to(tl.int64) * n_in, batch.to(tl.int64) * n_out
        s, inv_var = _widths(s_ptr, base_out, o, o_ok)
        acc = tl.zeros((BLOCK_O, BLOCK_D), dtype=s.dtype)
        total = tl.zeros((BLOCK_O,), dtype=s.dtype)
        start, stop = _input_span(block * BLOCK_O, block * BLOCK_O + BLOCK_O - 1, H, W, Wo, stride, radius, after)
        for j0 in range(start, stop, BLOCK_J):
            j, j_ok, c, _ = _inputs_read(j0, o, inv_var, w_ptr, base_in, n_in, W, Wo, stride, radius, CAUSAL, BLOCK_J)
            acc += tl.dot(c, _load_tile(x_ptr, base_in, j, j_ok, cols, col_ok, d), input_precision="ieee")
            total += tl.sum(c, axis=1)
        if NORMALIZE:
            acc = acc / (total + eps)[:, None]
        tl.store(y_ptr + (base_out + o[:, None]) * d + cols[None, :], acc, mask=o_ok[:, None] & col_ok[None, :])
        if chunk == 0:
            tl.store(total_ptr + base_out + o, total, mask=o_ok)

    @triton.jit
    def _sigma_grad_kernel(x_ptr, w_ptr, s_ptr, g_ptr, t_ptr, ds_ptr, n_in, n_out, H, W, Wo, stride, d, radius,
                           after, CAUSAL: tl.constexpr, NORMALIZE: tl.constexpr,
                           BLOCK_O: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
        batch, block = tl.program_id(0), tl.program_id(1)
        o = block * BLOCK_O + tl.arange(0, BLOCK_O)
        o_ok = o < n_out
        base_in, base_out = batch.to(tl.int64) * n_in, batch.to(tl.int64) * n_out
        s, inv_var = _widths(s_ptr, base_out, o, o_ok)
        through_n = tl.zeros((BLOCK_O,), dtype=s.dtype)  # G_o . sum_j c_oj d_oj^2 x_j
        weighted_sq = tl.zeros((BLOCK_O,), dtype=s.dtype)  # sum_j c_oj d_oj^2
        start, stop = _input_span(block * BLOCK_O, block * BLOCK_O + BLOCK_O - 1, H, W, Wo, stride, radius, after)
        for j0 in range(start, stop, BLOCK_J):
            j, j_ok, c, dist_sq = _inputs_read(j0, o, inv_var, w_ptr, base_in, n_in, W, Wo, stride, radius, CAUSAL,
                                               BLOCK_J)  # fmt: skip
            c_sq = c * dist_sq
            weighted_sq += tl.sum(c_sq, axis=1)
            for d0 in range(0, d, BLOCK_D):
                cols = d0 + tl.arange(0, BLOCK_D)
                col_ok = cols < d
                x = _load_tile(x_ptr, base_in, j, j_ok, cols, col_ok, d)
                g = _load_tile(g_ptr, base_out, o, o_ok, cols, col_ok, d)
                through_n += tl.sum(tl.dot(c_sq, x, input_precision="ieee") * g, axis=1)
        grad = through_n
        if NORMALIZE:
            grad += tl.load(t_ptr + base_out + o, mask=o_ok, other=0.0) * weighted_sq
        tl.store(ds_ptr + base_out + o, grad * inv_var / s, mask=o_ok)

    @triton.jit
    def _input_grad_kernel(x_ptr, w_ptr, s_ptr, g_ptr, t_ptr, dx_ptr, dw_ptr, n_in, n_out, W, Ho, Wo, stride, d,
                           radius, after, CAUSAL: tl.constexpr, NORMALIZE: tl.constexpr,
                           BLOCK_O: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
        # one program per block of BLOCK_J inputs, over the band of outputs whose windows reach them
        batch, block = tl.program_id(0), tl.program_id(1)
        j = block * BLOCK_J + tl.arange(0, BLOCK_J)
        j_ok = j < n_in
        base_in, base_out = batch.to(tl.int64) * n_in, batch.to(tl.int64) * n_out
        w = tl.load(w_ptr + base_in + j, mask=j_ok, other=0.0)
        first, last = _output_span(block * BLOCK_J, block * BLOCK_J + BLOCK_J - 1, W, Ho, Wo, stride, radius, after)
        grad_w = tl.zeros((BLOCK_J,), dtype=w.dtype)
        if NORMALIZE:  # sum_o gauss_oj t_o
            for o0 in range(first, last, BLOCK_O):
                o, o_ok, gauss = _outputs_reading(o0, j, w, s_ptr, base_out, n_in, n_out, W, Wo, stride, radius,
                                                  CAUSAL, BLOCK_O)  # fmt: skip
                t = tl.load(t_ptr + base_out + o, mask=o_ok, other=0.0)
                grad_w += tl.sum(gauss * t[:, None], axis=0)
        for d0 in range(0, d, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            col_ok = cols < d
            m = tl.zeros((BLOCK_J, BLOCK_D), dtype=w.dtype)  # sum_o gauss_oj G_o
            for o0 in range(first, last, BLOCK_O):
                o, o_ok, gauss = _outputs_reading(o0, j, w, s_ptr, base_out, n_in, n_out, W, Wo, stride, radius,
                                                  CAUSAL, BLOCK_O)  # fmt: skip
                g = _load_tile(g_ptr, base_out, o, o_ok, cols, col_ok, d)
                m += tl.dot(tl.trans(gauss), g, input_precision="ieee")
            x = _load_tile(x_ptr, base_in, j, j_ok, cols, col_ok, d)
            tl.store(dx_ptr + (base_in + j[:, None]) * d + cols[None, :], w[:, None] * m,
                     mask=j_ok[:, None] & col_ok[None, :])  # fmt: skip
            grad_w += tl.sum(m * x, axis=1)
        tl.store(dw_ptr + base_in + j, grad_w, mask=j_ok)


class _GridShape(NamedTuple):
    """Where the kernels' flattened positions sit: inputs H x W, outputs Ho x Wo, `stride` apart (1-D: n x 1)."""

    H: int
    W: int
    Ho: int
    Wo: int
    stride: int


class _TritonPool(torch.autograd.Function):
    """x (B, n_in, d), weights (B, n_in), sigma (B, n_out) on a `_GridShape` -> pooled (B, n_out, d)."""

    @staticmethod
    def forward(ctx, x, weights, sigma, grid_shape, radius, causal, normalize, eps):
        x, weights, sigma = x.contiguous(), weights.contiguous(), sigma.contiguous()
        batch, n_in, d = x.shape
        n_out = sigma.shape[1]
        H, W, _, Wo, stride = grid_shape
        after = 0 if causal else radius
        y = x.new_empty(batch, n_out, d)
        total = sigma.new_empty(batch, n_out)  # S_o
        grid = (batch, triton.cdiv(n_out, _BLOCK_OUT), triton.cdiv(d, _BLOCK_FEATURES))
        _forward_kernel[grid](x, weights, sigma, y, total, n_in, n_out, H, W, Wo, stride, d, radius, after, eps,
                              CAUSAL=causal, NORMALIZE=normalize, BLOCK_O=_BLOCK_OUT, BLOCK_J=_BLOCK_WINDOW,
                              BLOCK_D=_BLOCK_FEATURES, num_warps=_FORWARD_WARPS)  # fmt: skip
        ctx.save_for_backward(x, weights, sigma, y, total)
        ctx.options = (grid_shape, radius, after, causal, normalize, eps)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        x, weights, sigma, y, total = ctx.saved_tensors
        (H, W, Ho, Wo, stride), radius, after, causal, normalize, eps = ctx.options
        batch, n_in, d = x.shape
        n_out = sigma.shape[1]
        grad_n = grad_y.contiguous()  # G = dL/dN
        t = grad_n.new_zeros(())  # unread without normalisation
        if normalize:
            grad_n = grad_n / (total + eps).unsqueeze(-1)
            t = -(grad_n * y).sum(-1)  # dL/dS (B, n_out)
        grad_x, grad_w, grad_s = torch.empty_like(x), torch.empty_like(weights), torch.empty_like(sigma)
        blocks = dict(CAUSAL=causal, NORMALIZE=normalize, BLOCK_O=_BLOCK_OUT, BLOCK_J=_BLOCK_WINDOW,
                      BLOCK_D=_BLOCK_FEATURES, num_warps=_BACKWARD_WARPS)  # fmt: skip
        _sigma_grad_kernel[(batch, triton.cdiv(n_out, _BLOCK_OUT))](
            x, weights, sigma, grad_n, t, grad_s, n_in, n_out, H, W, Wo, stride, d, radius, after, **blocks
        )
        _input_grad_kernel[(batch, triton.cdiv(n_in, _BLOCK_WINDOW))](
            x, weights, sigma, grad_n, t, grad_x, grad_w, n_in, n_out, W, Ho, Wo, stride, d, radius, after, **blocks
        )
        return grad_x, grad_w, grad_s, None, None, None, None, None


def _check_runs_here(x: torch.Tensor) -> None:
    reason = triton_unavailable_reason(x)
    if reason is not None:
        raise ValueError(f"implementation='triton' cannot run here: {reason}; use implementation='fast'")


def triton_pool_1d(x, weights, sigma, radius, causal, normalize, eps):
    """The 1-D pooling through the Triton kernels: x (B, n, d), weights and sigma (B, n) -> (B, n, d).
    Raises a ValueError naming the reason when it cannot run here (`triton_unavailable_reason`)."""
    _check_runs_here(x)
    n = x.shape[1]
    return _TritonPool.apply(x, weights, sigma, _GridShape(n, 1, n, 1, 1), int(radius), bool(causal),
                             bool(normalize), float(eps))  # fmt: skip


def triton_pool_2d(x, weights, sigma, radius, stride, normalize, eps):
    """The 2-D pooling through the same kernels: x (B, H, W, d), weights (B, H, W), sigma (B, Ho, Wo) ->
    (B, Ho, Wo, d), outputs `stride` apart on the input grid."""
    _check_runs_here(x)
    batch, H, W, d = x.shape
    Ho, Wo = sigma.shape[1:]
    pooled = _TritonPool.apply(x.reshape(batch, H * W, d), weights.reshape(batch, H * W),
                               sigma.reshape(batch, Ho * Wo), _GridShape(H, W, Ho, Wo, int(stride)), int(radius),
                               False, bool(normalize), float(eps))  # (B, Ho * Wo, d)  # fmt: skip
    return pooled.view(batch, Ho, Wo, d)
