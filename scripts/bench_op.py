"""Benchmark the ContextPool operator: fast path vs dense reference vs one SDPA call (CPU).

    python scripts/bench_op.py            # full sweep (several minutes)
    python scripts/bench_op.py --quick    # under a minute: the project's temporary `make demo`
    python scripts/bench_op.py --dense-1d # the 1-D dense / blocked crossover only (a minute or two)
    python scripts/bench_op.py --device cuda --dtype bfloat16 --out benchmarks/gpu/bench_op   # an accelerator
    python scripts/bench_op.py --device cuda --triton    # also implementation="triton" (CUDA, or TRITON_INTERPRET=1)

On an accelerator (`--device`, scripts/bench_device.py) every call is timed to its synchronisation and
memory is the allocator's peak during the call above what it held before
(`torch.accelerator.max_memory_allocated`); `--dtype` casts the inputs (the operator computes its
coefficients in float32 at least).

For every width d and length n (batch 2 by default) it measures, in the same run:
- (a) `context_pool(..., implementation="fast")`, bidirectional, sigma_max 8, truncation 3
  (R = 24, a 49-token window), through the public function (value checks included);
- (b) the same call with `implementation="reference"` (dense n x n), skipped and recorded
  as "skipped (memory)" where its estimated footprint exceeds --mem-cap-gib;
- (c) one `torch.nn.functional.scaled_dot_product_attention` call on (batch, 4, n, d / 4)
  q, k, v: the attention that the pooled features feed, for scale.

Time: forward (under no_grad, as in inference) and forward+backward (inputs require grad,
backward with a fixed random output gradient). Each is the median of --repeats runs after
one warm-up; the implementations are interleaved inside every repeat so that the noise of a
shared machine hits all of them alike, and ratios are taken between numbers of this run.

Memory: the extra CPU memory the op allocates, measured with `torch.profiler` memory
profiling. The profiler records every allocation and free of PyTorch's CPU allocator (the
op's outputs, the tensors autograd saves, every temporary inside it, and the gradients);
the running sum of those events, in time order, peaks at the number reported. Inputs that
exist before the call are not counted. What it cannot see: memory that a kernel obtains
outside the PyTorch allocator (e.g. a BLAS library's private workspace), Python objects,
and allocator caching. "fwd" is the peak of a no_grad forward, "fwd+bwd" the peak over the
forward and backward together, including the returned gradients.

Threads: one by default (--threads 0 keeps torch's default). On a shared 2-core machine a
second OpenMP thread makes every parallel op wait at a barrier whenever the other core is
busy; the fast path issues a few hundred such ops per call and SDPA a handful, so 2-thread
timings there measured the neighbours' load, not the ops (10-100x swings between runs).
One thread measures all three candidates on the same footing.

`--dense-1d` times the fast 1-D path's two plans on short sequences instead (forward + backward, float32,
d = 256, R = 24, about 2048 tokens per call as in a translation batch, causal and bidirectional, alternated;
process CPU time, the median of the per-repeat ratios): one dense block of all n x n coefficients, and T = 64 blocks against padded windows. It
writes benchmarks/bench_op_dense_1d.json (or OUT with --out), and the table says which plan the operator chooses
(`_DENSE_1D_MAX_COEFS`).

Targets (checked and printed as PASS/FAIL; the exit code is 0 either way):
- fast forward+backward at least 10x faster than the dense reference at n = 4096;
- fast forward+backward at most 0.5x the SDPA call at n = 4096, d = 256;
- fast forward+backward time grows at most 10x from n = 1024 to n = 8192.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import bench_device  # scripts/bench_device.py: --device / --dtype
import torch
import torch.nn.functional as F

from contextpool_hf.pooling_contextpool import context_pool, window_radius
from contextpool_hf.study_results import refuse_other_settings

IMPLS = ("fast", "reference", "sdpa")
SIGMA_MAX, TRUNCATION, HEADS = 8.0, 3.0, 4


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="n in {1024, 4096, 8192}, d = 256, 3 repeats")
    parser.add_argument("--dense-1d", action="store_true",
                        help="only the 1-D dense / blocked crossover on short sequences (see the docstring)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 8192])
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--triton", action="store_true",
                        help='also time implementation="triton" (the Triton kernels; CUDA), alternated with the fast path, and '
                             "report triton/fast")  # fmt: skip
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads; 0 = torch's default (see the docstring)"
    )
    parser.add_argument(
        "--mem-cap-gib", type=float, default=4.0, help="skip the reference above this estimate"
    )
    parser.add_argument(
        "--out", type=Path, default=None,
        help="writes OUT.csv and OUT.json (default benchmarks/bench_op; --quick: benchmarks/bench_op_quick, so that a "
             "smoke run never replaces the full sweep)",
    )  # fmt: skip
    bench_device.add_device_arguments(parser)
    args = parser.parse_args(argv)
    bench_device.resolve_placement(parser, args)
    if args.triton:
        from contextpool_hf.pooling_triton_contextpool import triton_unavailable_reason

        reason = triton_unavailable_reason(torch.empty(0, device=args.torch_device))
        if reason is not None:
            parser.error(f"--triton: implementation='triton' cannot run here: {reason}")
    if args.quick:
        args.sizes, args.widths, args.repeats = [1024, 4096, 8192], [256], 3
    if args.out is None:
        name = "bench_op_dense_1d" if args.dense_1d else "bench_op_quick" if args.quick else "bench_op"
        args.out = Path("benchmarks") / name
    return args


# --------------------------------------------------------------------------------------
# The 1-D plans on short sequences (--dense-1d)
# --------------------------------------------------------------------------------------

DENSE_1D_SIZES = (32, 64, 96, 128, 160, 192, 256, 384)
DENSE_1D_TOKENS = 2048  # per call: batch = tokens // n


def dense_1d_crossover(repeats: int, width: int = 256, sizes=DENSE_1D_SIZES, device=None, dtype=torch.float32
                       ) -> list[dict]:
    """Forward + backward of each plan of `_BlockedPool1d` in process CPU time (on an accelerator: wall time to
    synchronisation), both plans alternated inside every repeat (A B, B A, ...): the minimum over repeats of each
    (short calls: the least disturbed run) and the median of the per-repeat ratios dense / blocked (the steadier
    number on a shared machine)."""
    import contextpool_hf.pooling_1d_contextpool as pooling_1d
    import contextpool_hf.pooling_contextpool as pooling

    device = device or torch.device("cpu")
    radius = window_radius(SIGMA_MAX, TRUNCATION)
    forced = {"dense": 1 << 40, "blocked": 0}  # _DENSE_1D_MAX_COEFS that forces each plan
    chosen_limit = pooling_1d._DENSE_1D_MAX_COEFS
    rows = []
    try:
        for causal in (False, True):
            for n in sizes:
                batch = max(1, DENSE_1D_TOKENS // n)
                gen = torch.Generator().manual_seed(0)
                x, w, s, grad = (t.to(device, dtype) for t in (
                    torch.randn(batch, n, width, generator=gen), torch.rand(batch, n, generator=gen),
                    torch.rand(batch, n, generator=gen) * (SIGMA_MAX - 1) + 1, torch.randn(batch, n, width, generator=gen)))
                x, w, s = (t.requires_grad_() for t in (x, w, s))
                r = pooling.clamped_radius(radius, (n,))
                times = {plan: [] for plan in forced}
                for repeat in range(repeats + 1):
                    for plan in forced if repeat % 2 == 0 else list(forced)[::-1]:
                        pooling_1d._DENSE_1D_MAX_COEFS = forced[plan]
                        call = functools.partial(_blocked_forward_backward, x, w, s, r, causal, grad)
                        times[plan].append(bench_device.timed(call, device, cpu_time=True))
                best = {plan: min(t[1:]) * 1000 for plan, t in times.items()}
                ratios = [a / b for a, b in zip(times["dense"][1:], times["blocked"][1:], strict=True)]
                row = dict(causal=causal, n=n, batch=batch, d=width, radius=r, dense_ms=round(best["dense"], 3),
                           blocked_ms=round(best["blocked"], 3), dense_over_blocked=round(statistics.median(ratios), 3),
                           ratio_min=round(min(ratios), 3), ratio_max=round(max(ratios), 3),
                           chosen="dense" if n * n <= chosen_limit else "blocked")  # fmt: skip
                rows.append(row)
                print(f"{'causal' if causal else 'bidirectional'} n={n} B={batch}: dense {row['dense_ms']} ms, "
                      f"blocked {row['blocked_ms']} ms, dense/blocked {row['dense_over_blocked']} "
                      f"({row['ratio_min']}-{row['ratio_max']}) -> {row['chosen']}", flush=True)  # fmt: skip
    finally:
        pooling_1d._DENSE_1D_MAX_COEFS = chosen_limit
    return rows


def _blocked_forward_backward(x, w, s, radius, causal, grad) -> None:
    import contextpool_hf.pooling_contextpool as pooling

    y = pooling._BlockedPool1d.apply(x, w, s, radius, causal, True, 1e-6)
    torch.autograd.grad(y, (x, w, s), grad)


def run_dense_1d(args) -> None:
    rows = dense_1d_crossover(args.repeats, width=args.widths[-1], device=args.torch_device, dtype=args.torch_dtype)
    clock = "process CPU time" if args.torch_device.type == "cpu" else "wall time to synchronisation"
    meta = dict(command="python scripts/bench_op.py " + " ".join(sys.argv[1:]), repeats=args.repeats,
                threads=args.threads, machine=machine_info(args.torch_device), device=str(args.torch_device),
                dtype=args.dtype, malloc=args.malloc, measured=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                timing=f"forward + backward of _BlockedPool1d, {args.dtype}, {clock}, plans alternated; *_ms: minimum "
                       "over repeats; dense_over_blocked: median of the per-repeat ratios (ratio_min-ratio_max)")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {args.out.with_suffix('.json')}")


# --------------------------------------------------------------------------------------
# The three candidates: each returns (forward fn, forward+backward fn)
# --------------------------------------------------------------------------------------


def make_case(impl, batch, n, d, seed=0, device=None, dtype=torch.float32):
    """(forward, forward + backward) of one candidate, on inputs of `dtype` on `device` (drawn on the CPU from
    `seed`, so every device and dtype gets the same numbers)."""
    g = torch.Generator().manual_seed(seed)

    def draw(*shape, uniform=False):
        t = torch.rand(*shape, generator=g) if uniform else torch.randn(*shape, generator=g)
        return t.to(device or "cpu", dtype)

    if impl == "sdpa":
        q, k, v = (draw(batch, HEADS, n, d // HEADS).requires_grad_() for _ in range(3))
        grad_out = draw(batch, HEADS, n, d // HEADS)
        inputs = (q, k, v)

        def call():
            return F.scaled_dot_product_attention(q, k, v)
    else:
        x = draw(batch, n, d).requires_grad_()
        w = draw(batch, n, uniform=True).requires_grad_()
        sigma = (0.5 + (SIGMA_MAX - 0.5) * draw(batch, n, uniform=True)).detach().requires_grad_()
        grad_out = draw(batch, n, d)
        inputs = (x, w, sigma)

        def call():
            return context_pool(x, w, sigma, sigma_max=SIGMA_MAX, truncation=TRUNCATION, implementation=impl)

    def forward():
        with torch.no_grad():
            call()

    def forward_backward():
        torch.autograd.grad(call(), inputs, grad_out)

    return forward, forward_backward


def reference_bytes(batch, n):
    """A generous estimate of the dense reference's fwd+bwd footprint: ~8 (batch, n, n) float32."""
    return 8 * batch * n * n * 4


