#!/usr/bin/env python
"""Cost of ContextPool text models next to the vanilla transformers models of the same size.

Measured in one run, on the same machine and thread count:

- training step (forward + backward + AdamW step, labels given) time and peak memory:
  ContextPoolForCausalLM (Llama shape: causal, rotary, RMSNorm, gated SiLU MLP, no biases) vs
  `LlamaForCausalLM(attn_implementation="sdpa")`, and ContextPoolForMaskedLM (BERT shape:
  post-norm, absolute + token-type positions, embedding LayerNorm, GELU MLP, MLM transform head)
  vs `BertForMaskedLM(attn_implementation="sdpa")`. Both ContextPool models use SDPA for the
  attention product and pool in every layer with the spec defaults (sigma_max 8, truncation 3:
  R = 24; one pooling group; pool_target "qkv").
- generation tokens/s with the cache (greedy, fixed number of new tokens, no EOS) of
  ContextPoolForCausalLM vs LlamaForCausalLM.

Timing: after warm-up steps, the two models of a pair are timed alternately (A, B, A, B, ...) so
that load from other processes falls on both; the median of the repeats is reported.

Peak memory: one extra training step per model runs under `torch.profiler` with
`profile_memory=True`; the allocator events ([memory] records: +bytes on allocation, -bytes on
free, all CPU tensors) are replayed in time order and the maximum of the running sum is the peak
of tensor memory allocated *during* the step, on top of what already lived before it (weights,
gradients and AdamW state exist from the warm-up). Process RSS and tracemalloc would not isolate
torch tensor allocations of one step.

Targets (PASS/FAIL is printed, the exit status stays 0): training step time <= 1.3x vanilla,
generation tokens/s >= 0.8x vanilla.

    python scripts/bench_model.py            # full run (hidden 256, 4 layers, 4 heads, n = 512, 1024)
    python scripts/bench_model.py --quick    # smoke run in well under a minute
"""

import argparse
import csv
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from transformers import BertConfig, BertForMaskedLM, LlamaConfig, LlamaForCausalLM

from contextpool_hf import ContextPoolConfig, ContextPoolForCausalLM, ContextPoolForMaskedLM

TRAIN_TARGET = 1.3  # ContextPool step time / vanilla step time must be <= this
GENERATION_TARGET = 0.8  # ContextPool tokens/s / vanilla tokens/s must be >= this


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (smoke test)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--gen-batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--output-dir", default="benchmarks")
    parser.add_argument("--name", default="bench_model", help="result file stem")
    args = parser.parse_args()
    if args.quick:
        args.hidden, args.layers, args.heads, args.vocab = 64, 2, 4, 512
        args.seq_lens, args.batch, args.repeats, args.warmup = [128], 2, 3, 1
        args.prompt_len, args.new_tokens, args.gen_batches = 32, 16, [1]
        if args.name == "bench_model":
            args.name = "bench_model_quick"
    return args


# --------------------------------------------------------------------------------------
# Models of the same size
# --------------------------------------------------------------------------------------


def causal_pair(args, max_len):
    common = dict(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                  num_attention_heads=args.heads, intermediate_size=4 * args.hidden, max_position_embeddings=max_len,
                  tie_word_embeddings=False)
    contextpool = ContextPoolForCausalLM(ContextPoolConfig(
        **common, is_causal=True, position_embedding_type="rotary", norm_type="rmsnorm", norm_eps=1e-6,
        mlp_type="gated", hidden_act="silu", attention_bias=False, mlp_bias=False, norm_position="pre",
        final_norm=True, attn_implementation="sdpa",
    ))
    llama = LlamaForCausalLM(LlamaConfig(**common, num_key_value_heads=args.heads, rms_norm_eps=1e-6,
                                         attn_implementation="sdpa"))
    return contextpool, llama


def masked_pair(args, max_len):
    contextpool = ContextPoolForMaskedLM(ContextPoolConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, intermediate_size=4 * args.hidden, max_position_embeddings=max_len,
        is_causal=False, position_embedding_type="absolute", type_vocab_size=2, norm_type="layernorm",
        norm_eps=1e-12, norm_position="post", embedding_norm=True, final_norm=False, mlp_type="gelu",
        hidden_act="gelu", mlm_head_transform=True, attn_implementation="sdpa",
    ))
    bert = BertForMaskedLM(BertConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, intermediate_size=4 * args.hidden, max_position_embeddings=max_len,
        attn_implementation="sdpa",
    ))
    return contextpool, bert


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------


def train_step_fn(model, batch, seq_len, vocab) -> Callable[[], None]:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocab, (batch, seq_len), generator=generator)
    attention_mask = torch.ones_like(input_ids)

    def step():
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def generate_fn(model, batch, prompt_len, new_tokens, vocab) -> Callable[[], None]:
    model.eval()
    input_ids = torch.randint(0, vocab, (batch, prompt_len), generator=torch.Generator().manual_seed(1))
    attention_mask = torch.ones_like(input_ids)

    def run():
        with torch.no_grad():
            out = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False, use_cache=True, pad_token_id=0,
                                 eos_token_id=None)
        assert out.shape[1] == prompt_len + new_tokens

    return run


def timed_pair(fn_a, fn_b, repeats, warmup):
    """Median seconds of fn_a and fn_b, run alternately after warm-up."""
    for _ in range(warmup):
        fn_a()
        fn_b()
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times_a), statistics.median(times_b), times_a, times_b


