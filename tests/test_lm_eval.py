"""lm-evaluation-harness on a saved ContextPool causal LM, with the shipped offline KJV tasks.

`lm_eval --model hf --model_args pretrained=PATH,trust_remote_code=True --include_path <tasks>` is what
users run: the model loads as remote code, and loglikelihood (rolling and multiple choice) and
generation requests run batched. The harness's numbers are checked against the model itself:
per-verse log-likelihoods against a direct forward pass, batched against one-at-a-time requests
(right padding for scoring, left padding and the pooling cache for generation).
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from contextpool_hf import ContextPoolConfig, ContextPoolForCausalLM  # noqa: E402
from contextpool_hf.data import prepare_lm  # noqa: E402
from contextpool_hf.lm_eval_tasks import TASKS_DIR  # noqa: E402
from contextpool_hf.tokenization import train_bpe_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["kjv_verses", "kjv_next_verse", "kjv_verse_completion"]


@pytest.fixture(scope="module")
def kjv_dir(tmp_path_factory):
    return prepare_lm(tmp_path_factory.mktemp("data"), "kjv")


@pytest.fixture(scope="module")
def saved_lm(kjv_dir, tmp_path_factory):
    """A tiny random ContextPool LM (pooling on in every layer) with a BPE tokenizer trained on KJV."""
    torch.manual_seed(0)
    lines = (kjv_dir / "train.txt").read_text().splitlines()[:2000]
    tokenizer = train_bpe_tokenizer(lines, vocab_size=400)
    config = ContextPoolConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, is_causal=True, max_position_embeddings=256,
                               position_embedding_type="rotary", pool_mix_init=1.0)  # fmt: skip
    folder = tmp_path_factory.mktemp("lm")
    ContextPoolForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _evaluate(model_dir, data_root, batch_size, limit):
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={model_dir},trust_remote_code=True,dtype=float32",
        tasks=TASKS, task_manager=TaskManager(include_path=str(TASKS_DIR)), limit=limit,
        batch_size=batch_size, device="cpu", log_samples=True, metadata={"data_dir": str(data_root)},
        bootstrap_iters=0,
    )  # fmt: skip


def test_task_documents(kjv_dir):
    from contextpool_hf.lm_eval_tasks import kjv_utils

    data_root = str(kjv_dir.parents[1])
    lines = [line for line in (kjv_dir / "test.txt").read_text().splitlines() if line.strip()]
    docs = kjv_utils.next_verse(data_root)["test"]
    assert len(docs) == len(lines) - 1
    for i in (0, 1, 2, 3, 500, len(docs) - 1):
        doc = docs[i]
        assert doc["context"] == lines[i] and doc["choices"][doc["label"]] == lines[i + 1]
        assert len(set(doc["choices"])) == 4 and lines[i] not in doc["choices"]
    assert [docs[i]["label"] for i in range(8)] == [0, 1, 2, 3, 0, 1, 2, 3]
    verses = kjv_utils.verses(data_root)["test"]
    assert verses["text"] == lines
    completion = kjv_utils.verse_completion(data_root)["test"][0]
    assert completion["prompt"] + " " + completion["target"] == lines[0]


@pytest.mark.slow  # about 40 s on 2 busy cores
def test_harness_matches_the_model_and_batching(saved_lm, kjv_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data_root = kjv_dir.parents[1]
    batched = _evaluate(saved_lm, data_root, batch_size=4, limit=6)
    single = _evaluate(saved_lm, data_root, batch_size=1, limit=6)

    # Rolling log-likelihood of each verse == the model's own sum of log-probabilities of the tokens the
    # harness scores: its prefix token (<s>) followed by the tokenizer's encoding (which starts with <s>
    # too; `add_bos_token=False` in model_args drops that one).
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(saved_lm, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(saved_lm, trust_remote_code=True)
    for sample in batched["samples"]["kjv_verses"]:
        ids = [tokenizer.bos_token_id] + tokenizer.encode(sample["doc"]["text"])
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].double()
        expected = logits[:-1].log_softmax(-1).gather(1, torch.tensor(ids[1:])[:, None]).sum().item()
        assert sample["resps"][0][0] == pytest.approx(expected, abs=1e-3)

    for task in TASKS:
        for one, many in zip(single["samples"][task], batched["samples"][task], strict=True):
            if task == "kjv_verse_completion":  # greedy text, left-padded batch with the cache
                assert many["filtered_resps"] == one["filtered_resps"]
            else:
                got = [r[0] if isinstance(r[0], float) else r[0][0] for r in many["resps"]]
                want = [r[0] if isinstance(r[0], float) else r[0][0] for r in one["resps"]]
                assert got == pytest.approx(want, abs=1e-3)
    choices = batched["samples"]["kjv_next_verse"]
    assert all(len(s["doc"]["choices"]) == 4 for s in choices)
    assert {s["doc"]["label"] for s in choices} == {0, 1, 2, 3}  # the real verse moves between slots
    assert batched["results"]["kjv_verses"]["bits_per_byte,none"] > 0


@pytest.mark.slow
def test_lm_eval_command_on_a_trained_model(kjv_dir, tmp_path):
    """The README's command, end to end, on a model trained for a few steps by `contextpool-hf train clm`."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "CONTEXTPOOL_HF_DATA_DIR": str(kjv_dir.parents[1])}  # fmt: skip
    model_dir = tmp_path / "clm"
    train = [sys.executable, "-m", "contextpool_hf.cli", "train", "clm", "--output_dir", str(model_dir), "--use_cpu",
             "--max_steps", "40", "--block_size", "64", "--per_device_train_batch_size", "8",
             "--config_overrides", "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64",
             "--tokenizer_vocab_size", "400", "--max_train_samples", "3000", "--max_eval_samples", "20",
             "--learning_rate", "3e-3", "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true"]  # fmt: skip
    done = subprocess.run(train, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    out = tmp_path / "lm_eval_out"
    command = [str(Path(sys.executable).with_name("lm_eval")), "--model", "hf",
               "--model_args", f"pretrained={model_dir},trust_remote_code=True",
               "--tasks", "kjv_offline", "--include_path", str(TASKS_DIR), "--limit", "16",
               "--batch_size", "8", "--device", "cpu", "--output_path", str(out)]  # fmt: skip
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    (results_file,) = out.rglob("results_*.json")
    results = json.loads(results_file.read_text())["results"]
    # 40 steps beat a uniform guess over the vocabulary on the held-out verses the harness scored:
    # uniform = log2(vocab) bits for each scored token (the tokenizer's encoding, <s> included).
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    verses = [line for line in (kjv_dir / "test.txt").read_text().splitlines() if line.strip()][:16]
    tokens = sum(len(tokenizer.encode(v)) for v in verses)
    uniform = tokens * math.log2(len(tokenizer)) / sum(len(v.encode()) for v in verses)
    bits_per_byte = results["kjv_verses"]["bits_per_byte,none"]
    print(f"bits per byte {bits_per_byte:.3f}, uniform {uniform:.3f}")
    assert 0 < bits_per_byte < 0.9 * uniform
    assert 0 <= results["kjv_next_verse"]["acc,none"] <= 1
    assert "chrf,remove_whitespace" in results["kjv_verse_completion"]
