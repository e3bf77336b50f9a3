"""Tests of the ContextPool operator (`context_pool`, `context_pool_2d`) and its modules.

Layers of checking:
- tests/spec_oracle.py (plain Python loops from the spec) checks the dense reference;
- the dense reference checks the fast path (float64: tight; float32: the flash-attention
  rule, fast's error vs a float64 reference at most 2x the float32 reference's error);
- gradcheck in float64 checks both backward passes (fast's is hand-written).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from contextpool_hf.pooling_contextpool import (
    ContextPool,
    ContextPoolPredictor,
    context_pool,
    context_pool_2d,
    strided_size,
    window_radius,
)

try:  # tests/ on sys.path (pytest's default rootdir-less import) or tests as a package
    import spec_oracle
except ImportError:  # pragma: no cover
    from tests import spec_oracle

IMPLS = ("fast", "reference")


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def make_inputs(
    lead, d, *, dtype=torch.float64, seed=0, sigma_max=8.0, sigma_lo=0.3, w_lo=0.05, out_lead=None
):
    """x (*lead, d), weights (*lead) in [w_lo, 1], sigma (*out_lead) in [sigma_lo, sigma_max]."""
    g = torch.Generator().manual_seed(seed)
    out_lead = lead if out_lead is None else out_lead
    x = torch.randn(*lead, d, generator=g, dtype=torch.float64)
    w = w_lo + (1 - w_lo) * torch.rand(*lead, generator=g, dtype=torch.float64)
    s = sigma_lo + (sigma_max - sigma_lo) * torch.rand(*out_lead, generator=g, dtype=torch.float64)
    return x.to(dtype), w.to(dtype), s.to(dtype)


def run_with_grads(fn, x, w, s, grad_out=None, **kwargs):
    """(y, dL/dx, dL/dw, dL/dsigma) for L = <y, grad_out>."""
    x, w, s = (t.detach().clone().requires_grad_() for t in (x, w, s))
    y = fn(x, w, s, **kwargs)
    if grad_out is None:
        grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(123), dtype=torch.float64)
    grads = torch.autograd.grad(y, (x, w, s), grad_out.to(y.dtype))
    return (y.detach(),) + tuple(grads)


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_close64(got, want, tol=1e-10):
    scale = max(1.0, want.abs().max().item()) if want.numel() else 1.0
    assert max_err(got, want) <= tol * scale, (max_err(got, want), scale)


NAMES = ("y", "dx", "dweights", "dsigma")


def assert_float32_rule(fn, x64, w64, s64, **kwargs):
    """Fast float32 vs float64 reference: error <= 2x (float32 reference's error) + small floor."""
    grad_out = torch.randn(
        fn(x64, w64, s64, implementation="reference", **kwargs).shape,
        generator=torch.Generator().manual_seed(7),
        dtype=torch.float64,
    )
    x32, w32, s32 = (t.float() for t in (x64, w64, s64))
    # the float64 truth is computed on exactly the float32 inputs
    truth = run_with_grads(
        fn, x32.double(), w32.double(), s32.double(), grad_out, implementation="reference", **kwargs
    )
    ref32 = run_with_grads(fn, x32, w32, s32, grad_out, implementation="reference", **kwargs)
    fast32 = run_with_grads(fn, x32, w32, s32, grad_out, implementation="fast", **kwargs)
    for name, t, r, f in zip(NAMES, truth, ref32, fast32, strict=True):
        assert f.dtype == torch.float32
        # dweights and dsigma are sums over every channel and window offset of a token, summed in another
        # order by the fast path: their float32 rounding (about sqrt(terms) ulps) can exceed 2x the
        # reference's error where the reference happens to round well. A wrong formula is off by >= 1e-3.
        floor = (1e-5 if name in ("dweights", "dsigma") else 1e-6) * max(1.0, t.abs().max().item())
        assert max_err(f, t) <= 2 * max_err(r, t) + floor, (name, max_err(f, t), max_err(r, t))


def compare_impls64(fn, x, w, s, tol=1e-10, **kwargs):
    fast = run_with_grads(fn, x, w, s, implementation="fast", **kwargs)
    ref = run_with_grads(fn, x, w, s, implementation="reference", **kwargs)
    for name, f, r in zip(NAMES, fast, ref, strict=True):
        assert f.shape == r.shape, name
        assert torch.isfinite(f).all(), name
        try:
            assert_close64(f, r, tol)
        except AssertionError as err:
            raise AssertionError(f"{name}: {err}") from None
    return fast, ref


def right_padding_mask(batch, n, lengths):
    return (torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]).long()


# --------------------------------------------------------------------------------------
# The reference against the spec's equations (independent Python loops)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("sigma_max,truncation", [(2.0, 1.0), (8.0, 3.0)])  # R = 2 < n, R = 24 >= n
def test_reference_matches_spec_oracle_1d(causal, normalize, sigma_max, truncation):
    n, d = 11, 3
    x, w, s = make_inputs((2, n), d, sigma_max=sigma_max, seed=1)
    mask = right_padding_mask(2, n, [n, 7])
    mask[0, 3] = 0  # a hole in the middle too
    kw = dict(causal=causal, sigma_max=sigma_max, truncation=truncation, normalize=normalize)
    got = context_pool(x, w, s, attention_mask=mask, implementation="reference", **kw)
    want = spec_oracle.pool_1d(
        x, w, s, radius=window_radius(sigma_max, truncation), causal=causal, normalize=normalize, mask=mask
    )
    assert_close64(got, want, 1e-12)


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("normalize", [True, False])
def test_reference_matches_spec_oracle_2d(stride, normalize):
    height, width, d = 7, 5, 2
    sigma_max, truncation = 1.5, 1.0  # R = 2: the square window is smaller than the grid
    out = (2, strided_size(height, stride), strided_size(width, stride))
    x, w, s = make_inputs((2, height, width), d, sigma_max=sigma_max, out_lead=out, seed=2)
    mask = torch.ones(2, height, width, dtype=torch.long)
    mask[1, :, 3:] = 0
    kw = dict(stride=stride, sigma_max=sigma_max, truncation=truncation, normalize=normalize)
    got = context_pool_2d(x, w, s, attention_mask=mask, implementation="reference", **kw)
    want = spec_oracle.pool_2d(
        x, w, s, radius=window_radius(sigma_max, truncation), stride=stride, normalize=normalize, mask=mask
    )
    assert_close64(got, want, 1e-12)


