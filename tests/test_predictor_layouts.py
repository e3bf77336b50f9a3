"""The predictor's layout choices (GELU on the dense layout, the projection as one wide matmul, one
sigmoid over both gates) against the predictor written plainly with torch.nn.functional, and the
ResNet stem's max pooling on its channels-last copy against F.max_pool2d: float64, every gradient."""

import pytest
import torch
import torch.nn.functional as F
from helpers import saved_storages

from contextpool_hf import ContextPoolResNetConfig
from contextpool_hf.layers_contextpool_vision import ContextPoolDownsample
from contextpool_hf.pooling_contextpool import ContextPool, ContextPoolPredictor
from contextpool_hf.predictor_contextpool import _gelu_dense, _project_channels_first


def _functional_logits(predictor, hidden, keep=None):
    """m(X) as the spec writes it, with the module's weights: (B, 2G, *spatial) logits."""
    h = hidden if predictor.in_proj is None else F.linear(hidden, predictor.in_proj.weight)
    if keep is not None:
        h = h * keep.unsqueeze(-1).to(h.dtype)
    k, width = predictor.kernel_size, h.shape[-1]
    if predictor.spatial_dims == 1:
        h = h.transpose(1, 2)  # (B, width, n)
        if predictor.causal:
            h = F.pad(h, (k - 1, 0))
        conv = F.conv1d(h, predictor.conv.weight, predictor.conv.bias, padding=0 if predictor.causal else k // 2,
                        groups=width)
        act = F.gelu(conv).transpose(1, 2)  # (B, n, width)
        return F.linear(act, predictor.proj.weight, predictor.proj.bias).transpose(1, 2)
    conv = F.conv2d(h.permute(0, 3, 1, 2), predictor.conv.weight, predictor.conv.bias, padding=k // 2, groups=width)
    act = F.gelu(conv).permute(0, 2, 3, 1)  # (B, H, W, width)
    return F.linear(act, predictor.proj.weight, predictor.proj.bias).permute(0, 3, 1, 2)


PREDICTORS = [
    dict(spatial_dims=1, causal=True, groups=1),
    dict(spatial_dims=1, causal=False, groups=2, width=6),
    dict(spatial_dims=2, causal=False, groups=1),
    dict(spatial_dims=2, causal=False, groups=3, width=5),
]


@pytest.mark.parametrize("case", PREDICTORS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("channels_last_input", [True, False])
def test_predictor_equals_its_functional_definition(case, channels_last_input):
    torch.manual_seed(0)
    predictor = ContextPoolPredictor(12, case["groups"], 3, case["causal"], case.get("width"),
                                     case["spatial_dims"]).double()
    spatial = (7,) if case["spatial_dims"] == 1 else (5, 6)
    hidden = torch.randn((2,) + spatial + (12,), dtype=torch.float64)
    if not channels_last_input:  # a channels-first tensor seen as (B, *spatial, C), as a ConvNet hands it over
        hidden = hidden.movedim(-1, 1).contiguous().movedim(1, -1)
    hidden.requires_grad_(True)
    keep = torch.rand((2,) + spatial, generator=torch.Generator().manual_seed(1)) > 0.3
    expected = _functional_logits(predictor, hidden, keep)
    a, b, _ = predictor(hidden, keep)
    gates, _ = predictor.gates(hidden, keep)
    torch.testing.assert_close(torch.cat([a, b], 1), expected, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(gates, torch.sigmoid(expected), rtol=1e-13, atol=1e-13)
    grad_out = torch.randn(expected.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    inputs = [hidden] + list(predictor.parameters())
    want = torch.autograd.grad(torch.sigmoid(expected), inputs, grad_out)
    for got, ref in zip(torch.autograd.grad(gates, inputs, grad_out), want, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("stride", [1, 2])
def test_2d_prediction_is_the_spec_formula_at_the_strided_outputs(stride):
    torch.manual_seed(0)
    pool = ContextPool(8, groups=2, sigma_min=0.5, sigma_max=2.0, truncation=2.0, spatial_dims=2, stride=stride).double()
    hidden = torch.randn(2, 5, 7, 8, dtype=torch.float64)
    weights, sigma, _ = pool.predict(hidden)
    logits = _functional_logits(pool.predictor, hidden)
    torch.testing.assert_close(weights, torch.sigmoid(logits[:, :2]), rtol=1e-14, atol=1e-14)
    expected_sigma = 0.5 + 1.5 * torch.sigmoid(logits[:, 2:, ::stride, ::stride])
    torch.testing.assert_close(sigma, expected_sigma, rtol=1e-14, atol=1e-14)
    assert sigma.shape == (2, 2, -(-5 // stride), -(-7 // stride))


@pytest.mark.parametrize("make", [
    lambda: torch.randn(3, 8, 5).transpose(1, 2),  # a (B, C, n) conv output seen as (B, n, C)
    lambda: torch.randn(2, 4, 3, 5).contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1),  # dense
    lambda: torch.randn(2, 4, 3, 5).permute(0, 2, 3, 1),  # channels-first memory seen channels-last
    lambda: torch.randn(2, 6, 5)[:, ::2],  # not a permutation of a dense tensor
    lambda: torch.randn(4),
], ids=["1d-view", "channels-last", "channels-first", "strided", "vector"])
def test_gelu_dense_is_gelu(make):
    t = make().double().requires_grad_(True)
    got = _gelu_dense(t)
    expected = F.gelu(t)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    grad = torch.randn(t.shape, dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad(got, t, grad)[0], torch.autograd.grad(expected, t, grad)[0],
                               rtol=0, atol=0)


@pytest.mark.parametrize("bias", [True, False])
def test_wide_projection_is_linear(bias):
    torch.manual_seed(0)
    act = torch.randn(2, 4, 3, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True) if bias else None
    got = _project_channels_first(act, weight, b)
    expected = F.linear(act, weight, b).permute(0, 3, 1, 2)
    assert got.shape == (2, 4, 4, 3)
    torch.testing.assert_close(got, expected, rtol=1e-14, atol=1e-14)
    inputs = [act, weight] + ([b] if bias else [])
    grad = torch.randn(got.shape, dtype=torch.float64)
    for g, e in zip(torch.autograd.grad(got, inputs, grad), torch.autograd.grad(expected, inputs, grad), strict=True):
        torch.testing.assert_close(g, e, rtol=1e-13, atol=1e-13)


def test_stem_site_is_max_pooling_at_gate_zero_with_its_gradient():
    """The stem's ContextPoolDownsample max-pools its channels-last copy: at pool_mix 0 it is
    F.max_pool2d(x, 3, 2, 1) exactly, gradient included, and its output keeps x's shape."""
    config = ContextPoolResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], pool_mix_init=0.0)
    site = ContextPoolDownsample(config, 8, 2, original="max").double()
    x = torch.randn(2, 8, 9, 10, dtype=torch.float64, requires_grad=True)  # odd sizes: the padded edge
    got = site(x)
    expected = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    grad = torch.randn(expected.shape, dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad(got, x, grad)[0], torch.autograd.grad(expected, x, grad)[0],
                               rtol=0, atol=0)


def input_sized_saved(fn, hidden, module) -> list[int]:
    """The byte sizes of the tensors fn(hidden) keeps for its backward that are at least as large as hidden (each
    storage once; module's parameters left out)."""
    _, saved = saved_storages(lambda: fn(hidden))
    parameters = {p.untyped_storage().data_ptr() for p in module.parameters()}
    return [n for ptr, n in saved.items() if ptr not in parameters and n >= hidden.numel() * hidden.element_size()]


def test_2d_gates_keep_their_input_only():
    """`_FusedPredictor2d` recomputes the conv and its GELU in the backward: the graph of the 2-D gates keeps one
    tensor of the input's size (the input, which the conv's backward reads), where autograd's own nodes keep two
    more, the conv output GELU's backward reads and the GELU output the projection's weight gradient reads."""
    torch.manual_seed(0)
    predictor = ContextPoolPredictor(16, 1, 3, False, None, 2)
    hidden = torch.randn(2, 6, 6, 16, requires_grad=True)  # row-major: the conv output is, too
    input_sized = input_sized_saved(lambda h: predictor.gates(h)[0], hidden, predictor)
    assert len(input_sized) == 1, input_sized
    unfused = input_sized_saved(lambda h: predictor.gates(h, fused=False)[0], hidden, predictor)
    assert len(unfused) == 3, unfused
    grad = torch.autograd.grad(predictor.gates(hidden)[0].sum(), hidden)[0]
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("case", [dict(spatial_dims=1, causal=True), dict(spatial_dims=1, causal=False),
                                  dict(spatial_dims=2, causal=False, stride=2)], ids=["causal", "1d", "2d-strided"])
def test_reference_implementation_is_twice_differentiable(case):
    """Second-order gradients (gradient penalties, Hessian-vector products) need autograd's own nodes: the fast
    paths' hand-written backwards are once differentiable, so `implementation="reference"` keeps the predictor out
    of its fused functions too. gradgradcheck: the second derivatives of the whole module (predictor included)
    against finite differences, float64."""
    torch.manual_seed(0)
    pool = ContextPool(4, sigma_max=2.0, implementation="reference", **case).double()
    spatial = (6,) if case["spatial_dims"] == 1 else (4, 5)
    hidden = torch.randn((2,) + spatial + (4,), dtype=torch.float64, requires_grad=True)
    params = tuple(pool.predictor.parameters())
    assert torch.autograd.gradgradcheck(pool, (hidden,))
    loss = pool(hidden).square().sum()
    grads = torch.autograd.grad(loss, (hidden,) + params, create_graph=True)
    second = torch.autograd.grad(sum(g.square().sum() for g in grads), params)  # would raise if once differentiable
    assert all(torch.isfinite(g).all() for g in second)


@pytest.mark.parametrize("mix", [0.0, 0.35, 1.0])
@pytest.mark.parametrize("channels_last", [True, False], ids=["channels-last-x", "row-major-x"])
def test_max_pool_mix_equals_lerp_of_max_pooling(mix, channels_last):
    """`_MaxPoolMix` (the stem's max pooling inside its mix, the max-pooled map recomputed in the backward) against
    torch.lerp(F.max_pool2d(x), pooled, mix) in autograd's own nodes: output and the gradients of x, pooled and
    the gate, float64, odd map sizes (the padded edge), at the gate's ends and between them."""
    from contextpool_hf.layers_contextpool_vision import _MaxPoolMix

    g = torch.Generator().manual_seed(int(mix * 100) + channels_last)
    x = torch.randn(2, 5, 9, 10, generator=g, dtype=torch.float64)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    pooled = torch.randn(2, 5, 5, 5, generator=g, dtype=torch.float64)
    gate = torch.tensor(mix, dtype=torch.float64)
    grad = torch.randn(2, 5, 5, 5, generator=g, dtype=torch.float64)
    results = []
    for fused in (True, False):
        leaves = [t.detach().clone().requires_grad_() for t in (x, pooled, gate)]
        hidden = leaves[0].permute(0, 2, 3, 1)  # (B, H, W, C)
        if fused:
            out = _MaxPoolMix.apply(hidden, leaves[1], leaves[2], 2)
        else:
            out = torch.lerp(F.max_pool2d(hidden.permute(0, 3, 1, 2), 3, 2, 1), leaves[1], leaves[2])
        results.append((out, *torch.autograd.grad(out, leaves, grad)))
    for name, got, expected in zip(("out", "dx", "dpooled", "dmix"), *results, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12, msg=name)


def _stem_site(mix=0.4):
    config = ContextPoolResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], pool_mix_init=mix)
    torch.manual_seed(0)
    return ContextPoolDownsample(config, 8, 2, original="max").double()


def test_stem_site_keeps_no_max_pooled_map(monkeypatch):
    """In training the stem site's graph keeps x and the max pooling's indices, not the max-pooled map (a quarter of
    x) that lerp's backward would read: its saved tensors are one such map smaller than the two-node path's, with
    the same output and gradients (all parameters), float64."""
    from contextpool_hf import layers_contextpool_vision as layers

    x = torch.randn(4, 8, 12, 12, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    pooled_map_bytes = 4 * 8 * 6 * 6 * 8
    runs = {}
    for fused in (True, False):
        site = _stem_site()
        if not fused:
            monkeypatch.setattr(layers._MaxPoolMix, "applies", staticmethod(lambda *a: False))
        leaf = x.detach().clone().requires_grad_()
        out, saved = saved_storages(lambda site=site, leaf=leaf: site(leaf))
        params = {p.untyped_storage().data_ptr() for p in site.parameters()}
        kept = sum(n for ptr, n in saved.items() if ptr not in params)
        grads = torch.autograd.grad(out.square().sum(), [leaf, *site.parameters()])
        runs[fused] = (kept, out, grads)
        monkeypatch.undo()
    assert runs[False][0] - runs[True][0] >= pooled_map_bytes, (runs[False][0], runs[True][0])
    torch.testing.assert_close(runs[True][1], runs[False][1], rtol=1e-12, atol=1e-12)
    for got, expected in zip(runs[True][2], runs[False][2], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_stem_site_adds_the_gradients_of_its_input_in_place():
    """x's three gradients at the stem site (the max pooling, the pooling, the predictor) are summed into the first
    to arrive, which `_MaxPoolMix` writes into a tensor of its own: no addition allocates a tensor of x's size
    (each would be one more at a ResNet step's peak)."""
    site = _stem_site().float()
    x = torch.randn(4, 8, 16, 16).contiguous(memory_format=torch.channels_last).requires_grad_()
    loss = site(x).square().sum()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        loss.backward()
    x_bytes = x.numel() * x.element_size()
    adds = [e.cpu_memory_usage for e in prof.events() if e.name == "aten::add" and e.cpu_memory_usage >= x_bytes]
    assert adds == [], adds


def test_stem_conv_writes_channels_last_for_the_stem_site():
    """With ContextPool at the stem's max pooling, the stem conv writes its output channels-last (its weight is
    passed channels-last), so the site's channels-last view needs no copy; the values are the conv's, float64,
    gradients included. A wrapped conv (not a plain nn.Conv2d) runs its own forward."""
    from contextpool_hf.layers_contextpool_vision import ContextPoolResNetEmbeddings

    config = ContextPoolResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])
    torch.manual_seed(0)
    stem = ContextPoolResNetEmbeddings(config).double().embedder
    assert stem.channels_last_output
    pixels = torch.randn(2, 3, 20, 20, dtype=torch.float64, requires_grad=True)
    out = stem._convolve(pixels)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    expected = stem.convolution(pixels)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    grad = torch.randn(out.shape, dtype=torch.float64)
    inputs = [pixels, stem.convolution.weight]
    for got, want in zip(torch.autograd.grad(out, inputs, grad), torch.autograd.grad(expected, inputs, grad), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)

    class WrappedConv(torch.nn.Conv2d):  # e.g. an adapter's layer: its forward must run
        def forward(self, x):
            return super().forward(x) + 1.0

    wrapped = WrappedConv(3, 8, 7, stride=2, padding=3, bias=False).double()
    wrapped.load_state_dict(stem.convolution.state_dict())
    stem.convolution = wrapped
    torch.testing.assert_close(stem._convolve(pixels), expected + 1.0, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("channels,side,layout", [(8, 16, "channels-last"), (64, 4, "channels-first")])
def test_downsample_output_layout_follows_the_map_size(channels, side, layout):
    """A site's output stays channels-last on maps with more positions than 9x its channels, and is made
    channels-first on small maps with many channels (a ResNet's last stages), where the CPU conv backward would
    copy the next conv's weight into channels-last."""
    config = ContextPoolResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])
    site = ContextPoolDownsample(config, channels, 2)
    x = torch.randn(4, channels, side, side).contiguous(memory_format=torch.channels_last)
    out = site(x)
    assert out.is_contiguous() == (layout == "channels-first"), out.stride()
    if layout == "channels-last":
        assert out.is_contiguous(memory_format=torch.channels_last)
