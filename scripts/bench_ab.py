#!/usr/bin/env python
"""A/B of the working tree's ContextPool against another git revision's, in one process.

The revision's package (`src/contextpool_hf`, flat files with relative imports) is extracted with
`git archive` into a temporary folder and imported beside the working tree's under another name,
so both versions and transformers' model of the same size run in the same process, alternated
step by step (A B C, A C B, ...: none twice in a row), on the sizes of `scripts/bench_vision.py` (vit, resnet) and
`scripts/bench_model.py` (causal-lm: n = 1024, batch 4; seq2seq: Marian-shaped, 16 x 128; generate-b1 and
generate-b8: greedy decoding with the cache, prompt 128, 64 new tokens, against Llama, timed per generate call;
generate-compiled-b1 and generate-compiled-b8: the same with a static cache and the decoding steps compiled by
inductor, as `bench_model.py --compile` runs them (the warm-up call compiles each model's step, a minute or so);
decode-b1 and decode-b8: the same decoding timed per forward, the prompt's and each new token's, the three
models alternated call by call: far steadier on a shared machine, and without generate's own work;
decode-static-b1 and decode-static-b8: those forwards on a new static cache per prompt, eager (ContextPool on its
ContextPoolStaticCache, Llama on transformers' StaticCache)).
Each ratio is the median of the per-step ratios of process CPU time (the steadier estimate on a
shared machine), with its min-max spread.

    python scripts/bench_ab.py --ref HEAD --models resnet vit --repeats 40
    python scripts/bench_ab.py --ref HEAD~3 --models causal-lm --repeats 8
    python scripts/bench_ab.py --ref HEAD --models generate-b1 generate-b8 --repeats 10
    python scripts/bench_ab.py --ref HEAD --models decode-b1 decode-b8 --repeats 650
    python scripts/bench_ab.py --ref HEAD --models decode-static-b8 --repeats 1000
    python scripts/bench_ab.py --ref HEAD --models generate-compiled-b8 --repeats 30

`new/ref` below 1 means the working tree is faster than the revision. Nothing is written unless
`--json PATH` is given (a file that exists is refused: pick a new name).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.machinery
import importlib.util
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import types
from pathlib import Path

# the benchmarks whose model sizes and steps are compared (scripts/ is on sys.path when run as a script)
import bench_device
import bench_model
import bench_vision
import torch

FAMILIES = ("vit", "resnet", "causal-lm", "seq2seq", "generate-b1", "generate-b8", "generate-compiled-b1",
            "generate-compiled-b8", "decode-b1", "decode-b8", "decode-static-b1", "decode-static-b8")
REF_PACKAGE = "contextpool_hf_ref"
# the names each benchmark module builds its ContextPool models from
_PATCHED = {
    "vit": (bench_vision, ("ContextPoolViTConfig", "ContextPoolViTForImageClassification")),
    "resnet": (bench_vision, ("ContextPoolResNetConfig", "ContextPoolResNetForImageClassification")),
    "causal-lm": (bench_model, ("ContextPoolConfig", "ContextPoolForCausalLM")),
    "seq2seq": (bench_model, ("ContextPoolSeq2SeqConfig", "ContextPoolForConditionalGeneration")),
    "generate-b1": (bench_model, ("ContextPoolConfig", "ContextPoolForCausalLM")),
    "generate-b8": (bench_model, ("ContextPoolConfig", "ContextPoolForCausalLM")),
    "generate-compiled-b1": (bench_model, ("ContextPoolConfig", "ContextPoolForCausalLM")),
    "generate-compiled-b8": (bench_model, ("ContextPoolConfig", "ContextPoolForCausalLM")),
    "decode-b1": (bench_model, ("ContextPoolConfig", "ContextPoolForCausalLM")),
    "decode-b8": (bench_model, ("ContextPoolConfig", "ContextPoolForCausalLM")),
    "decode-static-b1": (bench_model, ("ContextPoolConfig", "ContextPoolForCausalLM")),
    "decode-static-b8": (bench_model, ("ContextPoolConfig", "ContextPoolForCausalLM")),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ref", default="HEAD", help="git revision to compare the working tree with (default HEAD)")
    parser.add_argument("--models", nargs="+", default=["resnet", "vit"], choices=FAMILIES)
    parser.add_argument("--repeats", type=int, default=20, help="timed steps of each model (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--quick", action="store_true", help="small batches and sizes (smoke test)")
    parser.add_argument("--json", default=None, help="also write the results to this new file")
    bench_device.add_malloc_argument(parser)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.json is not None and Path(args.json).exists():
        parser.error(f"--json {args.json} exists: give a new file name (results are never overwritten)")
    bench_device.apply_malloc(parser, args.malloc)
    return args


def extract_revision(ref: str, into: Path) -> Path:
    """`git archive` the revision's src/contextpool_hf into `into`/contextpool_hf_ref; a clear error if it cannot."""
    root = Path(__file__).resolve().parent.parent
    into.mkdir(parents=True, exist_ok=True)
    archive = into / "ref.tar"
    try:
        with open(archive, "wb") as handle:
            subprocess.run(["git", "-C", str(root), "archive", ref, "src/contextpool_hf"], stdout=handle,
                           stderr=subprocess.PIPE, check=True)
    except FileNotFoundError as error:
        raise SystemExit("bench_ab.py: error: git is not installed: it is needed to read --ref") from error
    except subprocess.CalledProcessError as error:
        message = error.stderr.decode(errors="replace").strip().splitlines()
        raise SystemExit(f"bench_ab.py: error: --ref {ref!r}: {message[-1] if message else 'git archive failed'}") from error
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    package = into / REF_PACKAGE
    (into / "src" / "contextpool_hf").rename(package)
    return package


