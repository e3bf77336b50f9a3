"""Translation evidence: vanilla Transformer vs ContextPool vs ContextPool with fewer layers.

Same data (offline EN-DE Bible pairs, whole test books held out), same shared BPE tokenizer, same
optimizer (AdamW, linear warmup/decay) and the same token budget (identical batches in identical
order for a given seed) for every model. The vanilla model is transformers' own `MarianMTModel`
configured to the same dimensions; ContextPool uses the same Marian shape with pooling in every
encoder, decoder and cross-attention layer. Writes benchmarks/translation_study.{csv,json,md} and
benchmarks/translation_bleu_vs_time.png.

    flock /tmp/contextpool-heavy.lock python scripts/study_translation.py          # ~10-15 min, 2 cores
    flock /tmp/contextpool-heavy.lock python scripts/study_translation.py --full   # longer, full test set

The default budget is tiny (minutes of CPU): BLEU stays low and differences between models are
within seed noise unless the table says otherwise.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from contextpool_hf.study_results import refuse_other_settings

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("run_translation", Path(__file__).with_name("run_translation.py"))
rt = importlib.util.module_from_spec(_spec)
sys.modules["run_translation"] = rt  # dataclasses look their module up
_spec.loader.exec_module(rt)

DIMS = dict(d_model=128, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=512,
            decoder_ffn_dim=512, dropout=0.1)
# Sentences here are <= 64 tokens; a window of R = ceil(2 * 4) = 8 tokens each side keeps the
# pooling cost small on 2 cores (the spec default sigma_max=8, truncation=3 gives R = 24).
POOL = dict(pool_sigma_max=4.0, pool_truncation=2.0)
MODELS = {
    "vanilla (Marian)": ("marian", dict(encoder_layers=3, decoder_layers=3)),
    "ContextPool": ("contextpool", dict(encoder_layers=3, decoder_layers=3, **POOL)),
    "ContextPool, fewer layers": ("contextpool", dict(encoder_layers=2, decoder_layers=2, **POOL)),
}
HEADLINE = ("vanilla (Marian)", "ContextPool")


def load_pairs(split_file: Path, tokenizer, max_len: int, limit: int | None = None):
    rows = [json.loads(line)["translation"] for line in split_file.read_text(encoding="utf-8").splitlines() if line]
    if limit is not None and limit < len(rows):
        step = len(rows) / limit  # evenly spread over the books of the split
        rows = [rows[int(i * step)] for i in range(limit)]
    feats, truncated = rt.encode_pairs(tokenizer, [r["en"] for r in rows], [r["de"] for r in rows], max_len, max_len)
    return feats, [r["de"] for r in rows], truncated


def batches(feats, batch_size: int, pad: int, order):
    for start in range(0, len(order) - batch_size + 1, batch_size):
        idx = order[start : start + batch_size]
        src = [feats["input_ids"][i] for i in idx]
        tgt = [feats["labels"][i] for i in idx]
        yield _pad(src, pad), _pad(tgt, -100)


def _pad(seqs, value):
    n = max(len(s) for s in seqs)
    return torch.tensor([s + [value] * (n - len(s)) for s in seqs])


@torch.no_grad()
def translate(model, tokenizer, feats, refs, max_len: int, batch_size: int = 64, num_beams: int = 1) -> dict:
    model.eval()
    hyps = []
    order = sorted(range(len(refs)), key=lambda i: len(feats["input_ids"][i]))  # less padding
    out = [None] * len(refs)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        src = _pad([feats["input_ids"][i] for i in idx], tokenizer.pad_token_id)
        mask = (src != tokenizer.pad_token_id).long()
        gen = model.generate(input_ids=src, attention_mask=mask, max_new_tokens=max_len, num_beams=num_beams,
                             do_sample=False)
        for i, text in zip(idx, tokenizer.batch_decode(gen, skip_special_tokens=True), strict=True):
            out[i] = text.strip()
    hyps = out
    model.train()
    return rt.bleu_chrf(hyps, refs)


def estimate_flops(config, model_type: str, src_tokens: int, tgt_tokens: int, src_len: float, tgt_len: float) -> float:
    """Training FLOPs (3 x forward), forward = 2 x multiply-adds: projections, MLPs, attention
    products, LM head, and the pooling (window 2R+1, d channels, per pooled stream)."""
    d = config.d_model
    enc_layers, dec_layers = config.encoder_layers, config.decoder_layers
    ffn_e, ffn_d = config.encoder_ffn_dim, config.decoder_ffn_dim
    vocab = config.vocab_size
    enc = enc_layers * (4 * d * d + 2 * d * ffn_e + 2 * src_len * d)
    dec = dec_layers * (8 * d * d + 2 * d * ffn_d + 2 * tgt_len * d + 2 * src_len * d) + d * vocab
    pool = 0.0
    if model_type == "contextpool":
        window = 2 * math.ceil(config.pool_truncation * config.pool_sigma_max) + 1
        predictor = 3 * d + 2 * d  # depthwise conv + linear to 2 logits
        per_token = 2 * window * d + predictor  # weighted sum + normaliser, predictor
        pool = enc_layers * per_token * src_tokens + dec_layers * per_token * (tgt_tokens + src_tokens)
        # causal windows are half as wide
        pool -= dec_layers * window * d * tgt_tokens
    # cross-attention K/V over the source: counted per target token above via 2 d^2 ... include source side once
    forward = 2 * (enc * src_tokens + dec * tgt_tokens) + 2 * pool
    return 3.0 * forward


def run_one(name, model_type, overrides, seed, tokenizer, data, args, log):
    torch.manual_seed(seed)
    model = rt.build_model(model_type, tokenizer, {**DIMS, **overrides}, max_positions=args.max_len)
    model.generation_config.max_length = None
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)  # Marian's frozen sinusoids excluded
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    total = args.steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / args.warmup, max(0.0, (total - s) / max(1, total - args.warmup)))
    )
    train, (val_feats, val_refs), (test_feats, test_refs) = data
    generator = torch.Generator().manual_seed(seed)  # same batches for every model with this seed
    order = []
    while len(order) < total * args.batch_size:
        order += torch.randperm(len(train["input_ids"]), generator=generator).tolist()
    curve, train_seconds, src_tokens, tgt_tokens = [], 0.0, 0, 0
    eval_every = max(1, total // args.evals)
    model.train()
    step = 0
    for src, labels in batches(train, args.batch_size, tokenizer.pad_token_id, order):
        if step >= total:
            break
        start = time.perf_counter()
        mask = (src != tokenizer.pad_token_id).long()
        loss = model(input_ids=src, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        train_seconds += time.perf_counter() - start
        src_tokens += int(mask.sum())
        tgt_tokens += int((labels != -100).sum())
        step += 1
        if step % eval_every == 0 or step == total:
            scores = translate(model, tokenizer, val_feats, val_refs, args.max_len)
            curve.append({"step": step, "train_seconds": round(train_seconds, 2), "loss": round(loss.item(), 4),
                          "val_bleu": round(scores["bleu"], 3), "val_chrf": round(scores["chrf"], 3)})
            log(f"  {name} seed {seed} step {step}/{total}: loss {float(loss):.3f} val BLEU {scores['bleu']:.2f} "
                f"chrF {scores['chrf']:.1f} ({train_seconds:.0f}s training)")
    start = time.perf_counter()
    test = translate(model, tokenizer, test_feats, test_refs, args.max_len, num_beams=args.num_beams)
    test_seconds = time.perf_counter() - start
    n_pairs = step * args.batch_size
    flops = estimate_flops(model.config, model_type, src_tokens, tgt_tokens, src_tokens / n_pairs, tgt_tokens / n_pairs)
    return {
        "model": name, "model_type": model_type, "seed": seed, "params": params,
        "encoder_layers": model.config.encoder_layers, "decoder_layers": model.config.decoder_layers,
        "steps": step, "train_src_tokens": src_tokens, "train_tgt_tokens": tgt_tokens,
        "train_seconds": round(train_seconds, 1), "test_decode_seconds": round(test_seconds, 1),
        "train_pflops_est": round(flops / 1e15, 4),
        "test_bleu": round(test["bleu"], 3), "test_chrf": round(test["chrf"], 3), "curve": curve,
    }


def summarise(rows):
    out = []
    for name in MODELS:
        runs = [r for r in rows if r["model"] == name]
        if not runs:
            continue

        def stat(key, runs=runs):
            values = [r[key] for r in runs]
            mean = statistics.mean(values)
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            return mean, sd

        out.append({"model": name, "seeds": len(runs), "params": runs[0]["params"],
                    "layers": f"{runs[0]['encoder_layers']}+{runs[0]['decoder_layers']}",
                    "bleu": stat("test_bleu"), "chrf": stat("test_chrf"), "train_seconds": stat("train_seconds"),
                    "pflops": runs[0]["train_pflops_est"], "tokens": runs[0]["train_src_tokens"] + runs[0]["train_tgt_tokens"]})
    return out


def write_outputs(rows, meta, out_dir: Path):
    out_dir.mkdir(parents=True, exist_ok=True)
    fields = [k for k in rows[0] if k != "curve"]
    with open(out_dir / "translation_study.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r[k] for k in fields})
    summary = summarise(rows)
    (out_dir / "translation_study.json").write_text(json.dumps({"meta": meta, "runs": rows, "summary": summary}, indent=2) + "\n")
    lines = [
        "| model | layers (enc+dec) | params | seeds | test BLEU | test chrF | train time (s) | train PFLOPs (est.) | train tokens |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        pm = lambda v, s=s: f"{v[0]:.2f} ± {v[1]:.2f}" if s["seeds"] > 1 else f"{v[0]:.2f}"  # noqa: E731
        lines.append(f"| {s['model']} | {s['layers']} | {s['params']:,} | {s['seeds']} | {pm(s['bleu'])} | "
                     f"{pm(s['chrf'])} | {s['train_seconds'][0]:.0f} | {s['pflops']:.3f} | {s['tokens']:,} |")
    md = "\n".join(lines)
    body = [f"# Translation study ({meta['mode']})", "", f"Command: `{meta['command']}`", "",
            f"Data: {meta['data']}", "", md, "",
            "Mean ± sample std over seeds; BLEU/chrF by sacrebleu on the held-out test books "
            f"({meta['test_pairs']} pairs, {'beam ' + str(meta['num_beams']) if meta['num_beams'] > 1 else 'greedy'}).", ""]
    (out_dir / "translation_study.md").write_text("\n".join(body))
    plot_curves(rows, meta, out_dir)
    return md



def plot_curves(rows, meta, out_dir: Path) -> None:
    """`translation_bleu_vs_time.png` from the results alone: one line per run, points in time order,
    one colour per model and one line style per seed."""
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    colors = dict(zip(MODELS, ("tab:gray", "tab:blue", "tab:orange"), strict=True))
    styles = ("-", "--", ":", "-.")
    seeds = list(meta["seeds"])
    for r in rows:
        curve = sorted(r["curve"], key=lambda c: c["train_seconds"])  # evaluations in the order they happened
        style = styles[seeds.index(r["seed"]) % len(styles)] if r["seed"] in seeds else "-"
        label = r["model"] + (f" (seed {r['seed']})" if len(seeds) > 1 else "")
        ax.plot([c["train_seconds"] for c in curve], [c["val_bleu"] for c in curve], marker="o", markersize=4,
                linestyle=style, color=colors.get(r["model"], "black"), label=label, alpha=0.85)  # fmt: skip
    ax.set_xlabel("training time (s, 2-core CPU, excluding evaluation)")
    ax.set_ylabel(f"validation BLEU ({meta['val_pairs']} pairs, greedy)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "translation_bleu_vs_time.png", dpi=120)
    plt.close(fig)

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="longer training, full validation/test sets, beam 4")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--max_len", type=int, default=64)
    parser.add_argument("--vocab_size", type=int, default=4000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--evals", type=int, default=3, help="validation BLEU points per run (for the plot)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out_dir", type=Path, default=ROOT / "benchmarks")
    parser.add_argument("--replot", action="store_true",
                        help="only redraw the plot in --out_dir from its translation_study.json (no training)")
    args = parser.parse_args(argv)
    if args.replot:
        saved = json.loads((args.out_dir / "translation_study.json").read_text())
        plot_curves(saved["runs"], saved["meta"], args.out_dir)
        return saved
    if args.steps is None:
        args.steps = 3000 if args.full else 150
    val_limit, test_limit = (None, None) if args.full else (60, 200)
    args.num_beams = 4 if args.full else 1
    torch.set_num_threads(args.threads)
    settings = {"mode": "full" if args.full else "default (short)", "steps": args.steps, "batch_size": args.batch_size,
                "lr": args.lr, "warmup": args.warmup, "seeds": args.seeds, "max_len": args.max_len,
                "vocab_size": args.vocab_size, "evals": args.evals}  # fmt: skip
    # the study rewrites translation_study.json whole: results made with other settings stop it first
    refuse_other_settings(args.out_dir / "translation_study.json", settings, None, "a translation study")

    from contextpool_hf.data import prepare_translation

    folder = prepare_translation()
    train_rows = [json.loads(x)["translation"] for x in (folder / "train.jsonl").read_text().splitlines() if x]
    tokenizer = rt.train_shared_tokenizer(train_rows, "en", "de", args.vocab_size)
    train, n_trunc = rt.encode_pairs(tokenizer, [r["en"] for r in train_rows], [r["de"] for r in train_rows],
                                        args.max_len, args.max_len)
    val = load_pairs(folder / "validation.jsonl", tokenizer, args.max_len, val_limit)
    test = load_pairs(folder / "test.jsonl", tokenizer, args.max_len, test_limit)
    data = (train, val[:2], test[:2])

    def log(msg):
        print(msg, flush=True)

    log(f"train pairs {len(train_rows)} ({n_trunc} sequences truncated to {args.max_len}); "
        f"val {len(val[1])}, test {len(test[1])}; vocab {len(tokenizer)}")
    rows = []
    started = time.perf_counter()
    for name, (model_type, overrides) in MODELS.items():
        seeds = args.seeds if name in HEADLINE else args.seeds[:1]
        for seed in seeds:
            rows.append(run_one(name, model_type, overrides, seed, tokenizer, data, args, log))
            log(f"{name} seed {seed}: test BLEU {rows[-1]['test_bleu']:.2f} chrF {rows[-1]['test_chrf']:.1f} "
                f"params {rows[-1]['params']:,} train {rows[-1]['train_seconds']:.0f}s")
    meta = {
        **settings,
        "command": "python scripts/study_translation.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
        "data": f"offline EN-DE Bible pairs (WEB -> Elberfelder 1932): {len(train_rows)} training pairs, "
                f"validation/test = whole held-out books; sequences cut to {args.max_len} tokens; shared BPE "
                f"vocab {len(tokenizer)}",
        "optimizer": "AdamW(0.9, 0.98), wd 0.01, linear warmup/decay, clip 1.0", "dims": DIMS, "pool": POOL,
        "val_pairs": len(val[1]), "test_pairs": len(test[1]), "num_beams": args.num_beams,
        "threads": args.threads, "total_seconds": round(time.perf_counter() - started, 1),
        "torch": torch.__version__,
    }
    md = write_outputs(rows, meta, args.out_dir)
    print(md)


if __name__ == "__main__":
    main()