# --------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------


def run_sweep(args):
    rows = []
    for d in args.widths:
        for n in args.sizes:
            active = {}
            for impl in IMPLS + (("triton",) if args.triton else ()):
                if impl == "reference" and reference_bytes(args.batch, n) > args.mem_cap_gib * 2**30:
                    rows.append(dict(impl=impl, d=d, n=n, status="skipped (memory)"))
                    continue
                if args.quick and impl != "fast" and n > 4096:
                    rows.append(dict(impl=impl, d=d, n=n, status="not run (--quick)"))
                    continue
                active[impl] = make_case(impl, args.batch, n, d, device=args.torch_device, dtype=args.torch_dtype)
            times = {impl: ([], []) for impl in active}
            # fast and SDPA alternate (background load falls on both); the dense reference runs
            # after them: its multi-GB temporaries, freed between calls, would otherwise make
            # every following fast call pay fresh page faults at large n.
            for group in (("fast", "sdpa", "triton"), ("reference",)):
                cases = {impl: active[impl] for impl in group if impl in active}
                for fwd, fwd_bwd in cases.values():  # warm-up
                    fwd(), fwd_bwd()
                for _ in range(args.repeats):
                    for impl, (fwd, fwd_bwd) in cases.items():
                        times[impl][0].append(bench_device.timed(fwd, args.torch_device))
                        times[impl][1].append(bench_device.timed(fwd_bwd, args.torch_device))
            for impl, (fwd, fwd_bwd) in active.items():
                rows.append(
                    dict(
                        impl=impl,
                        d=d,
                        n=n,
                        status="ok",
                        fwd_s=statistics.median(times[impl][0]),
                        fwd_bwd_s=statistics.median(times[impl][1]),
                        fwd_mib=bench_device.peak_bytes(fwd, args.torch_device) / 2**20,
                        fwd_bwd_mib=bench_device.peak_bytes(fwd_bwd, args.torch_device) / 2**20,
                    )
                )
            print(f"  measured d={d} n={n}", file=sys.stderr, flush=True)
    return rows


