"""The evidence: ContextPool vs vanilla Transformers at the same token budget, on the offline KJV corpus.

    flock /tmp/contextpool-heavy.lock python scripts/study_lm.py          # ~10-15 min on 2 CPU cores
    python scripts/study_lm.py --full                                      # 4x the token budget, wider model

Every language-model run uses the same BPE tokenizer (trained once on the training split), the same
optimizer (AdamW, cosine schedule, warm-up), block size, batch size and number of steps, via
`scripts/run_clm.py`. Variants:

    vanilla-off     ContextPool code with pooling off (pool_layers=[])       3 seeds
    cp-qkv          ContextPool, queries/keys/values from pooled features      3 seeds
    llama           transformers' LlamaForCausalLM of the same size           1 seed
    cp-kv           ContextPool, keys/values pooled only                       1 seed
    cp-qkv-half     ContextPool with half the layers                           1 seed
    vanilla-half    pooling off with half the layers                           1 seed

Reported: validation loss (nats/token), bits per character, parameters, training FLOPs by formula
(`contextpool_hf.training.estimate_training_flops`: 6 N T dense + causal attention + pooling window terms)
and measured wall time (shared CPU: wall times are noisy, compare within one study run only).
A second section fine-tunes the pretrained MiniLM (offline package) and its ContextPool conversion on the
offline passage-classification task (1 seed), and pre-trains tiny MLMs with pooling on and off.
Outputs: benchmarks/lm_study.{csv,json,md}, benchmarks/lm_study_loss.png, benchmarks/lm_study_curves.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

HEADLINE = ("vanilla-off", "cp-qkv")


def variants(layers: int) -> dict[str, dict]:
    half = max(1, layers // 2)
    return {
        "vanilla-off": {"baseline": "contextpool-off", "layers": layers},
        "cp-qkv": {"baseline": "none", "layers": layers, "pool": "pool_target=qkv"},
        "llama": {"baseline": "llama", "layers": layers},
        "cp-kv": {"baseline": "none", "layers": layers, "pool": "pool_target=kv"},
        "cp-qkv-half": {"baseline": "none", "layers": half, "pool": "pool_target=qkv"},
        "vanilla-half": {"baseline": "contextpool-off", "layers": half},
    }


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="4x steps, hidden 256, block 256 (about an hour or more)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the headline comparison")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--block_size", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--vocab_size", type=int, default=512)
    parser.add_argument("--eval_blocks", type=int, default=64)
    parser.add_argument("--only", nargs="*", default=None, help="run only these variants")
    parser.add_argument("--skip_finetune", action="store_true", help="skip the MiniLM/MLM section")
    parser.add_argument("--finetune_samples", type=int, default=320, help="MiniLM classification training passages")
    parser.add_argument("--finetune_epochs", type=float, default=1.0)
    parser.add_argument("--finetune_lr", type=float, default=1e-4)
    parser.add_argument("--finetune_mix", type=float, nargs="+", default=[0.0],
                        help="pool_mix_init values for the converted MiniLM (0 = exactly the original at the start)")
    parser.add_argument("--out", default=str(HERE.parent / "benchmarks"))
    parser.add_argument("--replot", action="store_true",
                        help="only redraw the plots in --out from its lm_study.json (no training)")
    args = parser.parse_args(argv)
    args.steps = args.steps or (1200 if args.full else 300)
    args.hidden = args.hidden or (256 if args.full else 128)
    args.block_size = args.block_size or (256 if args.full else 128)
    return args


def lm_runs(args, work: Path, tokenizer_dir: str) -> list[dict]:
    import run_clm

    rows = []
    for name, spec in variants(args.layers).items():
        if args.only and name not in args.only:
            continue
        seeds = range(args.seeds) if name in HEADLINE else range(1)
        for seed in seeds:
            overrides = f"hidden_size={args.hidden},num_hidden_layers={spec['layers']},num_attention_heads=4"
            if spec.get("pool"):
                overrides += "," + spec["pool"]
            out = work / f"{name}-s{seed}"
            start = time.perf_counter()
            results = run_clm.main([
                "--output_dir", str(out), "--use_cpu", "--tokenizer_name", tokenizer_dir,
                "--baseline", spec["baseline"], "--config_overrides", overrides,
                "--block_size", str(args.block_size), "--per_device_train_batch_size", str(args.batch_size),
                "--per_device_eval_batch_size", "32", "--max_steps", str(args.steps),
                "--max_eval_samples", str(args.eval_blocks), "--learning_rate", "2e-3", "--warmup_steps",
                str(max(5, args.steps // 10)), "--seed", str(seed), "--data_seed", "0", "--logging_steps", "5",
                "--disable_tqdm", "true", "--log_level", "warning",
            ])  # fmt: skip
            state = json.loads((out / "trainer_state.json").read_text())
            curve = [(e["step"], e["loss"]) for e in state["log_history"] if "loss" in e]
            row = {
                "section": "lm", "variant": name, "seed": seed, "layers": spec["layers"],
                "eval_loss": results["eval_loss"], "eval_bpc": results["eval_bpc"],
                "eval_perplexity": results["eval_perplexity"], "train_loss": results["train_loss"],
                "n_parameters": results["n_parameters"], "train_tokens": results["train_tokens"],
                "flops_total": results["flops_total"], "flops_pooling": results["flops_pooling"],
                "train_seconds": results["train_runtime"], "run_seconds": time.perf_counter() - start,
                "curve": curve,
            }  # fmt: skip
            print(f"[study] {name} seed {seed}: eval loss {row['eval_loss']:.4f} bpc {row['eval_bpc']:.4f} "
                  f"params {row['n_parameters']:,} train {row['train_seconds']:.0f} s", flush=True)  # fmt: skip
            rows.append(row)
            shutil.rmtree(out, ignore_errors=True)
    return rows


def finetune_runs(args, work: Path, tokenizer_dir: str) -> tuple[list[dict], list[str]]:
    notes, rows = [], []
    import run_classification
    import run_mlm

    try:
        from contextpool_hf.tokenization import minilm_checkpoint_dir

        minilm = str(minilm_checkpoint_dir())
        import contextpool_hf.convert  # noqa: F401
    except (ImportError, ModuleNotFoundError) as error:
        notes.append(f"MiniLM classification skipped: {error}")
        minilm = None
    if minilm is not None:
        runs = [("minilm-original", "bert", None)]
        runs += [(f"minilm-contextpool-mix{mix:g}", "none", mix) for mix in args.finetune_mix]
        for name, baseline, mix in runs:
            out = work / name
            results = run_classification.main([
                "--output_dir", str(out), "--use_cpu", "--model_name_or_path", minilm, "--baseline", baseline,
                "--max_train_samples", str(args.finetune_samples), "--max_eval_samples", "270", "--max_seq_length", "64",
                "--num_train_epochs", str(args.finetune_epochs), "--learning_rate", str(args.finetune_lr),
                "--per_device_train_batch_size", "16", "--seed", "0", "--disable_tqdm", "true", "--log_level", "warning",
            ] + (["--config_overrides", f"pool_mix_init={mix}"] if mix is not None else []))  # fmt: skip
            rows.append({"section": "classification", "variant": name, "seed": 0, "eval_loss": results["eval_loss"],
                         "eval_accuracy": results["eval_accuracy"], "n_parameters": results["n_parameters"],
                         "train_seconds": results["train_runtime"]})  # fmt: skip
            print(f"[study] {name}: accuracy {results['eval_accuracy']:.4f}", flush=True)
            shutil.rmtree(out, ignore_errors=True)
    for name, baseline in (("mlm-vanilla-off", "contextpool-off"), ("mlm-cp-qkv", "none")):
        out = work / name
        results = run_mlm.main([
            "--output_dir", str(out), "--use_cpu", "--tokenizer_name", tokenizer_dir, "--baseline", baseline,
            "--config_overrides", f"hidden_size={args.hidden},num_hidden_layers={args.layers},num_attention_heads=4",
            "--block_size", str(args.block_size), "--max_steps", str(args.steps // 2), "--max_eval_samples",
            str(args.eval_blocks), "--learning_rate", "2e-3", "--seed", "0", "--data_seed", "0",
            "--disable_tqdm", "true", "--log_level", "warning",
        ])  # fmt: skip
        rows.append({"section": "mlm", "variant": name, "seed": 0, "eval_loss": results["eval_loss"],
                     "eval_accuracy": results["eval_accuracy"], "n_parameters": results["n_parameters"],
                     "train_seconds": results["train_runtime"]})  # fmt: skip
        print(f"[study] {name}: MLM loss {results['eval_loss']:.4f} acc {results['eval_accuracy']:.4f}", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    return rows, notes


def summarise(rows: list[dict]) -> list[dict]:
    table = []
    for name in dict.fromkeys(r["variant"] for r in rows if r["section"] == "lm"):
        runs = [r for r in rows if r["variant"] == name]
        def stat(key, runs=runs):
            values = [r[key] for r in runs]
            return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))
        loss, loss_sd = stat("eval_loss")
        bpc, bpc_sd = stat("eval_bpc")
        secs, _ = stat("train_seconds")
        table.append({"variant": name, "layers": runs[0]["layers"], "seeds": len(runs), "eval_loss": loss,
                      "eval_loss_std": loss_sd, "eval_bpc": bpc, "eval_bpc_std": bpc_sd,
                      "n_parameters": runs[0]["n_parameters"], "train_tokens": runs[0]["train_tokens"],
                      "flops_total": runs[0]["flops_total"], "flops_pooling": runs[0]["flops_pooling"],
                      "train_seconds": secs})  # fmt: skip
    return table


def fmt_std(value: float) -> str:
    return "" if math.isnan(value) else f" ± {value:.4f}"


def write_outputs(args, rows, table, notes, out: Path, meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "lm_study.csv", "w", newline="") as handle:
        keys = ["section", "variant", "seed", "layers", "eval_loss", "eval_bpc", "eval_perplexity", "eval_accuracy",
                "train_loss", "n_parameters", "train_tokens", "flops_total", "flops_pooling", "train_seconds"]
        writer = csv.DictWriter(handle, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (out / "lm_study.json").write_text(json.dumps({"meta": meta, "summary": table, "runs": rows, "notes": notes},
                                                  indent=1) + "\n")  # fmt: skip
    lines = ["# ContextPool LM study (measured)", "",
             f"Setup: KJV (offline), BPE vocab {args.vocab_size}, hidden {args.hidden}, 4 heads, block {args.block_size}, "
             f"batch {args.batch_size}, {args.steps} steps = {args.steps * args.batch_size * args.block_size:,} "
             "training tokens per run, AdamW lr 2e-3 cosine, validation on "
             f"{args.eval_blocks} blocks of held-out books. Machine: {meta['machine']}.", ""]  # fmt: skip
    if table:  # empty when --only selected no LM variant
        lines += ["| variant | layers | seeds | val loss (nats/token) | val bpc | params | train FLOPs | of which pooling | train wall s |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for t in table:
        lines.append(f"| {t['variant']} | {t['layers']} | {t['seeds']} | {t['eval_loss']:.4f}{fmt_std(t['eval_loss_std'])} | "
                     f"{t['eval_bpc']:.4f}{fmt_std(t['eval_bpc_std'])} | {t['n_parameters']:,} | {t['flops_total']:.3g} | "
                     f"{t['flops_pooling']:.2g} | {t['train_seconds']:.0f} |")  # fmt: skip
    other = [r for r in rows if r["section"] != "lm"]
    if other:
        lines += ["", "| section | variant | val loss | val accuracy | params | train wall s |", "|---|---|---|---|---|---|"]
        for r in other:
            lines.append(f"| {r['section']} | {r['variant']} | {r['eval_loss']:.4f} | {r['eval_accuracy']:.4f} | "
                         f"{r['n_parameters']:,} | {r['train_seconds']:.0f} |")  # fmt: skip
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    lines += ["", "Plots: " + plot_names(table, other) + ".", ""]
    (out / "lm_study.md").write_text("\n".join(lines))
    plot(table, rows, out)


def plot_names(table, other) -> str:
    """The plots `plot` draws for these results, as lm_study.md lists them."""
    names = ["`lm_study_loss.png` (validation bpc vs training FLOPs)", "`lm_study_curves.png` (training loss)"]
    names = (names if table else []) + (["`lm_study_finetune.png` (fine-tuning / MLM accuracy)"] if other else [])
    return ", ".join(names)


def plot(table, rows, out: Path) -> None:
    """Draw the plots from the results alone: the LM plots when LM variants ran (--only may select
    none), and `lm_study_finetune.png` when the MiniLM/MLM section ran."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    other = [r for r in rows if r["section"] != "lm"]
    if other:
        fig, ax = plt.subplots(figsize=(6.5, 0.6 + 0.45 * len(other)))
        labels = [f"{r['section']}: {r['variant']}" for r in other]
        accuracies = [r["eval_accuracy"] for r in other]
        ax.barh(range(len(other)), accuracies, color="tab:blue")
        for i, value in enumerate(accuracies):
            ax.text(value, i, f" {value:.4f}", va="center", fontsize=8)
        ax.set_yticks(range(len(other)))
        ax.set_yticklabels(labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, max(1.0, max(accuracies) * 1.15))
        ax.set_xlabel("validation accuracy")
        ax.set_title("Fine-tuning / MLM section (seed 0)", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "lm_study_finetune.png", dpi=130)
        plt.close(fig)
    if not table:  # no LM variant ran: nothing to put on the LM plots
        return

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for t in table:
        err = 0 if math.isnan(t["eval_bpc_std"]) else t["eval_bpc_std"]
        ax.errorbar(t["flops_total"], t["eval_bpc"], yerr=err, fmt="o", capsize=3, label=t["variant"])
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs (formula)")
    ax.set_ylabel("validation bits per character")
    ax.set_title("Same tokens, tokenizer and optimizer (mean ± std over seeds)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "lm_study_loss.png", dpi=130)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name in dict.fromkeys(r["variant"] for r in rows if r["section"] == "lm"):
        run = next(r for r in rows if r["variant"] == name and r["seed"] == 0)
        if not run["curve"]:
            continue
        steps, losses = zip(*run["curve"], strict=True)
        ax.plot(steps, losses, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats/token)")
    ax.set_title("Training loss, seed 0", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "lm_study_curves.png", dpi=130)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse(argv)
    if args.replot:
        saved = json.loads((Path(args.out) / "lm_study.json").read_text())
        plot(saved["summary"], saved["runs"], Path(args.out))
        return saved
    from contextpool_hf.study_results import refuse_other_settings

    settings = {k: v for k, v in vars(args).items() if k not in ("out", "replot")}  # the JSON keeps no machine path
    # the study rewrites lm_study.json whole: results made with other settings (--only, fewer steps) stop it first
    refuse_other_settings(Path(args.out) / "lm_study.json", settings, "args", "an LM study")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from contextpool_hf.data import default_data_dir, prepare_classification, prepare_lm
    from contextpool_hf.tokenization import train_bpe_tokenizer

    start = time.perf_counter()
    corpus = prepare_lm(default_data_dir(), "kjv")
    prepare_classification(default_data_dir())
    with tempfile.TemporaryDirectory(prefix="lm-study-") as tmp:
        work = Path(tmp)
        tokenizer = train_bpe_tokenizer(Path(corpus) / "train.txt", vocab_size=args.vocab_size)
        tokenizer.save_pretrained(work / "tokenizer")
        rows = lm_runs(args, work, str(work / "tokenizer"))
        notes = []
        if not args.skip_finetune:
            extra, notes = finetune_runs(args, work, str(work / "tokenizer"))
            rows += extra
    table = summarise(rows)
    import torch

    meta = {"machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}, "
                       f"{torch.get_num_threads()} threads (shared)", "args": settings,
            "command": ("python scripts/study_lm.py " + " ".join(sys.argv[1:] if argv is None else argv)).rstrip(),
            "wall_seconds": time.perf_counter() - start}  # fmt: skip
    write_outputs(args, rows, table, notes, Path(args.out), meta)
    print((Path(args.out) / "lm_study.md").read_text())
    return {"summary": table, "rows": rows}


if __name__ == "__main__":
    main(sys.argv[1:])