def peak_step_memory(fn) -> int:
    """Peak bytes of CPU tensor memory allocated during one call, above the level before it."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # kineto's [memory] records: nbytes > 0 for an allocation, < 0 for a free, with a timestamp
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    running = peak = 0
    for event in events:
        running += event.nbytes()
        peak = max(peak, running)
    return peak


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    max_len = max(args.seq_lens + [args.prompt_len + args.new_tokens])

    for task, make_pair, vanilla_name in (("causal-lm", causal_pair, "LlamaForCausalLM"),
                                          ("masked-lm", masked_pair, "BertForMaskedLM")):
        for seq_len in args.seq_lens:
            contextpool, vanilla = make_pair(args, max_len)
            step_cp = train_step_fn(contextpool, args.batch, seq_len, args.vocab)
            step_v = train_step_fn(vanilla, args.batch, seq_len, args.vocab)
            t_cp, t_v, all_cp, all_v = timed_pair(step_cp, step_v, args.repeats, args.warmup)
            mem_cp, mem_v = peak_step_memory(step_cp), peak_step_memory(step_v)
            ratio = t_cp / t_v
            rows.append(dict(
                measure="train_step", task=task, contextpool=type(contextpool).__name__, vanilla=vanilla_name,
                seq_len=seq_len, batch=args.batch, contextpool_value=round(t_cp * 1000, 2),
                vanilla_value=round(t_v * 1000, 2), unit="ms/step", ratio=round(ratio, 3),
                target=f"<= {TRAIN_TARGET}", status="PASS" if ratio <= TRAIN_TARGET else "FAIL",
                contextpool_peak_mib=round(mem_cp / 2**20, 1), vanilla_peak_mib=round(mem_v / 2**20, 1),
                memory_ratio=round(mem_cp / mem_v, 3) if mem_v else None,
                contextpool_params=n_params(contextpool), vanilla_params=n_params(vanilla),
                contextpool_times_ms=[round(t * 1000, 1) for t in all_cp],
                vanilla_times_ms=[round(t * 1000, 1) for t in all_v],
            ))
            print(_row_text(rows[-1]), flush=True)
            del contextpool, vanilla, step_cp, step_v

    for batch in args.gen_batches:
        contextpool, llama = causal_pair(args, max_len)
        gen_cp = generate_fn(contextpool, batch, args.prompt_len, args.new_tokens, args.vocab)
        gen_v = generate_fn(llama, batch, args.prompt_len, args.new_tokens, args.vocab)
        t_cp, t_v, all_cp, all_v = timed_pair(gen_cp, gen_v, args.repeats, args.warmup)
        tps_cp, tps_v = batch * args.new_tokens / t_cp, batch * args.new_tokens / t_v
        ratio = tps_cp / tps_v
        rows.append(dict(
            measure="generate", task="causal-lm", contextpool="ContextPoolForCausalLM", vanilla="LlamaForCausalLM",
            seq_len=f"{args.prompt_len}+{args.new_tokens}", batch=batch, contextpool_value=round(tps_cp, 1),
            vanilla_value=round(tps_v, 1), unit="tokens/s", ratio=round(ratio, 3), target=f">= {GENERATION_TARGET}",
            status="PASS" if ratio >= GENERATION_TARGET else "FAIL", contextpool_peak_mib=None,
            vanilla_peak_mib=None, memory_ratio=None, contextpool_params=n_params(contextpool),
            vanilla_params=n_params(llama), contextpool_times_ms=[round(t * 1000, 1) for t in all_cp],
            vanilla_times_ms=[round(t * 1000, 1) for t in all_v],
        ))
        print(_row_text(rows[-1]), flush=True)

    meta = dict(
        torch=torch.__version__, transformers=transformers.__version__, python=platform.python_version(),
        machine=platform.machine(), processor=platform.processor() or None, threads=torch.get_num_threads(),
        device="cpu", hidden=args.hidden, layers=args.layers, heads=args.heads, vocab=args.vocab,
        repeats=args.repeats, warmup=args.warmup, quick=args.quick,
        memory_method="torch.profiler profile_memory: peak of the running sum of [memory] events during one step",
        timing_method="median of alternating repeats after warm-up (time.perf_counter)",
    )
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{args.name}.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    fields = [k for k in rows[0] if not k.endswith("_times_ms")]
    with open(out_dir / f"{args.name}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    print()
    print(markdown_table(rows, meta))


def _row_text(row) -> str:
    memory = ""
    if row["contextpool_peak_mib"] is not None:
        memory = f"  peak {row['contextpool_peak_mib']} vs {row['vanilla_peak_mib']} MiB"
    return (f"{row['measure']:<10} {row['task']:<9} n={row['seq_len']:<6} B={row['batch']}: "
            f"{row['contextpool_value']} vs {row['vanilla_value']} {row['unit']}  ratio {row['ratio']} "
            f"({row['target']}: {row['status']}){memory}")


def markdown_table(rows, meta) -> str:
    lines = [
        f"torch {meta['torch']}, transformers {meta['transformers']}, {meta['threads']} CPU thread(s); "
        f"hidden {meta['hidden']}, {meta['layers']} layers, {meta['heads']} heads, vocab {meta['vocab']}",
        "",
        "| measure | ContextPool vs vanilla | n | batch | ContextPool | vanilla | ratio | target | "
        "peak MiB (CP / vanilla) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        memory = "" if r["contextpool_peak_mib"] is None else f"{r['contextpool_peak_mib']} / {r['vanilla_peak_mib']}"
        lines.append(
            f"| {r['measure']} | {r['contextpool']} vs {r['vanilla']} | {r['seq_len']} | {r['batch']} | "
            f"{r['contextpool_value']} {r['unit']} | {r['vanilla_value']} {r['unit']} | {r['ratio']} | "
            f"{r['target']} {r['status']} | {memory} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
