#!/usr/bin/env python
"""Where a cached decoding step's pooling spends its time: timed inside real steps, warm, and cold.

`scripts/profile_model.py` splits a decoding step with `torch.profiler` and counts its operator calls. Those
numbers come from the step alone or from the profiler's own events; inside a real `generate` the same calls
cost several times more. Between two steps of one layer every other layer's weights stream through the
caches (about 33 MB at the bench sizes, more than the 32 MiB L3 of the CPU it was measured on), so each layer's pooling step
finds its code paths, its modules, its parameters and its ring cold. This script measures that directly,
with the wall clock (`time.perf_counter`) around the parts of the step, per pooled layer:

- plan: `_decode_plan` (checking that the kept predictor weights and constants still hold);
- gates: `_decode_gates` (the causal predictor on its conv state);
- pool: `_decode_pool` (the Gaussian coefficients and the weighted sum over the ring);
- step: `_decode_step` (the three above, sigma, and the ring write);
- pooling: `ContextPoolSelfAttention._pool` (the step and the checks that route to it);

each three ways:

- in place: inside the decoding forwards of scripts/bench_model.py's causal LM, alternated one by one with
  Llama's on its own cache and on ContextPool's (as `scripts/bench_ab.py --models decode-b1` runs them), median
  over the token steps;
- warm: the same call repeated back to back on the inputs of one step (what a microbenchmark sees);
- flushed: the same call right after reading a --flush-mib buffer, which evicts it from every cache.

Each timed part carries a wrapper of a fraction of a microsecond. Beside the parts, each batch size gets the three
models' whole forward, their prompt's forward and its minor page faults (medians over --sequences) and their
attention call
(`F.scaled_dot_product_attention`, per layer), in place.

    python scripts/profile_decoding.py                    # batch 1 and 8 at bench_model's sizes, one thread
    python scripts/profile_decoding.py --quick            # tiny sizes, seconds

Writes benchmarks/profile_decoding.json (--quick: benchmarks/profile_decoding_quick.json; or --output).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import bench_device  # scripts/bench_device.py: minor page faults
import bench_model  # scripts/bench_model.py: the same models, sizes and decoding stepper
import torch
import torch.nn.functional as F

from contextpool_hf import ContextPoolCache, decoding_contextpool
from contextpool_hf.layers_contextpool import ContextPoolSelfAttention

# part -> (owner, attribute) that is timed; `_decode_step` finds the two functions in its module's globals
PARTS = {
    "plan": (decoding_contextpool.CausalPoolDecoding, "_decode_plan"),
    "gates": (decoding_contextpool, "_decode_gates"),
    "pool": (decoding_contextpool, "_decode_pool"),
    "step": (decoding_contextpool.CausalPoolDecoding, "_decode_step"),
    "pooling": (ContextPoolSelfAttention, "_pool"),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (smoke test)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--sequences", type=int, default=8,
                        help="decoded sequences per batch size in place (each: the prompt, then --new-tokens steps)")
    parser.add_argument("--repeats", type=int, default=300, help="calls timed per part, warm and flushed")
    parser.add_argument("--flush-mib", type=float, default=64.0, help="buffer read before each flushed call")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's choice)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    for name in ("sequences", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.flush_mib <= 0 or any(b < 1 for b in args.batches):
        parser.error("--flush-mib and every --batches value must be positive")
    # the models and sizes of bench_model.py (its --quick sizes with --quick)
    args.model = bench_model.parse_args(["--quick"] if args.quick else [])
    if args.quick:
        args.sequences, args.repeats, args.flush_mib = min(args.sequences, 2), min(args.repeats, 20), 8.0
    if args.output is None:
        args.output = f"benchmarks/profile_decoding{'_quick' if args.quick else ''}.json"
    return args


# what the in-place run times besides the parts: every attention call (ContextPool's and transformers' attention
# read it from torch.nn.functional at call time)
ATTENTION = {"sdpa": (F, "scaled_dot_product_attention")}


@contextlib.contextmanager
def timed_calls(seconds: dict, targets: dict):
    """While open, every call of a target (label -> (owner, attribute)) adds its wall time to seconds[label] (the
    originals come back on exit)."""
    originals = {label: getattr(owner, name) for label, (owner, name) in targets.items()}

    def timer(label, original):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[label] = seconds.get(label, 0.0) + time.perf_counter() - start

        return timed

    try:
        for label, (owner, name) in targets.items():
            setattr(owner, name, timer(label, originals[label]))
        yield seconds
    finally:
        for label, (owner, name) in targets.items():
            setattr(owner, name, originals[label])


MODELS = ("contextpool", "llama", "llama_on_contextpool_cache")


def in_place(contextpool, llama, batch, args) -> dict:
    """Per-layer median of each part over the token steps, and each model's forward and attention call (per layer),
    the models' forwards alternated one by one: ContextPool, Llama on its own DynamicCache (concatenating the
    keys/values on every step), and Llama on ContextPool's cache (appending them in place)."""
    sizes = args.model
    steps = {
        name: bench_model.decode_step_fn(model, batch, sizes.prompt_len, sizes.new_tokens, sizes.vocab, cache_class)
        for name, model, cache_class in (("contextpool", contextpool, None), ("llama", llama, None),
                                         ("llama_on_contextpool_cache", llama, ContextPoolCache))
    }  # fmt: skip
    per_sequence = sizes.new_tokens + 1  # the prompt's forward, then one per new token
    for _ in range(per_sequence):  # warm-up: one whole sequence each
        for step in steps.values():
            step()
    layers = sum(isinstance(m, ContextPoolSelfAttention) and m.pool is not None for m in contextpool.modules())
    forward = {name: [] for name in MODELS}
    prompt = {name: [] for name in MODELS}
    prompt_faults = {name: [] for name in MODELS}
    attention = {name: [] for name in MODELS}
    parts = {part: [] for part in PARTS}
    seconds = {}
    with timed_calls(seconds, {**PARTS, **ATTENTION}):
        for call in range(args.sequences * per_sequence):
            order = MODELS[call % len(MODELS):] + MODELS[: call % len(MODELS)]  # each model first in turn
            for name in order:
                seconds.clear()
                faults = bench_device.minor_faults()
                start = time.perf_counter()
                steps[name]()
                elapsed = time.perf_counter() - start
                if call % per_sequence == 0:  # a prompt's forward: not a decoding step
                    prompt[name].append(elapsed)
                    prompt_faults[name].append(bench_device.minor_faults() - faults)
                    continue
                forward[name].append(elapsed)
                attention[name].append(seconds.get("sdpa", 0.0) / sizes.layers)
                if name == "contextpool":
                    for part in PARTS:
                        parts[part].append(seconds.get(part, 0.0) / layers)
    result = {f"{part}_us": statistics.median(values) * 1e6 for part, values in parts.items()}
    for name in MODELS:
        result[f"{name}_forward_ms"] = statistics.median(forward[name]) * 1e3
        result[f"{name}_prompt_ms"] = statistics.median(prompt[name]) * 1e3
        result[f"{name}_prompt_faults"] = statistics.median(prompt_faults[name])
        result[f"{name}_sdpa_us"] = statistics.median(attention[name]) * 1e6
    return result


