"""An independent float64 oracle for ContextPool, written straight from the spec's equations.

Plain Python loops over outputs i and inputs j with `math.exp`; the only thing it shares
with the package is the meaning of the arguments. It exists to check the dense reference
(`implementation="reference"`), which in turn checks the fast path on larger inputs.
Keep inputs tiny: it is O(batch * n_out * n_in * d) Python operations.

    spec item 4:  g_ij = exp(-|p_j - p_i|^2 / (2 sigma_i^2))   for every |p_j - p_i| <= R, else 0
                  causal layers also set g_ij = 0 for j > i
    spec item 5:  y_i  = sum_j w_j g_ij x_j / (eps + sum_j w_j g_ij)   (normalize=True)
    spec item 8:  2-D positions are (row, col); the window is the (2R+1)^2 square, and with
                  stride s output (r, c) sits at input position (r * s, c * s)
"""

from __future__ import annotations

import math

import torch


def _as_lists(x, weights, sigma, mask):
    xs = x.detach().double().tolist()
    ws = weights.detach().double().tolist()
    ss = sigma.detach().double().tolist()
    ms = mask.detach().double().tolist() if mask is not None else None
    return xs, ws, ss, ms


def _finish(num, den, normalize, eps):
    if normalize:
        return [v / (eps + den) for v in num]
    return num


def pool_1d(x, weights, sigma, *, radius, causal=False, normalize=True, eps=1e-6, mask=None):
    """x: (B, n, d); weights, sigma, mask: (B, n). Returns a float64 (B, n, d) tensor."""
    xs, ws, ss, ms = _as_lists(x, weights, sigma, mask)
    batch, n, d = len(xs), len(xs[0]), len(xs[0][0]) if xs and xs[0] else 0
    out = []
    for b in range(batch):
        rows = []
        for i in range(n):
            num, den = [0.0] * d, 0.0
            for j in range(n):
                if abs(j - i) > radius or (causal and j > i):
                    continue
                w = ws[b][j] * (ms[b][j] if ms is not None else 1.0)
                c = w * math.exp(-((j - i) ** 2) / (2.0 * ss[b][i] ** 2))
                den += c
                for k in range(d):
                    num[k] += c * xs[b][j][k]
            rows.append(_finish(num, den, normalize, eps))
        out.append(rows)
    return torch.tensor(out, dtype=torch.float64).reshape(batch, n, d)


def pool_2d(x, weights, sigma, *, radius, stride=1, normalize=True, eps=1e-6, mask=None):
    """x: (B, H, W, d); weights, mask: (B, H, W); sigma: (B, H_out, W_out). Returns float64."""
    xs, ws, ss, ms = _as_lists(x, weights, sigma, mask)
    batch, height, width, d = x.shape
    h_out, w_out = sigma.shape[1], sigma.shape[2]
    out = []
    for b in range(batch):
        grid = []
        for r_o in range(h_out):
            row = []
            for c_o in range(w_out):
                r_i, c_i = r_o * stride, c_o * stride  # the output's position on the input grid
                num, den = [0.0] * d, 0.0
                for r in range(height):
                    for c in range(width):
                        if abs(r - r_i) > radius or abs(c - c_i) > radius:
                            continue
                        w = ws[b][r][c] * (ms[b][r][c] if ms is not None else 1.0)
                        sq = (r - r_i) ** 2 + (c - c_i) ** 2
                        coef = w * math.exp(-sq / (2.0 * ss[b][r_o][c_o] ** 2))
                        den += coef
                        for k in range(d):
                            num[k] += coef * xs[b][r][c][k]
                row.append(_finish(num, den, normalize, eps))
            grid.append(row)
        out.append(grid)
    return torch.tensor(out, dtype=torch.float64).reshape(batch, h_out, w_out, d)
