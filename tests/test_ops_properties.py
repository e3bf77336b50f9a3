"""Property-based tests of the ContextPool operator (hypothesis): random shapes, masks, sigmas."""

from __future__ import annotations

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from contextpool_hf.pooling_contextpool import (  # noqa: E402
    context_pool,
    context_pool_2d,
    strided_size,
    window_radius,
)

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def problems_1d(draw):
    batch = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([(), (2,)]))
    n = draw(st.integers(1, 40))
    d = draw(st.integers(1, 5))
    sigma_max = draw(st.sampled_from([0.5, 1.0, 2.5, 8.0]))
    truncation = draw(st.sampled_from([0.5, 1.0, 3.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    lead = (batch,) + groups + (n,)
    x = torch.randn(*lead, d, generator=g, dtype=torch.float64) * draw(st.sampled_from([1e-3, 1.0, 1e3]))
    # weights anywhere in [0, 1], some exactly 0 or 1
    w = torch.rand(*lead, generator=g, dtype=torch.float64)
    w = torch.where(torch.rand(*lead, generator=g) < 0.1, (w > 0.5).double(), w)
    s = torch.empty(*lead, dtype=torch.float64).uniform_(0.05, 1.0, generator=g) * sigma_max
    mask = None
    if draw(st.booleans()):
        mask = (torch.rand(batch, n, generator=g) < draw(st.sampled_from([0.0, 0.5, 0.9, 1.0]))).long()
    kw = dict(
        causal=draw(st.booleans()),
        sigma_max=sigma_max,
        truncation=truncation,
        normalize=draw(st.booleans()),
        attention_mask=mask,
    )
    return x, w, s, kw


def _close(a, b, tol=1e-10):
    scale = max(1.0, b.abs().max().item()) if b.numel() else 1.0
    return (a - b).abs().max().item() <= tol * scale if a.numel() else True


@SETTINGS
@given(problems_1d())
def test_fast_equals_reference_1d(problem):
    x, w, s, kw = problem
    fast = context_pool(x, w, s, implementation="fast", **kw)
    ref = context_pool(x, w, s, implementation="reference", **kw)
    assert fast.shape == x.shape
    assert _close(fast, ref)


@SETTINGS
@given(problems_1d())
def test_gradients_fast_equal_reference_1d(problem):
    x, w, s, kw = problem
    grad_out = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grads = []
    for implementation in ("fast", "reference"):
        inputs = tuple(t.clone().requires_grad_() for t in (x, w, s))
        y = context_pool(*inputs, implementation=implementation, **kw)
        grads.append(torch.autograd.grad(y, inputs, grad_out))
    for f, r in zip(*grads, strict=True):
        assert torch.isfinite(f).all()
        assert _close(f, r, 1e-9)


@SETTINGS
@given(problems_1d())
def test_normalized_output_is_a_convex_combination_of_the_window(problem):
    """For a real token with weight mass, each feature of y_i lies in [min, max] of its window."""
    x, w, s, kw = problem
    kw["normalize"] = True
    y = context_pool(x, w, s, **kw)
    lead, d = x.shape[:-1], x.shape[-1]
    n = lead[-1]
    radius = window_radius(kw["sigma_max"], kw["truncation"])
    mask = kw["attention_mask"]
    keep = (
        torch.ones(lead, dtype=torch.bool)
        if mask is None
        else mask.bool().reshape(lead[:1] + (1,) * (len(lead) - 2) + (n,)).expand(lead)
    )
    xf, wf, sf, keepf, yf = (t.reshape(-1, n, *t.shape[len(lead) :]) for t in (x, w, s, keep, y))
    idx = torch.arange(n)
    diff = idx[None, :] - idx[:, None]  # (i, j): j - i
    window = diff.abs() <= radius
    if kw["causal"]:
        window &= diff <= 0
    for row in range(xf.shape[0]):
        wm = wf[row] * keepf[row]
        mass = (wm[None, :] * torch.exp(-(diff.double() ** 2) / (2 * sf[row][:, None] ** 2)) * window).sum(-1)
        for i in range(n):
            if not keepf[row, i] or mass[i] < 1e-3:
                continue
            members = window[i] & (wm > 0)
            lo, hi = xf[row][members].min(0).values, xf[row][members].max(0).values
            # y_i = (mass / (eps + mass)) * convex combination: allow the eps shrink towards 0
            slack = 1e-6 / mass[i] * xf[row][members].abs().max() + 1e-9 * (1 + xf[row].abs().max())
            assert (yf[row, i] >= lo - slack).all() and (yf[row, i] <= hi + slack).all(), (row, i)
    assert y.shape == x.shape and d == y.shape[-1]


@SETTINGS
@given(
    batch=st.integers(1, 2),
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    d=st.integers(1, 3),
    stride=st.integers(1, 3),
    sigma_max=st.sampled_from([0.7, 2.0, 8.0]),
    truncation=st.sampled_from([0.5, 1.0, 3.0]),
    normalize=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_fast_equals_reference_2d(batch, height, width, d, stride, sigma_max, truncation, normalize, seed):
    g = torch.Generator().manual_seed(seed)
    out = (batch, strided_size(height, stride), strided_size(width, stride))
    x = torch.randn(batch, height, width, d, generator=g, dtype=torch.float64)
    w = torch.rand(batch, height, width, generator=g, dtype=torch.float64)
    s = torch.empty(out, dtype=torch.float64).uniform_(0.05, 1.0, generator=g) * sigma_max
    mask = (torch.rand(batch, height, width, generator=g) < 0.8).long()
    kw = dict(
        stride=stride, sigma_max=sigma_max, truncation=truncation, normalize=normalize, attention_mask=mask
    )
    results = []
    for implementation in ("fast", "reference"):
        inputs = tuple(t.clone().requires_grad_() for t in (x, w, s))
        y = context_pool_2d(*inputs, implementation=implementation, **kw)
        results.append((y.detach(),) + torch.autograd.grad(y, inputs, torch.ones_like(y)))
    assert results[0][0].shape == out + (d,)
    for f, r in zip(*results, strict=True):
        assert _close(f, r, 1e-9)