def captured_step(contextpool, batch, args):
    """The arguments of the first pooled layer's decoding step: (attention, hidden, features, keep, cache layer)."""
    sizes = args.model
    step = bench_model.decode_step_fn(contextpool, batch, sizes.prompt_len, sizes.new_tokens, sizes.vocab)
    step()  # the prompt
    step()  # one token: the ring is the step's own from now on
    captured = []
    original = decoding_contextpool.CausalPoolDecoding._decode_step

    def capture(self, hidden, features, keep, layer_cache):
        if not captured:
            captured.append((self, hidden, features, keep, layer_cache))
        return original(self, hidden, features, keep, layer_cache)

    decoding_contextpool.CausalPoolDecoding._decode_step = capture
    try:
        step()
    finally:
        decoding_contextpool.CausalPoolDecoding._decode_step = original
    return captured[0]


def part_calls(attention, hidden, features, keep, layer_cache) -> dict:
    """part -> a call of it alone on one step's inputs (steps and pooling write the ring: they go on decoding)."""
    window = layer_cache.pool_weights.shape[-1]
    plan = attention._decode_plan(features, window, layer_cache)
    sigma = torch.full(features.shape[:2] + (1,), attention.pool.sigma_max / 2, dtype=features.dtype)
    return {
        "plan": lambda: attention._decode_plan(features, window, layer_cache),
        "gates": lambda: decoding_contextpool._decode_gates(plan, hidden, keep, layer_cache.conv_state),
        "pool": lambda: decoding_contextpool._decode_pool(plan, layer_cache.pool_features, layer_cache.pool_weights,
                                                          sigma, plan.neg_half_distance_sq_rows[0], features.dtype),
        "step": lambda: attention._decode_step(hidden, features, keep, layer_cache),
        "pooling": lambda: attention._pool(hidden, features, keep, layer_cache),
    }


