"""Property-based sweep of bad input (issue 11): random valid and invalid arguments for every
public entry point (context_pool, context_pool_2d, ContextPool, the configs, model forward,
generate). Each argument is drawn from a valid or an invalid pool, so the test knows which
arguments are bad. The outcome must be:
- all arguments valid: a finite result of the right shape (the operator: equal to the float64
  spec oracle), and no exception at all;
- some argument bad: a ValueError (configs: the strict-dataclass error wrapping it) whose
  message names one of the bad arguments. No other exception type may escape.
"""

from __future__ import annotations

import math

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from huggingface_hub.errors import StrictDataclassError  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from contextpool_hf import ContextPoolConfig, ContextPoolForCausalLM  # noqa: E402
from contextpool_hf.configuration_contextpool_seq2seq import ContextPoolSeq2SeqConfig  # noqa: E402
from contextpool_hf.configuration_contextpool_vision import ContextPoolViTConfig  # noqa: E402
from contextpool_hf.modeling_contextpool_seq2seq import ContextPoolForConditionalGeneration  # noqa: E402
from contextpool_hf.pooling_contextpool import (  # noqa: E402
    ContextPool,
    context_pool,
    context_pool_2d,
    strided_size,
    window_radius,
)

try:
    import spec_oracle
except ImportError:  # run from the repository root
    from tests import spec_oracle

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
FEW = settings(SETTINGS, max_examples=12)
NAN, INF = math.nan, math.inf


def arg(name, valid, invalid):
    """(value, name if the value is invalid else None)."""
    return st.one_of(
        st.sampled_from(valid).map(lambda v: (v, None)),
        st.sampled_from(invalid).map(lambda v: (v, name)),
    )


def check_outcome(bad: set, run, result_ok, starts=True):
    """Valid arguments: run() succeeds and result_ok(result) holds. Bad ones: a ValueError naming one."""
    if not bad:
        result_ok(run())
        return
    with pytest.raises((ValueError, StrictDataclassError)) as info:
        run()
    message = str(info.value)
    named = [n for n in bad if (message.startswith(n) if starts else n in message)]
    assert named, f"none of {sorted(bad)} named in: {message}"


def inject(tensor, value, data):
    """tensor with one (drawn) element set to value; the tensor unchanged when it is empty."""
    if tensor.numel() == 0:
        return tensor, False
    tensor = tensor.clone()
    tensor.view(-1)[data.draw(st.integers(0, tensor.numel() - 1))] = value
    return tensor, True


def values(data, name, shape, make, bad_values, dtype=torch.float32):
    """A tensor of `shape` from make(); with probability 1/3 one element is a bad value."""
    tensor = make(shape).to(dtype)
    if data.draw(st.integers(0, 2), label=f"{name} bad?") == 0:
        tensor, changed = inject(tensor, data.draw(st.sampled_from(bad_values)), data)
        return tensor, (name if changed else None)
    return tensor, None


def masks(data, shape):
    """(mask or None, "attention_mask" if invalid else None): 0/1 of every dtype, or garbage."""
    kind = data.draw(st.sampled_from(["none", "long", "bool", "float", "half", "additive", "two", "minus", "nan", "shape"]))
    keep = torch.rand(shape) > 0.3
    if kind == "none":
        return None, None
    if kind in ("long", "bool", "float"):
        return keep.to({"long": torch.long, "bool": torch.bool, "float": torch.float32}[kind]), None
    if kind == "shape":
        return torch.ones(shape + (1,)), "attention_mask"
    bad = {"half": 0.5, "additive": -1e9, "two": 2.0, "minus": -1.0, "nan": NAN}[kind]
    mask, changed = inject(keep.float(), bad, data)
    return mask, ("attention_mask" if changed else None)


OPTIONS = dict(
    sigma_max=([1.0, 2.5, 4], [0, -1.0, NAN, INF, True, "8", None]),
    truncation=([1.0, 3], [0.0, -2, NAN, INF, False]),
    eps=([1e-6, 0.1], [-1e-6, INF, NAN, True, "0"]),
    normalize=([True, False], ["yes", 1, None]),
    implementation=(["fast", "reference"], ["flash", None, 3]),
)