def get(rows, impl, d, n, key="fwd_bwd_s"):
    for row in rows:
        if (row["impl"], row["d"], row["n"]) == (impl, d, n) and row["status"] == "ok":
            return row[key]
    return None


def ratio(a, b):
    return None if a is None or b is None else a / b


def add_ratios(rows):
    for row in rows:
        if row["impl"] != "fast" or row["status"] != "ok":
            continue
        d, n = row["d"], row["n"]
        for key in ("fwd_s", "fwd_bwd_s"):
            row[f"ref_over_fast_{key}"] = ratio(get(rows, "reference", d, n, key), row[key])
            row[f"fast_over_sdpa_{key}"] = ratio(row[key], get(rows, "sdpa", d, n, key))
            triton = get(rows, "triton", d, n, key)
            if triton is not None:
                row[f"triton_over_fast_{key}"] = ratio(triton, row[key])


def check_targets(rows, args):
    """[(target, measured, PASS/FAIL/n.a.)]"""
    results = []
    for d in args.widths:
        speedup = ratio(get(rows, "reference", d, 4096), get(rows, "fast", d, 4096))
        results.append(
            (
                f"fast >= 10x faster than reference, n=4096, d={d} (fwd+bwd)",
                speedup,
                speedup and speedup >= 10,
            )
        )
    vs_sdpa = ratio(get(rows, "fast", 256, 4096), get(rows, "sdpa", 256, 4096))
    results.append(
        ("fast <= 0.5x SDPA, n=4096, d=256 (fwd+bwd)", vs_sdpa, vs_sdpa is not None and vs_sdpa <= 0.5)
    )
    for d in args.widths:
        for key in ("fwd_s", "fwd_bwd_s"):
            growth = ratio(get(rows, "fast", d, 8192, key), get(rows, "fast", d, 1024, key))
            label = "fwd+bwd" if key == "fwd_bwd_s" else "fwd (info)"
            results.append(
                (
                    f"fast time growth n=1024 -> 8192 <= 10x, d={d} ({label})",
                    growth,
                    growth is not None and growth <= 10,
                )
            )
    return [
        (name, value, "n.a." if value is None else ("PASS" if ok else "FAIL")) for name, value, ok in results
    ]


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


