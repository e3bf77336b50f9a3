"""Multi-process training on CPU (gloo), resume equivalence, corrupt checkpoints, and fully_shard.

- `accelerate launch --multi_gpu --num_processes 2` and `torchrun --nproc_per_node 2` run
  scripts/run_clm.py as real 2-rank DDP on CPU; the accelerate run fine-tunes a saved ContextPool
  checkpoint with --trust_remote_code and a fresh module cache, loaded under main_process_first()
  (with the package installed its registered classes win, so this checks the loading order, not the
  dynamic-module copy itself; tests/test_remote_code.py covers remote code without the package).
- `--resume_from_checkpoint` reproduces the losses of an uninterrupted run with the same seed.
- `fully_shard` (FSDP2) on gloo wraps every `ContextPoolLayer` (`_no_split_modules`) and trains.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_training import clm_args

from contextpool_hf.training import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


PORT = "{free_port}"  # placeholder in a launch command: replaced by a port that was free a moment ago


def free_port() -> int:
    """A port that was free when asked. It is closed again before the launcher binds it, so another
    process may take it first: `launch` retries on EADDRINUSE. torchrun needs no port at all
    (`--standalone`: its rendezvous store binds port 0 itself, which cannot race)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_taken(result: subprocess.CompletedProcess) -> bool:
    text = result.stdout + result.stderr
    return "EADDRINUSE" in text or "address already in use" in text.lower()


def launch(cmd: list[str], tmp_path: Path, timeout: int = 240, attempts: int = 3) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}  # fmt: skip
    for _ in range(attempts):
        port = str(free_port())
        args = [port if part == PORT else part for part in cmd]
        result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
        if result.returncode == 0 or PORT not in cmd or not _port_taken(result):
            break  # a port lost to another process between free_port() and the bind: try another
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def check_run(out: Path, world_size: int) -> None:
    from transformers import AutoModelForCausalLM

    results = json.loads((out / "all_results.json").read_text())
    assert math.isfinite(results["eval_loss"]) and math.isfinite(results["train_loss"])
    losses = [e["loss"] for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert losses and all(math.isfinite(x) for x in losses)
    # tokens = steps x per-device batch x ranks x block: proves both ranks trained
    assert results["train_tokens"] == 4 * 4 * world_size * 32
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "ContextPoolForCausalLM"


def test_accelerate_launch_ddp_two_processes_remote_code(tmp_path):
    import run_clm

    run_clm.main(clm_args(tmp_path, "base", "--max_steps", "1", "--max_eval_samples", "2"))
    args = without_overrides(clm_args(tmp_path, "ddp"))
    cmd = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", PORT,
           str(ROOT / "scripts" / "run_clm.py"), *args, "--model_name_or_path", str(tmp_path / "base"),
           "--trust_remote_code", "true"]  # fmt: skip
    result = launch(cmd, tmp_path)
    check_run(tmp_path / "ddp", world_size=2)
    # config, tokenizer and model load under main_process_first(): no rank read a half-written module
    # cache (transformers issues 27421/22506 show up as ImportError/FileNotFoundError on the other rank)
    assert "FileNotFoundError" not in result.stderr and "ImportError" not in result.stderr


def without_overrides(args: list[str]) -> list[str]:
    """Fine-tuning keeps the checkpoint's architecture: drop --config_overrides and its value."""
    index = args.index("--config_overrides")
    return args[:index] + args[index + 2 :]


@pytest.mark.slow
def test_torchrun_ddp_two_processes_from_scratch(tmp_path):
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2",
           str(ROOT / "scripts" / "run_clm.py"), *clm_args(tmp_path, "ddp")]  # fmt: skip
    launch(cmd, tmp_path)
    check_run(tmp_path / "ddp", world_size=2)
    assert not (tmp_path / "ddp" / ".tokenizer-trained").exists()


def _losses(out: Path) -> dict[int, float]:
    state = json.loads((out / "trainer_state.json").read_text())
    return {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e}


def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path):
    import run_clm

    common = ("--max_steps", "6", "--save_strategy", "steps", "--save_steps", "3", "--do_eval", "false",
              "--learning_rate", "3e-3", "--warmup_steps", "0")  # fmt: skip
    run_clm.main(clm_args(tmp_path, "full", *common))
    reference = _losses(tmp_path / "full")
    assert sorted(reference) == [1, 2, 3, 4, 5, 6]

    # an "interrupted" run: the same run, cut after its step-3 checkpoint (later files removed)
    shutil.copytree(tmp_path / "full" / "checkpoint-3", tmp_path / "cut" / "checkpoint-3")
    run_clm.main(clm_args(tmp_path, "cut", *common, "--resume_from_checkpoint", "latest"))
    resumed = _losses(tmp_path / "cut")
    for step in (4, 5, 6):
        assert resumed[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), (step, resumed, reference)

    # ...and the checkpoint was really loaded: a run that ignored it would train from scratch with the
    # same seed and reproduce `reference` too. Resuming from the same checkpoint with nudged weights
    # must change the next loss.
    import torch
    from safetensors.torch import load_file, save_file

    nudged = tmp_path / "nudged" / "checkpoint-3"
    shutil.copytree(tmp_path / "full" / "checkpoint-3", nudged)
    weights = load_file(nudged / "model.safetensors")
    g = torch.Generator().manual_seed(0)
    save_file({k: v + 0.05 * torch.randn(v.shape, generator=g).to(v.dtype) if v.is_floating_point() else v
               for k, v in weights.items()}, nudged / "model.safetensors", metadata={"format": "pt"})  # fmt: skip
    run_clm.main(clm_args(tmp_path, "nudged", *common, "--resume_from_checkpoint", "latest"))
    assert abs(_losses(tmp_path / "nudged")[4] - reference[4]) > 1e-3


def test_resume_from_corrupt_checkpoint_is_a_clear_error(tmp_path):
    import run_clm

    run_clm.main(clm_args(tmp_path, "run", "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "2",
                          "--do_eval", "false"))  # fmt: skip
    checkpoint = tmp_path / "run" / "checkpoint-2"
    weights = checkpoint / "model.safetensors"
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=r"checkpoint-2 is partial or corrupt: model.safetensors is truncated"):
        run_clm.main(clm_args(tmp_path, "run", "--max_steps", "4", "--resume_from_checkpoint", str(checkpoint)))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before  # nothing saved was touched


FSDP_SCRIPT = textwrap.dedent(
    """
    import math, torch, torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from contextpool_hf import ContextPoolConfig, ContextPoolForCausalLM
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    config = ContextPoolConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               is_causal=True, pool_sigma_max=3.0, tie_word_embeddings=False)
    model = ContextPoolForCausalLM(config)
    names = set(model._no_split_modules)
    layers = [m for m in model.modules() if type(m).__name__ in names]
    assert len(layers) == 2, names
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(1 + dist.get_rank())
    ids = torch.randint(0, 64, (2, 16))  # one fixed batch per rank: memorising it is learnable in a few steps
    losses = []
    for _ in range(6):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward(); opt.step(); opt.zero_grad()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses), losses
    # measured without sharding (one process, same batches): 4.16 -> 2.93 in 6 steps
    assert losses[-1] < losses[0] - 0.5, losses
    print("FSDP_OK", dist.get_rank(), losses)
    dist.destroy_process_group()
    """
)


def test_fully_shard_contextpool_layers_on_gloo(tmp_path):
    script = tmp_path / "fsdp_check.py"
    script.write_text(FSDP_SCRIPT)
    result = launch([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", str(script)],
                    tmp_path, timeout=180)  # fmt: skip
    assert result.stdout.count("FSDP_OK") == 2, result.stdout
