"""Character-level LM study: does adaptive pooling beat the same-depth model, or match a deeper one?

    python scripts/study_char_lm.py --quick     # smoke test of every code path (< 3 min, writes out/char_lm_quick/)
    python scripts/study_char_lm.py             # the 2-core default (see --plan for its run list and estimate)
    python scripts/study_char_lm.py --full      # real hardware: wider, 2/4/8 layers, 4x the tokens

Data: the offline KJV and Shakespeare corpora as `contextpool_hf.data.prepare_lm` splits them
(whole books / whole plays held out), read as bytes: vocabulary 256, one byte = one character
(the texts are ASCII; bpc below divides by the number of characters in any case). Training
windows of block_size + 1 bytes are drawn from the two training splits concatenated.

Variants (one runner; only the model config differs):

    off               ContextPoolForCausalLM, pooling off (pool_layers=[])         every depth
    llama             transformers' LlamaForCausalLM of the same shape              every depth
    cp                ContextPool as specified (adaptive, attention input pooled)   every depth
    cp-block-output   pool_placement="block_output" (paper Fig. 2(c) caption)       ablation depth
    cp-fixed          pool_mode="fixed": w = 1, one constant sigma, same window      ablation depth
    cp-fixed-learned  pool_mode="fixed_learned": w = 1, one learned sigma per layer  ablation depth
    cp-kv             pool_target="kv": queries from the tokens themselves              ablation depth, opt-in
    cp-sigma4         pool_sigma_max=4: half the sigma range and window (R = 12)        ablation depth, opt-in

The two opt-in variants (issue 16 item 5: pool_target and the sigma range) run only when --variants names them.

Fairness: every model is Llama-shaped (RMSNorm, gated SiLU MLP, rotary, no biases, tied
embeddings) at the same width; at a given seed every variant sees the same windows in the same
order (the data order depends on the seed only) with the same optimizer (AdamW, betas 0.9/0.95,
weight decay 0.1 on matrices, warm-up then cosine to 10%, clip 1.0). The learning rate of every
(variant, depth) is the best validation bpc of a grid at a reduced budget (`lr_search` in the JSON).

Reported per row: test bpc mean and std over seeds, parameters, training FLOPs by the package's
formula (`contextpool_hf.training.estimate_training_flops`; pooling FLOPs separately), training
wall time, validation-bpc curves (plot against FLOPs and against wall time), and for the adaptive
model the mean learned sigma by position within a word, per layer (issue 16 section 3).

Outputs (in --out): char_lm_study.json (`summary`, `runs`, `lr_search`, `sigma_by_position`,
`meta` with the command), char_lm_study.md, char_lm_study_curves.png, char_lm_study_sigma.png.
A rerun with the same settings skips the runs already in the JSON (resume after an interruption); --seeds,
--variants, --depths and --threads may change (more seeds, variants or depths add runs). A JSON made with other settings stops
the study instead of being overwritten. Rows run side by side into separate folders (one core each) are joined with
--merge: `--out benchmarks/x --merge out/a out/b` adds their runs to benchmarks/x and rewrites its table and plots.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from contextpool_hf.study_results import command_history, read_matching, recorded_commands

ROOT = Path(__file__).resolve().parent.parent
CORPORA = ("kjv", "shakespeare")
HEADLINE = ("off", "llama", "cp")
ABLATIONS = ("cp-block-output", "cp-fixed", "cp-fixed-learned", "cp-kv", "cp-sigma4")
VARIANTS = {
    # name: (implementation, ContextPoolConfig overrides, row's placement, row's pooling)
    "off": ("contextpool", {"pool_layers": []}, "none", "off"),
    "llama": ("llama", {}, "none", "off"),
    "cp": ("contextpool", {}, "attention_input", "adaptive"),
    "cp-block-output": ("contextpool", {"pool_placement": "block_output"}, "block_output", "adaptive"),
    "cp-fixed": ("contextpool", {"pool_mode": "fixed"}, "attention_input", "fixed"),
    "cp-fixed-learned": ("contextpool", {"pool_mode": "fixed_learned"}, "attention_input", "fixed"),
    "cp-kv": ("contextpool", {"pool_target": "kv"}, "attention_input", "adaptive"),
    "cp-sigma4": ("contextpool", {"pool_sigma_max": 4.0}, "attention_input", "adaptive"),
}
# what a run without --variants trains (the opt-in variants answer item 5's remaining defaults)
DEFAULT_VARIANTS = ("off", "llama", "cp", "cp-block-output", "cp-fixed", "cp-fixed-learned")
# Sizes per mode. steps/batch/block give the token budget of a headline run; the grid runs
# grid_fraction of the steps (with their own schedule).
MODES = {
    "quick": dict(hidden=32, heads=2, block=512, batch=2, steps=6, depths=[1, 2], ablation_depth=1, seeds=2,
                  lr_grid=[1e-3, 3e-3, 1e-2], grid_fraction=0.5, eval_blocks=2, test_blocks=2, eval_every=3,
                  sigma_blocks=2),
    "default": dict(hidden=128, heads=4, block=512, batch=8, steps=360, depths=[2, 4], ablation_depth=2, seeds=3,
                    lr_grid=[1e-3, 2e-3, 4e-3], grid_fraction=1 / 3, eval_blocks=16, test_blocks=128, eval_every=40,
                    sigma_blocks=16),
    "full": dict(hidden=256, heads=4, block=1024, batch=16, steps=4000, depths=[2, 4, 8], ablation_depth=4,
                 seeds=3, lr_grid=[5e-4, 1e-3, 2e-3, 4e-3], grid_fraction=0.2, eval_blocks=64, test_blocks=400,
                 eval_every=250, sigma_blocks=64),
}


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="tiny smoke run of every code path")
    mode.add_argument("--full", action="store_true", help="real hardware sizes")
    parser.add_argument("--plan", action="store_true", help="print the run list and the estimated wall time, train nothing")
    for name, kind in (("hidden", int), ("heads", int), ("block", int), ("batch", int), ("steps", int),
                       ("ablation_depth", int), ("seeds", int), ("grid_fraction", float), ("eval_blocks", int),
                       ("test_blocks", int), ("eval_every", int), ("sigma_blocks", int)):  # fmt: skip
        parser.add_argument(f"--{name}", type=kind, default=None, help="override the mode's value")
    parser.add_argument("--depths", type=int, nargs="+", default=None)
    parser.add_argument("--lr_grid", type=float, nargs="+", default=None)
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="output folder (default benchmarks/, quick: out/char_lm_quick)")
    parser.add_argument("--merge", nargs="+", default=[], metavar="DIR",
                        help="output folders of the same study (same settings but --seeds/--variants/--depths/"
                             "--threads, e.g. variants run side by side on one core each) whose runs join --out's "
                             "before it plans; a run both hold keeps --out's")  # fmt: skip
    args = parser.parse_args(argv)
    args.mode = "quick" if args.quick else "full" if args.full else "default"
    for key, value in MODES[args.mode].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.block < 512 and not args.quick:
        parser.error("--block must be >= 512 (issue 16: character models need long contexts)")
    # ablations are compared with the headline rows of their depth: they need that depth among --depths
    ablations = [v for v in args.variants if v in ABLATIONS]
    if ablations and args.ablation_depth not in args.depths:
        parser.error(f"--ablation_depth {args.ablation_depth} must be one of --depths {args.depths} "
                     f"(the ablations {ablations} are compared with the headline rows of that depth)")
    if len(args.lr_grid) < 3:
        parser.error("--lr_grid needs at least 3 values")
    args.out = Path(args.out or (ROOT / "out" / "char_lm_quick" if args.quick else ROOT / "benchmarks"))
    return args


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


def load_splits() -> dict[str, dict[str, torch.Tensor]]:
    """{split: {corpus: uint8 tensor of the split's bytes}} for both corpora."""
    from contextpool_hf.data import prepare_lm

    splits: dict[str, dict[str, torch.Tensor]] = {"train": {}, "validation": {}, "test": {}}
    for corpus in CORPORA:
        folder = Path(prepare_lm(ROOT / "data", corpus))
        for split in splits:
            raw = (folder / f"{split}.txt").read_bytes()
            splits[split][corpus] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    return splits


def eval_windows(streams: dict[str, torch.Tensor], blocks: int, block: int) -> dict[str, torch.Tensor]:
    """Per corpus, `blocks` non-overlapping windows of block + 1 bytes spread evenly over the split."""
    out = {}
    for corpus, data in streams.items():
        available = (len(data) - 1) // block
        count = min(blocks, available)
        starts = torch.linspace(0, (available - 1) * block, count).long() // block * block
        out[corpus] = torch.stack([data[s : s + block + 1] for s in starts.tolist()]).long()
    return out


def train_starts(train: torch.Tensor, steps: int, batch: int, block: int, seed: int) -> torch.Tensor:
    """(steps, batch) window starts: a function of the seed only, so every variant sees the same data."""
    generator = torch.Generator().manual_seed(10_000 + seed)
    return torch.randint(0, len(train) - block - 1, (steps, batch), generator=generator)


def characters(targets: torch.Tensor) -> int:
    """Characters among predicted bytes: every byte but UTF-8 continuation bytes (0x80-0xBF)."""
    return int(((targets < 0x80) | (targets >= 0xC0)).sum())


@torch.no_grad()
def bpc(model, windows: dict[str, torch.Tensor], batch: int = 8) -> dict[str, float]:
    """Bits per character per corpus and over both (nats summed over every predicted byte)."""
    model.eval()
    device = next(model.parameters()).device
    result, total_nats, total_chars = {}, 0.0, 0
    for corpus, data in windows.items():
        nats, chars = 0.0, 0
        for i in range(0, len(data), batch):
            x = data[i : i + batch].to(device)
            logits = model(input_ids=x[:, :-1], use_cache=False).logits
            nats += float(F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten(), reduction="sum"))
            chars += characters(x[:, 1:])
        result[corpus] = nats / chars / math.log(2)
        total_nats, total_chars = total_nats + nats, total_chars + chars
    result["all"] = total_nats / total_chars / math.log(2)
    model.train()
    return result


# --------------------------------------------------------------------------------------
# Models and training
# --------------------------------------------------------------------------------------


def build_model(variant: str, depth: int, args):
    from contextpool_hf import ContextPoolConfig, ContextPoolForCausalLM
    from contextpool_hf.training import vanilla_config

    implementation, overrides, _, _ = VARIANTS[variant]
    config = ContextPoolConfig(
        vocab_size=256, hidden_size=args.hidden, num_hidden_layers=depth, num_attention_heads=args.heads,
        intermediate_size=int(8 * args.hidden / 3 + 31) // 32 * 32, mlp_type="gated", hidden_act="silu",
        norm_type="rmsnorm", norm_eps=1e-6, attention_bias=False, mlp_bias=False, position_embedding_type="rotary",
        max_position_embeddings=args.block, is_causal=True, tie_word_embeddings=True, initializer_range=0.02,
        **overrides,
    )  # fmt: skip
    if implementation == "llama":
        from transformers import LlamaForCausalLM

        llama = vanilla_config("clm", "llama", config)
        llama._attn_implementation = "sdpa"
        return LlamaForCausalLM(llama)
    config._attn_implementation = "sdpa"
    return ContextPoolForCausalLM(config)


def make_optimizer(model, lr: float, steps: int):
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    other = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                                  lr=lr, betas=(0.9, 0.95))  # fmt: skip
    warmup = max(1, steps // 20)

    def factor(step):  # linear warm-up, then cosine from 1 to 0.1
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_one(variant, depth, lr, seed, steps, args, data, *, keep_model=False):
    """Train one model; -> (row with curves and final validation bpc, model or None)."""
    from contextpool_hf.training import count_parameters, estimate_training_flops

    torch.manual_seed(seed)
    model = build_model(variant, depth, args).to(args.device)
    model.train()
    optimizer, schedule = make_optimizer(model, lr, steps)
    train, block = data["train"], args.block
    starts = train_starts(train, steps, args.batch, block, seed)
    offsets = torch.arange(block + 1)
    tokens = steps * args.batch * block
    flops = estimate_training_flops(model, tokens, block)
    curve, seconds, losses, step_times, cpu_times = [], 0.0, [], [], []
    for step in range(steps):
        x = train[starts[step].unsqueeze(1) + offsets].long().to(args.device)  # (batch, block + 1)
        began, cpu_began = time.perf_counter(), time.process_time()
        logits = model(input_ids=x[:, :-1], use_cache=False).logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        step_times.append(time.perf_counter() - began)
        cpu_times.append(time.process_time() - cpu_began)
        seconds += step_times[-1]
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"{variant} depth {depth} lr {lr} seed {seed}: loss {losses[-1]} at step {step}")
        done = step + 1
        if done % args.eval_every == 0 or done == steps:
            val = bpc(model, data["validation_windows"])["all"]
            curve.append({"step": done, "tokens": done * args.batch * block, "flops": flops["flops_total"] * done / steps,
                          "train_seconds": seconds, "val_bpc": val})  # fmt: skip
    implementation, _, placement, pooling = VARIANTS[variant]
    row = {
        "variant": variant, "layers": depth, "placement": placement, "pooling": pooling, "implementation": implementation,
        "seed": seed, "learning_rate": lr, "steps": steps, "train_tokens": tokens, "n_parameters": count_parameters(model),
        "flops_total": flops["flops_total"], "flops_pooling": flops["flops_pooling"], "train_seconds": seconds,
        "seconds_per_step": statistics.median(step_times),
        "cpu_seconds_per_step": statistics.median(cpu_times), "train_loss_last": statistics.mean(losses[-max(1, steps // 10):]),
        "val_bpc": curve[-1]["val_bpc"], "curve": curve,
    }  # fmt: skip
    return row, (model if keep_model else None)


# --------------------------------------------------------------------------------------
# Learned sigma by position within a word (issue 16 section 3)
# --------------------------------------------------------------------------------------

POSITION_CLASSES = ("first letter", "middle", "last letter", "single letter", "space", "punctuation")


def position_classes(window: torch.Tensor) -> torch.Tensor:
    """Class index (POSITION_CLASSES) of every byte: letters by their place in a word, whitespace, the rest."""
    letter = ((window >= 65) & (window <= 90)) | ((window >= 97) & (window <= 122)) | (window == 39)  # ' joins words
    space = (window == 32) | (window == 10) | (window == 9) | (window == 13)
    before = F.pad(letter, (1, 0), value=False)[..., :-1]
    after = F.pad(letter, (0, 1), value=False)[..., 1:]
    classes = torch.full(window.shape, 5, dtype=torch.long)
    classes[space] = 4
    classes[letter & ~before & after] = 0
    classes[letter & before & after] = 1
    classes[letter & before & ~after] = 2
    classes[letter & ~before & ~after] = 3
    return classes


@torch.no_grad()
def sigma_by_position(model, windows: dict[str, torch.Tensor], blocks: int) -> dict:
    """Mean learned sigma (over groups) per layer and position class, on test windows of both corpora."""
    model.eval()
    sums, counts = None, torch.zeros(len(POSITION_CLASSES))
    for data in windows.values():
        for i in range(0, min(blocks, len(data)), 4):
            x = data[i : min(i + 4, blocks)][:, :-1]
            out = model(input_ids=x.to(next(model.parameters()).device), use_cache=False, output_pooling_sizes=True)
            layers = [s.mean(1).cpu() for s in out.pooling_sizes]  # each (B, n): sigma of the token at i
            if sums is None:
                sums = torch.zeros(len(layers), len(POSITION_CLASSES))
            classes = position_classes(x)
            for c in range(len(POSITION_CLASSES)):
                mask = classes == c
                for layer, sigma in enumerate(layers):
                    sums[layer, c] += sigma[mask].sum()
            counts += torch.bincount(classes.flatten(), minlength=len(POSITION_CLASSES)).float()
    means = (sums / counts.clamp_min(1)).tolist()
    return {"classes": list(POSITION_CLASSES), "counts": counts.long().tolist(),
            "mean_sigma": [[round(v, 4) for v in row] for row in means]}  # fmt: skip


# --------------------------------------------------------------------------------------
# The study
# --------------------------------------------------------------------------------------


def plan(args) -> list[tuple]:
    """[(kind, variant, depth, lr or None, seed, steps)] in the order they run (grid first)."""
    cells = [(v, d) for d in args.depths for v in HEADLINE if v in args.variants]
    cells += [(v, args.ablation_depth) for v in ABLATIONS if v in args.variants]
    grid_steps = max(2, round(args.steps * args.grid_fraction))
    runs = [("grid", v, d, lr, 0, grid_steps) for v, d in cells for lr in args.lr_grid]
    runs += [("main", v, d, None, s, args.steps) for v, d in cells for s in range(args.seeds)]
    return runs


def estimate(args, runs, step_seconds_by_cell: dict) -> float:
    """Seconds of training steps of `runs`, given seconds per step of every (variant, depth)."""
    return sum(step_seconds_by_cell[(v, d)] * steps for _, v, d, _, _, steps in runs)


def measure_step_seconds(args, data, cells, steps=6) -> dict:
    """Median seconds per training step of each (variant, depth) over `steps` steps (the first included)."""
    measured = {}
    for variant, depth in cells:
        row, _ = train_one(variant, depth, 1e-3, 0, steps, args, {**data, "validation_windows": {
            k: v[:1] for k, v in data["validation_windows"].items()}})  # fmt: skip
        # CPU seconds / threads: what a step would take on an otherwise idle machine (the machine is shared)
        measured[(variant, depth)] = (row["seconds_per_step"], row["cpu_seconds_per_step"] / args.threads)
    return measured


def summarise(runs: list[dict]) -> list[dict]:
    table = []
    for key in dict.fromkeys((r["variant"], r["layers"]) for r in runs):
        group = [r for r in runs if (r["variant"], r["layers"]) == key]
        test = [r["test_bpc"] for r in group]
        first = group[0]
        table.append({
            "variant": first["variant"], "layers": first["layers"], "placement": first["placement"],
            "pooling": first["pooling"], "seeds": len(group), "learning_rate": first["learning_rate"],
            "test_bpc": statistics.mean(test), "test_bpc_std": statistics.stdev(test) if len(test) > 1 else float("nan"),
            **{f"test_bpc_{c}": statistics.mean(r["test_bpc_by_corpus"][c] for r in group) for c in CORPORA},
            "val_bpc": statistics.mean(r["val_bpc"] for r in group), "n_parameters": first["n_parameters"],
            "train_tokens": first["train_tokens"], "flops_total": first["flops_total"],
            "flops_pooling": first["flops_pooling"], "train_seconds": statistics.mean(r["train_seconds"] for r in group),
        })  # fmt: skip
    return table


def save_json(args, state: dict) -> None:
    """char_lm_study.json with the summary of the runs so far (what a rerun resumes from)."""
    args.out.mkdir(parents=True, exist_ok=True)
    state["summary"] = summarise(state["runs"])
    (args.out / "char_lm_study.json").write_text(json.dumps(state, indent=1) + "\n")


def write_outputs(args, state: dict) -> None:
    save_json(args, state)
    lines = [f"# Character-level LM study ({args.mode} mode)", "", f"Command: `{state['meta']['command']}`", "",
             f"Bytes (vocab 256) of KJV + Shakespeare, held-out books/plays; hidden {args.hidden}, {args.heads} heads, "
             f"block {args.block}, batch {args.batch}, {args.steps} steps; LR per row from {args.lr_grid} at "
             f"{args.grid_fraction:g} of the steps. Machine: {state['meta']['machine']}.", "",
             "| variant | layers | placement | pooling | seeds | lr | test bpc | val bpc | params | train FLOPs | "
             "of which pooling | train s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in state["summary"]:
        std = "" if math.isnan(r["test_bpc_std"]) else f" ± {r['test_bpc_std']:.4f}"
        lines.append(f"| {r['variant']} | {r['layers']} | {r['placement']} | {r['pooling']} | {r['seeds']} | "
                     f"{r['learning_rate']:g} | {r['test_bpc']:.4f}{std} | {r['val_bpc']:.4f} | {r['n_parameters']:,} | "
                     f"{r['flops_total']:.3g} | {r['flops_pooling']:.2g} | {r['train_seconds']:.0f} |")  # fmt: skip
    sigma = state.get("sigma_by_position")
    if sigma:
        lines += ["", f"Mean learned sigma (tokens) of `{sigma['variant']}` ({sigma['layers']} layers, seed 0) on test "
                  "text, by the position of the token in its word:", "",
                  "| layer | " + " | ".join(sigma["classes"]) + " |", "|---|" + "---|" * len(sigma["classes"])]  # fmt: skip
        for layer, row in enumerate(sigma["mean_sigma"]):
            lines.append(f"| {layer} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
        lines.append("| tokens | " + " | ".join(f"{c:,}" for c in sigma["counts"]) + " |")
    (args.out / "char_lm_study.md").write_text("\n".join(lines) + "\n")
    plot(args, state)


def plot(args, state) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    depths = sorted({r["layers"] for r in state["runs"]})
    styles = ["-", "--", ":", "-."]  # one per depth; colours from a 20-colour cycle, so that no two rows share a line
    for index, key in enumerate(dict.fromkeys((r["variant"], r["layers"]) for r in state["runs"])):
        group = [r for r in state["runs"] if (r["variant"], r["layers"]) == key]
        points = len(group[0]["curve"])  # every seed evaluates at the same steps
        mean = lambda field, i, g=group: statistics.mean(r["curve"][i][field] for r in g)  # noqa: E731
        y = [mean("val_bpc", i) for i in range(points)]
        for ax, field in zip(axes, ("flops", "train_seconds"), strict=True):
            ax.plot([mean(field, i) for i in range(points)], y, marker="o", ms=3, label=f"{key[0]} ({key[1]}L)",
                    color=plt.cm.tab20(index % 20), linestyle=styles[depths.index(key[1]) % len(styles)])
    axes[0].set_xlabel("training FLOPs (package formula)")
    axes[1].set_xlabel("training wall time (s, this machine)")
    for ax in axes:
        ax.set_ylabel("validation bits per character")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"Character LM, mean over seeds ({args.mode} mode)", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out / "char_lm_study_curves.png", dpi=120)
    plt.close(fig)
    sigma = state.get("sigma_by_position")
    if sigma:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        layers, classes = len(sigma["mean_sigma"]), sigma["classes"]
        width = 0.8 / layers
        for layer, row in enumerate(sigma["mean_sigma"]):
            ax.bar([c + layer * width for c in range(len(classes))], row, width, label=f"layer {layer}")
        ax.set_xticks([c + 0.4 - width / 2 for c in range(len(classes))], classes, fontsize=8)
        ax.set_ylabel("mean learned sigma (tokens)")
        ax.set_title(f"{sigma['variant']} ({sigma['layers']} layers): pooling size by position in the word", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.out / "char_lm_study_sigma.png", dpi=120)
        plt.close(fig)


# Arguments that choose which runs a study adds (keyed by variant, layers and seed) or how fast it runs, not
# what a run measures: a rerun that changes only these adds to the saved results.
NOT_SETTINGS = ("seeds", "variants", "depths", "threads")


def saved_settings(args) -> dict:
    """The parsed arguments as the JSON's meta saves them (paths as text; --out and --plan left out)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
            if k not in ("out", "plan", "merge")}  # fmt: skip


def resume_key(settings: dict) -> dict:
    """What makes two char-LM studies comparable: `settings` without NOT_SETTINGS."""
    return {k: v for k, v in settings.items() if k not in NOT_SETTINGS}


def merge_studies(previous: dict, folders, settings: dict) -> dict:
    """`previous` (the --out file's content, {} when new) joined with the char-LM studies saved in `folders`.

    Each must exist and match `settings` as a resume would. Runs (by variant, layers, seed) and grid runs (by
    variant, layers, rate) not yet held are added, the sigma analysis if there is none, and the folders'
    commands join `meta.commands` (before this run's).
    """
    merged = {**previous, "runs": list(previous.get("runs", [])), "lr_search": list(previous.get("lr_search", []))}
    commands = recorded_commands(previous.get("meta", {}))
    for folder in folders:
        path = Path(folder) / "char_lm_study.json"
        if not path.exists():
            raise SystemExit(f"--merge {folder}: no char_lm_study.json there")
        other = read_matching(path, resume_key(settings), resume_key, "a char-LM study", section="meta")
        held = {(r["variant"], r["layers"], r["seed"]) for r in merged["runs"]}
        merged["runs"] += [r for r in other["runs"] if (r["variant"], r["layers"], r["seed"]) not in held]
        gridded = {(g["variant"], g["layers"], g["learning_rate"]) for g in merged["lr_search"]}
        merged["lr_search"] += [g for g in other["lr_search"]
                                if (g["variant"], g["layers"], g["learning_rate"]) not in gridded]  # fmt: skip
        if "sigma_by_position" not in merged and "sigma_by_position" in other:
            merged["sigma_by_position"] = other["sigma_by_position"]
        commands += recorded_commands(other["meta"])
    if folders:
        merged["meta"] = {**previous.get("meta", {}), "commands": list(dict.fromkeys(commands))}
    return merged


def main(argv=None) -> dict:
    args = parse(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    path = args.out / "char_lm_study.json"
    all_settings = saved_settings(args)
    # resume: finished runs made with the same settings are kept; other settings stop the study (before any data
    # is loaded, so the refusal is immediate)
    previous = {} if args.plan else read_matching(path, resume_key(all_settings), resume_key, "a char-LM study",
                                                  section="meta")  # fmt: skip
    if args.merge and not args.plan:
        previous = merge_studies(previous, args.merge, all_settings)
    splits = load_splits()
    data = {
        "train": torch.cat([splits["train"][c] for c in CORPORA]),
        "validation_windows": eval_windows(splits["validation"], args.eval_blocks, args.block),
        "test_windows": eval_windows(splits["test"], args.test_blocks, args.block),
    }
    runs = plan(args)
    if args.plan:
        cells = list(dict.fromkeys((v, d) for _, v, d, _, _, _ in runs))
        step_seconds = measure_step_seconds(args, data, cells)
        for cell, (secs, idle) in step_seconds.items():
            print(f"[plan] {cell[0]} {cell[1]}L: {secs:.3f} s/step measured, {idle:.3f} idle estimate")
        total = estimate(args, runs, {cell: secs for cell, (secs, _) in step_seconds.items()})
        idle_total = estimate(args, runs, {cell: idle for cell, (_, idle) in step_seconds.items()})
        print(f"[plan] {len(runs)} runs: {total / 60:.0f} min of training steps at the measured load, "
              f"{idle_total / 60:.0f} min on an idle machine (+ evaluation)")
        return {"step_seconds": {f"{v}-{d}L": s for (v, d), s in step_seconds.items()}, "estimate_seconds": total,
                "idle_estimate_seconds": idle_total}
    state = {k: previous.get(k, []) for k in ("runs", "lr_search")}
    if "sigma_by_position" in previous:
        state["sigma_by_position"] = previous["sigma_by_position"]
    command = "python scripts/study_char_lm.py " + " ".join(argv if argv is not None else sys.argv[1:])
    state["meta"] = {
        "command": command,
        "commands": command_history(previous.get("meta", {}), command),
        "settings": all_settings,
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{args.threads} threads (shared machine: wall times are noisy)",
        "bpc": "bits per character = summed cross-entropy (nats) / ln 2 / characters predicted; test on "
               f"{args.test_blocks} evenly spaced blocks per corpus, validation on {args.eval_blocks}",
    }  # fmt: skip
    chosen = {}
    for kind, variant, depth, lr, seed, steps in runs:
        if kind == "grid":
            done = [g for g in state["lr_search"] if (g["variant"], g["layers"], g["learning_rate"]) == (variant, depth, lr)]
            if not done:
                row, _ = train_one(variant, depth, lr, seed, steps, args, data)
                done = [{k: row[k] for k in ("variant", "layers", "learning_rate", "steps", "val_bpc", "train_seconds")}]
                state["lr_search"].append(done[0])
                print(f"[grid] {variant} {depth}L lr {lr:g}: val bpc {row['val_bpc']:.4f}", flush=True)
                save_json(args, state)  # an interrupted study keeps its grid runs too
            best = chosen.get((variant, depth))
            if best is None or done[0]["val_bpc"] < best[1]:
                chosen[(variant, depth)] = (lr, done[0]["val_bpc"])
            continue
        lr = chosen[(variant, depth)][0]
        analyse = variant == "cp" and depth == max(args.depths) and seed == 0
        if any((r["variant"], r["layers"], r["seed"]) == (variant, depth, seed) for r in state["runs"]):
            if not (analyse and "sigma_by_position" not in state):
                continue
        row, model = train_one(variant, depth, lr, seed, steps, args, data, keep_model=True)
        test = bpc(model, data["test_windows"])
        row["test_bpc"], row["test_bpc_by_corpus"] = test["all"], {c: test[c] for c in CORPORA}
        row["threads"] = args.threads  # a resumed study may mix thread counts: train_seconds compare per thread count
        state["runs"] = [r for r in state["runs"] if (r["variant"], r["layers"], r["seed"]) != (variant, depth, seed)]
        state["runs"].append(row)
        if analyse:
            state["sigma_by_position"] = {"variant": variant, "layers": depth,
                                          **sigma_by_position(model, data["test_windows"], args.sigma_blocks)}  # fmt: skip
        print(f"[run] {variant} {depth}L seed {seed} lr {lr:g}: test bpc {row['test_bpc']:.4f} "
              f"({row['train_seconds']:.0f} s, {row['seconds_per_step']:.3f} s/step)", flush=True)
        write_outputs(args, state)  # after every run, so an interrupted study keeps what it has
    write_outputs(args, state)
    print((args.out / "char_lm_study.md").read_text())
    return state


if __name__ == "__main__":
    main()