def fmt_time(value):
    return "-" if value is None else f"{value * 1e3:9.2f}"


def fmt_ratio(value):
    return "-" if value is None else f"{value:7.2f}x"


def print_table(rows, args, info):
    print(
        f"\nContextPool op benchmark: batch {args.batch}, R = {window_radius(SIGMA_MAX, TRUNCATION)} "
        f"(bidirectional), SDPA with {HEADS} heads; torch {info['torch']}, {info['threads']} threads, "
        f"{info['cpu']}; {info.get('accelerator_name', args.device)}, {args.dtype}; median of {args.repeats}. "
        "Times in ms, memory in MiB (peak extra, fwd+bwd)."
    )
    header = (
        f"{'d':>4} {'n':>5} | {'fast fwd':>9} {'fast f+b':>9} {'MiB':>7} | {'ref fwd':>9} {'ref f+b':>9} {'MiB':>7} "
        f"| {'sdpa fwd':>9} {'sdpa f+b':>9} {'MiB':>7} | {'ref/fast':>8} {'fast/sdpa':>9}"
    )
    print(header)
    print("-" * len(header))
    for d in args.widths:
        for n in args.sizes:
            cells = []
            for impl in IMPLS:
                row = next(r for r in rows if (r["impl"], r["d"], r["n"]) == (impl, d, n))
                if row["status"] != "ok":
                    cells.append(f"{row['status']:>27}")
                else:
                    cells.append(
                        f"{fmt_time(row['fwd_s'])} {fmt_time(row['fwd_bwd_s'])} {row['fwd_bwd_mib']:7.1f}"
                    )
            fast = next(r for r in rows if (r["impl"], r["d"], r["n"]) == ("fast", d, n))
            ratios = f"{fmt_ratio(fast.get('ref_over_fast_fwd_bwd_s')):>8} {fmt_ratio(fast.get('fast_over_sdpa_fwd_bwd_s')):>9}"
            print(f"{d:>4} {n:>5} | " + " | ".join(cells) + f" | {ratios}")
    print(
        "(ratios are fwd+bwd: ref/fast = speed-up over the dense reference; fast/sdpa = share of one SDPA call)"
    )
    for row in rows:
        if "triton_over_fast_fwd_bwd_s" in row:
            print(f"  triton/fast d={row['d']} n={row['n']}: fwd {fmt_ratio(row['triton_over_fast_fwd_s'])}, "
                  f"fwd+bwd {fmt_ratio(row['triton_over_fast_fwd_bwd_s'])} (below 1: the kernels are faster)")


