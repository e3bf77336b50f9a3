"""Bad input to the training tools gets a clear error; damaged checkpoints are not resumed; NaN runs fail.

Issue 11 items 3, 5, 6 (runtime), 10 (data), 16 and issue 13 item 4 (library calls, one FLOPs definition,
the training/data module split).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import contextpool_hf  # noqa: F401  (registers the Auto classes)
from contextpool_hf import ContextPoolConfig, ContextPoolForCausalLM
from contextpool_hf.training import (
    CheckpointError,
    ModelArguments,
    NonFiniteLossCallback,
    NonFiniteLossError,
    apply_config_overrides,
    build_tokenizer,
    count_parameters,
    parse_config_overrides,
    resolve_resume_checkpoint,
    validate_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

TINY = "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64,pool_sigma_max=3.0"
WORDS = "and the lord said unto them go ye into all the world light darkness water earth heaven king".split()


def _corpus(folder: Path, lines: int = 120) -> tuple[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = torch.Generator().manual_seed(0)
    text = [" ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (10,), generator=rng)) for _ in range(lines)]
    train, valid = folder / "train.txt", folder / "validation.txt"
    train.write_text("\n".join(text) + "\n")
    valid.write_text("\n".join(text[: lines // 4]) + "\n")
    return str(train), str(valid)


def _args(tmp: Path, out: str = "out", *extra: str, train: str | None = None, valid: str | None = None) -> list[str]:
    default_train, default_valid = _corpus(tmp / "data")
    return ["--train_file", train or default_train, "--validation_file", valid or default_valid,
            "--output_dir", str(tmp / out), "--use_cpu", "--config_overrides", TINY, "--block_size", "16",
            "--tokenizer_vocab_size", "300", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8",
            "--max_steps", "2", "--logging_steps", "1", "--disable_tqdm", "true", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A real 2-step run_clm training with a checkpoint after each step: (output folder, results)."""
    import run_clm

    tmp = tmp_path_factory.mktemp("run")
    results = run_clm.main(_args(tmp, "out", "--save_strategy", "steps", "--save_steps", "1"))
    return tmp / "out", results


def _copy_run(trained_run, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(trained_run[0], out)
    return out


# ---------------------------------------------------------------------------------------------
# A: resume validates the optimizer, scheduler and RNG files


def test_real_trainer_checkpoints_pass(trained_run):
    out, _ = trained_run
    for step in (1, 2):
        assert validate_checkpoint(out / f"checkpoint-{step}", trainer_checkpoint=True) == out / f"checkpoint-{step}"
    assert resolve_resume_checkpoint("latest", str(out)) == str(out / "checkpoint-2")


def test_empty_optimizer_in_newest_checkpoint_falls_back_with_a_warning(trained_run, tmp_path, caplog):
    out = _copy_run(trained_run, tmp_path)
    (out / "checkpoint-2" / "optimizer.pt").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="contextpool_hf.checkpoints"):
        assert resolve_resume_checkpoint("latest", str(out)) == str(out / "checkpoint-1")
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "checkpoint-2" in warned and "optimizer.pt is empty" in warned
    with pytest.raises(CheckpointError, match="optimizer.pt is empty"):
        resolve_resume_checkpoint(str(out / "checkpoint-2"), str(out))


@pytest.mark.parametrize(
    ("damage", "message"),
    [("rm optimizer.pt", "optimizer.pt is missing"), ("rm scheduler.pt", "scheduler.pt is missing"),
     ("rm rng_state.pth", "no rng_state"), ("garbage scheduler.pt", "scheduler.pt cannot be loaded"),
     ("garbage rng_state.pth", "rng_state.pth cannot be loaded"), ("cut optimizer.pt", "optimizer.pt cannot be loaded"),
     ("garbage trainer_state.json", "trainer_state.json is not valid JSON"),
     ("cut model.safetensors", "model.safetensors is truncated")],
)  # fmt: skip
def test_explicit_damaged_checkpoint_is_a_checkpoint_error(trained_run, tmp_path, damage, message):
    out = _copy_run(trained_run, tmp_path)
    action, name = damage.split()
    file = out / "checkpoint-2" / name
    if action == "rm":
        file.unlink()
    elif action == "garbage":
        file.write_bytes(b"not a torch file {")
    else:
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=message):
        resolve_resume_checkpoint(str(out / "checkpoint-2"), str(out))
    assert resolve_resume_checkpoint(True, str(out)) == str(out / "checkpoint-1")


