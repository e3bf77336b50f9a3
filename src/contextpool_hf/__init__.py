"""contextpool-hf: ContextPool (adaptive context pooling before attention) for Hugging Face Transformers.

Importing the package registers every ContextPool config and model with transformers'
Auto classes, and marks them so that `save_pretrained` writes the flat remote-code files
next to the weights (users without this package load them with `trust_remote_code=True`).
"""

from transformers import AutoConfig

from .pooling_contextpool import (
    ContextPool,
    ContextPoolPredictor,
    context_pool,
    context_pool_2d,
    window_radius,
)

__version__ = "0.1.0"


def _register(config_class, model_classes: dict) -> None:
    """Register a config and its models with the Auto classes (in process and for remote code)."""
    import transformers

    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    config_class.register_for_auto_class()
    for model_class, auto_name in model_classes.items():
        getattr(transformers, auto_name).register(config_class, model_class, exist_ok=True)
        model_class.register_for_auto_class(auto_name)


__all__ = ["ContextPool", "ContextPoolPredictor", "context_pool", "context_pool_2d", "window_radius", "__version__"]

# --- text models -------------------------------------------------------------------------
from .configuration_contextpool import ContextPoolConfig  # noqa: E402
from .modeling_contextpool import (  # noqa: E402
    ContextPoolCache,
    ContextPoolForCausalLM,
    ContextPoolForMaskedLM,
    ContextPoolForQuestionAnswering,
    ContextPoolForSequenceClassification,
    ContextPoolForTokenClassification,
    ContextPoolModel,
    ContextPoolPreTrainedModel,
    ContextPoolStaticCache,
)

_register(
    ContextPoolConfig,
    {
        ContextPoolModel: "AutoModel",
        ContextPoolForMaskedLM: "AutoModelForMaskedLM",
        ContextPoolForCausalLM: "AutoModelForCausalLM",
        ContextPoolForSequenceClassification: "AutoModelForSequenceClassification",
        ContextPoolForTokenClassification: "AutoModelForTokenClassification",
        ContextPoolForQuestionAnswering: "AutoModelForQuestionAnswering",
    },
)
__all__ += [
    "ContextPoolConfig",
    "ContextPoolCache",
    "ContextPoolStaticCache",
    "ContextPoolPreTrainedModel",
    "ContextPoolModel",
    "ContextPoolForMaskedLM",
    "ContextPoolForCausalLM",
    "ContextPoolForSequenceClassification",
    "ContextPoolForTokenClassification",
    "ContextPoolForQuestionAnswering",
]

# --- vision models -----------------------------------------------------------------------
from .configuration_contextpool_vision import ContextPoolResNetConfig, ContextPoolViTConfig  # noqa: E402
from .modeling_contextpool_vision import (  # noqa: E402
    ContextPoolResNetForImageClassification,
    ContextPoolResNetModel,
    ContextPoolViTForImageClassification,
    ContextPoolViTModel,
)

_register(
    ContextPoolViTConfig,
    {ContextPoolViTModel: "AutoModel", ContextPoolViTForImageClassification: "AutoModelForImageClassification"},
)
_register(
    ContextPoolResNetConfig,
    {ContextPoolResNetModel: "AutoModel", ContextPoolResNetForImageClassification: "AutoModelForImageClassification"},
)
__all__ += [
    "ContextPoolViTConfig",
    "ContextPoolViTModel",
    "ContextPoolViTForImageClassification",
    "ContextPoolResNetConfig",
    "ContextPoolResNetModel",
    "ContextPoolResNetForImageClassification",
]

# --- encoder-decoder (translation) ---------------------------------------------------------
# (added by the translation work)
from .configuration_contextpool_seq2seq import ContextPoolSeq2SeqConfig  # noqa: E402
from .modeling_contextpool_seq2seq import (  # noqa: E402
    ContextPoolForConditionalGeneration,
    ContextPoolSeq2SeqModel,
    ContextPoolSeq2SeqPreTrainedModel,
)

_register(
    ContextPoolSeq2SeqConfig,
    {ContextPoolSeq2SeqModel: "AutoModel", ContextPoolForConditionalGeneration: "AutoModelForSeq2SeqLM"},
)
__all__ += [
    "ContextPoolSeq2SeqConfig",
    "ContextPoolSeq2SeqPreTrainedModel",
    "ContextPoolSeq2SeqModel",
    "ContextPoolForConditionalGeneration",
]
