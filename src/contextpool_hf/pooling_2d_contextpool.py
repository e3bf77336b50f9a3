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
coefficient temporaries of one chunk hold about _CHUNK_ELEMENTS elements: whole rows of tiles
of the whole batch while one row fits, else one row of as many images as fit (`_chunk_steps`;
a dense map is one row). The dense form is used only while one image's n_out x n_in
coefficients are at most _DENSE_MAX_COEFS (256 KiB per float32 image), so a chunk holds at
least one image. The backward frees each chunk's Gaussian before it forms the input's gradient
and forms the weights' gradient inside M (on dense maps M is computed straight into the input's
gradient), so a chunk holds the coefficients and about two tensors of the chunk's input size at once.

The coefficients are recomputed in the backward rather than saved. Per shape (measured,
`bench_vision.py --crossover` and the op timings in the README):
- the Gaussian is built from a row and a column factor (the window and the squared distance
  are separable: 2 (Lh + Lw) exps per output, one multiply per coefficient) on halos of at
  least _SEPARABLE_MIN_HALO inputs, else with one exp per coefficient;
- the backward goes through dL/dc (a To x Li matmul output) while a tile has at most as many
  outputs as features (ViT grids), else through matmuls whose outputs have the size of x and y
  (ResNet maps: few channels against large halos; see `_TiledPool2d`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks_contextpool import _autocast_off, _dims_by_stride, _kept_tensors, _plain_tensors_only

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
# The backward through M (few channels, large halos: ResNet maps) takes smaller chunks: gauss sits beside the
# input's full-size gradient and the other gradients the step holds by then (measured: a ResNet step's peak
# memory was its stem site's backward, gauss and M of 16 images, 1.5 MiB). With M written into the input's
# gradient (dense maps), 8 images per chunk: a ResNet step's peak 1.087x transformers' (4 images: 1.074x, 1.8%
# slower; 16 images: 1.20x). The form through dL/dc (ViT grids) keeps _CHUNK_ELEMENTS: a second chunk there cost
# about 2% of a ViT step and its peak is elsewhere.
_CHUNK_ELEMENTS_BACKWARD = 1 << 17
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

    def to_tiles(self, t, value):
        """(B, Ho, Wo[, d]) outputs -> (B, nth, ntw, Th*Tw[, d]), padded with `value` (a literal at each call: a
        float default would be a shared graph input under torch.compile(dynamic=True), see
        checks_contextpool.default_eps)."""
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
# per element, measured), so each per-dim exponent (row, column) is clamped here and the window
# applied as a 0/1 mask. In float32 a coefficient's factors are then at least exp(-40) each, their
# product at least exp(-80) = 1.8e-35, still a normal float32; a clamped term is at most
# exp(-40) = 4e-18 of the output's own term (gauss exp(0) = 1), below the rounding of any sum it
# enters, so the clamp changes no result. float64 keeps the exact terms down to exp(-600). (A literal
# returned by a function, as dynamo needs it inside the Function: see checks_contextpool.default_eps.)
def _min_exponent(dtype: torch.dtype) -> float:
    return -300.0 if dtype == torch.float64 else -40.0


# Halo size (Lh * Lw) from which the Gaussian is built from row and column factors.
_SEPARABLE_MIN_HALO = 128


_TABLE_CACHE: dict = {}
_TABLE_CACHE_SIZE = 64


def _cached_tile_tables(lay, device, dtype):
    """`_tile_tables`, remembered per geometry: a model calls the same few shapes every step, and
    building the tables is about 20 small ops per call (a quarter of the op's forward on a
    ResNet-sized map). Not cached while torch.compile traces (the graph builds them itself); made outside
    inference_mode (`_kept_tensors`: inference tensors could not be saved for a later backward), and never kept
    when made under a FakeTensorMode (`_plain_tensors_only`)."""
    if torch.compiler.is_compiling():
        return _tile_tables(lay, device, dtype)
    key = (lay.th, lay.tw, lay.lh, lay.lw, lay.left_h, lay.left_w, lay.stride, lay.radius, str(device), dtype)
    tables = _TABLE_CACHE.get(key)
    if tables is None:
        tables = _kept_tensors(lambda: _tile_tables(lay, device, dtype))
        if not _plain_tensors_only(tables):
            return tables
        if len(_TABLE_CACHE) >= _TABLE_CACHE_SIZE:
            _TABLE_CACHE.clear()
        _TABLE_CACHE[key] = tables
    return tables


def _tile_tables(lay, device, dtype):
    """Tables between a tile's To = Th*Tw outputs and its halo inputs.

    The square window and the squared distance are separable, so the Gaussian is a product of
    a row factor and a column factor: per output, -dist_row^2 / 2 against the Lh halo rows,
    (To, Lh), and -dist_col^2 / 2 against the Lw halo columns, (To, Lw), each 0 outside the
    window, with its 0/1 window mask; and the full q = -|p_j - p_o|^2 / 2, (To, Lh*Lw), 0
    outside the window (what the sigma gradient weighs the coefficients with).
    """
    zero = torch.zeros((), dtype=dtype, device=device)
    q_h = _distance_table(lay.th, lay.lh, lay.left_h, lay.stride, lay.radius, device, dtype)  # (Th, Lh)
    q_w = _distance_table(lay.tw, lay.lw, lay.left_w, lay.stride, lay.radius, device, dtype)  # (Tw, Lw)
    row = q_h.view(lay.th, 1, lay.lh).expand(lay.th, lay.tw, lay.lh).reshape(lay.th * lay.tw, lay.lh)  # (To, Lh)
    col = q_w.view(1, lay.tw, lay.lw).expand(lay.th, lay.tw, lay.lw).reshape(lay.th * lay.tw, lay.lw)  # (To, Lw)
    q = row.view(-1, lay.lh, 1) + col.view(-1, 1, lay.lw)  # (To, Lh, Lw), -inf outside
    inside = torch.isfinite(q)
    q = torch.where(inside, q, zero).view(-1, lay.lh * lay.lw)
    factors = tuple((torch.where(torch.isfinite(t), t, zero), torch.isfinite(t).to(dtype)) for t in (row, col))
    return factors, q, inside.view(-1, lay.lh * lay.lw).to(dtype)


def _separable(lay) -> bool:
    """Build the Gaussian from row and column factors where a halo is large (measured: a 16x16
    halo gains, an 8x8 one loses to the extra small ops)."""
    return lay.lh * lay.lw >= _SEPARABLE_MIN_HALO


def _gauss(inv_var, tables, lay):
    """gauss_oj = exp(-dist_oj^2 / (2 s_o^2)) as (B, k, ntw, To, Li): inv_var (B, k, ntw, To) =
    1 / sigma^2. On large halos built from the (To, Lh) row and (To, Lw) column factors: 2 (Lh + Lw)
    exps per output and one multiply per coefficient, instead of an exp per coefficient."""
    iv = inv_var.unsqueeze(-1)
    factors, q, inside = tables
    low = _min_exponent(iv.dtype)
    if not _separable(lay):  # the same clamp as the product of the two clamped factors' floor
        return torch.mul(iv, q).clamp_min_(2 * low).exp_().mul_(inside)
    (q_row, in_row), (q_col, in_col) = factors
    row = torch.mul(iv, q_row).clamp_min_(low).exp_().mul_(in_row)  # (B, k, ntw, To, Lh), 0 outside
    col = torch.mul(iv, q_col).clamp_min_(low).exp_().mul_(in_col)  # (B, k, ntw, To, Lw)
    return torch.mul(row.unsqueeze(-1), col.unsqueeze(-2)).flatten(-2)  # (B, k, ntw, To, Lh*Lw)


class _TiledPool2d(torch.autograd.Function):
    """2-D pooling as per-tile coefficient matmuls (dense when one tile), hand-written backward.

    With c_oj = w_j gauss_oj, N_o = sum_j c_oj x_j, S_o = sum_j c_oj and y_o = N_o / (eps + S_o),
    every gradient is a matmul with an output of the size of x or y, never of the coefficients:
    with G_o = dL/dN_o = g_o / (eps + S_o) and t_o = dL/dS_o = -G_o . y_o,
        dL/dx_j = w_j M_j,            M = gauss^T [G, t]  (Li x (d + 1), one matmul)
        dL/dw_j = x_j . M_j[:d] + M_j[d]
        dL/d(1/s_o^2) = G_o . Z_o + t_o sum_j c_oj q_oj,   Z = (c * q) @ x
    (q = -dist^2 / 2). The coefficients are recomputed in the backward, not saved.
    """

    @staticmethod
    @_autocast_off
    def forward(ctx, x, weights, sigma, radius, stride, normalize, eps, plan):
        # x: (B, H, W, d); weights: (B, H, W); sigma: (B, Ho, Wo)
        batch, d = x.shape[0], x.shape[-1]
        lay = _Layout(tuple(weights.shape[1:]), tuple(sigma.shape[1:]), radius, stride, plan)
        x_pad, w_pad = lay.pad_input(x), lay.pad_input(weights)
        s_t = lay.to_tiles(sigma, value=1.0)  # (B, nth, ntw, To); padded outputs get a harmless 1
        tables = _cached_tile_tables(lay, x.device, x.dtype)
        inv_var = (s_t * s_t).reciprocal_()  # (B, nth, ntw, To)
        w_halo = lay.halos(w_pad)  # (B, nth, ntw, Li): no feature dim, so one copy for all chunks
        steps = _chunk_steps(x, lay)
        one_chunk = _is_one_chunk(batch, lay, steps)
        y_t = denom = None
        for b, k, k0, kc in _chunks(batch, lay, steps):
            coef = _gauss(inv_var[b, k], tables, lay).mul_(w_halo[b, k].unsqueeze(-2))  # (b, kc, ntw, To, Li)
            y_k = _matmul_like_x(coef, lay.halos(x_pad[b], k0, kc), lay)  # (b, kc, ntw, To, d)
            total = coef.sum(-1, keepdim=True).add_(eps) if normalize else None  # (b, kc, ntw, To, 1)
            del coef
            if normalize:
                y_k.div_(total)
            if one_chunk:  # no copy into a full-size buffer
                y_t, denom = y_k, total
                break
            if y_t is None:  # in the chunk's memory layout (channels-first stays channels-first)
                y_t = _empty_like_layout(y_k, (batch, lay.nth, lay.ntw, lay.th * lay.tw, d))
                denom = x.new_empty(batch, lay.nth, lay.ntw, lay.th * lay.tw, 1) if normalize else None
            y_t[b, k] = y_k
            if normalize:
                denom[b, k] = total
        ctx.save_for_backward(x_pad, w_halo, inv_var, y_t, denom, sigma)
        ctx.layout, ctx.tables = lay, tables
        return lay.from_tiles(y_t)

    @staticmethod
    @_autocast_off
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        x_pad, w_halo, inv_var, y_t, denom, sigma = ctx.saved_tensors
        lay, tables = ctx.layout, ctx.tables
        # Which gradient form (measured): through dL/dc (a To x Li matmul output, two passes over it)
        # while a tile has at most as many outputs as features (ViT grids), else the form whose
        # matmul outputs are of the size of x and y (ResNet maps: few channels, large halos).
        via_coef_grad = lay.th * lay.tw <= x_pad.shape[-1]
        steps = _chunk_steps(x_pad, lay, backward=not via_coef_grad)
        need_x, need_w, need_sigma = ctx.needs_input_grad[:3]
        batch = x_pad.shape[0]
        one_chunk = _is_one_chunk(batch, lay, steps)
        g_t = lay.to_tiles(grad_y, value=0.0)  # (B, nth, ntw, To, d)
        grad_x_pad = grad_w_pad = grad_inv_var = None
        if need_x and not lay.dense:
            grad_x_pad = x_pad.new_zeros(x_pad.shape)
        elif need_x and not one_chunk:  # dense, the batch in chunks: each writes its images (in x's layout)
            grad_x_pad = _empty_like_layout(x_pad, x_pad.shape)
        if need_w and not lay.dense:
            grad_w_pad = x_pad.new_zeros(x_pad.shape[:3])
        elif need_w and not one_chunk:
            grad_w_pad = x_pad.new_empty(x_pad.shape[:3])
        if need_sigma:
            grad_inv_var = torch.empty_like(inv_var)  # (B, nth, ntw, To)
        for b, k, k0, kc in _chunks(batch, lay, steps):
            chunk = _Chunk(b, k, k0, kc, grad_x_pad, grad_w_pad)
            dense = _backward_chunk(lay, chunk, via_coef_grad, tables, x_pad, w_halo, inv_var, y_t, denom, g_t,
                                    grad_inv_var, need_x, need_w, need_sigma)  # fmt: skip
            if one_chunk and lay.dense:
                grad_x_pad, grad_w_pad = dense
        h, w = lay.in_sizes
        rows_in, cols_in = slice(lay.left_h, lay.left_h + h), slice(lay.left_w, lay.left_w + w)
        grad_x = grad_wts = grad_sigma = None
        if need_x and lay.dense and one_chunk:  # (B, 1, 1, H*W, d) -> (B, H, W, d), a view in the matmul's layout
            grad_x = grad_x_pad.squeeze(2).squeeze(1).unflatten(1, (h, w))
        elif need_x:
            grad_x = grad_x_pad[:, rows_in, cols_in]
        if need_w:
            grad_wts = grad_w_pad[:, rows_in, cols_in]
        if need_sigma:  # d(1/s^2)/ds = -2/s^3
            grad_iv = grad_inv_var.unsqueeze(-1)  # (B, nth, ntw, To, 1)
            grad_iv = lay.from_tiles(grad_iv).squeeze(-1)  # (B, Ho, Wo)
            grad_sigma = grad_iv * -2.0 / (sigma * sigma * sigma)
        return grad_x, grad_wts, grad_sigma, None, None, None, None, None


class _Chunk:
    """One chunk of the backward: images b (a slice), tile rows k (a slice from k0, kc rows), and the full-size
    gradient buffers it adds (tiled) or writes (dense, batch in chunks) into; None: the chunk returns its part."""

    def __init__(self, b, k, k0, kc, grad_x_pad, grad_w_pad):
        self.b, self.k, self.k0, self.kc = b, k, k0, kc
        self.grad_x_pad, self.grad_w_pad = grad_x_pad, grad_w_pad

    def put_x(self, lay, grad_halo):
        """Adds (tiled) or writes (dense) the chunk's input-gradient halos; returns them when there is no buffer."""
        if self.grad_x_pad is None:
            return grad_halo
        if lay.dense:
            flat = self._dense_rows(lay)
            flat.copy_(grad_halo.reshape(flat.shape))
        else:
            lay.fold_add_(self.grad_x_pad[self.b], grad_halo, self.k0)
        return None

    def dense_x_rows(self, lay, x_pad):
        """Where M's first d columns (the chunk's input gradient before the weights) can be computed straight into
        the input's gradient: (b, H*W, d) in x's memory layout, a view of the dense buffer or a new tensor that the
        chunk returns; None on tiled maps (their halos overlap) and under torch.compile (measured: writing into the
        buffer with out= made the compiled ResNet step 1.25x slower)."""
        if not lay.dense or torch.compiler.is_compiling():
            return None
        if self.grad_x_pad is not None:
            return self._dense_rows(lay)
        like = x_pad[self.b].flatten(1, 2)  # (b, H*W, d), a view in x's layout
        return _empty_like_layout(like, like.shape)

    def _dense_rows(self, lay) -> torch.Tensor:
        """The chunk's images of the dense input-gradient buffer as (b, H*W, d): a view (it raises rather than copy
        where the layout would not allow one)."""
        images = self.grad_x_pad[self.b]  # (b, H, W, d)
        return images.view(images.shape[0], lay.lh * lay.lw, images.shape[-1])

    def put_w(self, lay, grad_w_halo):
        """The same for the weights' gradient (B, kc, ntw, Li); dense without a buffer: returned as (b, H, W)."""
        if self.grad_w_pad is None:
            return grad_w_halo.reshape(grad_w_halo.shape[0], *lay.in_sizes)
        if lay.dense:
            self.grad_w_pad[self.b].copy_(grad_w_halo.reshape(grad_w_halo.shape[0], *lay.in_sizes))
        else:
            lay.fold_add_(self.grad_w_pad[self.b], grad_w_halo, self.k0)
        return None


def _backward_chunk(lay, chunk, via_coef_grad, tables, x_pad, w_halo, inv_var, y_t, denom, g_t, grad_inv_var,
                    need_x, need_w, need_sigma):
    """One chunk of `_TiledPool2d.backward`; returns the dense (grad_x halos, grad_w) where there are no buffers."""
    b, k, k0, kc = chunk.b, chunk.k, chunk.k0, chunk.kc
    q, d = tables[1], x_pad.shape[-1]
    w_k = w_halo[b, k].unsqueeze(-1)  # (b, kc, ntw, Li, 1)
    grad_num = g_t[b, k]  # G = dL/dN, (b, kc, ntw, To, d)
    grad_total = None
    if denom is not None:
        grad_num = grad_num / denom[b, k]
        grad_total = torch.linalg.vecdot(grad_num, y_t[b, k]).neg_().unsqueeze(-1)  # t = dL/dS, (.., To, 1)
    x_halo = lay.halos(x_pad[b], k0, kc) if (need_w or need_sigma) else None  # (b, kc, ntw, Li, d)
    rows = chunk.dense_x_rows(lay, x_pad) if need_x and not via_coef_grad else None  # (b, Li, d) or None
    if rows is not None:  # builds the Gaussian itself: a reference held here would keep it to the chunk's end
        return _backward_into_rows(chunk, lay, rows, inv_var[b, k], tables, w_k, grad_num, grad_total, x_halo,
                                   grad_inv_var, need_w, need_sigma)  # fmt: skip
    gauss = _gauss(inv_var[b, k], tables, lay)  # (b, kc, ntw, To, Li)
    if via_coef_grad:
        return _backward_via_coef_grad(lay, chunk, gauss, w_k, grad_num, grad_total, x_halo, q, grad_inv_var,
                                       need_x, need_w, need_sigma)  # fmt: skip
    m = None
    if need_x or need_w:
        # M = gauss^T [G, t]: t rides along as one more column of the same matmul
        cols = (grad_num,) if grad_total is None or not need_w else (grad_num, grad_total)
        m = _gauss_t_times(gauss, cols, x_pad.stride(-1) != 1)  # (b, kc, ntw, Li, d or d + 1)
    # before M is used, so that gauss (the chunk's largest temporary) is freed first
    _sigma_grad(chunk, lay, gauss, w_k, grad_num, grad_total, x_halo, q, grad_inv_var, need_sigma)
    del gauss
    dense_x = dense_w = None
    if need_x:  # tiled maps (and dense ones under torch.compile: the plain product, see `dense_x_rows`)
        dense_x = chunk.put_x(lay, m[..., :d] * w_k)  # (b, kc, ntw, Li, d)
    if need_w:  # x_j . M_j[:d], multiplied into M itself (it is not read after): no temporary of x's size
        grad_w_halo = m[..., :d].mul_(x_halo).sum(-1)  # (b, kc, ntw, Li)
        if m.shape[-1] > d:
            grad_w_halo += m[..., d]
        dense_w = chunk.put_w(lay, grad_w_halo)
    return dense_x, dense_w


def _backward_into_rows(chunk, lay, rows, inv_var, tables, w_k, grad_num, grad_total, x_halo, grad_inv_var, need_w,
                        need_sigma):
    """The backward through M of a dense chunk (one tile per image), M's first d columns computed into `rows`
    (b, H*W, d), the input's gradient (`_Chunk.dense_x_rows`), then scaled by the weights there: no temporary of
    x's size for M. inv_var: the chunk's (b, 1, 1, To); the Gaussian is built here. Returns the chunk's (grad_x,
    grad_w) where it has no buffers, as `_backward_chunk`."""
    gauss = _gauss(inv_var, tables, lay)  # (b, 1, 1, To, Li)
    # one tile per image: (b, 1, 1, P, Q) -> (b, P, Q), views
    gauss3, grad_num3 = gauss.squeeze(2).squeeze(1), grad_num.squeeze(2).squeeze(1)
    _bmm_into(gauss3.transpose(1, 2), grad_num3, rows)  # M[:, :d] = gauss^T G: (b, Li, d)
    grad_w_t = None
    if need_w and grad_total is not None:  # M[:, d] = gauss^T t, as (b, 1, Li)
        grad_w_t = torch.bmm(grad_total.squeeze(2).squeeze(1).transpose(1, 2), gauss3)
    del gauss3
    _sigma_grad(chunk, lay, gauss, w_k, grad_num, grad_total, x_halo, tables[1], grad_inv_var, need_sigma)
    del gauss
    dense_w = None
    if need_w:  # dL/dw_j = x_j . M_j[:d] + M_j[d], read before the weights scale M in place
        grad_w_halo = torch.linalg.vecdot(rows, x_halo.squeeze(2).squeeze(1))  # (b, Li)
        if grad_w_t is not None:
            grad_w_halo += grad_w_t.squeeze(1)
        dense_w = chunk.put_w(lay, grad_w_halo)
    rows.mul_(w_k.squeeze(2).squeeze(1))  # dL/dx_j = w_j M_j[:d]
    return (rows.unsqueeze(1).unsqueeze(1) if chunk.grad_x_pad is None else None), dense_w


def _sigma_grad(chunk, lay, gauss, w_k, grad_num, grad_total, x_halo, q, grad_inv_var, need_sigma):
    """The chunk's dL/d(1/s^2) into grad_inv_var; gauss is scaled in place into c * q (it is not read after)."""
    if not need_sigma:
        return
    # c_oj = w_j exp(q_oj / s_o^2): dc_oj / d(1/s_o^2) = c_oj q_oj
    cq = gauss.mul_(w_k.transpose(-1, -2)).mul_(q)  # (b, kc, ntw, To, Li)
    grad_iv = torch.linalg.vecdot(grad_num, _matmul_like_x(cq, x_halo, lay))  # (b, kc, ntw, To)
    if grad_total is not None:
        grad_iv = grad_iv + grad_total.squeeze(-1) * cq.sum(-1)
    grad_inv_var[chunk.b, chunk.k] = grad_iv


def _bmm_into(left, right, out):
    """left @ right, (n, P, Q) @ (n, Q, d), written into out (n, P, d), whichever of its last two dims is contiguous
    (a channels-first x gives a transposed out: right^T left^T is written into its transpose)."""
    if out.stride(-1) == 1:
        torch.bmm(left, right, out=out)
    else:
        torch.bmm(right.transpose(1, 2), left.transpose(1, 2), out=out.transpose(1, 2))


def _backward_via_coef_grad(lay, chunk, gauss, w_k, grad_num, grad_total, x_halo, q, grad_inv_var,
                            need_x, need_w, need_sigma):
    """One chunk of the backward through dL/dc_oj = G_o . x_j + t_o, (b, kc, ntw, To, Li). Adds or writes into the
    chunk's buffers; where there are none (dense, one chunk), returns (grad_x halos, grad_w) instead."""
    coef = gauss * w_k.transpose(-1, -2)  # (b, kc, ntw, To, Li)
    dense_x = dense_w = None
    if need_x:
        dense_x = chunk.put_x(lay, _matmul_like_x(coef.transpose(-1, -2), grad_num, lay))  # (b, kc, ntw, Li, d)
    if need_w or need_sigma:
        grad_coef = torch.matmul(grad_num, x_halo.transpose(-1, -2))  # (b, kc, ntw, To, Li): dL/dc_oj
        if grad_total is not None:
            grad_coef.add_(grad_total)
        if need_w:
            dense_w = chunk.put_w(lay, torch.linalg.vecdot(grad_coef, gauss, dim=-2))  # (b, kc, ntw, Li)
        if need_sigma:  # c_oj = w_j exp(q_oj / s_o^2), q = -dist^2 / 2
            grad_inv_var[chunk.b, chunk.k] = torch.linalg.vecdot(grad_coef.mul_(coef), q)
    return dense_x, dense_w


def _gauss_t_times(gauss, cols, channels_first):
    """gauss^T @ [cols side by side], (..., Li, sum of widths), in x's memory layout.

    Channels-first x (a ConvNet's (B, d, H, W) seen as (B, H, W, d)) gets a result whose
    feature columns are contiguous ((cols^T @ gauss)^T), so its gradient keeps that layout too.
    """
    if channels_first:
        rhs_t = torch.cat([c.transpose(-1, -2) for c in cols], -2) if len(cols) > 1 else cols[0].transpose(-1, -2)
        return torch.matmul(rhs_t, gauss).transpose(-1, -2)
    rhs = torch.cat(cols, -1) if len(cols) > 1 else cols[0]
    return torch.matmul(gauss.transpose(-1, -2), rhs)


def _matmul_like_x(coef, features, lay):
    """coef @ features, (..., P, Q) @ (..., Q, d) -> (..., P, d).

    A dense map whose features are channels-first in memory ((B, H, W, d) as a permuted view of
    (B, d, H, W), as in a ConvNet) is computed as (features^T @ coef^T)^T, which gives a result
    with the same channels-first memory: the caller's permute back to (B, d, H', W') is then free.
    """
    if lay.dense and features.stride(-1) != 1 and features.stride(-2) == 1:
        return torch.matmul(features.transpose(-1, -2), coef.transpose(-1, -2)).transpose(-1, -2)
    return torch.matmul(coef, features)


def _chunk_steps(x, lay, backward: bool = False) -> tuple[int, int]:
    """(images, tile rows) per chunk, so that one coefficient temporary holds about _CHUNK_ELEMENTS
    (_CHUNK_ELEMENTS_BACKWARD for the backward through M): whole tile rows of the whole batch while one row fits,
    else one row of as many images as fit (a dense map is one row)."""
    if x.device.type != "cpu":
        limit = _CHUNK_ELEMENTS_ACCELERATOR
    elif backward and not torch.compiler.is_compiling():  # compiled, the traced graph as before (inductor plans memory)
        limit = _CHUNK_ELEMENTS_BACKWARD
    else:
        limit = _CHUNK_ELEMENTS
    batch = x.shape[0]
    per_image_row = max(1, lay.ntw * lay.th * lay.tw * max(lay.lh * lay.lw, x.shape[-1]))
    if batch * per_image_row <= limit:
        return batch, max(1, min(lay.nth, limit // (batch * per_image_row)))
    return max(1, limit // per_image_row), 1


def _chunks(batch: int, lay, steps):
    """(images b, tile rows k, first row k0, rows kc) of each chunk, `steps` = `_chunk_steps`'s (images, rows)."""
    batch_step, step = steps
    for b0 in range(0, batch, batch_step):
        for k0 in range(0, lay.nth, step):
            yield slice(b0, b0 + batch_step), slice(k0, k0 + step), k0, min(step, lay.nth - k0)


def _is_one_chunk(batch: int, lay, steps) -> bool:
    """Whether the whole batch and every tile row are one chunk (its results need no full-size buffer)."""
    return steps[0] >= batch and steps[1] >= lay.nth


def _empty_like_layout(chunk: torch.Tensor, shape) -> torch.Tensor:
    """An empty tensor of `shape` whose dims are in memory in the order of `chunk`'s (same rank): a chunk computed
    channels-first (a transposed matmul result) gets a channels-first full buffer."""
    order, inverse = _dims_by_stride(chunk)  # outermost dim first
    return chunk.new_empty([shape[i] for i in order]).permute(inverse)


def tiled_pool_2d(x, weights, sigma, radius, stride, normalize, eps, dense_max=None):
    """x (B, H, W, d), weights (B, H, W), sigma (B, Ho, Wo) -> (B, Ho, Wo, d); see the module doc."""
    plan = plan_tiles(tuple(weights.shape[1:]), tuple(sigma.shape[1:]), radius, stride, dense_max)
    return _TiledPool2d.apply(x, weights, sigma, radius, stride, normalize, eps, plan)