def test_save_only_model_checkpoints_need_no_optimizer(trained_run, tmp_path):
    out = _copy_run(trained_run, tmp_path)
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (out / "checkpoint-2" / name).unlink()
    assert resolve_resume_checkpoint("latest", str(out), save_only_model=True) == str(out / "checkpoint-2")


def test_every_checkpoint_damaged_or_none(trained_run, tmp_path):
    out = _copy_run(trained_run, tmp_path)
    for step in (1, 2):
        (out / f"checkpoint-{step}" / "optimizer.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"every checkpoint .* \(checkpoint-2, checkpoint-1\)"):
        resolve_resume_checkpoint("latest", str(out))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint-"):
        resolve_resume_checkpoint("latest", str(tmp_path / "empty"))
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_resume_checkpoint("latest", str(tmp_path / "nowhere"))
    assert resolve_resume_checkpoint("false", str(out)) is None


def test_resolve_sits_on_get_last_checkpoint(trained_run, tmp_path, monkeypatch):
    import transformers.trainer_utils

    out = _copy_run(trained_run, tmp_path)
    seen = []
    real = transformers.trainer_utils.get_last_checkpoint
    monkeypatch.setattr(transformers.trainer_utils, "get_last_checkpoint", lambda folder: seen.append(folder) or real(folder))
    assert resolve_resume_checkpoint("latest", str(out)) == str(out / "checkpoint-2") and seen == [str(out)]


def test_run_clm_resumes_from_the_newest_intact_checkpoint(trained_run, tmp_path):
    import run_clm

    out = _copy_run(trained_run, tmp_path)
    (out / "checkpoint-2" / "optimizer.pt").write_bytes(b"")
    run_clm.main(_args(tmp_path, "copy", "--max_steps", "3", "--resume_from_checkpoint", "latest"))
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    # resumed at step 1: the log holds steps 1 (from checkpoint-1), 2 and 3 once each
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3]


# ---------------------------------------------------------------------------------------------
# B: --config_overrides


@pytest.mark.parametrize(
    ("text", "message"),
    [("pool_layers=[0]],hidden_size=64", r"unbalanced '\]' in 'pool_layers=\[0\]\]'"),
     ("pool_target=kv)", r"unbalanced '\)' in 'pool_target=kv\)'"),
     ("pool_layers=[0,1", r"unclosed '\['"), ("hidden_size=64,,num_hidden_layers=2", "empty item"),
     ("hidden_size=64,", "empty item"), ("hidden_size", "not of the form key=value"), ("=3", "key=value"),
     ("hiden_size=64", "unknown config field 'hiden_size'.*did you mean hidden_size"),
     ("hidden_size=64.5", "hidden_size=64.5: expected an integer"), ("pool_normalize=maybe", "expected true/false"),
     ("pool_sigma_max=wide", "expected a number"), ("pool_target=kvv", "pool_target"),
     ("pool_layers=[0,]", "pool_layers=\\[0,\\]: not valid JSON"), ("hidden_size=64,hidden_size=32", "twice")],
)  # fmt: skip
def test_config_overrides_that_do_not_parse_are_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_config_overrides(text, ContextPoolConfig())


def test_config_overrides_extensions_and_update_from_string_semantics():
    config = ContextPoolConfig()
    values = parse_config_overrides(" pool_layers = none , pool_fixed_sigma=2.5,pool_normalize=no,hidden_size=64", config)
    assert values == {"pool_layers": None, "pool_fixed_sigma": 2.5, "pool_normalize": False, "hidden_size": 64}
    assert config.hidden_size == 256  # the config passed in is not changed
    assert parse_config_overrides("eos_token_id=[1,2]", config) == {"eos_token_id": [1, 2]}
    # nothing is applied unless the whole string parses
    config = ContextPoolConfig(num_hidden_layers=2)
    with pytest.raises(ValueError, match="unbalanced"):
        apply_config_overrides(config, "hidden_size=64,pool_layers=[0]]")
    assert config.hidden_size == 256 and config.pool_layers is None


def test_scripts_reject_bad_overrides_before_training(tmp_path):
    import run_clm

    with pytest.raises(ValueError, match="unbalanced"):
        run_clm.main(_args(tmp_path, "out", "--config_overrides", "pool_layers=[0]],hidden_size=64"))
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_vision_and_translation_overrides_are_checked_against_their_config():
    import importlib.util

    from contextpool_hf import ContextPoolSeq2SeqConfig, ContextPoolViTConfig

    for name in ("run_image_classification", "run_translation"):
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        config = ContextPoolViTConfig() if name == "run_image_classification" else ContextPoolSeq2SeqConfig()
        with pytest.raises(ValueError, match="unknown config field 'hiden_size'"):
            module.parse_overrides("hiden_size=3", config)
        with pytest.raises(ValueError, match="unbalanced"):
            module.parse_overrides("pool_target=kv)", config)
        with pytest.raises(ValueError, match="unbalanced"):
            module.parse_overrides("pool_layers=[0]],x=1")  # no config: still strict splitting


