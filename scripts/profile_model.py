#!/usr/bin/env python
"""Where a ContextPool training step (and a decoding step) spends its time, next to the vanilla model.

One training step (forward + backward + AdamW) of each text family is run under `torch.profiler`
after a warm-up step, and its CPU time is split into:

- predictor: `ContextPool.predict` (conv, GELU, projection, sigmoids) forward, and the backward
  nodes its forward ops created;
- pooling forward / pooling backward: `ContextPool.pool` (the blocked operator and its reshapes);
- mix: `torch.lerp` (token vs pooled context) forward and backward; where the pooled q/k/v projections are one
  function (`_MixedProjection`, training), its lerp and the backward's rebuild of it (the mix's gradient arithmetic
  in that backward falls under everything else);
- everything else: the step's wall time minus the above (attention, MLP, embeddings, loss, AdamW).

Backward time is attributed through the autograd sequence number the profiler records on every
forward op and on the backward node it created (`autograd::engine::evaluate_function: ...`), so
no code in the model is instrumented. The decoding row profiles one cached single-token forward
(batch 1) and splits it into the pooling decode step (`_decode_step`, predictor included) and the
rest, with the number of tensor operations per layer. It also counts the operator dispatches of a
whole cached step of both models (every ATen call, views included, as a `TorchDispatchMode` sees
them): at batch 1 each costs about the same few microseconds whatever its size, so this count,
unlike a time, is exact and the same on a loaded machine.

    python scripts/profile_model.py            # sizes of scripts/bench_model.py (hidden 256, 4 layers)
    python scripts/profile_model.py --quick    # tiny sizes, a few seconds
    python scripts/profile_model.py --device cuda --dtype bfloat16 --hidden 1024 --layers 8 --output OUT.json

Options it does not know itself (--device, --dtype, --hidden, --layers, --causal-sizes, ...) are
scripts/bench_model.py's, with the same meaning. On an accelerator the profiler records its kernels too,
and every category is the device time of the kernels its ops launched (`device_time_total`) instead
of CPU time; "everything else" is the synchronised wall time less those.
"""

import argparse
import contextlib
import functools
import json
import statistics
from pathlib import Path

import bench_device  # scripts/bench_device.py: synchronising an accelerator
import bench_model  # scripts/bench_model.py: the same models and sizes
import torch
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils._python_dispatch import TorchDispatchMode

from contextpool_hf import pooling_contextpool
from contextpool_hf.modeling_contextpool import ContextPoolSelfAttention

REGIONS = ("predictor", "pooling")


@contextlib.contextmanager
def labelled_regions():
    """Wrap ContextPool.predict / .pool / the decode step in record_function ranges (undone on exit)."""
    originals = {}
    targets = {"predictor": (pooling_contextpool.ContextPool, "predict"),
               "pooling": (pooling_contextpool.ContextPool, "pool"),
               "decode_step": (ContextPoolSelfAttention, "_decode_step")}
    for label, (owner, name) in targets.items():
        original = getattr(owner, name)
        originals[(owner, name)] = original

        def wrapped(*args, __original=original, __label=label, **kwargs):
            with record_function(f"cp::{__label}"):
                return __original(*args, **kwargs)

        setattr(owner, name, wrapped)
    try:
        yield
    finally:
        for (owner, name), original in originals.items():
            setattr(owner, name, original)


def _top_level(events):
    return [e for e in events if e.cpu_parent is None]


def _inside(event, name_prefix: str) -> bool:
    """Whether one of the event's enclosing events is named with `name_prefix`."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith(name_prefix):
            return True
        parent = parent.cpu_parent
    return False


def _event_ms(event, on_device: bool) -> float:
    """An event's time in ms: its CPU time, or on an accelerator the device time of the kernels it launched."""
    return (event.device_time_total if on_device else event.cpu_time_total) / 1000


