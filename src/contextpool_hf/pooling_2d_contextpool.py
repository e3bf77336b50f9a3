"""The fast 2-D ContextPool: output tiles against their input halo, as batched matmuls.

Flat, Hub-shipped file: imports only torch (`pooling_contextpool` imports it, and
`save_pretrained` copies it next to the modeling files).

The outputs (at input positions (r * stride, c * stride)) are cut into tiles of Th x Tw.
A tile only reads the inputs within R of its outputs, its halo of
Lh x Lw = ((Th - 1) * stride + 2R + 1) x ((Tw - 1) * stride + 2R + 1) positions, so each
tile is one (Th Tw) x (Lh Lw) coefficient matrix times its (Lh Lw) x d inputs. Outside the
window the coefficient is an exact 0 (a 0/1 window mask), and zero-weight padding adds
nothing, so the result equals the dense definition term for term.

One tile covering the whole map (Lh x Lw = H x W, no halo padding) is the dense form:
one (n_out x n_in) coefficient matmul per image. On small maps (ViT patch grids, the late
ResNet stages) that is a handful of BLAS calls where the offset loop made (2R+1)^2 passes
of elementwise ops. On large maps the dense matrix would be O(n^2), so the map is tiled
(`plan_tiles`, the crossover measured by scripts/bench_vision.py --crossover) and the tiles
are processed in cache-sized chunks.

Memory: the saved tensors are x, weights, sigma, y and the denominator (O(n d)); the
coefficient temporaries of one chunk hold about _CHUNK_ELEMENTS elements (at least one row
of tiles of the whole batch). The dense form is used only while one image's n_out x n_in
coefficients are at most _DENSE_MAX_COEFS, so its temporaries are at most
batch x _DENSE_MAX_COEFS elements each (256 KiB per float32 image).

The coefficients are recomputed in the backward (one multiply and one exp per entry, from a
(To, Li) distance table shared by all tiles) rather than saved.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# A map whose n_out x n_in coefficients per image are at most this many runs dense (one tile):
# 65536 = a 16x16 map at stride 1 (256 x 256), or 32x16 -> 16x8 at stride 2. The crossover to
# tiles is measured by `python scripts/bench_vision.py --crossover` (README, "Vision").
_DENSE_MAX_COEFS = 1 << 16
# Output tile side of tiled maps, by stride (measured as above): at stride 1 an 8x8 tile reads a
# 16x16 halo (R = 4); at stride 2 a 4x4 tile reads 15x15, whose temporaries stay in cache.
_TILE_SIDE = 8
_TILE_SIDE_STRIDED = 4
# About this many coefficient elements per chunk temporary (cache-sized, reused across chunks).
_CHUNK_ELEMENTS = 1 << 18
_CHUNK_ELEMENTS_ACCELERATOR = 1 << 26


def plan_tiles(in_sizes, out_sizes, radius: int, stride: int, dense_max: int | None = None):
    """Per spatial dim (tile, halo, left): outputs per tile, inputs per halo, halo padding before.

    Dense (one tile, the halo is the whole map, no padding) while n_out * n_in <= dense_max;
    else tiles of _TILE_SIDE (stride 1) or _TILE_SIDE_STRIDED outputs per dim with a halo of R
    on each side (a dim that one tile covers keeps the whole input as its halo).
    """
    dense_max = _DENSE_MAX_COEFS if dense_max is None else dense_max
    (h, w), (ho, wo) = in_sizes, out_sizes
    if ho * wo * h * w <= dense_max:
        return ((ho, h, 0), (wo, w, 0))
    plan = []
    for size_in, size_out in ((h, ho), (w, wo)):
        tile = min(_TILE_SIDE if stride == 1 else _TILE_SIDE_STRIDED, size_out)
        halo = (tile - 1) * stride + 2 * radius + 1
        if tile == size_out and halo >= size_in + 2 * radius:  # one tile covers this dim: no halo padding
            plan.append((size_out, size_in, 0))
        else:
            plan.append((tile, halo, radius))
    return tuple(plan)


def _distance_table(tile, halo, left, stride, radius, device, dtype):
    """(tile, halo) table of -dist^2 / 2 between output o and halo input j along one dim,
    -inf outside the window |dist| <= R."""
    out_pos = torch.arange(tile, device=device).view(tile, 1) * stride + left
    dist = (torch.arange(halo, device=device).view(1, halo) - out_pos).to(dtype)  # (tile, halo)
    minus_inf = torch.full((), float("-inf"), dtype=dtype, device=device)
    return torch.where(dist.abs() <= radius, dist * dist * -0.5, minus_inf)


class _Layout:
    """Geometry of one call: tiles, padding, views into tile layout and back."""

    def __init__(self, in_sizes, out_sizes, radius, stride, plan):
        (self.th, self.lh, self.left_h), (self.tw, self.lw, self.left_w) = plan
        self.in_sizes, self.out_sizes, self.stride, self.radius = in_sizes, out_sizes, stride, radius
        self.nth, self.ntw = -(-out_sizes[0] // self.th), -(-out_sizes[1] // self.tw)
        self.step_h, self.step_w = self.th * stride, self.tw * stride  # halo start to the next halo start
        # padded input: every halo inside, and whole steps for the overlap-add of the backward
        self.rows = max(self.left_h + in_sizes[0], (self.nth - 1 + -(-self.lh // self.step_h)) * self.step_h)
        self.cols = max(self.left_w + in_sizes[1], (self.ntw - 1 + -(-self.lw // self.step_w)) * self.step_w)
        self.dense = self.nth == self.ntw == 1 and self.left_h == self.left_w == 0
        self.dense = self.dense and (self.lh, self.lw) == tuple(in_sizes)
        if self.dense:  # the halo is the map itself: no padding, no overlap-add
            self.rows, self.cols = in_sizes

    def pad_input(self, t):
        """(B, H, W[, d]) -> zero-padded (B, rows, cols[, d]); zero weight = adds nothing."""
        h, w = self.in_sizes
        pad = (self.left_w, self.cols - w - self.left_w, self.left_h, self.rows - h - self.left_h)
        if not any(pad):
            return t
        return F.pad(t, ((0, 0) + pad) if t.dim() == 4 else pad)

    def halos(self, t_pad, first=0, count=None):
        """(B, rows, cols[, d]) -> (B, count, ntw, Lh*Lw[, d]): the halos of tile rows
        first .. first + count - 1 (a copy, except in the dense case)."""
        if self.dense:
            return t_pad.flatten(1, 2).unsqueeze(1).unsqueeze(1)
        count = self.nth - first if count is None else count
        r0 = first * self.step_h
        t_pad = t_pad[:, r0 : r0 + (count - 1) * self.step_h + self.lh, : (self.ntw - 1) * self.step_w + self.lw]
        win = t_pad.unfold(1, self.lh, self.step_h).unfold(2, self.lw, self.step_w)  # (B, count, ntw, [d,] Lh, Lw)
        if t_pad.dim() == 4:
            win = win.permute(0, 1, 2, 4, 5, 3)  # (B, count, ntw, Lh, Lw, d)
            return win.reshape(win.shape[:3] + (self.lh * self.lw, win.shape[-1]))
        return win.reshape(win.shape[:3] + (self.lh * self.lw,))

    def to_tiles(self, t, value=0.0):
        """(B, Ho, Wo[, d]) outputs -> (B, nth, ntw, Th*Tw[, d])."""
        ho, wo = self.out_sizes
        extra = (self.nth * self.th - ho, self.ntw * self.tw - wo)
        if self.nth == self.ntw == 1 and not any(extra):
            return t.flatten(1, 2).unsqueeze(1).unsqueeze(1)
        if t.dim() == 4:
            t = F.pad(t, (0, 0, 0, extra[1], 0, extra[0]), value=value)
            t = t.unflatten(2, (self.ntw, self.tw)).unflatten(1, (self.nth, self.th))  # (B, nth, Th, ntw, Tw, d)
            return t.permute(0, 1, 3, 2, 4, 5).reshape(t.shape[0], self.nth, self.ntw, self.th * self.tw, -1)
        t = F.pad(t, (0, extra[1], 0, extra[0]), value=value)
        t = t.unflatten(2, (self.ntw, self.tw)).unflatten(1, (self.nth, self.th))  # (B, nth, Th, ntw, Tw)
        return t.permute(0, 1, 3, 2, 4).reshape(t.shape[0], self.nth, self.ntw, self.th * self.tw)

    def from_tiles(self, t):
        """(B, nth, ntw, Th*Tw, d) -> (B, Ho, Wo, d)."""
        ho, wo = self.out_sizes
        batch, d = t.shape[0], t.shape[-1]
        if self.nth == self.ntw == 1 and (self.th, self.tw) == (ho, wo):
            return t.view(batch, ho, wo, d)
        t = t.view(batch, self.nth, self.ntw, self.th, self.tw, d).permute(0, 1, 3, 2, 4, 5)
        t = t.reshape(batch, self.nth * self.th, self.ntw * self.tw, d)  # (B, nth*Th, ntw*Tw, d)
        return t[:, :ho, :wo]

    def fold_add_(self, out_pad, halos, first_row_tile):
        """out_pad[:, halo rows/cols of each tile] += halos: the adjoint of `halos`.

        out_pad (B, rows, cols[, d]); halos (B, k, ntw, Lh*Lw[, d]) for tile rows
        first_row_tile .. first_row_tile + k - 1. Done as ceil(Lh/step_h) * ceil(Lw/step_w)
        strided adds of whole tiles rather than one add per tile.
        """
        batch, k = halos.shape[:2]
        tail = halos.shape[4:]
        halos = halos.reshape((batch, k, self.ntw, self.lh, self.lw) + tail)
        ch, cw = -(-self.lh // self.step_h), -(-self.lw // self.step_w)
        r0 = first_row_tile * self.step_h
        region = out_pad[:, r0 : r0 + (k + ch - 1) * self.step_h, : (self.ntw + cw - 1) * self.step_w]
        region = region.unflatten(2, (self.ntw + cw - 1, self.step_w)).unflatten(1, (k + ch - 1, self.step_h))
        # region: (B, k + ch - 1, step_h, ntw + cw - 1, step_w[, d]), a view
        for a in range(ch):
            rows = min(self.step_h, self.lh - a * self.step_h)
            for b in range(cw):
                cols = min(self.step_w, self.lw - b * self.step_w)
                part = halos[:, :, :, a * self.step_h : a * self.step_h + rows, b * self.step_w : b * self.step_w + cols]
                part = part.transpose(2, 3)  # (B, k, rows, ntw, cols[, d])
                region[:, a : a + k, :rows, b : b + self.ntw, :cols] += part


# exp() of -inf or of arguments whose result is subnormal takes a slow path on CPUs (10-200x
# per element, measured), so the exponent is clamped here and the window applied as a 0/1 mask.
# exp(-80) = 1.8e-35 is still a normal float32; a term that small is below the rounding of any
# sum it enters (the output's own term has exp(0) = 1), so the clamp changes no result.
_MIN_EXPONENT = -80.0


_TABLE_CACHE: dict = {}
_TABLE_CACHE_SIZE = 64


def _cached_tile_tables(lay, device, dtype):
    """`_tile_tables`, remembered per geometry: a model calls the same few shapes every step, and
    building the tables is about 20 small ops per call (a quarter of the op's forward on a
    ResNet-sized map). Not cached while torch.compile traces (the graph builds them itself) or
    under inference_mode (inference tensors could not be saved for a later backward)."""
    if torch.compiler.is_compiling() or torch.is_inference_mode_enabled():
        return _tile_tables(lay, device, dtype)
    key = (lay.th, lay.tw, lay.lh, lay.lw, lay.left_h, lay.left_w, lay.stride, lay.radius, str(device), dtype)
    tables = _TABLE_CACHE.get(key)
    if tables is None:
        tables = _tile_tables(lay, device, dtype)
        if len(_TABLE_CACHE) >= _TABLE_CACHE_SIZE:
            _TABLE_CACHE.clear()
        _TABLE_CACHE[key] = tables
    return tables


def _tile_tables(lay, device, dtype):
    """(To, Li) tables between a tile's outputs and its halo inputs: q = -|p_j - p_o|^2 / 2 inside
    the window (0 outside), and the window itself as a 0/1 mask.

    The square window and the squared distance are separable, so both are built from the
    two 1-D tables (broadcast sum and product).
    """
    q_h = _distance_table(lay.th, lay.lh, lay.left_h, lay.stride, lay.radius, device, dtype)
    q_w = _distance_table(lay.tw, lay.lw, lay.left_w, lay.stride, lay.radius, device, dtype)
    q = q_h.view(lay.th, 1, lay.lh, 1) + q_w.view(1, lay.tw, 1, lay.lw)  # (Th, Tw, Lh, Lw), -inf outside
    q = q.reshape(lay.th * lay.tw, lay.lh * lay.lw)
    inside = torch.isfinite(q)
    return torch.where(inside, q, torch.zeros((), dtype=dtype, device=device)), inside.to(dtype)


def _coefficients(w_halo, inv_var, q, inside):
    """gauss_oj = exp(-dist^2 / (2 s_o^2)) and c_oj = w_j gauss_oj, both (B, k, ntw, To, Li).

    w_halo (B, k, ntw, Li); inv_var (B, k, ntw, To) = 1 / sigma^2; q, inside (To, Li).
    """
    gauss = torch.mul(inv_var.unsqueeze(-1), q).clamp_min_(_MIN_EXPONENT).exp_().mul_(inside)  # exact 0 outside
    return gauss, gauss * w_halo.unsqueeze(-2)


class _TiledPool2d(torch.autograd.Function):
    """2-D pooling as per-tile coefficient matmuls (dense when one tile), hand-written backward."""

    @staticmethod
    def forward(ctx, x, weights, sigma, radius, stride, normalize, eps, plan):
        # x: (B, H, W, d); weights: (B, H, W); sigma: (B, Ho, Wo)
        batch, d = x.shape[0], x.shape[-1]
        lay = _Layout(tuple(weights.shape[1:]), tuple(sigma.shape[1:]), radius, stride, plan)
        x_pad, w_pad = lay.pad_input(x), lay.pad_input(weights)
        s_t = lay.to_tiles(sigma, value=1.0)  # (B, nth, ntw, To); padded outputs get a harmless 1
        q, inside = _cached_tile_tables(lay, x.device, x.dtype)
        inv_var = (s_t * s_t).reciprocal_()  # (B, nth, ntw, To)
        w_halo = lay.halos(w_pad)  # (B, nth, ntw, Li): no feature dim, so one copy for all chunks
        step = _rows_per_chunk(x, lay)
        y_t = denom = None
        for k0 in range(0, lay.nth, step):
            k, kc = slice(k0, k0 + step), min(step, lay.nth - k0)
            _, coef = _coefficients(w_halo[:, k], inv_var[:, k], q, inside)
            y_k = _matmul_like_x(coef, lay.halos(x_pad, k0, kc), lay)  # (B, kc, ntw, To, d)
            total = coef.sum(-1, keepdim=True).add_(eps) if normalize else None  # (B, kc, ntw, To, 1)
            if normalize:
                y_k.div_(total)
            if kc == lay.nth:  # one chunk: no copy into a full-size buffer
                y_t, denom = y_k, total
                break
            if y_t is None:
                y_t = x.new_empty(batch, lay.nth, lay.ntw, lay.th * lay.tw, d)
                denom = x.new_empty(batch, lay.nth, lay.ntw, lay.th * lay.tw, 1) if normalize else None
            y_t[:, k] = y_k
            if normalize:
                denom[:, k] = total
        ctx.save_for_backward(x_pad, w_halo, inv_var, y_t, denom, q, inside, sigma)
        ctx.layout, ctx.step = lay, step
        return lay.from_tiles(y_t)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        x_pad, w_halo, inv_var, y_t, denom, q, inside, sigma = ctx.saved_tensors
        lay, step = ctx.layout, ctx.step
        need_x, need_w, need_sigma = ctx.needs_input_grad[:3]
        g_t = lay.to_tiles(grad_y)  # (B, nth, ntw, To, d)
        grad_x_pad = grad_w_pad = grad_inv_var = None
        if need_x and not lay.dense:
            grad_x_pad = x_pad.new_zeros(x_pad.shape)
        if need_w and not lay.dense:
            grad_w_pad = x_pad.new_zeros(x_pad.shape[:3])
        if need_sigma:
            grad_inv_var = torch.empty_like(inv_var)  # (B, nth, ntw, To)
        for k0 in range(0, lay.nth, step):
            k, kc = slice(k0, k0 + step), min(step, lay.nth - k0)
            gauss, coef = _coefficients(w_halo[:, k], inv_var[:, k], q, inside)
            grad_num = g_t[:, k]  # dL/d(sum_j c_oj x_j)
            grad_total = None
            if denom is not None:
                grad_num = grad_num / denom[:, k]
                grad_total = torch.linalg.vecdot(grad_num, y_t[:, k]).neg_().unsqueeze(-1)  # dL/d(sum_j c_oj)
            if need_x:
                grad_halo = _matmul_like_x(coef.transpose(-1, -2), grad_num, lay)  # (B, kc, ntw, Li, d)
                if lay.dense:
                    grad_x_pad = grad_halo.view(x_pad.shape)
                else:
                    lay.fold_add_(grad_x_pad, grad_halo, k0)
            if not (need_w or need_sigma):
                continue
            x_halo = lay.halos(x_pad, k0, kc)  # (B, kc, ntw, Li, d)
            grad_coef = torch.matmul(grad_num, x_halo.transpose(-1, -2))  # (B, kc, ntw, To, Li): dL/dc_oj
            if grad_total is not None:
                grad_coef.add_(grad_total)
            if need_w:
                grad_w_halo = torch.linalg.vecdot(grad_coef, gauss, dim=-2)  # (B, kc, ntw, Li)
                if lay.dense:
                    grad_w_pad = grad_w_halo.view(x_pad.shape[:3])
                else:
                    lay.fold_add_(grad_w_pad, grad_w_halo, k0)
            if need_sigma:  # c_oj = w_j exp(q_oj / s_o^2), q = -dist^2 / 2
                grad_inv_var[:, k] = torch.linalg.vecdot(grad_coef.mul_(coef), q)
        h, w = lay.in_sizes
        rows_in, cols_in = slice(lay.left_h, lay.left_h + h), slice(lay.left_w, lay.left_w + w)
        grad_x = grad_x_pad[:, rows_in, cols_in] if need_x else None
        grad_wts = grad_w_pad[:, rows_in, cols_in] if need_w else None
        grad_sigma = None
        if need_sigma:  # d(1/s^2)/ds = -2/s^3
            grad_iv = grad_inv_var.unsqueeze(-1)  # (B, nth, ntw, To, 1)
            grad_iv = lay.from_tiles(grad_iv).squeeze(-1)  # (B, Ho, Wo)
            grad_sigma = grad_iv * -2.0 / (sigma * sigma * sigma)
        return grad_x, grad_wts, grad_sigma, None, None, None, None, None


def _matmul_like_x(coef, features, lay):
    """coef @ features, (..., P, Q) @ (..., Q, d) -> (..., P, d).

    A dense map whose features are channels-first in memory ((B, H, W, d) as a permuted view of
    (B, d, H, W), as in a ConvNet) is computed as (features^T @ coef^T)^T, which gives a result
    with the same channels-first memory: the caller's permute back to (B, d, H', W') is then free.
    """
    if lay.dense and features.stride(-1) != 1 and features.stride(-2) == 1:
        return torch.matmul(features.transpose(-1, -2), coef.transpose(-1, -2)).transpose(-1, -2)
    return torch.matmul(coef, features)


def _rows_per_chunk(x, lay) -> int:
    """Tile rows per chunk so that one coefficient temporary holds about _CHUNK_ELEMENTS."""
    limit = _CHUNK_ELEMENTS if x.device.type == "cpu" else _CHUNK_ELEMENTS_ACCELERATOR
    per_row = x.shape[0] * lay.ntw * lay.th * lay.tw * max(lay.lh * lay.lw, x.shape[-1])
    return max(1, min(lay.nth, limit // max(1, per_row)))


def tiled_pool_2d(x, weights, sigma, radius, stride, normalize, eps, dense_max=None):
    """x (B, H, W, d), weights (B, H, W), sigma (B, Ho, Wo) -> (B, Ho, Wo, d); see the module doc."""
    plan = plan_tiles(tuple(weights.shape[1:]), tuple(sigma.shape[1:]), radius, stride, dense_max)
    return _TiledPool2d.apply(x, weights, sigma, radius, stride, normalize, eps, plan)