def import_revision(folder: Path) -> types.SimpleNamespace:
    """The model and config classes of the package extracted into `folder`, imported afresh.

    Only its `configuration_*` and `modeling_*` modules are imported, not its `__init__`, which would
    register the revision's classes with the Auto classes in place of the working tree's for the whole
    process. A copy an earlier call left in sys.modules is dropped first.
    """
    for name in [name for name in sys.modules if name == REF_PACKAGE or name.startswith(REF_PACKAGE + ".")]:
        del sys.modules[name]
    root = folder / REF_PACKAGE
    spec = importlib.machinery.ModuleSpec(REF_PACKAGE, None, is_package=True)
    package = importlib.util.module_from_spec(spec)
    package.__path__ = [str(root)]
    sys.modules[REF_PACKAGE] = package
    classes = {}
    for path in sorted(root.glob("configuration_*.py")) + sorted(root.glob("modeling_*.py")):
        module = importlib.import_module(f"{REF_PACKAGE}.{path.stem}")
        classes.update({name: value for name, value in vars(module).items()
                        if name.startswith("ContextPool") and isinstance(value, type) and value.__module__ == module.__name__})
    return types.SimpleNamespace(**classes)


@contextlib.contextmanager
def classes_from(package, family):
    """The benchmark module builds its ContextPool models from `package` while inside."""
    module, names = _PATCHED[family]
    saved = {name: getattr(module, name) for name in names}
    try:
        for name in names:
            setattr(module, name, getattr(package, name))
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def build_steps(family, ref_package, quick):
    """(new, ref, vanilla) training-step callables at the benchmarks' sizes."""
    if family in ("vit", "resnet"):
        batch = 4 if quick else 32
        torch.manual_seed(0)
        new, vanilla = bench_vision.make_pair(family)
        with classes_from(ref_package, family):
            torch.manual_seed(0)
            ref, _ = bench_vision.make_pair(family)
        return [bench_vision.train_step_fn(model, batch) for model in (new, ref, vanilla)]
    args = bench_model.parse_args(["--quick"] if quick else [])
    if family.startswith(("generate", "decode")):  # the models of the causal-LM row, per generate call / forward
        kind, batch = family.split("-b")
        torch.manual_seed(0)
        new, vanilla = bench_model.causal_pair(args, args.prompt_len + args.new_tokens)
        with classes_from(ref_package, family):
            torch.manual_seed(0)
            ref, _ = bench_model.causal_pair(args, args.prompt_len + args.new_tokens)
        if kind == "decode":
            return [bench_model.decode_step_fn(model, int(batch), args.prompt_len, args.new_tokens, args.vocab)
                    for model in (new, ref, vanilla)]  # fmt: skip
        if kind == "decode-static":  # each model's static cache class, sized for the whole sequence
            from transformers import StaticCache

            from contextpool_hf import ContextPoolStaticCache

            ref_cache = sys.modules[f"{REF_PACKAGE}.cache_contextpool"].ContextPoolStaticCache
            caches = (ContextPoolStaticCache, ref_cache, StaticCache)
            max_len = args.prompt_len + args.new_tokens + 1
            return [bench_model.decode_step_fn(model, int(batch), args.prompt_len, args.new_tokens, args.vocab,
                                               cache_class=functools.partial(cache, config=model.config, max_cache_len=max_len))
                    for model, cache in zip((new, ref, vanilla), caches, strict=True)]  # fmt: skip
        return [bench_model.generate_fn(model, int(batch), args.prompt_len, args.new_tokens, args.vocab,
                                        compiled=kind == "generate-compiled") for model in (new, ref, vanilla)]  # fmt: skip
    make_pair = bench_model.causal_pair if family == "causal-lm" else bench_model.seq2seq_pair
    seq_len, batch = _sizes(family, args)
    torch.manual_seed(0)
    new, vanilla = make_pair(args, seq_len)
    with classes_from(ref_package, family):
        torch.manual_seed(0)
        ref, _ = make_pair(args, seq_len)
    return [bench_model.train_step_fn(model, batch, seq_len, args.vocab) for model in (new, ref, vanilla)]


