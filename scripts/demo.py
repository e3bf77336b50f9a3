"""The main job in one command: data -> train a small ContextPool causal LM -> save -> reload -> sample -> plot.

    python scripts/demo.py                 # 2,000 steps: about 3-4 minutes of training on 2 quiet CPU cores
    python scripts/demo.py --train_seconds 60 --output_dir runs/demo-quick   # stop training after 60 s

1. prepares the offline corpus (`contextpool-hf prepare-data --tasks lm`, KJV) if missing;
2. trains the default ContextPool LM with `scripts/run_clm.py` (Trainer: progress bar, eval loss,
   perplexity and bits per character logged) for a fixed number of steps (`--max_steps`, 2,000).
   There is no time cap unless `--train_seconds` is given; when that cap ends training early, the
   demo says so plainly, with the step reached (the numbers are then those of a shorter run);
3. saves model, tokenizer and the flat remote-code files into `--output_dir`;
4. in a fresh Python process that does not import contextpool_hf, reloads it with
   `AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)` and generates a sample;
5. writes `pooling_sizes.png`: the learned pooling size of every layer at every token of a held-out passage.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

PASSAGE = ("And he said unto them, Go ye into all the world, and preach the gospel to every creature. "
           "He that believeth and is baptized shall be saved.")  # fmt: skip

# Runs in a clean interpreter: no contextpool_hf import, a private module cache, Hub offline.
RELOAD = textwrap.dedent(
    """
    import json, sys, time
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path, prompt, out = sys.argv[1], sys.argv[2], sys.argv[3]
    assert "contextpool_hf" not in sys.modules
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    model.eval()
    torch.manual_seed(0)
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        sample = model.generate(**ids, max_new_tokens=60, do_sample=True, top_k=40, temperature=0.8,
                                pad_token_id=tokenizer.pad_token_id)
    text = tokenizer.decode(sample[0], skip_special_tokens=True)
    info = {"class": type(model).__module__ + "." + type(model).__name__, "sample": text,
            "reload_seconds": time.perf_counter() - start}
    json.dump(info, open(out, "w"), indent=2)
    print(json.dumps(info, indent=2))
    """
)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="runs/demo", help="where model, tokenizer, code and plots go")
    parser.add_argument("--max_steps", type=int, default=2000, help="training steps (the work is fixed)")
    parser.add_argument("--train_seconds", type=float, default=None,
                        help="optional time cap for training; the demo reports when it stops training early")
    parser.add_argument("--config_overrides", default="hidden_size=128,num_hidden_layers=4",
                        help="model size (see run_clm.py --config_overrides)")
    parser.add_argument("--block_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--vocab_size", type=int, default=1024, help="BPE vocabulary trained on the corpus")
    parser.add_argument("--corpus", default="kjv", choices=("kjv", "shakespeare"))
    parser.add_argument("--prompt", default="And God said")
    parser.add_argument("--seed", type=int, default=42)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    start = time.perf_counter()
    from contextpool_hf.data import default_data_dir, prepare_lm

    data = prepare_lm(default_data_dir(), args.corpus)
    print(f"[demo] data: {data} ({time.perf_counter() - start:.0f} s)")

    import run_clm

    output = os.path.abspath(args.output_dir)
    metrics = run_clm.main([
        "--output_dir", output, "--lm_corpus", args.corpus, "--use_cpu",
        "--config_overrides", args.config_overrides, "--block_size", str(args.block_size),
        "--tokenizer_vocab_size", str(args.vocab_size), "--max_steps", str(args.max_steps),
        *(["--max_train_seconds", str(args.train_seconds)] if args.train_seconds else []),
        "--per_device_train_batch_size", str(args.batch_size),
        "--learning_rate", "2e-3", "--warmup_steps", "30", "--logging_steps", "20",
        "--eval_strategy", "steps", "--eval_steps", "100", "--max_eval_samples", "160",
        "--per_device_eval_batch_size", "32", "--seed", str(args.seed), "--disable_tqdm", "false",
    ])  # fmt: skip
    print(f"[demo] trained and saved to {output} ({time.perf_counter() - start:.0f} s)")
    steps = metrics.get("train_tokens", 0) // (args.batch_size * args.block_size)
    if steps < args.max_steps:
        print(f"[demo] NOTE: the --train_seconds {args.train_seconds:g} time cap ended training at step {steps} of "
              f"{args.max_steps}. The model is less trained than a full run, so its loss, perplexity and sample "
              "are not comparable with the README's 2,000-step numbers. Run without --train_seconds for the "
              "full run.")  # fmt: skip

    # A fresh process that cannot see the package: the saved remote code must be enough.
    sample_file = os.path.join(output, "sample.json")
    with tempfile.TemporaryDirectory() as modules:
        env = {**os.environ, "HF_MODULES_CACHE": modules, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
        code = "import sys; sys.path = [p for p in sys.path if 'contextpool' not in p]\n" + RELOAD
        subprocess.run([sys.executable, "-c", code, output, args.prompt, sample_file], check=True, env=env,
                       cwd=tempfile.gettempdir())  # fmt: skip
    sample = json.loads(Path(sample_file).read_text())

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from contextpool_hf.visualize import save_pooling_heatmap

    model = AutoModelForCausalLM.from_pretrained(output, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(output, trust_remote_code=True)
    png = save_pooling_heatmap(model, tokenizer, PASSAGE, os.path.join(output, "pooling_sizes.png"))
    summary = {
        "output_dir": output,
        "eval_loss": metrics.get("eval_loss"),
        "eval_perplexity": metrics.get("eval_perplexity"),
        "eval_bpc": metrics.get("eval_bpc"),
        "train_steps": steps,
        "max_steps": args.max_steps,
        "stopped_by_time_cap": steps < args.max_steps,
        "reloaded_class": sample["class"],
        "sample": sample["sample"],
        "pooling_plot": png,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    Path(output, "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("[demo] summary:\n" + json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
