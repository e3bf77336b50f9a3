"""The shipped `evaluate` metric modules: offline loading by path, values against their definitions,
the scripts' compute_metrics going through them, and the module files inside the built wheel."""

import json
import math
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from contextpool_hf.metrics import (
    SHIPPED_METRICS,
    accuracy_metrics,
    bleu_chrf,
    load_metric,
    metric_path,
    perplexity_metrics,
)
from contextpool_hf.training import accuracy_metrics as training_accuracy
from contextpool_hf.training import lm_metrics

ROOT = Path(__file__).resolve().parents[1]
HYPOTHESES = ["the cat sat on the mat", "in the beginning god created the heaven", "and the earth was"]
REFERENCES = ["the cat sat on a mat", "in the beginning God created the heaven and the earth", "and the earth was void"]


def test_every_shipped_metric_is_an_evaluate_folder():
    for name in SHIPPED_METRICS:
        assert Path(metric_path(name), f"{name}.py").is_file()
    with pytest.raises(ValueError, match="shipped metrics"):
        metric_path("rouge")


def test_loads_offline_in_a_fresh_process(tmp_path):
    """evaluate.load(<path>) with the Hub off and empty caches: what a user without network gets."""
    code = f"""
import json, sys
import evaluate
from contextpool_hf.metrics import metric_path
acc = evaluate.load(metric_path("accuracy"))
ppl = evaluate.load(metric_path("lm_perplexity"))
bleu = evaluate.load(metric_path("bleu"))
chrf = evaluate.load(metric_path("chrf"))
out = {{
    "accuracy": acc.compute(predictions=[1, 0, 2, 2], references=[1, 1, 2, -100])["accuracy"],
    "ppl": ppl.compute(nll=[3.0, 1.0], num_tokens=[2, 2], num_characters=8)["perplexity"],
    "bleu": bleu.compute(predictions={HYPOTHESES!r}, references={REFERENCES!r})["bleu"],
    "chrf": chrf.compute(predictions={HYPOTHESES!r}, references={REFERENCES!r})["chrf"],
}}
print(json.dumps(out))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "home"), "HF_MODULES_CACHE": str(tmp_path / "modules")}  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    import sacrebleu

    assert out["accuracy"] == pytest.approx(2 / 3)
    assert out["ppl"] == pytest.approx(math.exp(1.0))
    assert out["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES]).score)
    assert out["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPOTHESES, [REFERENCES]).score)


def test_accuracy_skips_ignored_labels_and_takes_logits():
    logits = np.array([[[0.1, 0.9], [0.8, 0.2]], [[0.3, 0.7], [0.6, 0.4]]])  # (2, 2, classes)
    labels = np.array([[1, 1], [-100, 0]])
    # argmax = [[1, 0], [1, 0]]; kept labels 1, 1, 0 -> hits 1, 0, 1
    expected = {"accuracy": pytest.approx(2 / 3)}
    assert accuracy_metrics(SimpleNamespace(predictions=logits, label_ids=labels)) == expected
    assert training_accuracy(SimpleNamespace(predictions=(logits,), label_ids=labels)) == expected
    all_ignored = SimpleNamespace(predictions=np.array([1, 2]), label_ids=np.array([-100, -100]))
    assert math.isnan(accuracy_metrics(all_ignored)["accuracy"])


def test_accuracy_sample_weight():
    acc = load_metric("accuracy")
    result = acc.compute(predictions=[1, 0, 1], references=[1, 1, 1], sample_weight=[2.0, 1.0, 1.0])
    assert result["accuracy"] == pytest.approx(3 / 4)


def test_perplexity_and_bpc_definitions():
    ppl = load_metric("lm_perplexity")
    # two pieces: 10 nats over 4 tokens and 2 nats over 2 tokens; 30 characters
    result = ppl.compute(nll=[10.0, 2.0], num_tokens=[4, 2], num_characters=30)
    assert result["loss"] == pytest.approx(2.0)
    assert result["perplexity"] == pytest.approx(math.exp(2.0))
    assert result["bpc"] == pytest.approx(12.0 / (math.log(2) * 30))
    with pytest.raises(ValueError, match="num_tokens"):
        ppl.compute(nll=[1.0], num_tokens=[0])
    # The Trainer path: mean loss per token and characters per token give the same ratios.
    metrics = lm_metrics({"eval_loss": 2.0}, chars_per_token=5.0)
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(2.0))
    assert metrics["eval_bpc"] == pytest.approx(2.0 / (math.log(2) * 5.0))
    assert "eval_bpc" not in lm_metrics({"eval_loss": 2.0}, chars_per_token=None)
    assert perplexity_metrics(800.0)["perplexity"] == float("inf")


def test_translation_metrics_match_sacrebleu():
    import sacrebleu

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import run_translation
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    expected = {"bleu": sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES]).score,
                "chrf": sacrebleu.corpus_chrf(HYPOTHESES, [REFERENCES]).score}  # fmt: skip
    assert bleu_chrf(HYPOTHESES, REFERENCES) == pytest.approx(expected)
    assert run_translation.bleu_chrf(HYPOTHESES, REFERENCES) == pytest.approx(expected)
    assert expected["bleu"] > 0 and expected["chrf"] > 0


def test_load_metric_takes_a_local_folder(tmp_path):
    folder = tmp_path / "my_accuracy"
    folder.mkdir()
    (folder / "my_accuracy.py").write_text(Path(metric_path("accuracy"), "accuracy.py").read_text())
    assert load_metric(folder).compute(predictions=[1, 1], references=[1, 0])["accuracy"] == 0.5


def test_load_metric_sends_unknown_names_to_the_hub(monkeypatch):
    import evaluate

    calls = []
    monkeypatch.setattr(evaluate, "load", lambda path, **kw: calls.append(path) or "hub-module")
    assert load_metric("rouge") == "hub-module"
    assert calls == ["rouge"]


def test_wheel_contains_the_metric_modules(tmp_path):
    # Build from a copy, so the build folders never land in the working tree.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    for name in ("src", "model_cards", "scripts"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("contextpool_hf-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in SHIPPED_METRICS:
        assert f"contextpool_hf/metrics/{name}/{name}.py" in names
    assert "contextpool_hf/lm_eval_tasks/kjv_verses.yaml" in names
    # `contextpool-hf train` runs the scripts installed as data files
    for script in ("run_clm", "run_mlm", "run_classification", "run_translation", "run_image_classification"):
        assert any(n.endswith(f".data/data/share/contextpool-hf/scripts/{script}.py") for n in names), script