def breakdown(prof, wall_ms: float, on_device: bool = False) -> dict:
    """ms per category from one profiled step (see the module docstring)."""
    events = list(prof.events())
    regions = [e for e in events if e.name.startswith("cp::")]
    seq_label = {}
    forward_ms = {label: 0.0 for label in REGIONS + ("decode_step",)}
    for region in regions:
        label = region.name[4:]
        forward_ms[label] += _event_ms(region, on_device)
        start, end = region.time_range.start, region.time_range.end
        for e in events:
            if e.sequence_nr >= 0 and e.thread == region.thread and start <= e.time_range.start <= end:
                seq_label.setdefault(e.sequence_nr, label)
    backward_ms = {label: 0.0 for label in REGIONS}
    # the mix inside the pooled projections' function (training: its forward, and its backward's rebuild)
    mix_ms = sum(_event_ms(e, on_device) for e in events if e.name == "aten::lerp" and _inside(e, "_MixedProjection"))
    for e in _top_level(events):
        if e.name == "aten::lerp":
            mix_ms += _event_ms(e, on_device)
        elif e.name.startswith("autograd::engine::evaluate_function: "):
            node = e.name.split(": ", 1)[1]
            if node.startswith("LerpBackward"):
                mix_ms += _event_ms(e, on_device)
            elif e.sequence_nr in seq_label and seq_label[e.sequence_nr] in backward_ms:
                backward_ms[seq_label[e.sequence_nr]] += _event_ms(e, on_device)
    result = dict(
        wall_ms=wall_ms,
        predictor_ms=forward_ms["predictor"] + backward_ms["predictor"],
        predictor_forward_ms=forward_ms["predictor"],
        predictor_backward_ms=backward_ms["predictor"],
        pooling_forward_ms=forward_ms["pooling"],
        pooling_backward_ms=backward_ms["pooling"],
        mix_ms=mix_ms,
    )
    if forward_ms["decode_step"]:
        result["decode_step_ms"] = forward_ms["decode_step"]
    accounted = sum(v for k, v in result.items() if k.endswith("_ms") and k not in
                    ("wall_ms", "predictor_forward_ms", "predictor_backward_ms"))
    result["everything_else_ms"] = wall_ms - accounted
    return {k: round(v, 2) for k, v in result.items()}


def profile_call(fn, device=None) -> tuple:
    """(profile, wall ms) of one call of fn; on an accelerator its kernels are recorded and waited for."""
    device = device or torch.device("cpu")
    activities = [ProfilerActivity.CPU]
    if device.type != "cpu":
        activities.append(getattr(ProfilerActivity, device.type.upper()))
    with labelled_regions(), profile(activities=activities) as prof:
        wall = bench_device.timed(fn, device) * 1000
    return prof, wall


def median_ms(fn, repeats: int, device=None) -> float:
    device = device or torch.device("cpu")
    return statistics.median(bench_device.timed(fn, device) * 1000 for _ in range(repeats))


def decode_fns(model, batch, prompt_len, vocab, device=None, dtype=torch.float32):
    """(prefill() -> cache, step(cache)): a cached single-token forward after a prompt, by the model on `device`
    cast to `dtype`."""
    device = device or torch.device("cpu")
    model.to(device=device, dtype=dtype).eval()
    ids = torch.randint(3, vocab, (batch, prompt_len + 1), generator=torch.Generator().manual_seed(2)).to(device)

    @torch.no_grad()
    def prefill():
        out = model(ids[:, :-1], use_cache=True)
        # transformers >= 5.25 names it `cache` (reading `past_key_values` there warns); earlier 5.x `past_key_values`
        return out.cache if "cache" in out else out.past_key_values

    @torch.no_grad()
    def step(cache):
        return model(ids[:, -1:], cache=cache, use_cache=True)

    return prefill, step


