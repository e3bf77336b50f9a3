"""`torch.compile(model, dynamic=True)`: every size symbolic from the first call, and every float that dynamo reads
from a global or an attribute a graph input (a SymFloat) rather than a constant.

Before, every family stopped inside dynamo with "lift_tracked_freevar_to_input should not be called on root
SubgraphTracer" at its second pooled layer: the pooling's autograd Functions read module-level floats (the clamp
of the exponents, the q outside the window, the default eps), each realised as a graph input inside the first
layer's Function and reused by the next layer's. Under gradient checkpointing, where each layer's forward is a
subgraph, the sigma floor did the same. The predictor's GELU and the tiled 2-D pooling then sorted dims by
symbolic strides ("sort with non-constant keys"), and the functional ops' checks called `math.isfinite` on a
symbolic sigma_max. Each case below compiles with `fullgraph=True` and must give the eager step's loss and
gradients (at a second size, the symbolic graph is reused, or another plan traced).

The `eager` backend runs dynamo alone (where all of these failed); the slow test runs every family through
`aot_eager` (the traced backward too) and the causal LM through inductor.
"""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_causal_lm
from test_seq2seq import tiny_model as tiny_seq2seq
from test_vision import tiny_resnet_config, tiny_vit_config

from contextpool_hf import (
    ContextPoolConfig,
    ContextPoolForMaskedLM,
    ContextPoolResNetForImageClassification,
    ContextPoolViTForImageClassification,
    context_pool,
    context_pool_2d,
)


def _loss_and_grads(model, forward, batch):
    model.zero_grad()
    loss = forward(**batch).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_dynamic_compile_matches_eager(model, batches, backend="eager", atol=1e-5):
    """`torch.compile(model, dynamic=True, fullgraph=True)` trains like the eager model on each batch."""
    torch._dynamo.reset()
    model.train()
    compiled = torch.compile(model, dynamic=True, fullgraph=True, backend=backend)
    for batch in batches:
        eager_loss, eager_grads = _loss_and_grads(model, model, batch)
        loss, grads = _loss_and_grads(model, compiled, batch)
        torch.testing.assert_close(loss, eager_loss, atol=atol, rtol=1e-5)
        assert grads.keys() == eager_grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(grad, eager_grads[name], atol=atol, rtol=1e-4, msg=name)


def _token_batches(lengths, vocab_size=61):
    batches = []
    for n in lengths:
        ids = torch.randint(1, vocab_size, (2, n), generator=torch.Generator().manual_seed(n))
        batches.append(dict(input_ids=ids, labels=ids))
    return batches


def _image_batches(sizes, **extra):
    return [dict(pixel_values=torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size)),
                 labels=torch.tensor([0, 1]), **extra) for size in sizes]  # fmt: skip


# fast: the 1-D Functions' constants (two pooled layers); checkpointing: the sigma floor read in every layer's
# subgraph; reference: the predictor's GELU layout (sorted by stride)
@pytest.mark.parametrize("variant", ["fast", "checkpointing", "reference"])
def test_causal_lm_compiles_with_dynamic_true(variant):
    model = tiny_causal_lm(max_position_embeddings=256,
                           pool_implementation="reference" if variant == "reference" else "fast")  # fmt: skip
    if variant == "checkpointing":
        model.gradient_checkpointing_enable()
    lengths = (16, 200) if variant == "fast" else (16,)  # the dense and the blocked plan
    assert_dynamic_compile_matches_eager(model, _token_batches(lengths))


def test_vit_compiles_with_dynamic_true():
    """The 2-D exponent clamp, read in two pooled layers' Functions."""
    vit = ContextPoolViTForImageClassification(tiny_vit_config(num_labels=2))
    assert_dynamic_compile_matches_eager(vit, _image_batches((16,)))


def test_functional_ops_compile_with_dynamic_true():
    """context_pool / context_pool_2d called twice in a compiled function: their float arguments (defaults and
    given) are symbolic there, and the window radius is built from sigma_max and truncation. Another sigma_max
    gives its own result (a guard and a recompile, not a stale radius)."""

    def two_poolings(x, w, s, grid, sigma_max):
        op = context_pool_2d if grid else context_pool
        y = op(x, w, s, sigma_max=sigma_max)
        return op(y, w, s, sigma_max=sigma_max, eps=1e-3)

    for grid, shape in ((False, (2, 30)), (True, (2, 6, 6))):
        torch._dynamo.reset()
        compiled = torch.compile(two_poolings, dynamic=True, fullgraph=True, backend="eager")
        g = torch.Generator().manual_seed(0)
        x = torch.randn(*shape, 8, generator=g, dtype=torch.float64, requires_grad=True)
        w = torch.rand(*shape, generator=g, dtype=torch.float64)
        s = torch.rand(*shape, generator=g, dtype=torch.float64) + 0.5
        for sigma_max in (2.0, 1.5):
            expected = two_poolings(x, w, s, grid, sigma_max)
            (expected_grad,) = torch.autograd.grad(expected.square().sum(), x)
            got = compiled(x, w, s, grid, sigma_max)
            (grad,) = torch.autograd.grad(got.square().sum(), x)
            torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
            torch.testing.assert_close(grad, expected_grad, atol=1e-12, rtol=0)


@pytest.mark.slow
def test_every_family_compiles_with_dynamic_true_through_aot_autograd_and_inductor():
    """The traced backwards too (aot_eager) for the text families: the causal LM with groups at the dense and the
    blocked 1-D plan, the MLM, the seq2seq model; and the causal LM through inductor at three lengths. The vision
    models past their dense forms, on grids that are not a multiple of the tile (tracing the tiled 2-D pooling
    takes minutes through aot_eager, so dynamo alone): the checkpointed ViT with groups at 17 x 17 patches and the
    ResNet pooling its stem conv's 34 x 34 map."""
    assert_dynamic_compile_matches_eager(tiny_causal_lm(max_position_embeddings=256, pool_groups=2),
                                         _token_batches((16, 200)), backend="aot_eager")  # fmt: skip
    mlm = ContextPoolForMaskedLM(ContextPoolConfig(vocab_size=61, hidden_size=32, num_hidden_layers=2,
                                                   num_attention_heads=4, intermediate_size=64,
                                                   max_position_embeddings=256))  # fmt: skip
    assert_dynamic_compile_matches_eager(mlm, _token_batches((16,)), backend="aot_eager")
    seq2seq_batches = []
    for n in (10, 23):
        ids = torch.randint(4, 30, (2, n), generator=torch.Generator().manual_seed(n))
        seq2seq_batches.append(dict(input_ids=ids, labels=ids[:, : n // 2 + 1]))
    assert_dynamic_compile_matches_eager(tiny_seq2seq(), seq2seq_batches, backend="aot_eager")
    assert_dynamic_compile_matches_eager(tiny_causal_lm(max_position_embeddings=256), _token_batches((16, 200, 57)),
                                         backend="inductor")  # fmt: skip
    vit = ContextPoolViTForImageClassification(tiny_vit_config(num_labels=2, pool_groups=2))
    vit.gradient_checkpointing_enable()
    assert_dynamic_compile_matches_eager(vit, _image_batches((68,), interpolate_pos_encoding=True))
    resnet = ContextPoolResNetForImageClassification(tiny_resnet_config(num_labels=2, pool_downsampling=["stem_conv"]))
    assert_dynamic_compile_matches_eager(resnet, _image_batches((68,)))