def draw_options(data, extra=()):
    options, bad = {}, set()
    for name, (valid, invalid) in list(OPTIONS.items()) + list(extra):
        value, wrong = data.draw(arg(name, valid, invalid), label=name)
        options[name] = value
        bad |= {wrong} - {None}
    return options, bad


def oracle_ok(y, shape, oracle):
    assert y.shape == shape
    assert torch.isfinite(y).all()
    if y.numel():  # the oracle's loops need at least one element
        torch.testing.assert_close(y.double(), oracle().reshape(shape), rtol=1e-4, atol=1e-5)


@SETTINGS
@given(st.data())
def test_context_pool_1d(data):
    options, bad = draw_options(data, [("causal", ([True, False], ["no", 0, 1, None]))])
    sigma_max = options["sigma_max"] if "sigma_max" not in bad else 2.0
    shape = (data.draw(st.integers(0, 2)), data.draw(st.integers(0, 5)))
    d = data.draw(st.integers(0, 3))
    x, bad_x = values(data, "x", shape + (d,), torch.randn, [NAN, INF, -INF])
    w, bad_w = values(data, "weights", shape, lambda s: torch.rand(s).clamp(0.05, 1.0), [-0.1, 1.5, NAN])
    tiny = data.draw(st.sampled_from([1e-30, 1e-3, 0.5]))
    s, bad_s = values(data, "sigma", shape, lambda s: (torch.rand(s) * sigma_max).clamp_min(tiny), [0.0, -1.0, NAN, INF, 2 * sigma_max + 1])
    mask, bad_m = masks(data, shape)
    if data.draw(st.booleans(), label="integer x") and x.numel():
        x, bad_x = x.long(), "x"
    bad |= {bad_x, bad_w, bad_s, bad_m} - {None}

    def expected(y):
        oracle_ok(y, x.shape, lambda: spec_oracle.pool_1d(
            x, w, s, radius=window_radius(sigma_max, options["truncation"]), causal=options["causal"],
            normalize=options["normalize"], eps=options["eps"], mask=mask))  # fmt: skip

    check_outcome(bad, lambda: context_pool(x, w, s, attention_mask=mask, **options), expected)


@SETTINGS
@given(st.data())
def test_context_pool_2d(data):
    options, bad = draw_options(data)
    sigma_max = options["sigma_max"] if "sigma_max" not in bad else 2.0
    stride, bad_stride = data.draw(arg("stride", [1, 2, 3], [0, -1, 1.5, True]), label="stride")
    shape = (data.draw(st.integers(0, 2)), data.draw(st.integers(0, 4)), data.draw(st.integers(0, 4)))
    good_stride = stride if bad_stride is None else 1
    out = (shape[0], strided_size(shape[1], good_stride) if shape[1] else 0, strided_size(shape[2], good_stride) if shape[2] else 0)
    d = data.draw(st.integers(0, 2))
    x, bad_x = values(data, "x", shape + (d,), torch.randn, [NAN, INF])
    w, bad_w = values(data, "weights", shape, torch.rand, [-0.5, 2.0, NAN])
    s, bad_s = values(data, "sigma", out, lambda s: (torch.rand(s) * sigma_max).clamp_min(1e-20), [0.0, NAN, 3 * sigma_max])
    mask, bad_m = masks(data, shape)
    bad |= {bad_stride, bad_x, bad_w, bad_s, bad_m} - {None}

    def expected(y):
        oracle_ok(y, out + (d,), lambda: spec_oracle.pool_2d(
            x, w, s, radius=window_radius(sigma_max, options["truncation"]), stride=stride,
            normalize=options["normalize"], eps=options["eps"], mask=mask))  # fmt: skip

    check_outcome(bad, lambda: context_pool_2d(x, w, s, stride=stride, attention_mask=mask, **options), expected)


