"""The 1-D pooling (spec items 4-5) as Triton kernels: `implementation="triton"`, opt-in, for CUDA devices.

Flat, Hub-shipped file: imports torch, and triton when it is installed (the optional accelerator; without
it this implementation refuses to run and says why). `pooling_contextpool` dispatches to it for 1-D
sequences (x (B, n, d), stride 1); 2-D grids keep the fast path.

Every output block of T tokens reads the inputs of its window in chunks and never materialises the
(n x window) coefficients in memory: each program recomputes its coefficients in registers and feeds them
to `tl.dot`. With c_ij = w_j exp(-(i - j)^2 / (2 s_i^2)) inside the window (|i - j| <= R, j <= i when
causal), N_i = sum_j c_ij x_j, S_i = sum_j c_ij and y_i = N_i / (S_i + eps):

- forward: y and S (saved for the backward);
- backward, with G_i = dL/dN_i = g_i / (S_i + eps), t_i = dL/dS_i = -G_i . y_i (both computed in torch;
  without normalisation G = g and t = 0) and d_ij = i - j:
  dL/ds_i = (G_i . sum_j c_ij d_ij^2 x_j + t_i sum_j c_ij d_ij^2) / s_i^3, one program per output block;
  dL/dx_j = w_j sum_i gauss_ij G_i and dL/dw_j = x_j . sum_i gauss_ij G_i + sum_i gauss_ij t_i, one program
  per input block, over the outputs whose windows hold it.

Matmuls run with input_precision="ieee" (no TF32): the operator computes in float32 at least. Exponents
below -80 give exactly 0, as in the fast path. Correctness is tested on the CPU under Triton's interpreter
(`TRITON_INTERPRET=1`, tests/test_triton.py), against the float64 reference, gradients included. Its
speed has not been measured (no GPU was lent to this work): `scripts/bench_op.py --triton` compares it
with the fast path (`scripts/bench_gpu.sh` runs that), and until a GPU run shows it faster it stays opt-in.
"""

from __future__ import annotations

import os

import torch

try:  # the optional accelerator: everything else in the package runs without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where triton is missing
    triton = tl = None

