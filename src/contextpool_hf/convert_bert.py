"""BERT-family sources (BertModel and its heads) -> ContextPool encoder models.

Post-norm LayerNorm encoder with learned absolute positions and token types; the pooler
(dense + tanh on [CLS]) lives in the body and is kept where the target uses it.
"""

from __future__ import annotations

from .configuration_contextpool import ContextPoolConfig
from .convert_keymap import SourceFamily, UnsupportedArchitectureError, _Entry, hidden_act, layer_entries


def bert_config_fields(cfg) -> dict:
    position_type = getattr(cfg, "position_embedding_type", "absolute")
    if position_type != "absolute":
        raise UnsupportedArchitectureError(
            f"BERT position_embedding_type={position_type!r} is not supported (only 'absolute' converts)"
        )
    if getattr(cfg, "is_decoder", False) or getattr(cfg, "add_cross_attention", False):
        raise UnsupportedArchitectureError("BERT as a decoder (is_decoder / add_cross_attention) is not supported")
    return dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_attention_heads,
        head_dim=cfg.hidden_size // cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size,
        mlp_type="gelu",
        hidden_act=hidden_act(cfg, "hidden_act"),
        max_position_embeddings=cfg.max_position_embeddings,
        position_embedding_type="absolute",
        type_vocab_size=cfg.type_vocab_size,
        norm_type="layernorm",
        norm_eps=cfg.layer_norm_eps,
        norm_bias=True,
        norm_position="post",
        embedding_norm=True,
        final_norm=False,
        attention_bias=True,
        mlp_bias=True,
        is_causal=False,
        hidden_dropout=cfg.hidden_dropout_prob,
        attention_dropout=cfg.attention_probs_dropout_prob,
        embedding_dropout=cfg.hidden_dropout_prob,
        classifier_dropout=(
            cfg.classifier_dropout if getattr(cfg, "classifier_dropout", None) is not None else cfg.hidden_dropout_prob
        ),
        initializer_range=cfg.initializer_range,
        mlm_head_transform=True,
        classifier_pooling="cls",
        use_pooler=True,
    )


def bert_body(config: ContextPoolConfig) -> list[_Entry]:
    entries = [
        _Entry("embed_tokens.weight", "embeddings.word_embeddings.weight"),
        _Entry("embed_positions.weight", "embeddings.position_embeddings.weight"),
        _Entry("embed_token_types.weight", "embeddings.token_type_embeddings.weight"),
        _Entry("embed_norm.weight", "embeddings.LayerNorm.weight"),
        _Entry("embed_norm.bias", "embeddings.LayerNorm.bias"),
    ]
    pairs = [
        ("attention.q_proj", "attention.self.query", True),
        ("attention.k_proj", "attention.self.key", True),
        ("attention.v_proj", "attention.self.value", True),
        ("attention.o_proj", "attention.output.dense", True),
        ("attn_norm", "attention.output.LayerNorm", True),
        ("mlp.up_proj", "intermediate.dense", True),
        ("mlp.down_proj", "output.dense", True),
        ("mlp_norm", "output.LayerNorm", True),
    ]
    for i in range(config.num_hidden_layers):
        entries += layer_entries(f"layers.{i}", f"encoder.layer.{i}", pairs)
    return entries


def bert_heads(task: str, config: ContextPoolConfig) -> list[_Entry]:
    """Head keys (outside the bodies), relative to the model roots."""
    return {
        "masked-lm": [
            _Entry("cls.dense.weight", "cls.predictions.transform.dense.weight"),
            _Entry("cls.dense.bias", "cls.predictions.transform.dense.bias"),
            _Entry("cls.norm.weight", "cls.predictions.transform.LayerNorm.weight"),
            _Entry("cls.norm.bias", "cls.predictions.transform.LayerNorm.bias"),
            _Entry("cls.decoder.weight", "cls.predictions.decoder.weight"),
            _Entry("cls.bias", "cls.predictions.bias"),
        ],
        "sequence-classification": [
            _Entry("classifier.weight", "classifier.weight"),
            _Entry("classifier.bias", "classifier.bias"),
        ],
        "token-classification": [
            _Entry("classifier.weight", "classifier.weight"),
            _Entry("classifier.bias", "classifier.bias"),
        ],
        "question-answering": [
            _Entry("qa_outputs.weight", "qa_outputs.weight"),
            _Entry("qa_outputs.bias", "qa_outputs.bias"),
        ],
    }.get(task, [])


BERT = SourceFamily(
    model_type="bert",
    config_fields=bert_config_fields,
    body_entries=bert_body,
    head_entries=bert_heads,
    architectures={
        "BertModel": "base",
        "BertForMaskedLM": "masked-lm",
        "BertForPreTraining": "masked-lm",  # the next-sentence head is dropped
        "BertForSequenceClassification": "sequence-classification",
        "BertForTokenClassification": "token-classification",
        "BertForQuestionAnswering": "question-answering",
    },
    tasks=("base", "masked-lm", "sequence-classification", "token-classification", "question-answering"),
)