@SETTINGS
@given(st.data())
def test_context_pool_module(data):
    spatial = data.draw(st.sampled_from([1, 2]))
    drawn = {
        "groups": arg("groups", [1, 2], [0, -1, 1.5, True]),
        "kernel_size": arg("kernel_size", [1, 3], [0, 2, True, 3.0]),
        "sigma_min": arg("sigma_min", [0.25, 1e-30], [0, -1.0, NAN, True, 100.0]),
        "truncation": arg("truncation", [2.0], [0.0, INF]),
        "causal": arg("causal", [spatial == 1 and True, False], ["no", None]),
        "stride": arg("stride", [1] + ([2] if spatial == 2 else []), [0, 2.5]),
        "mode": arg("mode", ["adaptive", "fixed", "fixed_learned"], ["learned"]),
    }
    kwargs, bad = {}, set()
    for name, strategy in drawn.items():
        kwargs[name], wrong = data.draw(strategy, label=name)
        bad |= {wrong} - {None}
    batch, sizes = data.draw(st.integers(0, 2)), [data.draw(st.integers(0, 4)) for _ in range(spatial)]
    hidden = torch.randn([batch, *sizes, 4])
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    if dtype == torch.float64:  # against float32 parameters (mode "fixed" has none: float64 is fine there)
        hidden, bad = hidden.double(), bad | ({"hidden"} if kwargs["mode"] != "fixed" else set())

    def run():
        pool = ContextPool(4, sigma_max=3.0, spatial_dims=spatial, **kwargs)
        return pool(hidden)

    def result_ok(y):
        stride = kwargs["stride"]
        out = [strided_size(n, stride) if n else 0 for n in sizes]
        groups = [kwargs["groups"]] if kwargs["groups"] > 1 else []
        assert y.shape == tuple([batch, *groups, *out, 4]) and torch.isfinite(y).all()

    check_outcome(bad, run, result_ok, starts=False)


# --------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------

TEXT_FIELDS = {
    "hidden_size": ([32, 48], [0, -8, 32.0, True, "32"]),
    "num_attention_heads": ([2, 4], [0, -1, 2.0]),
    "vocab_size": ([40, 99], [0, -3, 1.5]),
    "rope_theta": ([10000.0, 500], [0, -1.0, NAN, INF]),
    "norm_eps": ([1e-5, 1e-12], [0.0, -1e-5, NAN, INF]),
    "initializer_range": ([0.0, 0.02], [-0.02, NAN, INF]),
    "hidden_dropout": ([0.0, 0.5], [1.0, -0.1, NAN, True]),
    "attention_dropout": ([0.1], [1.5, NAN]),
    "pad_token_id": ([None, 0, 30], [-1, -5, 40, 1.0]),
    "eos_token_id": ([None, 2, [2, 3]], [-2, 400, [2, 400]]),
    "pool_sigma_min": ([0.5, 1e-3], [0.0, -1.0, NAN, 9.0]),
    "pool_sigma_max": ([8.0, 4], [0.0, NAN, INF]),
    "pool_truncation": ([3.0, 1], [0.0, NAN, INF]),
    "pool_kernel_size": ([1, 3, 5], [0, 2, 4, -1]),
    "pool_mix_init": ([0.0, 1.0], [1.5, -0.5, NAN]),
    "pool_groups": ([1, 2], [0, 3]),
    "pool_layers": ([None, [], [0, 1]], [[2], [-1]]),
    "max_position_embeddings": ([64], [0, -4]),
}
SEQ2SEQ_FIELDS = {
    "d_model": ([32], [0, 30, -32]),
    "norm_eps": ([1e-5], [0.0, NAN, INF]),
    "init_std": ([0.02], [-1.0, NAN]),
    "dropout": ([0.0, 0.3], [1.0, NAN]),
    "activation_function": (["gelu", "swish"], ["nope", "GELU"]),
    "bos_token_id": ([1, None], [-1, 40]),
    "decoder_start_token_id": ([0, 1], [-1, 99]),
    "forced_eos_token_id": ([None, 2], [-3, 41]),
    "pool_truncation": ([2.0], [INF, NAN, 0]),
}
VIT_FIELDS = {
    "hidden_dropout_prob": ([0.0, 0.2], [1.0, NAN, -0.1]),
    "hidden_act": (["gelu", "relu"], ["nope", 3]),
    "layer_norm_eps": ([1e-12], [0.0, NAN]),
    "pool_sigma_max": ([2.0], [INF, NAN, 0.1]),
    "pool_kernel_size": ([3], [2, 0]),
    "initializer_range": ([0.02], [NAN, -1.0]),
}
CONFIGS = [
    (ContextPoolConfig, dict(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4), TEXT_FIELDS),
    (ContextPoolSeq2SeqConfig, dict(vocab_size=40, d_model=32, encoder_attention_heads=4, decoder_attention_heads=4), SEQ2SEQ_FIELDS),
    (ContextPoolViTConfig, dict(hidden_size=32, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8), VIT_FIELDS),
]