def decode_row(args, repeats):
    """Profile one cached decoding forward of ContextPoolForCausalLM (batch 1); Llama's step time beside it."""
    contextpool, llama = bench_model.causal_pair(args, args.prompt_len + args.new_tokens)
    device = args.torch_device
    placed = dict(device=device, dtype=args.torch_dtype)
    step_ms = {}
    for model, name in ((contextpool, "contextpool"), (llama, "llama")):
        prefill, step = decode_fns(model, 1, args.prompt_len, args.vocab, **placed)
        step(prefill())  # warm-up
        caches = [prefill() for _ in range(repeats * 5)]
        times = [bench_device.timed(functools.partial(step, cache), device) * 1000 for cache in caches]
        step_ms[name] = round(statistics.median(times), 3)
    prefill, step = decode_fns(contextpool, 1, args.prompt_len, args.vocab, **placed)
    cache = prefill()
    prof, wall = profile_call(lambda: step(cache), device)
    dispatches = {}
    for model, name in ((contextpool, "contextpool"), (llama, "llama")):
        prefill, step = decode_fns(model, 1, args.prompt_len, args.vocab, **placed)
        cache = prefill()
        step(cache)  # the first step builds ContextPool's decoding tables once
        dispatches[name] = count_dispatches(step, cache)
    return dict(task="decode-step", batch=1, prompt=args.prompt_len, **breakdown(prof, wall, device.type != "cpu"),
                contextpool_step_ms=step_ms["contextpool"], llama_step_ms=step_ms["llama"],
                decode_ops_per_layer=count_decode_ops(prof) / args.layers,
                contextpool_dispatches_per_step=dispatches["contextpool"], llama_dispatches_per_step=dispatches["llama"])


class _DispatchCounter(TorchDispatchMode):
    """Counts every ATen operator call made under it (views and in-place ops included)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def count_dispatches(fn, *args, **kwargs) -> int:
    """ATen operator calls that one call fn(*args, **kwargs) makes."""
    with _DispatchCounter() as counter:
        fn(*args, **kwargs)
    return counter.calls


def count_decode_ops(prof) -> int:
    """Tensor ops issued directly inside the pooling decode steps (all layers)."""
    events = list(prof.events())
    count = 0
    for region in (e for e in events if e.name == "cp::decode_step"):
        count += sum(1 for e in region.cpu_children if e.name.startswith("aten::"))
    return count


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     epilog="Other options are scripts/bench_model.py's (sizes, --device, --dtype).")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--output", default="benchmarks/profile_model.json")
    cli, rest = parser.parse_known_args(argv)
    args = bench_model.parse_args(rest + (["--quick"] if cli.quick else []))
    device, on_device = args.torch_device, args.torch_device.type != "cpu"
    placed = dict(device=device, dtype=args.torch_dtype)
    if cli.threads:
        torch.set_num_threads(cli.threads)
    torch.manual_seed(0)
    n, batch = bench_model._sizes(args.causal_sizes)[0]
    results = []
    cases = [("causal-lm", bench_model.causal_pair, n, batch),
             ("masked-lm", bench_model.masked_pair, n, batch),
             ("seq2seq", bench_model.seq2seq_pair, args.seq2seq_len, args.seq2seq_batch)]
    for task, make_pair, seq_len, batch in cases:
        max_len = max(seq_len, args.prompt_len + args.new_tokens)
        contextpool, vanilla = make_pair(args, max_len)
        step_cp = bench_model.train_step_fn(contextpool, batch, seq_len, args.vocab, **placed)
        step_v = bench_model.train_step_fn(vanilla, batch, seq_len, args.vocab, **placed)
        step_cp(), step_v()  # warm-up
        vanilla_ms = median_ms(step_v, cli.repeats, device)
        prof, wall = profile_call(step_cp, device)
        row = dict(task=task, seq_len=seq_len, batch=batch, vanilla_step_ms=round(vanilla_ms, 2),
                   **breakdown(prof, wall, on_device))
        results.append(row)
        print(json.dumps(row), flush=True)

    row = decode_row(args, cli.repeats)
    results.append(row)
    print(json.dumps(row), flush=True)
    out = Path(cli.output if not cli.quick else cli.output.replace(".json", "_quick.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python scripts/profile_model.py " + " ".join(__import__("sys").argv[1:] if argv is None else argv)
    meta = dict(command=command, threads=torch.get_num_threads(), device=str(device), dtype=args.dtype,
                time="device time of the launched kernels" if on_device else "CPU time",
                **bench_device.device_info(device))  # fmt: skip
    out.write_text(json.dumps({**meta, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
