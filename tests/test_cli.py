"""`contextpool-hf`: --version, the train verb (same code as scripts/run_*.py), one flag spelling."""

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from contextpool_hf import cli, train_cli

ROOT = Path(__file__).resolve().parents[1]


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"contextpool-hf {version('contextpool-hf')}"
    with pytest.raises(SystemExit) as stop:  # argparse's own --version, with the full parser
        cli.build_parser().parse_args(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"contextpool-hf {version('contextpool-hf')}"


def test_console_script_version():
    exe = Path(sys.executable).with_name("contextpool-hf")
    done = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("contextpool-hf ")


def test_every_flag_is_shown_with_underscores():
    parser = cli.build_parser()
    verbs = cli._verb_parsers(parser)
    assert {"convert", "prepare-data", "push", "train"} <= set(verbs)
    for name, verb_parser in verbs.items():
        for action in verb_parser._actions:
            for option in action.option_strings:
                assert "-" not in option.lstrip("-"), (name, option)


def test_dashed_spelling_still_parses():
    parser = cli.build_parser()
    old = ["convert", "src", "out", "--no-check", "--pool-sigma-max=4"]
    args = parser.parse_args(cli.normalize_flags(old, parser))
    assert args.check is False and args.pool_sigma_max == 4.0
    new = parser.parse_args(["convert", "src", "out", "--no_check", "--pool_sigma_max", "4"])
    assert (new.check, new.pool_sigma_max) == (args.check, args.pool_sigma_max)
    push = parser.parse_args(cli.normalize_flags(["push", "f", "--repo-id", "a/b", "--dry-run"], parser))
    assert push.repo_id == "a/b" and push.dry_run
    # values and the train verb's script arguments are left alone
    assert cli.normalize_flags(["push", "f", "--repo_id", "--x-y"], parser)[-1] == "--x-y"
    train = ["train", "clm", "--output-dir", "x"]
    assert cli.normalize_flags(train, parser) == train
    assert parser.parse_args(["prepare_data", "--tasks", "lm"]).tasks == ["lm"]


def test_train_rejects_an_unknown_task(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["train", "speech"])
    assert stop.value.code == 2
    assert "invalid choice: 'speech'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="task must be one of"):
        train_cli.script_path("speech")


def test_every_task_maps_to_its_script():
    for task, name in train_cli.TASK_SCRIPTS.items():
        path = train_cli.script_path(task)
        assert path == ROOT / "scripts" / name
        assert callable(train_cli.load_script(task).main)


def test_train_clm_through_the_verb(tmp_path):
    """A tiny run: the verb passes every argument (dashed Trainer flags too) to run_clm.main."""
    out = tmp_path / "clm"
    code = cli.main(["train", "clm", "--output_dir", str(out), "--use_cpu", "--max_steps", "3",
                     "--block_size", "32", "--per_device_train_batch_size", "4", "--max_train_samples", "200",
                     "--max_eval_samples", "8", "--tokenizer_vocab_size", "300", "--report_to", "none",
                     "--config_overrides", "hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=64",
                     "--save-strategy", "no", "--disable_tqdm", "true"])  # fmt: skip
    assert code == 0
    results = json.loads((out / "all_results.json").read_text())
    assert results["train_tokens"] == 3 * 4 * 32
    assert results["eval_perplexity"] > 1 and results["eval_bpc"] > 0
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