@SETTINGS
@given(st.data())
def test_configs(data):
    cls, base, fields = data.draw(st.sampled_from(CONFIGS))
    kwargs, bad = dict(base), set()
    for name in data.draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=3, unique=True)):
        kwargs[name], wrong = data.draw(arg(name, *fields[name]), label=name)
        bad |= {wrong} - {None}

    def result_ok(config):
        for name in kwargs:
            assert getattr(config, name) == kwargs[name]

    check_outcome(bad, lambda: cls(**kwargs), result_ok, starts=False)


# --------------------------------------------------------------------------------------
# Models: forward and generate
# --------------------------------------------------------------------------------------

VOCAB = 40
_MODELS = {}


def causal_lm():
    if "lm" not in _MODELS:
        torch.manual_seed(0)
        config = ContextPoolConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                   max_position_embeddings=16, is_causal=True, pad_token_id=0, pool_sigma_max=3.0)  # fmt: skip
        _MODELS["lm"] = ContextPoolForCausalLM(config).eval()
    return _MODELS["lm"]


def seq2seq():
    if "s2s" not in _MODELS:
        torch.manual_seed(0)
        config = ContextPoolSeq2SeqConfig(vocab_size=VOCAB, d_model=16, encoder_layers=1, decoder_layers=1,
                                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                                          decoder_ffn_dim=32, max_position_embeddings=16, pool_sigma_max=3.0)  # fmt: skip
        _MODELS["s2s"] = ContextPoolForConditionalGeneration(config).eval()
    return _MODELS["s2s"]


def token_tensor(data, name, batch, n, allow_empty=True):
    """(ids, name if invalid): in-vocabulary ids, or out of range / negative / float / empty."""
    kind = data.draw(st.sampled_from(["ok", "ok", "ok", "high", "negative", "float"] + (["empty"] if allow_empty else [])), label=name)
    ids = torch.randint(1, VOCAB, (batch, n))
    if kind == "ok":
        return ids, None
    if kind == "empty":
        return ids[:, :0], name
    if kind == "float":
        return ids.float(), name
    ids, _ = inject(ids, VOCAB + 5 if kind == "high" else -3, data)
    return ids, name


def label_tensor(data, name, batch, n):
    kind = data.draw(st.sampled_from(["none", "ok", "ignored", "high", "shape", "float"]), label=name)
    labels = torch.randint(0, VOCAB, (batch, n))
    if kind == "none":
        return None, None
    if kind == "ok":
        return labels, None
    if kind == "ignored":
        return labels.masked_fill(torch.rand(batch, n) < 0.5, -100), None
    if kind == "high":
        return inject(labels, VOCAB, data)[0], name
    if kind == "shape":
        return labels[:, :-1], name
    return labels.float(), name