def machine_info(device=None):
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return dict(
        torch=torch.__version__,
        python=platform.python_version(),
        threads=torch.get_num_threads(),
        cpu=cpu,
        cpu_count=os.cpu_count(),
        platform=platform.platform(),
        load_average=os.getloadavg() if hasattr(os, "getloadavg") else None,
        **bench_device.device_info(device or torch.device("cpu")),
    )


# a run replaces a results file whole: only one made with the same sweep (a re-measurement)
SWEEP_SETTINGS = ("sizes", "widths", "batch", "threads", "mem_cap_gib", "quick", "device", "dtype", "triton", "malloc")


def check_replaceable(args) -> None:
    """Stop before measuring when OUT.json holds a sweep made with other settings (a partial sweep would
    replace the full one); SystemExit naming what differs."""
    refuse_other_settings(args.out.with_suffix(".json"), {key: getattr(args, key) for key in SWEEP_SETTINGS}, None,
                          "an operator sweep", section="config", remedy="pass another --out, or move that file away to replace it")  # fmt: skip


def main(argv=None):
    args = parse_args(argv)
    if args.dense_1d:
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        run_dense_1d(args)
        return
    check_replaceable(args)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    info = machine_info(args.torch_device)
    started = time.time()
    rows = run_sweep(args)
    add_ratios(rows)
    info["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    info["wall_s"] = time.time() - started
    targets = check_targets(rows, args)
    print_table(rows, args, info)
    print("\nTargets:")
    for name, value, verdict in targets:
        shown = "-" if value is None else f"{value:.2f}x"
        print(f"  [{verdict}] {name}: {shown}")
    print(
        f"\nload average at start {info['load_average']}, at end {info['load_average_end']}; {info['wall_s']:.0f} s"
    )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    fields = ["impl", "d", "n", "status", "fwd_s", "fwd_bwd_s", "fwd_mib", "fwd_bwd_mib"]
    fields += [k for k in sorted({k for r in rows for k in r}) if k not in fields]
    with open(args.out.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
              if k not in ("torch_device", "torch_dtype")}  # the device and dtype are there as names
    config.update(sigma_max=SIGMA_MAX, truncation=TRUNCATION, heads=HEADS, causal=False)
    payload = dict(
        machine=info,
        config=config,
        rows=rows,
        targets=[dict(target=t, value=v, verdict=r) for t, v, r in targets],
    )
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.out.with_suffix('.csv')} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