def _sizes(family, args):
    """(sequence length, batch): the first causal-LM row of bench_model, or its seq2seq row."""
    if family == "seq2seq":
        return args.seq2seq_len, args.seq2seq_batch
    return bench_model._sizes(args.causal_sizes)[0]


def alternation_orders(count: int) -> tuple[list[int], list[int]]:
    """The two orders the rounds of `alternated_cpu_times` take in turn: 0 1 2 ... and 0 ... 2 1 (its tail reversed).

    No callable ever runs twice in a row, and with two or three (the working tree, the revision, transformers)
    each is preceded by each of the others equally often. Reversing whole rounds
    (A B C, C B A) ran the first and the last twice in a row at every turn, with their own code and data still in
    the caches, and never the middle one: the working tree's first place made it read about 2% faster than the
    same code as the revision (HEAD against itself: 0.974-0.986 at decode-b1, 1500 steps)."""
    order = list(range(count))
    return order, order[:1] + order[:0:-1]


def alternated_cpu_times(steps, repeats):
    """CPU seconds per step of each callable, rounds of A B C and A C B in turn, after one warm-up step each."""
    for step in steps:
        step()
    times = [[] for _ in steps]
    orders = alternation_orders(len(steps))
    for repeat in range(repeats):
        for index in orders[repeat % 2]:
            start = time.process_time()
            steps[index]()
            times[index].append(time.process_time() - start)
    return times


def ratio_summary(numerators, denominators) -> dict:
    ratios = [a / b for a, b in zip(numerators, denominators, strict=True)]
    return {"median": round(statistics.median(ratios), 3), "min": round(min(ratios), 3), "max": round(max(ratios), 3)}


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        ref_package = import_revision(extract_revision(args.ref, Path(folder)).parent)
        for family in args.models:
            new, ref, vanilla = alternated_cpu_times(build_steps(family, ref_package, args.quick), args.repeats)
            row = {"family": family, "new_over_ref": ratio_summary(new, ref),
                   "new_over_vanilla": ratio_summary(new, vanilla), "ref_over_vanilla": ratio_summary(ref, vanilla),
                   "new_ms": round(1e3 * statistics.median(new), 2), "ref_ms": round(1e3 * statistics.median(ref), 2),
                   "vanilla_ms": round(1e3 * statistics.median(vanilla), 2)}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\nworking tree vs {args.ref}: CPU time per training step (generate-*: per generate call; decode-*: per forward), "
          f"{args.repeats} alternated steps, "
          f"{args.threads} thread(s){' (quick sizes)' if args.quick else ''}, malloc {args.malloc}")
    print("| model | new/ref | new/transformers | ref/transformers | new | ref | transformers |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        cells = [f"{r['median']} ({r['min']}-{r['max']})" for r in (row["new_over_ref"], row["new_over_vanilla"],
                                                                       row["ref_over_vanilla"])]
        print(f"| {row['family']} | " + " | ".join(cells) + f" | {row['new_ms']} ms | {row['ref_ms']} ms | {row['vanilla_ms']} ms |")
    if args.json is not None:
        meta = {"command": "python scripts/bench_ab.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                "ref": args.ref, "repeats": args.repeats, "threads": args.threads, "quick": args.quick, "malloc": args.malloc,
                "torch": torch.__version__, "timing": "process CPU time per step, alternated A B C, A C B"}
        with open(args.json, "x") as handle:
            json.dump({"meta": meta, "rows": rows}, handle, indent=2)
    return rows


if __name__ == "__main__":
    main()