# Triton decides at import (at each kernel's decoration) whether kernels run on the GPU or in its
# interpreter (numpy, on the CPU): the tests set TRITON_INTERPRET=1 before importing the package.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
_MIN_EXPONENT = -80.0  # as pooling_contextpool._MIN_EXPONENT: smaller exponents give exactly 0
_BLOCK_OUT, _BLOCK_WINDOW, _BLOCK_FEATURES = 64, 32, 64  # tokens per program, window chunk, feature chunk


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
    def _coefficients(i, j, inv_var, w, n, radius, CAUSAL: tl.constexpr):
        """gauss (len(i), len(j)) between outputs i (inv_var = 1 / s_i^2) and inputs j, and c = gauss * w_j."""
        dist = (j[None, :] - i[:, None]).to(inv_var.dtype)
        inside = (tl.abs(dist) <= radius) & (j[None, :] >= 0) & (j[None, :] < n)
        if CAUSAL:
            inside = inside & (dist <= 0)
        exponent = dist * dist * -0.5 * inv_var[:, None]
        kept = inside & (exponent >= _MIN_EXPONENT_TL)
        gauss = tl.where(kept, tl.exp(tl.maximum(exponent, _MIN_EXPONENT_TL)), 0.0)
        return gauss, gauss * w[None, :], dist

    @triton.jit
    def _widths(s_ptr, base, i, i_ok):
        """s_i and 1 / s_i^2 of outputs i (1 where i lies outside the sequence)."""
        s = tl.load(s_ptr + base + i, mask=i_ok, other=1.0)
        return s, 1.0 / (s * s)

    @triton.jit
    def _outputs_reading(i0, j, w, s_ptr, base, n, radius, CAUSAL: tl.constexpr, BLOCK_I: tl.constexpr):
        """Outputs i = i0 .. i0 + BLOCK_I - 1, which of them lie in the sequence, and their gauss (BLOCK_I, len(j))
        against inputs j (0 for outputs outside the sequence)."""
        i = i0 + tl.arange(0, BLOCK_I)
        i_ok = (i >= 0) & (i < n)
        gauss, _, _ = _coefficients(i, j, _widths(s_ptr, base, i, i_ok)[1], w, n, radius, CAUSAL)
        return i, i_ok, tl.where(i_ok[:, None], gauss, 0.0)

    @triton.jit
    def _load_tile(ptr, base, rows, rows_ok, cols, cols_ok, d):
        """The (len(rows), len(cols)) tile of a (B, n, d) tensor at batch offset `base` (= batch * n), 0 outside."""
        return tl.load(ptr + (base + rows[:, None]) * d + cols[None, :], mask=rows_ok[:, None] & cols_ok[None, :],
                       other=0.0)  # fmt: skip

    @triton.jit
    def _forward_kernel(x_ptr, w_ptr, s_ptr, y_ptr, total_ptr, n, d, radius, after, eps,
                        CAUSAL: tl.constexpr, NORMALIZE: tl.constexpr,
                        BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
        batch, block, chunk = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        i = block * BLOCK_I + tl.arange(0, BLOCK_I)
        cols = chunk * BLOCK_D + tl.arange(0, BLOCK_D)
        i_ok, col_ok = i < n, cols < d
        base = batch.to(tl.int64) * n
        s, inv_var = _widths(s_ptr, base, i, i_ok)
        acc = tl.zeros((BLOCK_I, BLOCK_D), dtype=s.dtype)
        total = tl.zeros((BLOCK_I,), dtype=s.dtype)
        for j0 in range(block * BLOCK_I - radius, block * BLOCK_I + BLOCK_I + after, BLOCK_J):
            j = j0 + tl.arange(0, BLOCK_J)
            j_ok = (j >= 0) & (j < n)
            w = tl.load(w_ptr + base + j, mask=j_ok, other=0.0)
            _, c, _ = _coefficients(i, j, inv_var, w, n, radius, CAUSAL)
            acc += tl.dot(c, _load_tile(x_ptr, base, j, j_ok, cols, col_ok, d), input_precision="ieee")
            total += tl.sum(c, axis=1)
        if NORMALIZE:
            acc = acc / (total + eps)[:, None]
        tl.store(y_ptr + (base + i[:, None]) * d + cols[None, :], acc, mask=i_ok[:, None] & col_ok[None, :])
        if chunk == 0:
            tl.store(total_ptr + base + i, total, mask=i_ok)

    @triton.jit
    def _sigma_grad_kernel(x_ptr, w_ptr, s_ptr, g_ptr, t_ptr, ds_ptr, n, d, radius, after,
                           CAUSAL: tl.constexpr, NORMALIZE: tl.constexpr,
                           BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
        batch, block = tl.program_id(0), tl.program_id(1)
        i = block * BLOCK_I + tl.arange(0, BLOCK_I)
        i_ok = i < n
        base = batch.to(tl.int64) * n
        s, inv_var = _widths(s_ptr, base, i, i_ok)
        through_n = tl.zeros((BLOCK_I,), dtype=s.dtype)  # G_i . sum_j c_ij d_ij^2 x_j
        weighted_sq = tl.zeros((BLOCK_I,), dtype=s.dtype)  # sum_j c_ij d_ij^2
        for j0 in range(block * BLOCK_I - radius, block * BLOCK_I + BLOCK_I + after, BLOCK_J):
            j = j0 + tl.arange(0, BLOCK_J)
            j_ok = (j >= 0) & (j < n)
            w = tl.load(w_ptr + base + j, mask=j_ok, other=0.0)
            _, c, dist = _coefficients(i, j, inv_var, w, n, radius, CAUSAL)
            c_sq = c * dist * dist
            weighted_sq += tl.sum(c_sq, axis=1)
            for d0 in range(0, d, BLOCK_D):
                cols = d0 + tl.arange(0, BLOCK_D)
                col_ok = cols < d
                x = _load_tile(x_ptr, base, j, j_ok, cols, col_ok, d)
                g = _load_tile(g_ptr, base, i, i_ok, cols, col_ok, d)
                through_n += tl.sum(tl.dot(c_sq, x, input_precision="ieee") * g, axis=1)
        grad = through_n
        if NORMALIZE:
            grad += tl.load(t_ptr + base + i, mask=i_ok, other=0.0) * weighted_sq
        tl.store(ds_ptr + base + i, grad * inv_var / s, mask=i_ok)

    @triton.jit
    def _input_grad_kernel(x_ptr, w_ptr, s_ptr, g_ptr, t_ptr, dx_ptr, dw_ptr, n, d, radius, after,
                           CAUSAL: tl.constexpr, NORMALIZE: tl.constexpr,
                           BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
        # one program per block of BLOCK_J inputs; the outputs reading input j lie in [j - after, j + radius]
        batch, block = tl.program_id(0), tl.program_id(1)
        j = block * BLOCK_J + tl.arange(0, BLOCK_J)
        j_ok = j < n
        base = batch.to(tl.int64) * n
        w = tl.load(w_ptr + base + j, mask=j_ok, other=0.0)
        first, last = block * BLOCK_J - after, block * BLOCK_J + BLOCK_J + radius
        grad_w = tl.zeros((BLOCK_J,), dtype=w.dtype)
        if NORMALIZE:  # sum_i gauss_ij t_i
            for i0 in range(first, last, BLOCK_I):
                i, i_ok, gauss = _outputs_reading(i0, j, w, s_ptr, base, n, radius, CAUSAL, BLOCK_I)
                t = tl.load(t_ptr + base + i, mask=i_ok, other=0.0)
                grad_w += tl.sum(gauss * t[:, None], axis=0)
        for d0 in range(0, d, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            col_ok = cols < d
            m = tl.zeros((BLOCK_J, BLOCK_D), dtype=w.dtype)  # sum_i gauss_ij G_i
            for i0 in range(first, last, BLOCK_I):
                i, i_ok, gauss = _outputs_reading(i0, j, w, s_ptr, base, n, radius, CAUSAL, BLOCK_I)
                g = _load_tile(g_ptr, base, i, i_ok, cols, col_ok, d)
                m += tl.dot(tl.trans(gauss), g, input_precision="ieee")
            x = _load_tile(x_ptr, base, j, j_ok, cols, col_ok, d)
            tl.store(dx_ptr + (base + j[:, None]) * d + cols[None, :], w[:, None] * m,
                     mask=j_ok[:, None] & col_ok[None, :])  # fmt: skip
            grad_w += tl.sum(m * x, axis=1)
        tl.store(dw_ptr + base + j, grad_w, mask=j_ok)


class _TritonPool1d(torch.autograd.Function):
    """x (B, n, d), weights (B, n), sigma (B, n) -> pooled (B, n, d), through the kernels above."""

    @staticmethod
    def forward(ctx, x, weights, sigma, radius, causal, normalize, eps):
        x, weights, sigma = x.contiguous(), weights.contiguous(), sigma.contiguous()
        batch, n, d = x.shape
        after = 0 if causal else radius
        y = torch.empty_like(x)
        total = torch.empty_like(weights)  # S_i (B, n)
        grid = (batch, triton.cdiv(n, _BLOCK_OUT), triton.cdiv(d, _BLOCK_FEATURES))
        _forward_kernel[grid](x, weights, sigma, y, total, n, d, radius, after, eps, CAUSAL=causal,
                              NORMALIZE=normalize, BLOCK_I=_BLOCK_OUT, BLOCK_J=_BLOCK_WINDOW,
                              BLOCK_D=_BLOCK_FEATURES)  # fmt: skip
        ctx.save_for_backward(x, weights, sigma, y, total)
        ctx.options = (radius, after, causal, normalize, eps)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        x, weights, sigma, y, total = ctx.saved_tensors
        radius, after, causal, normalize, eps = ctx.options
        batch, n, d = x.shape
        grad_n = grad_y.contiguous()  # G = dL/dN
        t = grad_n.new_zeros(())  # unread without normalisation
        if normalize:
            grad_n = grad_n / (total + eps).unsqueeze(-1)
            t = -(grad_n * y).sum(-1)  # dL/dS (B, n)
        grad_x, grad_w, grad_s = torch.empty_like(x), torch.empty_like(weights), torch.empty_like(sigma)
        blocks = dict(CAUSAL=causal, NORMALIZE=normalize, BLOCK_I=_BLOCK_OUT, BLOCK_J=_BLOCK_WINDOW,
                      BLOCK_D=_BLOCK_FEATURES)  # fmt: skip
        _sigma_grad_kernel[(batch, triton.cdiv(n, _BLOCK_OUT))](
            x, weights, sigma, grad_n, t, grad_s, n, d, radius, after, **blocks
        )
        _input_grad_kernel[(batch, triton.cdiv(n, _BLOCK_WINDOW))](
            x, weights, sigma, grad_n, t, grad_x, grad_w, n, d, radius, after, **blocks
        )
        return grad_x, grad_w, grad_s, None, None, None, None


def triton_pool_1d(x, weights, sigma, radius, causal, normalize, eps):
    """The 1-D pooling through the Triton kernels: x (B, n, d), weights and sigma (B, n) -> (B, n, d).
    Raises a ValueError naming the reason when it cannot run here (`triton_unavailable_reason`)."""
    reason = triton_unavailable_reason(x)
    if reason is not None:
        raise ValueError(f"implementation='triton' cannot run here: {reason}; use implementation='fast'")
    return _TritonPool1d.apply(x, weights, sigma, int(radius), bool(causal), bool(normalize), float(eps))
