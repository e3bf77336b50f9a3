"""The fused 1-D predictor (depthwise conv -> GELU -> projection -> sigmoid, hand-written backward)
equals the module's plain path (nn.Conv1d, F.gelu, nn.Linear, torch.sigmoid): outputs and every
gradient in float64, the conv state it hands to a cache, and gradcheck."""

import pytest
import torch

from contextpool_hf import pooling_contextpool as ops
from contextpool_hf.pooling_contextpool import ContextPool, ContextPoolPredictor

CASES = [
    dict(causal=True, kernel_size=3),
    dict(causal=False, kernel_size=3, groups=2),
    dict(causal=False, kernel_size=5, width=8),
    dict(causal=True, kernel_size=5, groups=3),
    dict(causal=True, kernel_size=1),
]


def _plain_gates(predictor, hidden, keep):
    a, b, state = predictor.forward(hidden, keep)
    return torch.sigmoid(torch.cat([a, b], dim=1)), state


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("n", [1, 2, 11])
def test_fused_equals_plain_with_all_gradients(case, n):
    case = dict(case)
    torch.manual_seed(0)
    predictor = ContextPoolPredictor(16, case.pop("groups", 1), case["kernel_size"], case["causal"],
                                     case.get("width")).double()
    hidden = torch.randn(2, n, 16, dtype=torch.float64, requires_grad=True)
    keep = torch.rand(2, n, generator=torch.Generator().manual_seed(1)) > 0.25
    assert predictor._fusable(hidden, None)
    fused, fused_state = predictor.gates(hidden, keep)
    plain, plain_state = _plain_gates(predictor, hidden, keep)
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-13)
    if case["causal"]:
        torch.testing.assert_close(fused_state, plain_state, rtol=0, atol=0)
    grad_out = torch.randn(plain.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    inputs = [hidden] + list(predictor.parameters())
    for got, expected in zip(torch.autograd.grad(fused, inputs, grad_out),
                             torch.autograd.grad(plain, inputs, grad_out), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-11, atol=1e-12)


def test_fused_gradcheck():
    torch.manual_seed(0)
    h = torch.randn(2, 6, 4, dtype=torch.float64, requires_grad=True)
    conv_w = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    conv_b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    proj_w = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    proj_b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    for pad_left in (2, 1):  # causal, centred
        assert torch.autograd.gradcheck(
            lambda *t, p=pad_left: ops._FusedPredictor1d.apply(*t, p), (h, conv_w, conv_b, proj_w, proj_b)
        )


def test_module_takes_the_fused_path_only_where_it_applies(monkeypatch):
    calls = []
    original = ops._FusedPredictor1d.apply
    monkeypatch.setattr(ops._FusedPredictor1d, "apply", lambda *a: calls.append(1) or original(*a))
    pool = ContextPool(16, causal=True)
    hidden = torch.randn(1, 9, 16)
    pool(hidden)
    assert len(calls) == 1
    pool.predict(hidden, conv_state=torch.zeros(1, 2, 16))  # a chunk after a cache: the plain path
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast: the plain path (its casts apply)
        pool(hidden)
    assert len(calls) == 1


def test_fused_predictor_feeds_the_same_pooling():
    """ContextPool's output (weights, sigma, pooling) with the fused predictor equals the plain path's."""
    torch.manual_seed(0)
    pool = ContextPool(8, groups=2, causal=False, sigma_max=3.0).double()
    hidden = torch.randn(2, 13, 8, dtype=torch.float64)
    weights, sigma, _ = pool.predict(hidden)
    a, b, _ = pool.predictor.forward(hidden)
    torch.testing.assert_close(weights, torch.sigmoid(a), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(sigma, pool.sigma_from_logits(b), rtol=1e-12, atol=1e-13)
