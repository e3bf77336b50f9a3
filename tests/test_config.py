"""ContextPoolConfig: defaults, validation (types and ranges, each naming the field), round trips."""

import json

import pytest
from huggingface_hub.errors import StrictDataclassClassValidationError, StrictDataclassFieldValidationError

from contextpool_hf import ContextPoolConfig
from contextpool_hf.configuration_contextpool import CONTEXTPOOL_AUTO_MAP

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)


def test_defaults_are_derived():
    config = ContextPoolConfig(**TINY)
    assert config.model_type == "contextpool"
    assert config.num_key_value_heads == 4
    assert config.head_dim == 8
    assert config.intermediate_size == 128
    assert config.embedding_dropout == config.hidden_dropout == config.classifier_dropout
    assert config.auto_map == CONTEXTPOOL_AUTO_MAP
    assert len(config.auto_map) == 7
    # spec defaults
    assert (config.pool_sigma_min, config.pool_sigma_max, config.pool_truncation) == (0.5, 8.0, 3.0)
    assert (config.pool_groups, config.pool_target, config.pool_normalize) == (1, "qkv", True)
    assert config.pool_kernel_size == 3


def test_layer_pools():
    assert all(ContextPoolConfig(**TINY).layer_pools(i) for i in range(2))
    config = ContextPoolConfig(**TINY, pool_layers=[1])
    assert not config.layer_pools(0) and config.layer_pools(1)
    assert not any(ContextPoolConfig(**TINY, pool_layers=[]).layer_pools(i) for i in range(2))


@pytest.mark.parametrize(
    "field, value",
    [
        ("hidden_size", "32"),
        ("hidden_size", 32.0),
        ("num_hidden_layers", None),
        ("pool_target", "q"),
        ("pool_sigma_max", "8"),
        ("pool_layers", [0.5]),
        ("pool_layers", 1),
        ("position_embedding_type", "alibi"),
        ("norm_type", "batchnorm"),
        ("mlp_type", "swiglu"),
        ("pool_implementation", "cuda"),
        ("pool_normalize", "yes"),
        ("is_causal", 1),
    ],
)
def test_wrong_type_names_the_field(field, value):
    with pytest.raises(StrictDataclassFieldValidationError, match=field):
        ContextPoolConfig(**{**TINY, field: value})


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(hidden_size=0), "hidden_size"),
        (dict(num_attention_heads=-1), "num_attention_heads"),
        (dict(num_key_value_heads=3), "num_key_value_heads"),
        (dict(pool_groups=3), "pool_groups"),
        (dict(pool_groups=0), "pool_groups"),
        (dict(pool_sigma_min=0.0), "pool_sigma_min"),
        (dict(pool_sigma_min=9.0), "pool_sigma_max"),
        (dict(pool_truncation=0.0), "pool_truncation"),
        (dict(pool_kernel_size=4), "pool_kernel_size"),
        (dict(pool_predictor_width=0), "pool_predictor_width"),
        (dict(pool_mix_init=1.5), "pool_mix_init"),
        (dict(pool_layers=[0, 2]), "pool_layers"),
        (dict(pool_layers=[-1]), "pool_layers"),
        (dict(hidden_dropout=1.0), "hidden_dropout"),
        (dict(attention_dropout=-0.1), "attention_dropout"),
        (dict(max_position_embeddings=0), "max_position_embeddings"),
        (dict(hidden_act="not_an_activation"), "hidden_act"),
        (dict(norm_eps=0.0), "norm_eps"),
        (dict(head_dim=7, position_embedding_type="rotary"), "head_dim"),
        (dict(type_vocab_size=-1), "type_vocab_size"),
    ],
)
def test_bad_range_names_the_field(overrides, field):
    with pytest.raises(StrictDataclassClassValidationError, match=field):
        ContextPoolConfig(**{**TINY, **overrides})


def test_good_edge_values_are_accepted():
    ContextPoolConfig(**TINY, num_key_value_heads=2, pool_groups=2, pool_layers=[], pool_mix_init=0.0)
    ContextPoolConfig(**TINY, head_dim=7, position_embedding_type="absolute", pool_kernel_size=1)
    ContextPoolConfig(**TINY, rope_theta=500000, eos_token_id=[1, 2], pool_sigma_min=1, pool_sigma_max=2)


def test_save_load_round_trip(tmp_path):
    config = ContextPoolConfig(
        **TINY, is_causal=True, pool_layers=[1], pool_groups=2, pool_target="kv", pool_sigma_max=4.0,
        num_labels=3, mlp_type="gated", norm_type="rmsnorm",
    )
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "contextpool"
    assert saved["auto_map"] == CONTEXTPOOL_AUTO_MAP
    loaded = ContextPoolConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.pool_layers == [1] and loaded.pool_target == "kv" and loaded.num_labels == 3


def test_auto_config_resolves_in_process(tmp_path):
    from transformers import AutoConfig

    assert type(AutoConfig.for_model("contextpool", **TINY)) is ContextPoolConfig
    ContextPoolConfig(**TINY).save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is ContextPoolConfig
