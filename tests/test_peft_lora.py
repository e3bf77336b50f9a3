"""LoRA from PEFT on every linear and conv layer, the pooling predictor's included: the adapted model equals the
same adapter merged into plain weights (forward, cached decoding, the vision models), so no adapter is skipped by a
fast path that reads the weights directly."""

import pytest
import torch
from helpers import random_ids, tiny_causal_lm

from contextpool_hf import (
    ContextPoolResNetConfig,
    ContextPoolResNetForImageClassification,
    ContextPoolViTConfig,
    ContextPoolViTForImageClassification,
)

peft = pytest.importorskip("peft")


def _lora(model, targets, rank=2):
    torch.manual_seed(0)
    config = peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, init_lora_weights=False)
    return peft.get_peft_model(model, config).eval()


def _merged(adapted):
    return adapted.merge_and_unload().eval()


def _cached_step_logits(model, input_ids, steps=3):
    """Logits of the last `steps` tokens fed one at a time after a cached prefix: (B, steps, V)."""
    n = input_ids.shape[1]
    cache, logits = model(input_ids=input_ids[:, : n - steps], use_cache=True).cache, []
    for t in range(n - steps, n):
        out = model(input_ids=input_ids[:, t : t + 1], cache=cache, use_cache=True)
        cache = out.cache
        logits.append(out.logits)
    return torch.cat(logits, dim=1)


def test_lora_on_the_predictor_projection_is_applied_in_the_forward_and_in_decoding():
    base = tiny_causal_lm(max_position_embeddings=64).float().eval()
    adapted = _lora(base, "all-linear")
    wrapped = [name for name, module in adapted.named_modules() if name.endswith("predictor.proj") and hasattr(module, "lora_A")]
    assert wrapped, "the predictor's projection should carry a LoRA adapter"
    assert not any(m.reads_weights_directly for n, m in adapted.named_modules() if n.endswith("predictor"))
    input_ids = random_ids(2, 12)
    with torch.no_grad():
        logits = adapted(input_ids=input_ids).logits
        stepped = _cached_step_logits(adapted, input_ids)
        tokens = adapted.generate(input_ids=input_ids, max_new_tokens=6, do_sample=False)
    merged = _merged(adapted)
    with torch.no_grad():
        expected = merged(input_ids=input_ids).logits
        torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(stepped, expected[:, -3:], rtol=1e-4, atol=1e-4)
        assert torch.equal(tokens, merged.generate(input_ids=input_ids, max_new_tokens=6, do_sample=False))


def test_lora_on_the_predictor_conv_is_applied_and_decodes_like_the_full_forward():
    """PEFT cannot merge a grouped conv's adapter, so the reference is the model's own uncached forward: a cached
    decoding step (which runs the wrapped conv on its window) equals it, and the adapter changes the output."""
    base = tiny_causal_lm(max_position_embeddings=64).float().eval()
    adapted = _lora(base, ["conv"], rank=32)  # the depthwise conv takes LoRA only at a rank its 32 groups divide
    input_ids = random_ids(2, 12)
    with torch.no_grad():
        full = adapted(input_ids=input_ids).logits
        with adapted.disable_adapter():
            plain = adapted(input_ids=input_ids).logits
        assert not torch.allclose(full, plain, atol=1e-3)  # the adapter is applied
        stepped = _cached_step_logits(adapted, input_ids)
    torch.testing.assert_close(stepped, full[:, -3:], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("groups", [1, 2])
def test_lora_on_the_attention_projections_is_applied_with_pooled_projections(groups):
    """pool_groups > 1 pools the q/k/v projections before their bias: an adapter on them must still apply."""
    adapted = _lora(tiny_causal_lm(max_position_embeddings=64, pool_groups=groups).float().eval(),
                    ["q_proj", "k_proj", "v_proj"])
    input_ids = random_ids(2, 12)
    with torch.no_grad():
        logits = adapted(input_ids=input_ids).logits
        stepped = _cached_step_logits(adapted, input_ids)
        expected = _merged(adapted)(input_ids=input_ids).logits
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(stepped, expected[:, -3:], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family,targets,groups", [
    ("vit", ["proj"], 1), ("vit", ["q_proj", "k_proj", "v_proj"], 1), ("vit", ["q_proj", "k_proj", "v_proj"], 2),
    ("resnet", ["proj"], 1),
])
def test_lora_on_the_vision_models_is_applied(family, targets, groups):
    torch.manual_seed(0)
    if family == "vit":
        model = ContextPoolViTForImageClassification(ContextPoolViTConfig(
            hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, image_size=16,
            patch_size=4, num_labels=3, pool_groups=groups))
    else:
        model = ContextPoolResNetForImageClassification(ContextPoolResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=3))
    adapted = _lora(model.eval(), targets)
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = adapted(pixel_values=pixels).logits
        torch.testing.assert_close(logits, _merged(adapted)(pixel_values=pixels).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("groups", [1, 2])
def test_lora_on_the_seq2seq_projections_is_applied(groups):
    """The cross-attention memory pools its k/v projections before their bias when pool_groups > 1."""
    from contextpool_hf import ContextPoolForConditionalGeneration, ContextPoolSeq2SeqConfig

    torch.manual_seed(0)
    model = ContextPoolForConditionalGeneration(ContextPoolSeq2SeqConfig(
        vocab_size=40, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=48, dropout=0.0,
        pool_sigma_max=2.0, pool_truncation=2.0, pool_groups=groups)).eval()
    adapted = _lora(model, ["k_proj", "v_proj", "proj"])
    source, target = random_ids(2, 9, vocab_size=40), random_ids(2, 7, seed=2, vocab_size=40)
    with torch.no_grad():
        logits = adapted(input_ids=source, decoder_input_ids=target).logits
        expected = _merged(adapted)(input_ids=source, decoder_input_ids=target).logits
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
