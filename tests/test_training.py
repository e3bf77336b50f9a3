"""Fast tests of the Trainer scripts and their shared helpers (tiny models, tiny data, in-process)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from remote_utils import TEXT_MODEL_FILES

import contextpool_hf  # noqa: F401  (registers the Auto classes)
from contextpool_hf import ContextPoolConfig, ContextPoolForCausalLM
from contextpool_hf.training import (
    CheckpointError,
    ModelArguments,
    apply_config_overrides,
    build_model,
    default_config,
    estimate_training_flops,
    lm_metrics,
    parse_config_overrides,
    resolve_resume_checkpoint,
    train_tokenizer_on,
    validate_checkpoint,
)

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))

TINY = "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64,pool_sigma_max=3.0"
WORDS = ("and the lord said unto them go ye into all the world light darkness water earth heaven "
         "king people land house son father mother day night").split()  # fmt: skip


def write_corpus(folder: Path, lines: int = 240, seed: int = 0) -> tuple[str, str]:
    rng = torch.Generator().manual_seed(seed)
    def line():
        idx = torch.randint(len(WORDS), (int(torch.randint(6, 16, (1,), generator=rng)),), generator=rng)
        return " ".join(WORDS[i] for i in idx).capitalize() + "."
    folder.mkdir(parents=True, exist_ok=True)
    train, valid = folder / "train.txt", folder / "validation.txt"
    train.write_text("\n".join(line() for _ in range(lines)) + "\n")
    valid.write_text("\n".join(line() for _ in range(lines // 4)) + "\n")
    return str(train), str(valid)


def clm_args(tmp_path: Path, out: str = "out", *extra: str) -> list[str]:
    train, valid = write_corpus(tmp_path / "data")
    return ["--train_file", train, "--validation_file", valid, "--output_dir", str(tmp_path / out), "--use_cpu",
            "--config_overrides", TINY, "--block_size", "32", "--tokenizer_vocab_size", "300",
            "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8", "--max_steps", "4",
            "--logging_steps", "1", "--disable_tqdm", "true", *extra]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# config overrides


def test_config_overrides_types_and_lists():
    config = ContextPoolConfig()
    values = parse_config_overrides(
        "hidden_size=64, pool_target=kv,pool_layers=[0,1],pool_sigma_max=4,pool_normalize=false,head_dim=none", config
    )
    assert values == {"hidden_size": 64, "pool_target": "kv", "pool_layers": [0, 1], "pool_sigma_max": 4.0,
                      "pool_normalize": False, "head_dim": None}  # fmt: skip
    assert isinstance(values["pool_sigma_max"], float)


def test_config_overrides_errors():
    config = ContextPoolConfig()
    with pytest.raises(ValueError, match="unknown config field 'hiden_size'"):
        parse_config_overrides("hiden_size=3", config)
    with pytest.raises(ValueError, match="key=value"):
        parse_config_overrides("hidden_size", config)
    with pytest.raises(ValueError, match="expected an integer"):
        parse_config_overrides("num_hidden_layers=two", config)
    with pytest.raises(ValueError, match="pool_layers"):
        apply_config_overrides(ContextPoolConfig(num_hidden_layers=2), "pool_layers=[5]")


def test_default_config_derives_sizes_from_overrides():
    tokenizer = train_tokenizer_on(_texts(), "text", 300)
    config = default_config("clm", tokenizer, 128, "hidden_size=64,num_attention_heads=2")
    assert config.head_dim == 32 and config.num_key_value_heads == 2 and config.is_causal
    assert config.intermediate_size == 176  # the default 344/128 ratio, rounded up to a multiple of 8
    assert config.vocab_size == len(tokenizer) and config.pad_token_id == tokenizer.pad_token_id


def _texts():
    from datasets import Dataset

    return Dataset.from_dict({"text": [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))]})


# ---------------------------------------------------------------------------------------------
# models and baselines


@pytest.mark.parametrize(
    ("task", "baseline", "expected"),
    [("clm", "none", "ContextPoolForCausalLM"), ("clm", "contextpool-off", "ContextPoolForCausalLM"),
     ("clm", "llama", "LlamaForCausalLM"), ("mlm", "bert", "BertForMaskedLM"),
     ("classification", "bert", "BertForSequenceClassification")],
)  # fmt: skip
def test_build_model_baselines_same_size(task, baseline, expected):
    tokenizer = train_tokenizer_on(_texts(), "text", 300)
    args = ModelArguments(config_overrides=TINY, baseline=baseline)
    model = build_model(task, args, tokenizer, max_positions=64, num_labels=3 if task == "classification" else None)
    assert type(model).__name__ == expected
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    if baseline == "contextpool-off":
        assert model.config.pool_layers == []
    if (task, baseline) == ("clm", "llama"):
        # pooling off and Llama are the same architecture: the same parameter count
        off = build_model("clm", ModelArguments(config_overrides=TINY, baseline="contextpool-off"), tokenizer,
                          max_positions=64)  # fmt: skip
        assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in off.parameters())


def test_baseline_llama_rejected_for_encoders():
    tokenizer = train_tokenizer_on(_texts(), "text", 300)
    with pytest.raises(ValueError, match="causal"):
        build_model("mlm", ModelArguments(config_overrides=TINY, baseline="llama"), tokenizer, max_positions=64)


def test_flops_estimate_counts_pooling():
    config = default_config("clm", train_tokenizer_on(_texts(), "text", 300), 64, TINY)
    pooled = estimate_training_flops(ContextPoolForCausalLM(config), 1000, 32)
    config.pool_layers = []
    plain = estimate_training_flops(ContextPoolForCausalLM(config), 1000, 32)
    assert plain["flops_pooling"] == 0 < pooled["flops_pooling"]
    assert pooled["flops_total"] > plain["flops_total"] > plain["flops_dense"] > 0


def test_lm_metrics_bpc():
    metrics = lm_metrics({"eval_loss": 2.0}, chars_per_token=4.0)
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(2.0))
    assert metrics["eval_bpc"] == pytest.approx(2.0 / (math.log(2) * 4.0))


# ---------------------------------------------------------------------------------------------
# checkpoints


def _saved_tiny(folder: Path) -> Path:
    config = ContextPoolConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               is_causal=True, pool_sigma_max=2.0)  # fmt: skip
    ContextPoolForCausalLM(config).save_pretrained(folder)
    return folder


def test_validate_checkpoint_ok_and_truncated(tmp_path):
    folder = _saved_tiny(tmp_path / "model")
    assert validate_checkpoint(folder) == folder
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="truncated"):
        validate_checkpoint(folder)
    weights.write_bytes(data[:4])
    with pytest.raises(CheckpointError, match="truncated"):
        validate_checkpoint(folder)


def test_validate_checkpoint_missing_files(tmp_path):
    folder = _saved_tiny(tmp_path / "model")
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        validate_checkpoint(folder)
    folder = _saved_tiny(tmp_path / "model2")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights file"):
        validate_checkpoint(folder)
    with pytest.raises(CheckpointError, match="trainer_state.json is missing"):
        validate_checkpoint(_saved_tiny(tmp_path / "checkpoint-3"), trainer_checkpoint=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        validate_checkpoint(tmp_path / "nowhere")


def _trainer_files(folder: Path) -> Path:
    """What Trainer adds to a checkpoint: state, optimizer, scheduler and RNG files (loadable as Trainer loads them)."""
    import random

    import numpy as np

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    torch.save(torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0).state_dict(), folder / "scheduler.pt")
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
    torch.save(rng, folder / "rng_state.pth")
    (folder / "trainer_state.json").write_text("{}")
    return folder


def test_resolve_latest_skips_partial_checkpoint(tmp_path):
    _trainer_files(_saved_tiny(tmp_path / "checkpoint-1"))  # complete but older: never the one picked
    good = _trainer_files(_saved_tiny(tmp_path / "checkpoint-2"))
    _saved_tiny(tmp_path / "checkpoint-4")  # interrupted: no trainer_state.json
    assert resolve_resume_checkpoint(True, str(tmp_path)) == str(good)
    with pytest.raises(CheckpointError, match="partial or corrupt"):
        resolve_resume_checkpoint(str(tmp_path / "checkpoint-4"), str(tmp_path))
    assert resolve_resume_checkpoint(None, str(tmp_path)) is None


def test_loading_a_corrupt_model_is_a_clear_error(tmp_path):
    folder = _saved_tiny(tmp_path / "model")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    import run_clm

    with pytest.raises(CheckpointError, match="model.safetensors is truncated"):
        run_clm.main(clm_args(tmp_path, "out", "--model_name_or_path", str(folder)))


# ---------------------------------------------------------------------------------------------
# scripts, in-process


def test_max_train_seconds_stops_training_and_still_evaluates_and_saves(tmp_path):
    """--max_train_seconds: the run stops at the first step past the budget (here the first), then evaluates and
    saves as a finished run does."""
    import run_clm

    results = run_clm.main(clm_args(tmp_path, "out", "--max_steps", "50", "--max_train_seconds", "0.001"))
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 1 and "eval_loss" in results
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_run_clm_tiny_end_to_end(tmp_path):
    import run_clm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    results = run_clm.main(clm_args(tmp_path, "out", "--max_steps", "8", "--learning_rate", "1e-2"))
    out = tmp_path / "out"
    # something was learned: measured eval loss 5.14 after 8 steps at lr 1e-2 (first step 5.69 = ln 300)
    assert results["eval_loss"] < math.log(300) - 0.3 and results["train_loss"] < math.log(300), results
    assert results["eval_perplexity"] == pytest.approx(math.exp(results["eval_loss"]))
    assert 0 < results["eval_bpc"] < 20 and results["flops_total"] > 0 and results["train_tokens"] == 8 * 4 * 32
    saved = json.loads((out / "all_results.json").read_text())
    assert {"eval_loss", "eval_perplexity", "eval_bpc", "train_loss", "n_parameters"} <= set(saved)
    assert json.loads((out / "eval_results.json").read_text())["eval_bpc"] == pytest.approx(results["eval_bpc"])
    for name in ("config.json", "model.safetensors", "tokenizer.json", *sorted(TEXT_MODEL_FILES)):
        assert (out / name).is_file(), name
    assert not (out / ".tokenizer-trained").exists() and not list(out.glob(".saving-*"))
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("And the lord", return_tensors="pt")
    generated = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert generated.shape[1] == ids["input_ids"].shape[1] + 5


def test_run_clm_vanilla_baselines_complete(tmp_path):
    """Only that the baselines build, train 2 steps and save (sizes and model types), not that they learn."""
    import run_clm

    off = run_clm.main(clm_args(tmp_path, "off", "--baseline", "contextpool-off", "--max_steps", "2"))
    llama = run_clm.main(clm_args(tmp_path, "llama", "--baseline", "llama", "--max_steps", "2"))
    assert off["n_parameters"] == llama["n_parameters"]
    assert math.isfinite(off["eval_loss"]) and math.isfinite(llama["eval_loss"])
    assert json.loads((tmp_path / "llama" / "config.json").read_text())["model_type"] == "llama"


def test_run_mlm_tiny(tmp_path):
    import run_mlm

    # 10 steps at lr 1e-2 learn the corpus's word frequencies. Measured: eval loss 5.00 and masked-token
    # accuracy 0.18 (untrained, 3 steps at 5e-4: 5.69 = ln 300 and 0.023).
    results = run_mlm.main(clm_args(tmp_path, "mlm", "--max_steps", "10", "--learning_rate", "1e-2"))
    assert results["eval_loss"] < math.log(300) - 0.4 and results["eval_accuracy"] > 0.1, results
    assert "eval_bpc" in json.loads((tmp_path / "mlm" / "all_results.json").read_text())


def test_run_classification_tiny(tmp_path):
    import run_classification

    data = tmp_path / "cls"
    data.mkdir()
    # learnable in a few steps: each label draws its words from its own half of the vocabulary
    rng = torch.Generator().manual_seed(0)
    for split, n in (("train", 48), ("validation", 32)):
        rows = []
        for i in range(n):
            words = WORDS[:12] if i % 2 == 0 else WORDS[12:]
            idx = torch.randint(len(words), (6,), generator=rng).tolist()
            rows.append({"text": " ".join(words[j] for j in idx), "label": ["law", "poetry"][i % 2]})
        (data / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    results = run_classification.main([
        "--train_file", str(data / "train.jsonl"), "--validation_file", str(data / "validation.jsonl"),
        "--output_dir", str(tmp_path / "out"), "--use_cpu", "--config_overrides", TINY,
        "--tokenizer_vocab_size", "300", "--max_steps", "10", "--learning_rate", "1e-2", "--max_seq_length", "32",
        "--disable_tqdm", "true",
    ])  # fmt: skip
    # measured: accuracy 1.0, eval loss 0.064 (3 steps at 5e-4: 0.56 and 0.693 = ln 2, chance)
    assert results["eval_accuracy"] >= 0.9 and results["eval_loss"] < math.log(2) - 0.3, results
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["id2label"] == {"0": "law", "1": "poetry"}


# ---------------------------------------------------------------------------------------------
# visualisation


def test_pooling_heatmap(tmp_path):
    from contextpool_hf.visualize import pooling_sizes, save_pooling_heatmap

    tokenizer = train_tokenizer_on(_texts(), "text", 300)
    config = default_config("clm", tokenizer, 64, TINY + ",pool_layers=[1]")
    model = ContextPoolForCausalLM(config)
    sigma, labels = pooling_sizes(model, tokenizer, "And the lord said unto them", max_tokens=16)
    assert sigma.shape == (2, len(labels)) and torch.isnan(torch.tensor(sigma[0])).all()
    assert (sigma[1] >= config.pool_sigma_min).all() and (sigma[1] <= config.pool_sigma_max).all()
    png = Path(save_pooling_heatmap(model, tokenizer, "And the lord said unto them", tmp_path / "p.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------
# a non-ContextPool checkpoint converted on the fly (needs contextpool_hf.convert)


def test_convert_on_the_fly_and_unconverted_baseline(tmp_path):
    pytest.importorskip("contextpool_hf.convert")
    from transformers import LlamaConfig, LlamaForCausalLM

    source = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=64)).save_pretrained(source)  # fmt: skip
    tokenizer = train_tokenizer_on(_texts(), "text", 300)
    converted = build_model("clm", ModelArguments(model_name_or_path=str(source)), tokenizer)
    assert type(converted).__name__ == "ContextPoolForCausalLM"
    original = build_model("clm", ModelArguments(model_name_or_path=str(source), baseline="llama"), tokenizer)
    assert type(original).__name__ == "LlamaForCausalLM"
    ids = torch.randint(5, 300, (1, 12))
    torch.testing.assert_close(converted(ids).logits, original(ids).logits, atol=1e-4, rtol=1e-4)