# ---------------------------------------------------------------------------------------------
# C: a NaN/inf loss stops the run


def test_callback_stops_and_raises_on_non_finite_weights():
    from transformers import TrainerControl, TrainerState, TrainingArguments

    model = ContextPoolForCausalLM(ContextPoolConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, is_causal=True, pool_sigma_max=2.0))  # fmt: skip
    callback, control = NonFiniteLossCallback(), TrainerControl()
    args = TrainingArguments(output_dir="unused", use_cpu=True, report_to="none")
    state = TrainerState(global_step=6, max_steps=10)
    callback.on_step_end(args, state, control, model=model)
    assert not control.should_training_stop  # finite weights: carry on
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    callback.on_step_end(args, state, control, model=model)
    assert control.should_training_stop and not control.should_save
    with pytest.raises(NonFiniteLossError, match="diverged at step 6 of 10"):
        callback.on_train_end(args, state, control)
    logged = NonFiniteLossCallback()
    logged.on_log(args, state, TrainerControl(), logs={"loss": float("inf")})
    with pytest.raises(NonFiniteLossError, match="loss is inf at step 6"):
        logged.on_train_end(args, state, control)


def test_run_clm_with_a_diverging_learning_rate_fails_naming_the_step(tmp_path):
    import run_clm

    with pytest.raises(NonFiniteLossError, match=r"diverged at step \d+ of 6"):
        run_clm.main(_args(tmp_path, "out", "--max_steps", "6", "--learning_rate", "1e30", "--warmup_steps", "0"))
    assert not (tmp_path / "out" / "model.safetensors").exists()  # no model of NaNs saved
    assert not (tmp_path / "out" / "all_results.json").exists()


@pytest.mark.slow
def test_run_clm_nan_exits_non_zero_with_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "run_clm.py"),
         *_args(tmp_path, "out", "--max_steps", "6", "--learning_rate", "1e30", "--warmup_steps", "0")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1
    assert "run_clm.py: error: training diverged at step" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------
# D: data and script arguments


@pytest.mark.parametrize(
    ("extra", "message"),
    [(("--block_size", "0"), "--block_size must be an integer >= 1"),
     (("--block_size", "-4"), "--block_size must be an integer >= 1"),
     (("--max_steps", "0"), "--max_steps must be a positive integer, or -1"),
     (("--max_steps", "-3"), "--max_steps"), (("--max_train_samples", "0"), "--max_train_samples"),
     (("--max_eval_samples", "-1"), "--max_eval_samples"),
     (("--validation_split_percentage", "0"), "--validation_split_percentage must be an integer from 1 to 99"),
     (("--validation_split_percentage", "100"), "from 1 to 99"), (("--max_seq_length", "0"), "--max_seq_length"),
     (("--tokenizer_vocab_size", "100"), "--tokenizer_vocab_size must be an integer >= 261"),
     (("--preprocessing_num_workers", "0"), "--preprocessing_num_workers"),
     (("--max_train_seconds", "0"), "--max_train_seconds"), (("--learning_rate", "-1"), "--learning_rate"),
     (("--per_device_train_batch_size", "0"), "--per_device_train_batch_size"),
     (("--gradient_accumulation_steps", "0"), "--gradient_accumulation_steps"),
     (("--model_name_or_path", "./no/such/folder"), "--model_name_or_path ./no/such/folder: no such file or folder"),
     (("--tokenizer_name", "/no/such/tokenizer"), "--tokenizer_name"),
     (("--config_name", "missing_config.json"), "--config_name")],
)  # fmt: skip
def test_bad_script_arguments_name_the_argument(tmp_path, extra, message):
    import run_clm

    with pytest.raises(ValueError, match=message):
        run_clm.main(_args(tmp_path, "out", *extra))


