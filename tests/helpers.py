"""Shared test builders: a tiny ContextPool causal LM and random token ids for it, and what a graph keeps.

Small enough to run many variants on CPU; a narrow pooling window (sigma <= 2, truncation 2) so
that short sequences and generation run well past it, and a wide initialisation so that greedy
decoding does not collapse to one repeated token (tests compare token sequences).
"""

from pathlib import Path

import torch

from contextpool_hf import ContextPoolConfig, ContextPoolForCausalLM

TINY_VOCAB = 61

# Config overrides a cache must be exact under: pooling groups and the eager product, pooling only k/v,
# grouped-query attention with a Llama block, learned absolute positions with a pooling layer subset.
CACHE_VARIANTS = [
    dict(),
    dict(pool_groups=2, attn_implementation="eager"),
    dict(pool_groups=4, pool_target="kv"),
    dict(num_key_value_heads=2, pool_groups=2, mlp_type="gated", norm_type="rmsnorm", hidden_act="silu"),
    dict(position_embedding_type="absolute", pool_layers=[1], pool_kernel_size=5),
]


def tiny_causal_lm(seed: int = 0, **overrides) -> ContextPoolForCausalLM:
    """A 2-layer, hidden-32 causal LM in eval mode, its weights drawn from `seed`; `overrides` are config fields."""
    base = dict(
        vocab_size=TINY_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=96, pad_token_id=0, eos_token_id=None, bos_token_id=None, is_causal=True,
        pool_sigma_max=2.0, pool_truncation=2.0, initializer_range=0.2,
    )  # fmt: skip
    base.update(overrides)
    torch.manual_seed(seed)
    return ContextPoolForCausalLM(ContextPoolConfig(**base)).eval()


def random_ids(batch: int = 2, n: int = 7, seed: int = 1, vocab_size: int = TINY_VOCAB) -> torch.Tensor:
    """(batch, n) token ids in [1, vocab_size): never 0, the pad id."""
    return torch.randint(1, vocab_size, (batch, n), generator=torch.Generator().manual_seed(seed))


def saved_storages(fn):
    """(fn(), {storage address: bytes} of every tensor fn's autograd graph keeps for its backward, each storage once)."""
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return result, saved


def package_import_path() -> str:
    """The folder that holds the contextpool_hf these tests import, for a subprocess's PYTHONPATH: a subprocess
    that should run the package under test must import this tree, not whichever one is installed (the mutation
    check runs the tests on a copy of the repository with PYTHONPATH on the copy's src)."""
    import contextpool_hf

    return str(Path(contextpool_hf.__file__).resolve().parents[1])
