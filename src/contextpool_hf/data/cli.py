"""Everything at once (`prepare_all`) and the `contextpool-hf prepare-data` verb (`add_arguments`, `run`)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .classification import prepare_classification
from .common import (
    DATA_DIR_ENV,
    DEFAULT_SEED,
    IMAGE_DATASETS,
    LM_CORPORA,
    TASKS,
    MissingDataPackageError,
    default_data_dir,
)
from .images import prepare_images
from .lm import prepare_lm
from .translation import prepare_translation

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