def alone(calls: dict, repeats: int, flush: torch.Tensor | None, passes: int = 5) -> dict:
    """part -> median seconds of its call, each call timed by itself. Warm (flush None): a part's calls run back to
    back, in `passes` runs per part taking turns, so that a burst of load on the machine reaches all parts; flushed:
    every call after reading `flush`, the parts taking turns call by call."""
    times = {part: [] for part in calls}
    per_pass = max(1, repeats // passes)
    schedule = ([[part] * per_pass for part in calls] * passes) if flush is None else [list(calls)] * repeats
    for part in calls:  # warm-up
        calls[part]()
    for run in schedule:
        for part in run:
            if flush is not None:
                flush.sum()
            start = time.perf_counter()
            calls[part]()
            times[part].append(time.perf_counter() - start)
    return {part: statistics.median(values) for part, values in times.items()}


def profile_batch(contextpool, llama, batch, args) -> tuple[list[dict], dict]:
    with torch.no_grad():
        placed = in_place(contextpool, llama, batch, args)
        calls = part_calls(*captured_step(contextpool, batch, args))
        flush = torch.ones(int(args.flush_mib * 2**20) // 4)
        warm, flushed = alone(calls, args.repeats, None), alone(calls, args.repeats, flush)
        rows = [dict(batch=batch, part=part, in_place_us=round(placed[f"{part}_us"], 2),
                     warm_us=round(warm[part] * 1e6, 2), flushed_us=round(flushed[part] * 1e6, 2))
                for part in calls]  # fmt: skip
    forward = dict(batch=batch, **{f"{name}_{what}": round(placed[f"{name}_{what}"], 3)
                                   for name in MODELS for what in ("forward_ms", "prompt_ms", "prompt_faults", "sdpa_us")})  # fmt: skip
    forward["ratio"] = round(placed["contextpool_forward_ms"] / placed["llama_forward_ms"], 3)
    forward["ratio_same_cache"] = round(placed["contextpool_forward_ms"] / placed["llama_on_contextpool_cache_forward_ms"], 3)
    forward["prompt_ratio"] = round(placed["contextpool_prompt_ms"] / placed["llama_prompt_ms"], 3)
    return rows, forward


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sizes = args.model
    contextpool, llama = bench_model.causal_pair(sizes, sizes.prompt_len + sizes.new_tokens)
    contextpool.eval()
    llama.eval()
    rows, forwards = [], []
    for batch in args.batches:
        batch_rows, forward = profile_batch(contextpool, llama, batch, args)
        rows += batch_rows
        forwards.append(forward)
        print(f"batch {batch}: forward {forward['contextpool_forward_ms']} ms, Llama's {forward['llama_forward_ms']} ms "
              f"({forward['ratio']}x), Llama's on ContextPool's cache {forward['llama_on_contextpool_cache_forward_ms']} "
              f"ms ({forward['ratio_same_cache']}x); attention call per layer "
              + ", ".join(f"{name} {forward[f'{name}_sdpa_us']} us" for name in MODELS)
              + f"; the prompt's forward {forward['contextpool_prompt_ms']} ms against Llama's "
              f"{forward['llama_prompt_ms']} ms ({forward['prompt_ratio']}x), minor page faults "
              f"{forward['contextpool_prompt_faults']} against {forward['llama_prompt_faults']}; per pooled layer, us:")  # fmt: skip
        print(f"  {'part':8s} {'in place':>9s} {'warm':>9s} {'flushed':>9s}")
        for row in batch_rows:
            print(f"  {row['part']:8s} {row['in_place_us']:9.1f} {row['warm_us']:9.1f} {row['flushed_us']:9.1f}")
    meta = dict(
        command="python scripts/profile_decoding.py " + " ".join(sys.argv[1:] if argv is None else argv),
        measured=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), torch=torch.__version__,
        python=platform.python_version(), threads=torch.get_num_threads(), hidden=sizes.hidden, layers=sizes.layers,
        heads=sizes.heads, vocab=sizes.vocab, prompt_len=sizes.prompt_len, new_tokens=sizes.new_tokens,
        sequences=args.sequences, repeats=args.repeats, flush_mib=args.flush_mib,
        timing="wall clock (time.perf_counter) around each part, per pooled layer; in place: median over the token "
               "steps of decoding forwards alternated with Llama's; warm / flushed: median of single calls on one "
               "step's inputs, flushed ones after reading flush_mib of memory",
    )  # fmt: skip
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(meta=meta, forwards=forwards, rows=rows), indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