def test_reference_matches_spec_oracle_2d_wide_window():
    x, w, s = make_inputs((1, 4, 6), 2, out_lead=(1, 2, 3), seed=3)  # R = 24 covers the grid
    got = context_pool_2d(x, w, s, stride=2, implementation="reference")
    assert_close64(got, spec_oracle.pool_2d(x, w, s, radius=24, stride=2), 1e-12)


# --------------------------------------------------------------------------------------
# Fast == reference: outputs and every gradient
# --------------------------------------------------------------------------------------

# (lead, d, sigma_max, truncation): n = 1, 2, 7 (R >= n), 97, 1025; odd d; grouped
SHAPES_1D = [
    ((2, 1), 3, 8.0, 3.0),
    ((3, 2), 5, 8.0, 3.0),
    ((2, 7), 1, 8.0, 3.0),
    ((2, 97), 7, 8.0, 3.0),
    ((2, 97), 3, 2.0, 1.0),
    ((1, 1025), 3, 8.0, 3.0),
    ((2, 3, 7), 5, 8.0, 3.0),  # grouped (batch, groups, n)
    ((2, 2, 97), 3, 4.0, 2.0),
]


def _mask_for(lead, with_padding):
    """Row 0 full; last row has an all-padding run; with >= 2 rows, row 1 is all padding."""
    if not with_padding:
        return None
    batch, n = lead[0], lead[-1]
    mask = torch.ones(batch, n, dtype=torch.long)
    if batch >= 2:
        mask[1] = 0
    mask[-1, n // 2 :] = 0
    return mask


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lead,d,sigma_max,truncation", SHAPES_1D)
def test_fast_matches_reference_float64_1d(lead, d, sigma_max, truncation, causal):
    for with_padding, normalize in [(False, True), (True, True), (True, False)]:
        x, w, s = make_inputs(lead, d, sigma_max=sigma_max, seed=len(lead) + lead[-1])
        kw = dict(causal=causal, sigma_max=sigma_max, truncation=truncation, normalize=normalize)
        compare_impls64(context_pool, x, w, s, attention_mask=_mask_for(lead, with_padding), **kw)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lead,d,sigma_max,truncation", SHAPES_1D)
def test_fast_matches_reference_float32_rule_1d(lead, d, sigma_max, truncation, causal):
    x, w, s = make_inputs(lead, d, sigma_max=sigma_max, seed=11 + lead[-1])
    kw = dict(causal=causal, sigma_max=sigma_max, truncation=truncation, attention_mask=_mask_for(lead, True))
    assert_float32_rule(context_pool, x, w, s, **kw)


# (batch, H, W, d, stride, sigma_max, truncation): odd grids, stride 1 and 2, R >= grid and R < grid
SHAPES_2D = [
    (2, 1, 1, 3, 1, 8.0, 3.0),
    (2, 5, 7, 3, 1, 8.0, 3.0),
    (2, 5, 7, 3, 2, 8.0, 3.0),
    (1, 9, 6, 5, 2, 1.5, 2.0),
    (1, 13, 11, 1, 1, 2.0, 1.5),
    (2, 8, 8, 2, 3, 3.0, 1.0),
    (1, 33, 17, 3, 2, 4.0, 3.0),
    (1, 1, 9, 2, 2, 2.0, 2.0),  # a single row
    (2, 10, 3, 4, 3, 2.0, 2.0),  # stride 3, width below the window
    (1, 7, 7, 3, 3, 0.6, 1.0),  # 2R + 1 < stride: windows of neighbouring outputs never overlap
    (2, 17, 16, 6, 1, 2.0, 2.0),  # the ViT/ResNet window (R = 4) on a map larger than it
]


# Forcing each 2-D path: the dense form (one tile) and the tiled form with halos, whose tile
# borders every shape above crosses (tiles of 2 and 3 outputs), in one or many chunks.
PATHS_2D = {
    "dense": dict(_DENSE_MAX_COEFS=10**12),
    "tiled": dict(_DENSE_MAX_COEFS=0, _TILE_SIDE=3, _TILE_SIDE_STRIDED=2),
    "tiled-chunked": dict(_DENSE_MAX_COEFS=0, _TILE_SIDE=3, _TILE_SIDE_STRIDED=2, _CHUNK_ELEMENTS=1),
    "tiled-8": dict(_DENSE_MAX_COEFS=0),
}


@pytest.fixture(params=list(PATHS_2D))
def path_2d(request, monkeypatch):
    import contextpool_hf.pooling_2d_contextpool as pooling_2d

    for name, value in PATHS_2D[request.param].items():
        monkeypatch.setattr(pooling_2d, name, value)
    return request.param


@pytest.mark.parametrize("batch,height,width,d,stride,sigma_max,truncation", SHAPES_2D)
def test_fast_matches_reference_2d(path_2d, batch, height, width, d, stride, sigma_max, truncation):
    out = (batch, strided_size(height, stride), strided_size(width, stride))
    x, w, s = make_inputs((batch, height, width), d, sigma_max=sigma_max, out_lead=out, seed=height * width)
    mask = torch.ones(batch, height, width, dtype=torch.long)
    mask[-1, height // 2 :, :] = 0  # padded rows of patches
    kw = dict(stride=stride, sigma_max=sigma_max, truncation=truncation, attention_mask=mask)
    for normalize in (True, False):
        compare_impls64(context_pool_2d, x, w, s, normalize=normalize, **kw)
    assert_float32_rule(context_pool_2d, x, w, s, **kw)


# --------------------------------------------------------------------------------------
# gradcheck (float64) on both implementations
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", IMPLS)
@pytest.mark.parametrize(
    "case",
    ["1d", "1d-causal", "1d-grouped-causal", "1d-unnormalized", "2d-stride2", "2d-stride1", "2d-tiled-stride2",
     "2d-tiled-stride1"],
)
def test_gradcheck(monkeypatch, implementation, case):
    if "tiled" in case:  # 2x2 / 1x1 output tiles with halos instead of one dense tile
        import contextpool_hf.pooling_2d_contextpool as pooling_2d

        for name, value in PATHS_2D["tiled"].items():
            monkeypatch.setattr(pooling_2d, name, value)
    if case.startswith("1d"):
        lead = (2, 3, 6) if "grouped" in case else (2, 6)
        x, w, s = make_inputs(lead, 2, sigma_max=2.0, sigma_lo=0.6, w_lo=0.2, seed=5)
        mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
        kw = dict(
            causal="causal" in case, sigma_max=2.0, truncation=1.5, normalize="unnormalized" not in case
        )

        def fn(x, w, s):
            return context_pool(x, w, s, attention_mask=mask, implementation=implementation, **kw)
    else:
        stride = 2 if "stride2" in case else 1  # also "2d-tiled-*"
        out = (1, strided_size(5, stride), strided_size(4, stride))
        x, w, s = make_inputs((1, 5, 4), 2, sigma_max=2.0, sigma_lo=0.6, w_lo=0.2, out_lead=out, seed=6)

        def fn(x, w, s):
            return context_pool_2d(
                x, w, s, stride=stride, sigma_max=2.0, truncation=1.0, implementation=implementation
            )

    inputs = tuple(t.detach().requires_grad_() for t in (x, w, s))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


# --------------------------------------------------------------------------------------
# Causality and padding invariance
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", IMPLS)
def test_causal_output_ignores_the_future(implementation):
    n, d = 20, 3
    x, w, s = make_inputs((2, n), d, seed=8)
    kw = dict(causal=True, implementation=implementation)
    y = context_pool(x, w, s, **kw)
    for i in (0, 5, 13, n - 2):
        x2, w2, s2 = x.clone(), w.clone(), s.clone()
        x2[:, i + 1 :] = 100 * torch.randn_like(x2[:, i + 1 :])
        w2[:, i + 1 :] = torch.rand_like(w2[:, i + 1 :])
        s2[:, i + 1 :] = 0.5
        y2 = context_pool(x2, w2, s2, **kw)
        assert torch.equal(y[:, : i + 1], y2[:, : i + 1])
        # and no gradient flows from y_i to any later token
        gx, gw, gs = run_with_grads(context_pool, x, w, s, grad_out=_one_hot_grad(y, i), **kw)[1:]
        assert gx[:, i + 1 :].abs().max() == 0 and gw[:, i + 1 :].abs().max() == 0
        assert gs[:, i + 1 :].abs().max() == 0 and gx[:, i].abs().max() > 0


def _one_hot_grad(y, i):
    grad = torch.zeros(y.shape, dtype=torch.float64)
    grad[:, i] = 1.0
    return grad


@pytest.mark.parametrize("implementation", IMPLS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("grouped", [False, True])
def test_padding_invariance(implementation, causal, side, grouped):
    """A padded batch pooled at once equals each sequence pooled alone, on real tokens."""
    n, d, lengths = 30, 4, [30, 17, 1]
    groups = (2,) if grouped else ()
    x, w, s = make_inputs((3,) + groups + (n,), d, seed=9)
    x = x * 1e3  # make any leak from padding obvious
    mask = right_padding_mask(3, n, lengths)
    if side == "left":
        mask = mask.flip(-1)
    kw = dict(causal=causal, implementation=implementation)
    y = context_pool(x, w, s, attention_mask=mask, **kw)
    for b in range(len(lengths)):
        real = mask[b].bool()
        alone = context_pool(
            x[b : b + 1, ..., real, :], w[b : b + 1, ..., real], s[b : b + 1, ..., real], **kw
        )
        assert_close64(y[b : b + 1, ..., real, :], alone, 1e-12)


def test_padding_invariance_2d():
    x, w, s = make_inputs((2, 9, 9), 3, seed=10)
    mask = torch.ones(2, 9, 9, dtype=torch.long)
    mask[1, 6:, :] = 0
    mask[1, :, 5:] = 0
    y = context_pool_2d(x, w, s, attention_mask=mask)
    alone = context_pool_2d(
        x[1:, :6, :5].contiguous(), w[1:, :6, :5].contiguous(), s[1:, :6, :5].contiguous()
    )
    assert_close64(y[1:, :6, :5], alone, 1e-12)


# --------------------------------------------------------------------------------------
# Limits
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", IMPLS)
@pytest.mark.parametrize("causal", [False, True])
def test_tiny_sigma_is_identity(implementation, causal):
    x, w, s = make_inputs((2, 40), 5, seed=12, w_lo=0.2)
    mask = right_padding_mask(2, 40, [40, 25])
    y = context_pool(
        x, w, torch.full_like(s, 1e-3), attention_mask=mask, causal=causal, implementation=implementation
    )
    real = mask.bool()
    # y_i = w_i x_i / (eps + w_i): x_i up to the normalisation's eps
    assert_close64(y[real], x[real], 1e-5)
    assert y[~real].abs().max() == 0  # padded, zero-weight tokens pool nothing
    y = context_pool(
        x, w, torch.full_like(s, 1e-3), normalize=False, causal=causal, implementation=implementation
    )
    assert_close64(y, w.unsqueeze(-1) * x, 1e-12)


@pytest.mark.parametrize("implementation", IMPLS)
@pytest.mark.parametrize("causal", [False, True])
def test_huge_sigma_is_weighted_average(implementation, causal):
    n = 30
    x, w, s = make_inputs((2, n), 4, seed=13)
    mask = right_padding_mask(2, n, [n, 19])
    big = 1e5  # g_ij >= exp(-n^2 / (2 big^2)) ~ 1 - 5e-8; R = 1000 covers the whole sequence
    kw = dict(
        sigma_max=big, truncation=0.01, causal=causal, implementation=implementation, attention_mask=mask
    )
    wm = w * mask
    if causal:  # window of token i is 0..i
        num = torch.cumsum(wm.unsqueeze(-1) * x, dim=1)
        den = torch.cumsum(wm, dim=1).unsqueeze(-1)
    else:
        num = (wm.unsqueeze(-1) * x).sum(1, keepdim=True).expand_as(x)
        den = wm.sum(1, keepdim=True).unsqueeze(-1)
    y = context_pool(x, w, torch.full_like(s, big), **kw)
    real = mask.bool()
    assert_close64(y[real], (num / (den + 1e-6))[real], 1e-6)
    y = context_pool(x, w, torch.full_like(s, big), normalize=False, **kw)
    assert_close64(y, num, 1e-6)


def test_unnormalized_is_the_plain_sum():
    x, w, s = make_inputs((1, 12), 2, seed=14)
    for implementation in IMPLS:
        got = context_pool(x, w, s, normalize=False, implementation=implementation)
        assert_close64(got, spec_oracle.pool_1d(x, w, s, radius=24, normalize=False), 1e-12)


# --------------------------------------------------------------------------------------
# Memory: the fast path never materialises n x n or n x (2R+1) x d
# --------------------------------------------------------------------------------------


class _LargestOutput(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def _largest_tensor(fn, x, w, s, **kw):
    x, w, s = (t.detach().clone().requires_grad_() for t in (x, w, s))
    with _LargestOutput() as probe:
        y = fn(x, w, s, **kw)
        y.backward(torch.ones_like(y))
    return probe.largest


def test_fast_path_1d_memory_is_linear_and_never_quadratic():
    """Blocked 1-D path: its largest tensor is the padded x or an output, never n x n or n x (2R+1) x d."""
    d, radius = 16, 24
    sizes = {}
    for n in (600, 1200):
        x, w, s = make_inputs((2, n), d, dtype=torch.float32)
        sizes[n] = _largest_tensor(context_pool, x, w, s, causal=False)
        quadratic = 2 * n * n
        per_offset = 2 * n * (2 * radius + 1) * d
        assert sizes[n] <= min(quadratic, per_offset) / 4, (n, sizes[n])
    assert sizes[1200] <= 2.2 * sizes[600], sizes


def test_fast_path_2d_memory_dense_only_on_small_maps_and_linear_when_tiled():
    """Dense 2-D form: at most batch * _DENSE_MAX_COEFS coefficients. Tiled form (large maps):
    nothing near n_out x n_in, and the largest tensor grows like the map, not its square."""
    import contextpool_hf.pooling_2d_contextpool as pooling_2d

    x, w, s = make_inputs((2, 20, 20), 4, dtype=torch.float32, out_lead=(2, 10, 10), sigma_max=2.0)
    assert pooling_2d.plan_tiles((20, 20), (10, 10), 4, 2)[0] == (10, 20, 0)  # dense
    assert _largest_tensor(context_pool_2d, x, w, s, stride=2, sigma_max=2.0, truncation=2.0) <= 2 * 100 * 400
    sizes = {}
    for side in (48, 96):
        x, w, s = make_inputs((1, side, side), 4, dtype=torch.float32, sigma_max=2.0)
        assert pooling_2d.plan_tiles((side, side), (side, side), 4, 1)[0][2] == 4  # tiled, halo R = 4
        sizes[side] = _largest_tensor(context_pool_2d, x, w, s, sigma_max=2.0, truncation=2.0)
        assert sizes[side] <= side**4 / 20, (side, sizes[side])  # n_out x n_in is side^4
    assert sizes[96] <= 4.5 * sizes[48], sizes


def test_fast_path_2d_dense_temporaries_do_not_grow_with_the_batch():
    """A dense map's coefficients are about _CHUNK_ELEMENTS per temporary at any batch: past that the batch is
    pooled in chunks of images (here 16 images of a 16x16 -> 8x8 map's 16384 coefficients), not all at once."""
    import contextpool_hf.pooling_2d_contextpool as pooling_2d

    per_image = 64 * 256
    for batch in (8, 64):
        x, w, s = make_inputs((batch, 16, 16), 4, dtype=torch.float32, out_lead=(batch, 8, 8), sigma_max=2.0)
        largest = _largest_tensor(context_pool_2d, x, w, s, stride=2, sigma_max=2.0, truncation=2.0)
        assert largest <= max(pooling_2d._CHUNK_ELEMENTS, per_image), (batch, largest)
    assert 64 * per_image > 2 * pooling_2d._CHUNK_ELEMENTS  # the larger batch is chunked


def test_fast_path_2d_backward_through_m_takes_smaller_chunks():
    """The backward through M (few channels against a large halo: a ResNet stem's 16x16 -> 8x8 map) holds about
    _CHUNK_ELEMENTS_BACKWARD coefficients per temporary, half the forward's chunk: its temporaries sit beside
    the input's full-size gradient, where a ResNet step's memory peaks."""
    import contextpool_hf.pooling_2d_contextpool as pooling_2d

    per_image, batch = 64 * 256, 32
    x, w, s = make_inputs((batch, 16, 16), 4, dtype=torch.float32, out_lead=(batch, 8, 8), sigma_max=2.0)
    x, w, s = (t.detach().clone().requires_grad_() for t in (x, w, s))
    y = context_pool_2d(x, w, s, stride=2, sigma_max=2.0, truncation=2.0)
    with _LargestOutput() as probe:
        y.backward(torch.ones_like(y))
    assert probe.largest <= max(pooling_2d._CHUNK_ELEMENTS_BACKWARD, per_image, x.numel()), probe.largest
    assert pooling_2d._CHUNK_ELEMENTS_BACKWARD < batch * per_image  # the backward is chunked here


def _peak_bytes(fn) -> int:
    """Peak bytes allocated while fn() runs, above the level before it: the benchmarks' measure
    (`scripts/bench_device.peak_bytes`: the profiler's allocation events of PyTorch's CPU allocator, deterministic)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    try:
        import bench_device
    finally:
        sys.path.pop(0)
    return bench_device.peak_bytes(fn)


def test_dense_2d_backward_holds_one_coefficient_temporary_and_one_input_sized_buffer():
    """The dense 2-D backward (a ResNet stem's shape: 16x16 -> 8x8, channels-first, more outputs than channels)
    frees the Gaussian before it forms the input's gradient, and forms the weights' gradient inside M: at most the
    coefficients and about two input-sized tensors are alive at once (before: the coefficients, M, the input's
    gradient and a product of M and x, four)."""
    torch.manual_seed(0)
    batch, side, d = 4, 16, 32
    x = torch.randn(batch, d, side, side).permute(0, 2, 3, 1).requires_grad_()  # channels-first memory
    w = torch.rand(batch, side, side).requires_grad_()
    s = (1 + torch.rand(batch, side // 2, side // 2)).requires_grad_()
    y = context_pool_2d(x, w, s, stride=2, sigma_max=2.0, truncation=2.0)
    grad_y = torch.randn(y.shape)
    coefficient_bytes = batch * (side // 2) ** 2 * side**2 * 4
    input_bytes = x.numel() * 4
    peak = _peak_bytes(lambda: torch.autograd.grad(y, (x, w, s), grad_y))
    assert peak <= coefficient_bytes + 2 * input_bytes, (peak, coefficient_bytes, input_bytes)


# --------------------------------------------------------------------------------------
# Bad input: ValueError naming the argument
# --------------------------------------------------------------------------------------


def _good_1d():
    x, w, s = make_inputs((2, 5), 3, dtype=torch.float32)
    return dict(x=x, weights=w, sigma=s)


def _good_2d():
    x, w, s = make_inputs((2, 5, 4), 3, dtype=torch.float32, out_lead=(2, 3, 2))
    return dict(x=x, weights=w, sigma=s, stride=2)


def _with(base, **changes):
    def build():
        kw = base()
        for key, value in changes.items():
            kw[key] = value(kw) if callable(value) else value
        return kw

    return build


def _set(name, index, value):
    def change(kw):
        t = kw[name].clone()
        t[index] = value
        return t

    return change


BAD_1D = [
    ("x", _with(_good_1d, x=lambda kw: kw["x"][0])),
    ("x", _with(_good_1d, x=lambda kw: kw["x"][None, None])),
    ("x", _with(_good_1d, x=[[1.0]])),
    ("x", _with(_good_1d, x=lambda kw: kw["x"].long())),
    ("weights", _with(_good_1d, weights=lambda kw: kw["weights"][:, :4])),
    ("weights", _with(_good_1d, weights=lambda kw: kw["weights"][..., None])),
    ("sigma", _with(_good_1d, sigma=lambda kw: kw["sigma"][:1])),
    ("sigma", _with(_good_1d, sigma=lambda kw: kw["sigma"][0])),
    ("attention_mask", _with(_good_1d, attention_mask=torch.ones(2, 4))),
    ("attention_mask", _with(_good_1d, attention_mask=torch.ones(1, 5))),
    ("attention_mask", _with(_good_1d, attention_mask=torch.full((2, 5), 2))),
    ("attention_mask", _with(_good_1d, attention_mask=torch.full((2, 5), 0.5))),
    ("sigma", _with(_good_1d, sigma=_set("sigma", (0, 1), 0.0))),
    ("sigma", _with(_good_1d, sigma=_set("sigma", (0, 1), -1.0))),
    ("sigma", _with(_good_1d, sigma=_set("sigma", (1, 2), 8.5))),
    ("sigma", _with(_good_1d, sigma=_set("sigma", (1, 2), 3.0), sigma_max=2.0)),
    ("weights", _with(_good_1d, weights=_set("weights", (0, 0), -0.1))),
    ("weights", _with(_good_1d, weights=_set("weights", (0, 0), 1.5))),
    ("x", _with(_good_1d, x=_set("x", (1, 2, 0), math.nan))),
    ("x", _with(_good_1d, x=_set("x", (1, 2, 0), math.inf))),
    ("weights", _with(_good_1d, weights=_set("weights", (0, 0), math.nan))),
    ("sigma", _with(_good_1d, sigma=_set("sigma", (0, 0), math.nan))),
    ("sigma", _with(_good_1d, sigma=_set("sigma", (0, 0), math.inf))),
    ("implementation", _with(_good_1d, implementation="flash")),
    ("sigma_max", _with(_good_1d, sigma_max=0.0)),
    ("sigma_max", _with(_good_1d, sigma_max=math.inf)),
    ("sigma_max", _with(_good_1d, sigma_max=math.nan)),
    ("sigma_max", _with(_good_1d, sigma_max="8")),
    ("truncation", _with(_good_1d, truncation=0.0)),
    ("truncation", _with(_good_1d, truncation=-1.0)),
    ("truncation", _with(_good_1d, truncation=math.nan)),
]

BAD_2D = [
    ("x", _with(_good_2d, x=lambda kw: kw["x"][0])),
    ("weights", _with(_good_2d, weights=lambda kw: kw["weights"][:, :4])),
    ("sigma", _with(_good_2d, sigma=lambda kw: kw["weights"].clone())),  # stride-1 shape with stride 2
    ("attention_mask", _with(_good_2d, attention_mask=torch.ones(2, 5))),
    ("attention_mask", _with(_good_2d, attention_mask=torch.full((2, 5, 4), 3))),
    ("stride", _with(_good_2d, stride=0)),
    ("stride", _with(_good_2d, stride=-2)),
    ("stride", _with(_good_2d, stride=1.5)),
    ("stride", _with(_good_2d, stride=True)),
    ("sigma", _with(_good_2d, sigma=_set("sigma", (0, 0, 0), 0.0))),
    ("weights", _with(_good_2d, weights=_set("weights", (0, 0, 0), 2.0))),
    ("x", _with(_good_2d, x=_set("x", (0, 0, 0, 0), -math.inf))),
    ("implementation", _with(_good_2d, implementation="dense")),
    ("truncation", _with(_good_2d, truncation=math.inf)),
]


@pytest.mark.parametrize("name,build", BAD_1D, ids=[f"{i}-{n}" for i, (n, _) in enumerate(BAD_1D)])
def test_bad_input_1d_names_the_argument(name, build):
    kw = build()
    with pytest.raises(ValueError, match=rf"^{name}\b(?!_)"):
        context_pool(kw.pop("x"), kw.pop("weights"), kw.pop("sigma"), **kw)


@pytest.mark.parametrize("name,build", BAD_2D, ids=[f"{i}-{n}" for i, (n, _) in enumerate(BAD_2D)])
def test_bad_input_2d_names_the_argument(name, build):
    kw = build()
    with pytest.raises(ValueError, match=rf"^{name}\b(?!_)"):
        context_pool_2d(kw.pop("x"), kw.pop("weights"), kw.pop("sigma"), **kw)


def test_good_inputs_pass_the_checks():
    for build, fn in ((_good_1d, context_pool), (_good_2d, context_pool_2d)):
        kw = build()
        fn(kw.pop("x"), kw.pop("weights"), kw.pop("sigma"), **kw)
    kw = _good_1d()  # sigma exactly sigma_max, weights exactly 0 and 1, a bool mask
    kw["sigma"][0, 0], kw["weights"][0, 0], kw["weights"][0, 1] = 8.0, 0.0, 1.0
    context_pool(kw["x"], kw["weights"], kw["sigma"], attention_mask=torch.ones(2, 5, dtype=torch.bool))


def test_module_rejects_bad_config():
    with pytest.raises(ValueError, match="sigma_min"):
        ContextPool(8, sigma_min=2.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="causal"):
        ContextPool(8, spatial_dims=2, causal=True)
    with pytest.raises(ValueError, match="stride"):
        ContextPool(8, stride=2)
    with pytest.raises(ValueError, match="implementation"):
        ContextPool(8, implementation="flash")
    with pytest.raises(ValueError, match="3-D input"):
        ContextPool(8)(torch.randn(8))


# --------------------------------------------------------------------------------------
# Low precision
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("implementation", IMPLS)
def test_low_precision_runs_in_float32_and_returns_input_dtype(dtype, implementation):
    x, w, s = make_inputs((2, 33), 6, dtype=dtype, seed=15)
    x, w, s = (t.requires_grad_() for t in (x, w, s))
    y = context_pool(x, w, s, causal=True, implementation=implementation)
    assert y.dtype == dtype
    y.float().square().sum().backward()
    assert x.grad.dtype == w.grad.dtype == s.grad.dtype == dtype
    want = context_pool(x.detach().float(), w.detach().float(), s.detach().float(), causal=True)
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    assert max_err(y, want) <= tol * max(1.0, want.abs().max().item())
    # 2-D too
    x2, w2, s2 = make_inputs((1, 6, 5), 4, dtype=dtype, out_lead=(1, 3, 3))
    assert context_pool_2d(x2, w2, s2, stride=2, implementation=implementation).dtype == dtype


# Every fast path of the operator, with inputs that reach it: the blocked 1-D plan (long), the dense 1-D block
# (short), causal 1-D, the dense 2-D form (small grid), tiles (large grid), strided tiles (a ConvNet downsampling).
AUTOCAST_CASES = {
    "1-D blocked": (lambda x, w, s, **kw: context_pool(x, w, s, **kw), (2, 300), 6, None),
    "1-D dense": (lambda x, w, s, **kw: context_pool(x, w, s, **kw), (2, 40), 6, None),
    "1-D causal": (lambda x, w, s, **kw: context_pool(x, w, s, causal=True, **kw), (2, 300), 6, None),
    "2-D dense": (lambda x, w, s, **kw: context_pool_2d(x, w, s, sigma_max=2.0, truncation=2.0, **kw), (2, 8, 8), 5, None),
    "2-D tiles": (lambda x, w, s, **kw: context_pool_2d(x, w, s, sigma_max=2.0, truncation=2.0, **kw), (2, 32, 32), 5,
                  None),
    "2-D strided": (lambda x, w, s, **kw: context_pool_2d(x, w, s, stride=2, sigma_max=2.0, truncation=2.0, **kw),
                    (2, 32, 32), 5, (2, 16, 16)),
}  # fmt: skip


# the backward inside the autocast region for the fast path only: the reference's backward is plain autograd,
# in autocast's dtypes there like any model's
@pytest.mark.parametrize(
    "case, implementation, backward_inside",
    [(case, impl, inside) for case in AUTOCAST_CASES for impl in IMPLS for inside in (False, True)
     if not (inside and impl == "reference")],
)  # fmt: skip
def test_autocast_leaves_the_operator_in_float32(case, implementation, backward_inside):
    """Under torch.autocast (Trainer's bf16=True) the operator still computes in float32: the same output and
    gradients as without autocast, also when the fast path's backward runs inside the autocast region. Autocast
    once ran the fast paths' matmuls in bf16, and the 2-D backward then met float32 and bf16 tensors and raised."""
    fn, lead, d, out_lead = AUTOCAST_CASES[case]
    sigma_max = 2.0 if case.startswith("2-D") else 8.0
    x, w, s = make_inputs(lead, d, dtype=torch.float32, seed=21, sigma_max=sigma_max, out_lead=out_lead)
    want = run_with_grads(fn, x, w, s, implementation=implementation)
    x, w, s = (t.detach().clone().requires_grad_() for t in (x, w, s))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fn(x, w, s, implementation=implementation)
        grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(123), dtype=torch.float64).float()
        grads = torch.autograd.grad(y, (x, w, s), grad_out) if backward_inside else None
    if grads is None:
        grads = torch.autograd.grad(y, (x, w, s), grad_out)
    assert y.dtype == torch.float32
    for name, got, ref in zip(("y", "dx", "dw", "dsigma"), (y.detach(), *grads), want, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6, msg=f"{case} {implementation}: {name}")


# --------------------------------------------------------------------------------------
# torch.compile through the fast path
# --------------------------------------------------------------------------------------


def test_compile_fullgraph_forward_backward():
    torch._dynamo.reset()
    x, w, s = make_inputs((2, 2, 19), 5, dtype=torch.float32, seed=16, sigma_max=4.0)
    mask = right_padding_mask(2, 19, [19, 11])

    def fn(x, w, s):
        y1 = context_pool(x, w, s, attention_mask=mask, causal=True, sigma_max=4.0)
        y2 = context_pool_2d(
            x[:, 0, :16].reshape(2, 4, 4, 5),
            w[:, 0, :16].reshape(2, 4, 4),
            s[:, 0, ::2][:, :4].reshape(2, 2, 2),
            stride=2,
        )
        return y1.square().sum() + y2.square().sum()

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    grads = []
    for f in (fn, compiled):
        inputs = tuple(t.detach().clone().requires_grad_() for t in (x, w, s))
        loss = f(*inputs)
        grads.append((loss.detach(),) + torch.autograd.grad(loss, inputs))
    for eager, comp in zip(*grads, strict=True):
        torch.testing.assert_close(comp, eager, rtol=1e-5, atol=1e-6)


def test_compile_fullgraph_module():
    torch._dynamo.reset()
    torch.manual_seed(0)
    pool = ContextPool(8, groups=2, causal=True, sigma_max=3.0)
    hidden = torch.randn(2, 13, 8)
    mask = right_padding_mask(2, 13, [13, 9])
    compiled = torch.compile(pool, backend="aot_eager", fullgraph=True)
    out = compiled(hidden, mask)
    out.square().sum().backward()
    torch.testing.assert_close(out, pool(hidden, mask), rtol=1e-5, atol=1e-6)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in pool.parameters())


# --------------------------------------------------------------------------------------
# The ContextPool module and its predictor
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("causal", [False, True])
def test_module_shapes_sigma_range_and_padding_weights(groups, causal):
    torch.manual_seed(1)
    pool = ContextPool(12, groups=groups, sigma_min=0.5, sigma_max=6.0, causal=causal)
    hidden = torch.randn(3, 17, 12) * 5  # large logits push sigma towards both ends
    mask = right_padding_mask(3, 17, [17, 9, 4])
    out = pool(hidden, mask)
    assert out.shape == ((3, 17, 12) if groups == 1 else (3, groups, 17, 12))
    assert pool.last_sigma.shape == (3, groups, 17)
    assert pool.last_sigma.min() >= 0.5 and pool.last_sigma.max() <= 6.0
    weights, sigma, state = pool.predict(hidden, mask.bool())
    assert weights.shape == sigma.shape == (3, groups, 17)
    assert (weights[~mask.bool().unsqueeze(1).expand_as(weights)] == 0).all()  # exactly 0
    assert (weights[mask.bool().unsqueeze(1).expand_as(weights)] > 0).all()
    assert (state is not None) == causal
    # padding content must not change real tokens' outputs
    garbage = hidden.clone()
    garbage[~mask.bool()] = 1e4
    torch.testing.assert_close(pool(garbage, mask)[..., :4, :], out[..., :4, :], rtol=0, atol=0)


def test_module_2d_strided_shapes():
    torch.manual_seed(2)
    pool = ContextPool(6, groups=2, spatial_dims=2, stride=2, sigma_max=3.0)
    out = pool(torch.randn(2, 7, 5, 6))
    assert out.shape == (2, 2, 4, 3, 6)
    assert pool.last_sigma.shape == (2, 2, 4, 3)
    assert ContextPool(6, spatial_dims=2)(torch.randn(1, 4, 4, 6)).shape == (1, 4, 4, 6)


@pytest.mark.parametrize("width", [None, 5])
def test_causal_predictor_never_sees_the_future(width):
    torch.manual_seed(3)
    predictor = ContextPoolPredictor(8, groups=2, causal=True, width=width)
    hidden = torch.randn(2, 15, 8)
    a, b, _ = predictor(hidden)
    future = hidden.clone()
    future[:, 9:] = torch.randn(2, 6, 8) * 10
    a2, b2, _ = predictor(future)
    assert torch.equal(a[..., :9], a2[..., :9]) and torch.equal(b[..., :9], b2[..., :9])
    assert not torch.equal(a[..., 9:], a2[..., 9:])
    # the whole causal module too
    pool = ContextPool(8, causal=True, sigma_max=3.0)
    torch.testing.assert_close(pool(hidden)[:, :9], pool(future)[:, :9], rtol=0, atol=0)


def test_causal_predictor_incremental_equals_full():
    torch.manual_seed(4)
    pool = ContextPool(8, groups=2, causal=True, kernel_size=5)
    hidden = torch.randn(2, 14, 8)
    w_full, s_full, state_full = pool.predict(hidden)
    pieces, state = [], None
    for start, stop in [(0, 5), (5, 6), (6, 7), (7, 14)]:  # a prompt, single tokens, a chunk
        w, s, state = pool.predict(hidden[:, start:stop], conv_state=state)
        pieces.append((w, s))
    torch.testing.assert_close(torch.cat([p[0] for p in pieces], -1), w_full, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.cat([p[1] for p in pieces], -1), s_full, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(state, state_full)
    assert state.shape == (2, 4, 8)  # kernel - 1 past inputs, token-major
    # a single first token (shorter than the conv state) works too
    w1, _, state1 = pool.predict(hidden[:, :1])
    torch.testing.assert_close(w1, w_full[..., :1], rtol=1e-6, atol=1e-6)
    assert state1.shape == (2, 4, 8)


@pytest.mark.parametrize(
    "kwargs,shape",
    [
        (dict(groups=1), (2, 11, 8)),
        (dict(groups=2, causal=True, predictor_width=4), (2, 11, 8)),
        (dict(groups=2, spatial_dims=2, stride=2), (2, 5, 6, 8)),
    ],
)
def test_every_parameter_gets_a_finite_nonzero_gradient(kwargs, shape):
    torch.manual_seed(5)
    pool = ContextPool(8, sigma_max=3.0, **kwargs)
    hidden = torch.randn(shape)
    out = pool(hidden)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in pool.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# --------------------------------------------------------------------------------------
# Tiling: the fast path splits outputs into cache-sized tiles along the first axis; force
# tiny tiles so that tile borders, causal windows and strided 2-D rows are all crossed.
# --------------------------------------------------------------------------------------


def _assert_fast_1d_equals_reference(x, w, s, mask, causal):
    """The fast 1-D path equals the dense reference (float64, sigma_max 3), outputs and every gradient,
    normalised and not."""
    for normalize in (True, False):
        results = []
        for impl in ("fast", "reference"):
            y = context_pool(x, w, s, attention_mask=mask, causal=causal, sigma_max=3.0, normalize=normalize,
                             implementation=impl)
            grads = torch.autograd.grad((y * y.cos()).sum(), (x, w, s))
            results.append((y, *grads))
        for fast, ref in zip(*results, strict=True):
            torch.testing.assert_close(fast, ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("block, chunk_elements", [(64, 1), (64, 40_000), (8, 1), (8, 1_000), (5, 10**9)])
@pytest.mark.parametrize("causal", [False, True])
def test_fast_chunked_1d_matches_reference(monkeypatch, block, chunk_elements, causal):
    """1-D blocks of T tokens in chunks: partial last blocks and chunks, and windows spanning
    several blocks (2R > T, so each gradient window is added back in several pieces)."""
    import contextpool_hf.pooling_1d_contextpool as pooling_1d

    monkeypatch.setattr(pooling_1d, "_BLOCK_1D", block)
    monkeypatch.setattr(pooling_1d, "_CHUNK_ELEMENTS", chunk_elements)
    gen = torch.Generator().manual_seed(3)
    n = 203
    x = torch.randn(2, n, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.rand(2, n, dtype=torch.float64, generator=gen, requires_grad=True)
    s = (torch.rand(2, n, dtype=torch.float64, generator=gen) * 2.5 + 0.2).requires_grad_()
    mask = torch.ones(2, n)
    mask[1, 150:] = 0
    _assert_fast_1d_equals_reference(x, w, s, mask, causal)


@pytest.mark.parametrize("plan", ["dense", "blocked"])
@pytest.mark.parametrize("n", [1, 6, 37, 128])
@pytest.mark.parametrize("causal", [False, True])
def test_fast_1d_dense_and_blocked_plans_match_reference(monkeypatch, plan, n, causal):
    """Short sequences run as one dense block (no padding, no overlap-add); both plans are exact at the
    lengths either could take, with padding, unnormalised, and a radius past the sequence."""
    import contextpool_hf.pooling_1d_contextpool as pooling_1d

    monkeypatch.setattr(pooling_1d, "_DENSE_1D_MAX_COEFS", 1 << 40 if plan == "dense" else 0)
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(3, n, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.rand(3, n, dtype=torch.float64, generator=gen, requires_grad=True)
    s = (torch.rand(3, n, dtype=torch.float64, generator=gen) * 2.5 + 0.2).requires_grad_()
    mask = torch.ones(3, n)
    mask[2, n // 2 + 1 :] = 0
    _assert_fast_1d_equals_reference(x, w, s, mask, causal)


def test_1d_plan_is_dense_up_to_the_threshold():
    """n * n <= _DENSE_1D_MAX_COEFS runs as one block over the whole sequence, longer ones in T-token blocks."""
    import contextpool_hf.pooling_1d_contextpool as pooling_1d

    longest = int(pooling_1d._DENSE_1D_MAX_COEFS**0.5)
    assert pooling_1d._plan_1d(longest, 24, False) == (longest, 0, longest, longest)
    block, left, window, rows = pooling_1d._plan_1d(longest + 1, 24, True)
    assert (block, left, window) == (min(pooling_1d._BLOCK_1D, longest + 1), 24, block + 24)
    assert rows >= left + longest + 1


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_fast_tiled_2d_matches_reference(path_2d, stride):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 11, 6, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.rand(2, 11, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    h_out, w_out = (11 - 1) // stride + 1, (6 - 1) // stride + 1
    s = (torch.rand(2, h_out, w_out, dtype=torch.float64, generator=gen) * 1.5 + 0.3).requires_grad_()
    results = []
    for impl in ("fast", "reference"):
        y = context_pool_2d(x, w, s, stride=stride, sigma_max=2.0, implementation=impl)
        grads = torch.autograd.grad((y * y.cos()).sum(), (x, w, s))
        results.append((y, *grads))
    for fast, ref in zip(*results, strict=True):
        torch.testing.assert_close(fast, ref, rtol=0, atol=1e-10)


def test_2d_tile_tables_kept_from_inference_mode_serve_a_later_backward(monkeypatch):
    """The tiled path keeps its tables between calls, now also from calls under torch.inference_mode (it built them
    afresh on every such call). Built there, they would be inference tensors, which autograd refuses to save, and
    a training step of the same geometry afterwards would fail; they are built outside inference mode, and the
    step is exact."""
    import contextpool_hf.pooling_2d_contextpool as pooling_2d

    for name, value in PATHS_2D["tiled"].items():
        monkeypatch.setattr(pooling_2d, name, value)
    monkeypatch.setattr(pooling_2d, "_TABLE_CACHE", {})
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 9, 7, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.rand(2, 9, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    s = (torch.rand(2, 9, 7, dtype=torch.float64, generator=gen) * 1.5 + 0.3).requires_grad_()
    with torch.inference_mode():
        context_pool_2d(x.detach(), w.detach(), s.detach(), sigma_max=2.0, implementation="fast")
    assert pooling_2d._TABLE_CACHE and not any(
        t.is_inference() for tables in pooling_2d._TABLE_CACHE.values() for t in tables if isinstance(t, torch.Tensor)
    )
    results = []
    for impl in ("fast", "reference"):
        y = context_pool_2d(x, w, s, sigma_max=2.0, implementation=impl)
        results.append((y, *torch.autograd.grad((y * y.cos()).sum(), (x, w, s))))
    for fast, ref in zip(*results, strict=True):
        torch.testing.assert_close(fast, ref, rtol=0, atol=1e-10)


def test_2d_tile_tables_made_under_a_fake_tensor_mode_are_not_kept(monkeypatch):
    """Tables built while a FakeTensorMode runs (shape and memory estimators) are fake tensors, valid only there.
    Kept, they turned every later real call of the same geometry into a fake one: a vision model's real forward
    returned FakeTensor logits. They are used there and not kept; the real call after is exact."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    import contextpool_hf.pooling_2d_contextpool as pooling_2d

    for name, value in PATHS_2D["tiled"].items():
        monkeypatch.setattr(pooling_2d, name, value)
    monkeypatch.setattr(pooling_2d, "_TABLE_CACHE", {})
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 9, 7, 3, dtype=torch.float64, generator=gen)
    w = torch.rand(2, 9, 7, dtype=torch.float64, generator=gen)
    s = torch.rand(2, 9, 7, dtype=torch.float64, generator=gen) * 1.5 + 0.3
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:  # the value checks read no data there
        fake = context_pool_2d(*(mode.from_tensor(t) for t in (x, w, s)), sigma_max=2.0, implementation="fast")
    assert fake.shape == x.shape and not pooling_2d._TABLE_CACHE
    on_meta = context_pool_2d(*(t.to("meta") for t in (x, w, s)), sigma_max=2.0, implementation="fast")
    assert on_meta.shape == x.shape and on_meta.is_meta
    y = context_pool_2d(x, w, s, sigma_max=2.0, implementation="fast")
    assert type(y) is torch.Tensor and pooling_2d._TABLE_CACHE
    torch.testing.assert_close(y, context_pool_2d(x, w, s, sigma_max=2.0, implementation="reference"), rtol=0, atol=1e-10)


@pytest.mark.parametrize("stride", [1, 2])
def test_2d_switch_dense_to_tiled_at_the_threshold(monkeypatch, stride):
    """The plan switches from dense to tiles exactly above _DENSE_MAX_COEFS; both sides are exact."""
    import contextpool_hf.pooling_2d_contextpool as pooling_2d

    height, width = 9, 8
    out = (strided_size(height, stride), strided_size(width, stride))
    coefs = out[0] * out[1] * height * width
    for limit, dense in ((coefs, True), (coefs - 1, False)):
        monkeypatch.setattr(pooling_2d, "_DENSE_MAX_COEFS", limit)
        plan = pooling_2d.plan_tiles((height, width), out, 2, stride)
        assert (plan == ((out[0], height, 0), (out[1], width, 0))) is dense, plan
        x, w, s = make_inputs((2, height, width), 3, sigma_max=1.0, out_lead=(2,) + out, seed=stride)
        compare_impls64(context_pool_2d, x, w, s, stride=stride, sigma_max=1.0, truncation=2.0)


def test_offset_loop_baseline_matches_reference():
    """The offset loop (the 2-D path before the tiled one, kept as the crossover baseline in
    scripts/bench_vision.py) stays exact."""
    from contextpool_hf.pooling_contextpool import _FastContextPool, _pool_reference

    x, w, s = make_inputs((2, 9, 7), 3, sigma_max=2.0, out_lead=(2, 5, 4))
    grad_out = torch.randn(2, 5, 4, 3, dtype=torch.float64)
    fast = run_with_grads(lambda *a: _FastContextPool.apply(*a, 4, 2, False, True, 1e-6), x, w, s, grad_out)
    ref = run_with_grads(lambda *a: _pool_reference(*a, 4, 2, False, True, 1e-6), x, w, s, grad_out)
    for f, r in zip(fast, ref, strict=True):
        assert_close64(f, r)