@SETTINGS
@given(st.data())
def test_causal_lm_forward(data):
    model = causal_lm()
    batch, n = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 6))
    bad, kwargs = set(), {}
    if data.draw(st.booleans(), label="embeds"):
        dtype = data.draw(st.sampled_from([torch.float32, torch.float32, torch.float64, torch.long]))
        kwargs["inputs_embeds"] = torch.randn(batch, n, 16).to(dtype)
        bad |= {"inputs_embeds"} if dtype != torch.float32 else set()
    else:
        kwargs["input_ids"], wrong = token_tensor(data, "input_ids", batch, n)
        bad |= {wrong} - {None}
    kwargs["attention_mask"], wrong = masks(data, (batch, n))
    for name in ("labels", "shift_labels"):
        kwargs[name], wrong_label = label_tensor(data, name, batch, n)
        bad |= {wrong, wrong_label} - {None}
    if "input_ids" in bad and kwargs["input_ids"].shape[1] == 0:
        bad |= {"attention_mask", "labels", "shift_labels"}  # sized for n tokens, the input has none

    def result_ok(out):
        assert out.logits.shape == (batch, n, VOCAB) and torch.isfinite(out.logits).all()
        targets = kwargs["shift_labels"]
        if targets is None and kwargs["labels"] is not None:
            targets = kwargs["labels"][:, 1:]  # what the shifted labels predict
        assert (out.loss is not None) == (targets is not None)
        if targets is not None and (targets != -100).any():  # all ignored: NaN, as in transformers
            assert torch.isfinite(out.loss)

    with torch.no_grad():
        check_outcome(bad, lambda: model(**{k: v for k, v in kwargs.items() if v is not None}), result_ok, starts=False)


@SETTINGS
@given(st.data())
def test_seq2seq_forward(data):
    model = seq2seq()
    batch, m, n = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 5)), data.draw(st.integers(1, 4))
    src, bad_src = token_tensor(data, "input_ids", batch, m, allow_empty=False)
    tgt, bad_tgt = token_tensor(data, "decoder_input_ids", batch, n, allow_empty=False)
    src_mask, bad_m = masks(data, (batch, m))
    tgt_mask, bad_dm = masks(data, (batch, n))
    bad_dm = "decoder_attention_mask" if bad_dm else None
    labels, bad_l = label_tensor(data, "labels", batch, n)
    bad = {bad_src, bad_tgt, bad_m, bad_dm, bad_l} - {None}
    kwargs = dict(input_ids=src, decoder_input_ids=tgt, attention_mask=src_mask, decoder_attention_mask=tgt_mask, labels=labels)

    def result_ok(out):
        assert out.logits.shape == (batch, n, VOCAB) and torch.isfinite(out.logits).all()
        assert (out.loss is not None) == (labels is not None)

    with torch.no_grad():
        check_outcome(bad, lambda: model(**{k: v for k, v in kwargs.items() if v is not None}), result_ok, starts=False)


@FEW
@given(st.data())
def test_generate(data):
    family = data.draw(st.sampled_from(["causal", "seq2seq"]))
    model = causal_lm() if family == "causal" else seq2seq()
    batch, n = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 5))
    kind = data.draw(st.sampled_from(["ok", "ok", "high"]))
    ids = torch.randint(1, VOCAB, (batch, n))
    if kind == "high":
        ids[0, -1] = VOCAB + 1
    mask, bad_m = masks(data, (batch, n))
    if mask is not None and mask.dim() == 2 and not bad_m:
        mask = mask.clone()
        mask[:, -1] = 1  # generation continues the last token: it must be real
    bad = {bad_m, "input_ids" if kind == "high" else None} - {None}
    kwargs = dict(attention_mask=mask) if mask is not None else {}

    def result_ok(out):
        assert out.shape[0] == batch and out.shape[1] >= (n + 1 if family == "causal" else 2)
        assert int(out.min()) >= 0 and int(out.max()) < VOCAB

    check_outcome(bad, lambda: model.generate(ids, max_new_tokens=2, do_sample=False, **kwargs), result_ok, starts=False)