def test_bad_data_files(tmp_path):
    import run_clm

    train, valid = _corpus(tmp_path / "data")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n   \n\n")
    with pytest.raises(ValueError, match=f"--train_file {blank} has no text"):
        run_clm.main(_args(tmp_path, "out", train=str(blank)))
    with pytest.raises(ValueError, match="--validation_file .* has no text"):
        run_clm.main(_args(tmp_path, "out", valid=str(blank)))
    with pytest.raises(ValueError, match="--train_file .*missing.txt: no such file"):
        run_clm.main(_args(tmp_path, "out", train=str(tmp_path / "missing.txt")))
    wrong = tmp_path / "train.parquet"
    wrong.write_text("x")
    with pytest.raises(ValueError, match=r"unsupported extension \.parquet"):
        run_clm.main(_args(tmp_path, "out", train=str(wrong)))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        run_clm.main(_args(tmp_path, "out", train=str(empty)))
    as_json = tmp_path / "valid.jsonl"
    as_json.write_text('{"text": "a b c"}\n')
    with pytest.raises(ValueError, match="must have the format of --train_file"):
        run_clm.main(_args(tmp_path, "out", valid=str(as_json)))
    with pytest.raises(ValueError, match="fewer than --block_size 4096"):
        run_clm.main(_args(tmp_path, "out", "--block_size", "4096"))


def test_validation_file_without_train_file(tmp_path):
    import run_clm

    args = _args(tmp_path, "out")[2:]  # drop --train_file
    with pytest.raises(ValueError, match="--validation_file needs --train_file"):
        run_clm.main(args)


def test_json_arguments_file_is_checked_too(tmp_path):
    import run_clm

    train, valid = _corpus(tmp_path / "data")
    file = tmp_path / "args.json"
    file.write_text(json.dumps({"train_file": train, "validation_file": valid, "output_dir": str(tmp_path / "o"),
                                "use_cpu": True, "block_size": "16"}))  # fmt: skip
    with pytest.raises(ValueError, match="--block_size must be an integer >= 1.*'16'"):
        run_clm.main([str(file)])


def test_block_size_beyond_learned_positions(tmp_path):
    from contextpool_hf.training import check_block_size

    model = ContextPoolForCausalLM(ContextPoolConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, max_position_embeddings=32,
                                                     position_embedding_type="absolute"))  # fmt: skip
    with pytest.raises(ValueError, match="--block_size 64 is longer than the model's 32 learned positions"):
        check_block_size(64, model)
    check_block_size(32, model)
    model.config.position_embedding_type = "rotary"
    check_block_size(64, model)  # rotary positions extend


# ---------------------------------------------------------------------------------------------
# E: a model folder without a tokenizer


def _saved_model(folder: Path) -> Path:
    config = ContextPoolConfig(vocab_size=300, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               is_causal=True, pool_sigma_max=2.0)  # fmt: skip
    ContextPoolForCausalLM(config).save_pretrained(folder)
    return folder


def test_model_folder_without_tokenizer_names_the_cause(tmp_path):
    import run_clm

    folder = _saved_model(tmp_path / "model")
    with pytest.raises(ValueError, match="--model_name_or_path .*model has no tokenizer files.*--tokenizer_name"):
        run_clm.main(_args(tmp_path, "out", "--model_name_or_path", str(folder)))


def test_empty_tokenizer_names_the_cause(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    folder = _saved_model(tmp_path / "model")
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE())).save_pretrained(folder)
    with pytest.raises(ValueError, match="tokenizer loaded from .* is empty"):
        build_tokenizer(ModelArguments(model_name_or_path=str(folder)))


def test_bpe_vocab_smaller_than_the_byte_alphabet():
    from contextpool_hf.tokenization import train_bpe_tokenizer

    with pytest.raises(ValueError, match="vocab_size must be an integer >= 261"):
        train_bpe_tokenizer(["some text"], vocab_size=100)


# ---------------------------------------------------------------------------------------------
# F: library calls; one FLOPs definition


def test_one_flops_definition_agrees_with_trainer_total_flos(trained_run):
    out, results = trained_run
    # Trainer keeps its figure in trainer_state.json (its logging callbacks drop it from the metrics)
    total_flos = json.loads((out / "trainer_state.json").read_text())["total_flos"]
    assert results["flops_dense"] == pytest.approx(total_flos, rel=1e-9) and "total_flos" not in results
    assert results["flops_total"] == pytest.approx(
        results["flops_dense"] + results["flops_attention"] + results["flops_pooling"])
    assert math.isfinite(results["train_loss"])


def test_count_parameters_is_num_parameters():
    model = ContextPoolForCausalLM(ContextPoolConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, is_causal=True))  # fmt: skip
    assert count_parameters(model) == model.num_parameters(only_trainable=True)
    model.get_input_embeddings().weight.requires_grad_(False)
    assert count_parameters(model) == model.num_parameters() - 50 * 16


