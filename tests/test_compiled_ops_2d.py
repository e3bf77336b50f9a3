"""Under torch.compile the backward of the 2-D predictor's GELU -> projection -> sigmoid (`_GeluProjectionGates`)
is a torch.library custom operator, as the 1-D backwards are (tests/test_compiled_ops.py): traced through, the
compiled step kept the GELU output the function exists not to keep (compiled ViT peak memory 1.26x transformers',
1.20x with the operator). The 2-D pooling's backward stays traced: as an operator it kept 1.5 MiB less in the ViT
but made the compiled ResNet step 35% slower, since inductor fuses its elementwise work.

- `torch.library.opcheck` on the operator, with and without a projection bias;
- compiled 2-D pooling (traced) == the float64 reference, outputs and every gradient: dense, tiled and strided;
- the compiled backward graph of a ViT and of a ResNet calls the operator;
- the compiled 2-D gates keep two input-sized tensors, as the eager ones do.
"""

from __future__ import annotations

import pytest
import torch
from test_compiled_ops import PARTITIONING_BACKEND, assert_compiled_fast_equals_reference
from test_predictor_layouts import input_sized_saved
from test_vision import tiny_resnet_config, tiny_vit_config
from torch._dynamo.backends.common import aot_autograd

from contextpool_hf import ContextPoolResNetForImageClassification, ContextPoolViTForImageClassification
from contextpool_hf.pooling_contextpool import ContextPoolPredictor, context_pool_2d
from contextpool_hf.predictor_contextpool import _gelu_projection_backward_op, _project_channels_first


def _grid_inputs(batch, height, width, channels, out_sizes, channels_first=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    if channels_first:  # a ConvNet's (B, d, H, W) seen as (B, H, W, d)
        x = torch.randn(batch, channels, height, width, generator=g, dtype=torch.float64).permute(0, 2, 3, 1)
    else:
        x = torch.randn(batch, height, width, channels, generator=g, dtype=torch.float64)
    w = torch.rand(batch, height, width, generator=g, dtype=torch.float64)
    s = 0.5 + 1.5 * torch.rand(batch, *out_sizes, generator=g, dtype=torch.float64)
    return x, w, s


@pytest.mark.parametrize("bias", [True, False])
def test_gelu_projection_backward_operator_passes_opcheck(bias):
    g = torch.Generator().manual_seed(2)
    conv = torch.randn(2, 4, 5, 6, generator=g, dtype=torch.float64)  # (B, H, W, C), row-major
    proj_w = torch.randn(4, 6, generator=g, dtype=torch.float64)
    proj_b = torch.randn(4, generator=g, dtype=torch.float64) if bias else None
    gates = _project_channels_first(torch.nn.functional.gelu(conv), proj_w, proj_b).sigmoid()
    grad = torch.randn(gates.shape, generator=g, dtype=torch.float64)
    torch.library.opcheck(_gelu_projection_backward_op, (grad, conv, proj_w, gates))


@pytest.mark.parametrize("height,width,stride", [(5, 6, 1), (17, 17, 1), (17, 16, 2)])  # dense, tiled, strided
def test_compiled_2d_pooling_equals_the_float64_reference(height, width, stride):
    torch._dynamo.reset()
    out_sizes = (-(-height // stride), -(-width // stride))
    x, w, s = (t.requires_grad_() for t in _grid_inputs(2, height, width, 3, out_sizes, seed=3))
    mask = torch.ones(2, height, width, dtype=torch.bool)
    mask[1, :, width - 2 :] = False  # padding in the second image

    def fn(x, w, s, implementation):
        return context_pool_2d(x, w, s, stride=stride, attention_mask=mask, sigma_max=2.0, truncation=2.0,
                               implementation=implementation)  # fmt: skip

    grad_out = torch.randn(2, *out_sizes, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert_compiled_fast_equals_reference(fn, (x, w, s), grad_out)


def _tiny_vit():
    torch.manual_seed(0)
    config = tiny_vit_config(patch_size=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return ContextPoolViTForImageClassification(config).train()


def _tiny_resnet():
    torch.manual_seed(0)
    return ContextPoolResNetForImageClassification(tiny_resnet_config()).train()


def _batch(size=16):
    g = torch.Generator().manual_seed(5)
    return torch.randn(4, 3, size, size, generator=g), torch.randint(0, 3, (4,), generator=g)


@pytest.mark.parametrize("make", [_tiny_vit, _tiny_resnet], ids=["vit", "resnet"])
def test_the_compiled_vision_backward_calls_the_operators(make):
    targets = set()

    def record(gm, example_inputs):
        targets.update(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    torch._dynamo.reset()
    model = make()
    compiled = torch.compile(model, backend=aot_autograd(fw_compiler=lambda gm, _: gm.forward, bw_compiler=record))
    pixels, labels = _batch()
    compiled(pixel_values=pixels, labels=labels).loss.backward()
    assert any(t.endswith(".gelu_projection_backward.default") for t in targets), sorted(targets)


def test_compiled_2d_gates_keep_the_conv_output_not_the_gelu_output():
    """The compiled 2-D gates keep what the eager ones keep (tests/test_predictor_layouts.py): the conv's input and
    output. With the backward traced through (the compile check patched to False), the partitioner kept the GELU
    output as well."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    predictor = ContextPoolPredictor(16, 1, 3, False, None, 2)
    hidden = torch.randn(2, 6, 6, 16, requires_grad=True)
    compiled = torch.compile(lambda h: predictor.gates(h)[0], backend=PARTITIONING_BACKEND, fullgraph=True)
    compiled(hidden).sum().backward()  # compiles forward and backward
    input_sized = input_sized_saved(compiled, hidden, predictor)
    assert len(input_sized) == 2, input_sized
