"""Export with a dynamic batch and sequence length (issue 12 item 7).

`torch.export.export` with `Dim`s must give one graph for every length (no guard fixes n), equal
to the eager model; the dynamo ONNX graph must run in onnxruntime at lengths other than the
export length with the eager outputs (<= 1e-4).
"""

import pytest
import torch
from torch.export import Dim

from contextpool_hf import ContextPoolConfig, ContextPoolForCausalLM, ContextPoolModel
from contextpool_hf.pooling_contextpool import ContextPool

VOCAB = 97
EXPORT_LEN, OTHER_LENS = 40, (17, 131)  # 131: more than one 64-token block of the eager path


def tiny(cls, causal: bool, attn_implementation: str = "sdpa"):
    torch.manual_seed(0)
    config = ContextPoolConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=256, is_causal=causal, position_embedding_type="rotary" if causal else "absolute",
        attn_implementation=attn_implementation,
    )
    return cls(config).eval()


class Logits(torch.nn.Module):
    """input_ids -> one tensor (the causal LM's logits, the base model's last hidden state), no cache."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        out = self.model(input_ids=input_ids, use_cache=False)
        return out.logits if isinstance(self.model, ContextPoolForCausalLM) else out.last_hidden_state


def ids(batch, n, seed=1):
    return torch.randint(0, VOCAB, (batch, n), generator=torch.Generator().manual_seed(seed))


DYNAMIC = {"input_ids": {0: Dim("batch", min=1, max=64), 1: Dim("seq", min=2, max=256)}}
MODELS = [(ContextPoolModel, False, "sdpa"), (ContextPoolForCausalLM, True, "eager")]
# The causal LM with sdpa: its is_causal must reach torch as a plain bool (under export the length
# comparison is a SymBool, which scaled_dot_product_attention rejects).
CAUSAL_SDPA = (ContextPoolForCausalLM, True, "sdpa")


@pytest.mark.parametrize("cls, causal, attn", [*MODELS, CAUSAL_SDPA], ids=["model", "causal-lm", "causal-lm-sdpa"])
def test_torch_export_dynamic_batch_and_length(cls, causal, attn):
    wrapper = Logits(tiny(cls, causal, attn)).eval()
    # the same weights (tiny seeds them) with the eager product: the reference of every backend
    reference = Logits(tiny(cls, causal, "eager")).eval()
    program = torch.export.export(wrapper, (ids(2, EXPORT_LEN),), dynamic_shapes=DYNAMIC)
    exported = program.module()
    with torch.no_grad():
        for batch, n in ((3, OTHER_LENS[0]), (1, OTHER_LENS[1]), (2, EXPORT_LEN)):
            x = ids(batch, n, seed=n)
            got = exported(x)
            torch.testing.assert_close(got, wrapper(x), rtol=0, atol=1e-5)
            torch.testing.assert_close(got, reference(x), rtol=0, atol=1e-5)


def test_export_path_equals_blocked_path_in_float64():
    """The export formulation (band of offsets) against the eager blocked op and the dense reference."""
    from contextpool_hf import pooling_contextpool as ops

    gen = torch.Generator().manual_seed(5)
    for causal in (False, True):
        for n in (1, 7, 64, 150):
            x = torch.randn(2, n, 3, dtype=torch.float64, generator=gen)
            w = torch.rand(2, n, dtype=torch.float64, generator=gen)
            s = torch.rand(2, n, dtype=torch.float64, generator=gen) * 7.5 + 0.05
            band = ops._pool_1d_export(x, w, s, 24, causal, True, 1e-6)
            blocked = ops._BlockedPool1d.apply(x, w, s, ops.clamped_radius(24, (n,)), causal, True, 1e-6)
            dense = ops._pool_reference(x, w, s, 24, 1, causal, True, 1e-6)
            torch.testing.assert_close(band, dense, rtol=0, atol=1e-12)
            torch.testing.assert_close(blocked, dense, rtol=0, atol=1e-12)


def test_pool_module_exports_with_dynamic_length():
    pool = ContextPool(16, causal=True).eval()
    program = torch.export.export(
        pool, (torch.randn(2, 40, 16),), dynamic_shapes={"hidden": {0: Dim("b", max=8), 1: Dim("n", min=2, max=512)}}
    )
    for n in (5, 300):
        x = torch.randn(1, n, 16)
        torch.testing.assert_close(program.module()(x), pool(x), rtol=0, atol=1e-5)


# the causal LM runs in the default suite (about 8 s); the bidirectional model, which adds no
# new op, in the slow one
@pytest.mark.parametrize(
    "cls, causal, attn",
    [pytest.param(*MODELS[0], marks=pytest.mark.slow, id="model"), pytest.param(*MODELS[1], id="causal-lm")],
)
def test_onnx_dynamo_export_runs_in_onnxruntime_at_other_lengths(tmp_path, cls, causal, attn):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    wrapper = Logits(tiny(cls, causal, attn)).eval()
    path = tmp_path / "model.onnx"
    torch.onnx.export(wrapper, (ids(2, EXPORT_LEN),), str(path), dynamo=True, dynamic_shapes=DYNAMIC,
                      input_names=["input_ids"], output_names=["output"])  # fmt: skip
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, n in ((3, OTHER_LENS[0]), (1, OTHER_LENS[1])):
        x = ids(batch, n, seed=n)
        (got,) = session.run(None, {"input_ids": x.numpy()})
        with torch.no_grad():
            expected = wrapper(x)
        assert got.shape == tuple(expected.shape)
        torch.testing.assert_close(torch.from_numpy(got), expected, rtol=0, atol=1e-4)