# ---------------------------------------------------------------------------------------------
# G: the old import paths keep working after the split


def test_old_import_paths():
    import contextpool_hf.data as data
    import contextpool_hf.training as training

    for name in ("ModelArguments", "DataTrainingArguments", "SCRIPT_TRAINING_DEFAULTS", "DEFAULT_CLM_CONFIG",
                 "DEFAULT_ENCODER_CONFIG", "BASELINES", "TASKS", "TASK_AUTO_CLASS", "parse_config_overrides",
                 "apply_config_overrides", "CheckpointError", "validate_checkpoint", "resolve_resume_checkpoint",
                 "save_model_atomically", "load_raw_datasets", "text_column", "train_tokenizer_on", "build_tokenizer",
                 "tokenize_and_group", "vanilla_config", "default_config", "build_model", "count_parameters",
                 "estimate_training_flops", "lm_metrics", "accuracy_metrics", "argmax_logits", "TimeBudgetCallback",
                 "setup_logging", "parse_args", "start_run", "build_model_for_run", "time_budget_callbacks",
                 "finish", "run_training"):  # fmt: skip
        assert hasattr(training, name), name
    for name in ("TASKS", "LM_CORPORA", "SPLITS", "PACKAGES", "MissingDataPackageError", "package_file",
                 "default_data_dir", "split_files", "prepare_lm", "prepare_classification", "prepare_translation",
                 "prepare_images", "prepare_all", "add_arguments", "run", "read_kjv", "read_shakespeare",
                 "clean_verse", "strip_gutenberg_boilerplate", "BIBLE_BOOKS", "BIBLE_HELD_OUT",
                 "CLASSIFICATION_LABELS", "DATA_DIR_ENV"):  # fmt: skip
        assert hasattr(data, name), name


def _script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # the dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_translation_and_image_script_arguments_are_checked(tmp_path):
    from transformers import Seq2SeqTrainingArguments, TrainingArguments

    rt = _script("run_translation")
    training = Seq2SeqTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    for field, value, message in (("max_source_length", 1, "--max_source_length must be an integer >= 2"),
                                  ("num_beams", 0, "--num_beams"), ("max_train_samples", 0, "--max_train_samples"),
                                  ("train_file", str(tmp_path / "missing.jsonl"), "no such file")):  # fmt: skip
        data = rt.DataTrainingArguments(**{field: value})
        with pytest.raises(ValueError, match=message):
            rt.check_arguments(rt.ModelArguments(), data, training)
    with pytest.raises(ValueError, match="--vocab_size must be an integer >= 261"):
        rt.check_arguments(rt.ModelArguments(vocab_size=10), rt.DataTrainingArguments(), training)
    text = tmp_path / "pairs.txt"
    text.write_text("a\n")
    with pytest.raises(ValueError, match="translation files are .json/.jsonl"):
        rt.check_arguments(rt.ModelArguments(), rt.DataTrainingArguments(train_file=str(text)), training)

    ric = _script("run_image_classification")
    training = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=0)
    with pytest.raises(ValueError, match="--max_steps must be a positive integer"):
        ric.check_arguments(ric.ModelArguments(), ric.DataArguments(), training)
    training.max_steps = 5
    with pytest.raises(ValueError, match="--image_size must be an integer >= 1"):
        ric.check_arguments(ric.ModelArguments(image_size=0), ric.DataArguments(), training)
    with pytest.raises(ValueError, match="--train_val_split"):
        ric.check_arguments(ric.ModelArguments(), ric.DataArguments(train_val_split=1.0), training)
    with pytest.raises(ValueError, match="--train_dir .*nowhere: no such folder"):
        ric.check_arguments(ric.ModelArguments(), ric.DataArguments(train_dir=str(tmp_path / "nowhere")), training)


def test_bin_weights_are_loaded_to_check_them(tmp_path):
    folder = _saved_model(tmp_path / "model")
    state = {k: v.clone() for k, v in ContextPoolForCausalLM.from_pretrained(folder).state_dict().items()}
    (folder / "model.safetensors").unlink()
    weights = folder / "pytorch_model.bin"
    torch.save(state, weights, _use_new_zipfile_serialization=False)  # the legacy format loads too
    assert validate_checkpoint(folder) == folder
    torch.save(state, weights)
    assert validate_checkpoint(folder) == folder
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="pytorch_model.bin cannot be loaded"):
        validate_checkpoint(folder)
