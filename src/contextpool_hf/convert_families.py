"""The text source families `contextpool_hf.convert` converts by key map (one module per family)."""

from __future__ import annotations

from .convert_bert import BERT
from .convert_gpt2 import GPT2
from .convert_keymap import SourceFamily
from .convert_llama import LLAMA, MISTRAL, QWEN2, QWEN3

FAMILIES: dict[str, SourceFamily] = {f.model_type: f for f in (BERT, GPT2, LLAMA, MISTRAL, QWEN2, QWEN3)}
# model_types converted here, by key map.
SUPPORTED_SOURCES: tuple[str, ...] = tuple(FAMILIES)
# Source classes converted with their head: class name -> (model_type, task).
SOURCE_ARCHITECTURES: dict[str, tuple[str, str]] = {
    name: (family.model_type, task) for family in FAMILIES.values() for name, task in family.architectures.items()
}
