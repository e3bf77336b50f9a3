"""Sharing on the Hub: push through huggingface_hub's real HTTP client to a fake Hub
on 127.0.0.1 (tests/hub_server.py), then load in a fresh process that cannot import
contextpool_hf.

Two subprocesses do all the client work (HF_ENDPOINT is read at import time):
one pushes every scenario and writes its results as JSON; one loads the pushed
repos with `trust_remote_code=True` and compares logits. The tests assert on
those results. Until the ContextPool classes exist, a tiny flat remote-code
model written by this file stands in (it carries the `push_to_hub` hook the
ContextPool base class is meant to carry).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import package_import_path
from hub_server import TEST_TOKEN, HubServer
from remote_utils import TEXT_MODEL_FILES

from contextpool_hf import hub

# --- a tiny flat remote-code model (configuration + modeling, relative import) ---
TINY_CONFIG = '''
from transformers import PreTrainedConfig


class TinyPoolConfig(PreTrainedConfig):
    model_type = "tinypool-hubtest"

    def __init__(self, vocab_size=24, hidden_size=16, pool_sigma_max=4.0, pool_groups=1, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.pool_sigma_max = pool_sigma_max
        self.pool_groups = pool_groups
        super().__init__(**kwargs)
'''

# The hook below is, verbatim, the one proposed for ContextPoolPreTrainedModel.
TINY_MODELING = '''
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from .configuration_tinypool import TinyPoolConfig


class TinyPoolPreTrainedModel(PreTrainedModel):
    config_class = TinyPoolConfig
    base_model_prefix = "model"

    def push_to_hub(self, repo_id, **kwargs):
        """Upload with the flat code files and the ContextPool model card.

        With `contextpool_hf` installed this goes through `contextpool_hf.hub.push_model`
        (returns a `PushResult`; `.oid`/`.commit_sha` is the revision to pin). Without it
        (the model was loaded from the Hub) it is transformers' own `push_to_hub`.
        """
        try:
            from contextpool_hf.hub import push_model
        except ImportError:
            return super().push_to_hub(repo_id, **kwargs)
        return push_model(self, repo_id, **kwargs)


class TinyPoolForCausalLM(TinyPoolPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.mix = nn.Conv1d(config.hidden_size, config.hidden_size, 3, padding=1)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def forward(self, input_ids, labels=None, attention_mask=None, **kwargs):
        hidden = self.embed(input_ids)
        hidden = hidden + self.mix(hidden.transpose(1, 2)).transpose(1, 2)
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
        return CausalLMOutput(loss=loss, logits=logits)
'''

# --- the pushing process ---------------------------------------------------------
PUSHER = r'''
import contextlib, hashlib, io, json, os, shutil, sys, traceback
from pathlib import Path

import torch

work = Path(sys.argv[1])
sys.path.insert(0, str(work))
from contextpool_hf import hub, cli
from tinypool_pkg.configuration_tinypool import TinyPoolConfig
from tinypool_pkg.modeling_tinypool import TinyPoolForCausalLM

results = {}
INPUT = torch.tensor([[1, 5, 7, 2, 9, 11, 3, 4]])


def digest(folder):
    h = hashlib.sha256()
    for p in sorted(Path(folder).rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
            h.update(str(p.stat().st_mtime_ns).encode())
    return h.hexdigest()


def expect(name, model):
    model.eval()
    with torch.no_grad():
        torch.save(model(INPUT).logits, work / f"expected_{name}.pt")


def attempt(name, fn):
    try:
        value = fn()
        results[name] = {"ok": True, "value": value}
    except Exception as error:
        results[name] = {"ok": False, "type": type(error).__name__, "message": str(error),
                         "trace": traceback.format_exc()[-3000:]}


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(["[UNK]", "[PAD]"] + [f"w{i}" for i in range(22)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


def as_dict(r):
    return {"repo_id": r.repo_id, "revision": r.revision, "sha": r.commit_sha, "head": r.head_sha,
            "oid": r.oid, "pr_url": r.pr_url, "uploaded": list(r.uploaded), "skipped": list(r.skipped),
            "card_kept": r.card_kept}


torch.manual_seed(0)
TinyPoolConfig.register_for_auto_class()
TinyPoolForCausalLM.register_for_auto_class("AutoModelForCausalLM")
model = TinyPoolForCausalLM(TinyPoolConfig())
ckpt = work / "ckpt"
model.save_pretrained(ckpt)
tokenizer().save_pretrained(ckpt)
(ckpt / "eval_results.json").write_text(json.dumps(
    {"epoch": 1.0, "eval_loss": 1.25, "eval_accuracy": 0.5, "eval_runtime": 0.2, "eval_samples": 8}))
expect("tiny", model)
# what a push must leave behind: a token file, a log, optimizer state, a nested checkpoint
(ckpt / "hf_token.txt").write_text("hf_this_must_never_be_uploaded")
(ckpt / "train.log").write_text("step 1 loss 3.0")
(ckpt / "optimizer.pt").write_bytes(b"state")
(ckpt / "checkpoint-5").mkdir()
(ckpt / "checkpoint-5" / "model.safetensors").write_bytes(b"x")
results["files_in_ckpt"] = sorted(p.name for p in ckpt.iterdir())
before = digest(ckpt)

attempt("push_main", lambda: as_dict(hub.push_checkpoint(ckpt, "test-user/tiny", datasets=["wikitext"])))
attempt("push_branch", lambda: as_dict(hub.push_checkpoint(
    ckpt, "tiny-branch", revision="dev", commit_message="Push to dev")))
attempt("push_unchanged_pr", lambda: as_dict(hub.push_checkpoint(ckpt, "test-user/tiny", create_pr=True)))
changed = work / "ckpt_changed"
shutil.copytree(ckpt, changed)
(changed / "eval_results.json").write_text(json.dumps({"eval_loss": 1.0}))
attempt("push_pr", lambda: as_dict(hub.push_checkpoint(changed, "test-user/tiny", create_pr=True)))

out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
    code = cli.main(["push", str(ckpt), "--repo_id", "test-user/tiny-cli", "--revision", "exp", "--private",
                     "--commit_message", "cli push", "--dataset", "wikitext", "--base_model", "gpt2"])
results["cli"] = {"code": code, "output": out.getvalue()}

# a repo whose README.md the user wrote: kept, unless overwrite_card
from huggingface_hub import HfApi
HfApi().create_repo("test-user/own-card")
HfApi().upload_file(path_or_fileobj=b"# My own card\n", path_in_repo="README.md", repo_id="test-user/own-card")
attempt("card_kept", lambda: as_dict(hub.push_checkpoint(ckpt, "test-user/own-card")))
attempt("card_overwritten", lambda: as_dict(hub.push_checkpoint(ckpt, "test-user/own-card", overwrite_card=True)))
attempt("card_ours_replaced", lambda: as_dict(hub.push_checkpoint(changed, "test-user/own-card")))

token = os.environ.pop("HF_TOKEN")
attempt("missing_token", lambda: as_dict(hub.push_checkpoint(ckpt, "test-user/no-token")))
os.environ["HF_TOKEN"] = token
attempt("bad_token", lambda: as_dict(hub.push_checkpoint(ckpt, "test-user/bad-token", token="hf_not_the_test_token")))
attempt("server_500", lambda: as_dict(hub.push_checkpoint(ckpt, "test-user/broken")))
results["ckpt_unchanged"] = digest(ckpt) == before

# model.push_to_hub() through the class hook
torch.manual_seed(1)
hooked = TinyPoolForCausalLM(TinyPoolConfig(pool_sigma_max=6.0))
expect("hook", hooked)
attempt("hook", lambda: as_dict(hooked.push_to_hub("test-user/tiny-hook", commit_message="hook push")))

# Trainer(push_to_hub=True) with the callback
def trainer_run():
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments
    torch.manual_seed(2)
    m = TinyPoolForCausalLM(TinyPoolConfig())
    rows = [{"input_ids": [(i + j) % 20 + 2 for j in range(8)]} for i in range(16)]
    data = Dataset.from_list([{**r, "labels": r["input_ids"]} for r in rows])
    args = TrainingArguments(
        output_dir=str(work / "trainer_out"), push_to_hub=True, hub_model_id="test-user/tiny-trainer",
        max_steps=2, per_device_train_batch_size=8, save_strategy="steps", save_steps=2, eval_strategy="steps",
        eval_steps=2, report_to=[], use_cpu=True, logging_steps=1, disable_tqdm=True)
    trainer = Trainer(model=m, args=args, train_dataset=data, eval_dataset=data)
    (work / "trainer_out").mkdir(exist_ok=True)
    (work / "trainer_out" / "wandb_api_key.txt").write_text("secret")  # a stray file the Trainer would upload
    hub.prepare_trainer_for_hub(trainer, datasets=["synthetic"])
    trainer.train()
    info = trainer.push_to_hub()
    expect("trainer", m)
    return {"sha": info.oid}

attempt("trainer", trainer_run)

# the ContextPool classes, once they exist
try:
    from contextpool_hf import ContextPoolConfig, ContextPoolForCausalLM
except ImportError:
    results["contextpool"] = {"skipped": True}
else:
    def contextpool_run():
        torch.manual_seed(3)
        cfg = ContextPoolConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                max_position_embeddings=64, is_causal=True, pool_sigma_max=4.0)
        cp = ContextPoolForCausalLM(cfg)
        cp.save_pretrained(work / "cp_ckpt")
        expect("contextpool", cp)
        return as_dict(hub.push_checkpoint(work / "cp_ckpt", "test-user/contextpool-tiny"))

    def contextpool_hook():
        cp = ContextPoolForCausalLM.from_pretrained(work / "cp_ckpt")
        result = cp.push_to_hub("test-user/contextpool-hook")
        if not isinstance(result, hub.PushResult):  # the hook is not in ContextPoolPreTrainedModel yet
            return {"hook_installed": False}
        return {"hook_installed": True, **as_dict(result)}

    attempt("contextpool", contextpool_run)
    attempt("contextpool_hook", contextpool_hook)

(work / "push_results.json").write_text(json.dumps(results))
'''

# --- the loading process: fresh, and contextpool_hf cannot be imported -------------
LOADER = r'''
import sys


class _RefuseContextPool:
    """Makes the editable install of contextpool_hf invisible to this process."""

    def find_spec(self, name, path=None, target=None):
        if name == "contextpool_hf" or name.startswith("contextpool_hf."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None


sys.meta_path.insert(0, _RefuseContextPool())

import json
from pathlib import Path

work = Path(sys.argv[1])
results = {}
try:
    import contextpool_hf  # noqa: F401
    results["package_importable"] = True
except ImportError:
    results["package_importable"] = False

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

INPUT = torch.tensor([[1, 5, 7, 2, 9, 11, 3, 4]])
for name, repo_id, revision, expected in json.loads(sys.argv[2]):
    try:
        model = AutoModelForCausalLM.from_pretrained(repo_id, trust_remote_code=True, revision=revision).eval()
        with torch.no_grad():
            logits = model(INPUT).logits
        want = torch.load(work / f"expected_{expected}.pt")
        results[name] = {"ok": True, "equal": bool(torch.equal(logits, want)),
                         "max_diff": float((logits - want).abs().max()), "class": type(model).__name__,
                         "module": type(model).__module__}
        if name == "tiny":
            tok = AutoTokenizer.from_pretrained(repo_id, revision=revision)
            results[name]["tokens"] = tok("w1 w2 w3")["input_ids"]
    except Exception as error:
        import traceback
        results[name] = {"ok": False, "message": f"{type(error).__name__}: {error}",
                         "trace": traceback.format_exc()[-3000:]}
results["modules"] = sorted(m for m in sys.modules if m.startswith("contextpool_hf"))
(work / "load_results.json").write_text(json.dumps(results))
'''

REPO_ROOT = Path(__file__).resolve().parents[1]


def _client_env(endpoint: str, home: Path, token: str | None = TEST_TOKEN) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE", "TRANSFORMERS_"))}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(home / "hf_home"), HF_MODULES_CACHE=str(home / "modules"),
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", PYTHONPATH=package_import_path())  # the pusher runs the package under test
    if token:
        env["HF_TOKEN"] = token
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path) -> None:
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def fake_hub():
    with HubServer() as server:
        server.state.fail_commit_repos.add("test-user/broken")
        yield server


@pytest.fixture(scope="module")
def session(fake_hub, tmp_path_factory):
    """Run the pusher, then the fresh loader; return (push results, load results, work dir)."""
    work = tmp_path_factory.mktemp("hub_work")
    pkg = work / "tinypool_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "configuration_tinypool.py").write_text(TINY_CONFIG)
    (pkg / "modeling_tinypool.py").write_text(TINY_MODELING)
    _run([sys.executable, "-c", PUSHER, str(work)], _client_env(fake_hub.endpoint, work / "push"), cwd=REPO_ROOT)
    pushed = json.loads((work / "push_results.json").read_text())

    to_load = []
    if pushed["push_main"]["ok"]:
        to_load.append(("tiny", "test-user/tiny", pushed["push_main"]["value"]["sha"], "tiny"))
    if pushed["push_branch"]["ok"]:
        to_load.append(("branch", "test-user/tiny-branch", "dev", "tiny"))
    if pushed["hook"]["ok"]:
        to_load.append(("hook", "test-user/tiny-hook", pushed["hook"]["value"]["sha"], "hook"))
    if pushed["trainer"]["ok"]:
        to_load.append(("trainer", "test-user/tiny-trainer", "main", "trainer"))
    if pushed.get("contextpool", {}).get("ok"):
        to_load.append(("contextpool", "test-user/contextpool-tiny", pushed["contextpool"]["value"]["sha"],
                        "contextpool"))
    if pushed.get("contextpool_hook", {}).get("value", {}).get("hook_installed"):
        to_load.append(("contextpool_hook", "test-user/contextpool-hook", pushed["contextpool_hook"]["value"]["sha"],
                        "contextpool"))
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    _run([sys.executable, "-I", "-c", LOADER, str(work), json.dumps(to_load)],
         _client_env(fake_hub.endpoint, elsewhere), cwd=elsewhere)
    loaded = json.loads((work / "load_results.json").read_text())
    return pushed, loaded, work


def _value(results: dict, name: str) -> dict:
    entry = results[name]
    assert entry["ok"], f"{name} failed: {entry.get('message')}\n{entry.get('trace', '')}"
    return entry["value"]


# --- (a) round trip ------------------------------------------------------------------
def test_fresh_process_cannot_import_package(session):
    _, loaded, _ = session
    assert loaded["package_importable"] is False
    assert loaded["modules"] == []


def test_round_trip_pinned_revision_identical_logits(session, fake_hub):
    pushed, loaded, _ = session
    info = _value(pushed, "push_main")
    assert info["repo_id"] == "test-user/tiny" and info["revision"] == "main"
    assert len(info["sha"]) == 40 and info["oid"] == info["sha"]
    files = fake_hub.files("test-user/tiny", info["sha"])
    for name in ("config.json", "model.safetensors", "configuration_tinypool.py", "modeling_tinypool.py",
                 "tokenizer.json", "tokenizer_config.json", "eval_results.json"):
        assert name in files, name
    assert "README.md" not in files  # the card is the next commit, pinning this one
    # only what the checkpoint consists of: stray files stay local, and the push lists them
    assert not {"hf_token.txt", "train.log", "optimizer.pt"} & set(files)
    assert not any(name.startswith("checkpoint-5") for name in files)
    assert not any(b"hf_this_must_never_be_uploaded" in data for data in files.values())
    skipped = "\n".join(info["skipped"])
    for name in ("hf_token.txt (not part of a checkpoint)", "train.log", "optimizer.pt (optimizer", "checkpoint-5/"):
        assert name in skipped, (name, skipped)
    assert set(info["uploaded"]) == set(files) - {".gitattributes"}
    assert "README.md" in fake_hub.files("test-user/tiny", "main")
    assert fake_hub.refs("test-user/tiny")["main"] == info["head"]
    tiny = loaded["tiny"]
    assert tiny["ok"], tiny.get("trace")
    assert tiny["equal"] and tiny["max_diff"] == 0.0
    assert tiny["module"].startswith("transformers_modules.")  # the remote code ran, not an installed class
    assert tiny["tokens"] == [3, 4, 5]


def test_push_to_branch_and_namespace_default(session, fake_hub):
    pushed, loaded, _ = session
    info = _value(pushed, "push_branch")
    assert info["repo_id"] == "test-user/tiny-branch" and info["revision"] == "dev"
    refs = fake_hub.refs("test-user/tiny-branch")
    assert refs["dev"] == info["head"] and refs["dev"] != refs["main"]
    assert "model.safetensors" not in fake_hub.files("test-user/tiny-branch", "main")
    assert loaded["branch"]["ok"] and loaded["branch"]["equal"], loaded["branch"]


def test_create_pr(session, fake_hub):
    pushed, _, _ = session
    unchanged = _value(pushed, "push_unchanged_pr")  # same files: no commit, no PR, main untouched
    assert unchanged["pr_url"] is None and unchanged["sha"] == _value(pushed, "push_main")["head"]
    info = _value(pushed, "push_pr")
    assert info["revision"] == "refs/pr/1" and info["pr_url"].endswith("/discussions/1")
    refs = fake_hub.refs("test-user/tiny")
    assert refs["refs/pr/1"] == info["head"] and refs["main"] == _value(pushed, "push_main")["head"]
    pr_files = fake_hub.files("test-user/tiny", "refs/pr/1")
    assert json.loads(pr_files["eval_results.json"]) == {"eval_loss": 1.0}
    assert f'revision = "{info["sha"]}"' in pr_files["README.md"].decode()


# --- (b) the model card -------------------------------------------------------------------
def test_pushed_card_metadata_and_body(session, fake_hub):
    from huggingface_hub import ModelCard

    pushed, _, _ = session
    sha = _value(pushed, "push_main")["sha"]
    card = ModelCard(fake_hub.files("test-user/tiny", "main")["README.md"].decode())
    data = card.data
    assert data.license == "apache-2.0"
    assert {"contextpool", "custom_code"} <= set(data.tags)
    assert data.pipeline_tag == "text-generation" and data.library_name == "transformers"
    assert data.datasets == ["wikitext"]
    metrics = {r.metric_type: r.metric_value for r in data.eval_results}
    assert metrics == {"loss": 1.25, "accuracy": 0.5}  # runtime/epoch/samples are not metrics
    assert f'revision = "{sha}"' in card.text
    assert "trust_remote_code=True" in card.text and "AutoModelForCausalLM" in card.text
    assert "`pool_sigma_max` | `4.0`" in card.text
    assert "Efficient Representation Learning via Adaptive Context Pooling" in card.text
    assert "Huang, Chen and Talbott, Walter and Jaitly, Navdeep and Susskind, Joshua M." in card.text


def _local_checkpoint(tmp_path: Path) -> Path:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    auto_map = {"AutoConfig": "configuration_x.XConfig", "AutoModelForMaskedLM": "modeling_x.XForMaskedLM"}
    (folder / "config.json").write_text(json.dumps({
        "model_type": "contextpool", "architectures": ["XForMaskedLM"], "auto_map": auto_map,
        "pooling_sigma_min": 0.5, "pooling_sigma_max": 8.0, "hidden_size": 8}))
    (folder / "configuration_x.py").write_text("X = 1\n")
    (folder / "modeling_x.py").write_text("from .configuration_x import X\nfrom .pooling_x import pool\n")
    (folder / "pooling_x.py").write_text("def pool():\n    pass\n")
    _save_weights(folder / "model.safetensors", {"w": torch.ones(2, 3), "b": torch.zeros(3)})
    return folder


def _save_weights(path: Path, tensors: dict) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path))


def test_build_model_card_locally(tmp_path):
    from huggingface_hub import ModelCard

    folder = _local_checkpoint(tmp_path)
    (folder / "trainer_state.json").write_text(json.dumps({"log_history": [
        {"loss": 3.0, "step": 1}, {"eval_loss": 2.5, "eval_runtime": 1.0, "step": 1},
        {"eval_loss": 2.0, "eval_perplexity": 7.39, "step": 2}]}))
    built = hub.build_model_card(folder, repo_id="me/x", revision="a" * 40, base_model="bert-base-uncased",
                                 datasets="wikitext")
    card = ModelCard(str(built))
    assert card.data.base_model == "bert-base-uncased"
    assert card.data.pipeline_tag == "fill-mask"
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {"loss": 2.0, "perplexity": 7.39}
    assert 'revision = "' + "a" * 40 + '"' in card.text and "AutoModelForMaskedLM" in card.text
    assert "`pooling_sigma_max` | `8.0`" in card.text and "hidden_size" not in card.text.split("## How to load")[0]
    assert "`pooling_x.py`" in card.text  # relative imports of the auto_map modules count as code files
    assert "@inproceedings{huang2022contextpool" in card.text


def test_card_metrics_are_the_eval_metrics_only(tmp_path):
    """all_results.json mixes train_*, eval_* and unprefixed eval metrics (the scripts' perplexity): the card lists
    the evaluation's, never a training loss or runtime as if it were one."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "all_results.json").write_text(json.dumps({
        "train_loss": 3.5, "train_runtime": 12.0, "train_samples_per_second": 9.0, "eval_loss": 2.25,
        "eval_runtime": 1.5, "perplexity": 9.49, "epoch": 1.0, "predict_loss": 2.0, "test_accuracy": 0.5}))  # fmt: skip
    metrics, source = hub.read_eval_results(folder)
    assert (metrics, source) == ({"eval_loss": 2.25, "perplexity": 9.49}, "all_results.json")


def test_only_this_projects_own_card_counts_as_replaceable():
    """A push replaces the Hub's README.md only when this project wrote it: both its tag and its citation. A
    user's card that merely tags the model `contextpool`, or cites the paper, is theirs."""
    ours = str(hub.build_model_card(None, repo_id="me/x", config={"architectures": ["ContextPoolForMaskedLM"],
                                                                  "model_type": "contextpool"}))  # fmt: skip
    assert hub.is_contextpool_card(ours)
    tagged = "---\ntags:\n- contextpool\n---\n# My model\nNotes of my own.\n"
    citing = "---\ntags:\n- mine\n---\n# My model\n@inproceedings{huang2022contextpool, ...}\n"
    assert not hub.is_contextpool_card(tagged) and not hub.is_contextpool_card(citing)
    assert not hub.is_contextpool_card("# My own card\n")


def test_fallback_template_has_the_same_essentials(tmp_path, monkeypatch):
    from huggingface_hub import ModelCard

    monkeypatch.setattr(hub, "find_card_template", lambda: None)
    card = ModelCard(str(hub.build_model_card(_local_checkpoint(tmp_path), repo_id="me/x", revision="b" * 40)))
    assert {"contextpool", "custom_code"} <= set(card.data.tags)
    assert 'revision="' + "b" * 40 + '"' in card.text and "trust_remote_code=True" in card.text
    assert "Adaptive Context Pooling" in card.text
    assert hub.find_card_template() is None
    monkeypatch.undo()
    assert hub.find_card_template() == REPO_ROOT / "model_cards" / "contextpool_model_card.md"


# --- (c) bad input ---------------------------------------------------------------------------
def test_error_missing_token(session):
    pushed, _, _ = session
    err = pushed["missing_token"]
    assert not err["ok"] and err["type"] == "HubAuthError"
    assert "HF_TOKEN" in err["message"] and "hf auth login" in err["message"]


def test_error_rejected_token_is_not_echoed(session):
    pushed, _, _ = session
    err = pushed["bad_token"]
    assert not err["ok"] and err["type"] == "HubAuthError" and "401" in err["message"]
    assert "hf_not_the_test_token" not in err["message"]


def test_error_server_500_mid_upload_leaves_folder_untouched(session, fake_hub):
    pushed, _, _ = session
    err = pushed["server_500"]
    assert not err["ok"] and err["type"] == "HubPushError"
    assert "upload the model files" in err["message"] and "500" in err["message"]
    assert "local folder was not changed" in err["message"]
    assert set(fake_hub.files("test-user/broken", "main")) == {".gitattributes"}  # nothing half-committed
    assert pushed["ckpt_unchanged"] is True


@pytest.mark.parametrize("repo_id", ["bad repo", "a/b/c", "-dash/x", "x" * 100])
def test_error_invalid_repo_id(tmp_path, repo_id):
    folder = _local_checkpoint(tmp_path)
    before = _digest(folder)
    with pytest.raises(ValueError, match="[Rr]epo id"):
        hub.push_checkpoint(folder, repo_id, token="unused")
    assert _digest(folder) == before


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        ("model.safetensors", "no weights"),
        ("modeling_x.py", "missing the remote-code files.*modeling_x.py"),
        ("pooling_x.py", "missing the remote-code files.*pooling_x.py"),
        ("config.json", "no config.json"),
    ],
)
def test_error_incomplete_folder(tmp_path, remove, message):
    folder = _local_checkpoint(tmp_path)
    (folder / remove).unlink()
    before = _digest(folder)
    with pytest.raises(hub.CheckpointError, match=message):
        hub.push_checkpoint(folder, "me/x", token="unused")
    assert _digest(folder) == before


def test_error_no_auto_map_and_missing_shard(tmp_path):
    folder = _local_checkpoint(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "auto_map"}))
    with pytest.raises(hub.CheckpointError, match="no auto_map"):
        hub.check_checkpoint(folder)
    (tmp_path / "sharded").mkdir()
    folder = _local_checkpoint(tmp_path / "sharded")
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00001.safetensors"}}))
    with pytest.raises(hub.CheckpointError, match="model-00001.safetensors"):
        hub.check_checkpoint(folder)


def test_files_to_upload_is_an_allow_list(tmp_path):
    folder = _local_checkpoint(tmp_path)
    for name in ("optimizer.pt", "rng_state.pth", "training_args.bin", "README.md", ".hidden", "hf_token.txt",
                 "train.log", "notes.ipynb", "trainer_state.json", "pytorch_model.bin", "stray.py"):
        (folder / name).write_bytes(b"x")
    for name in ("tokenizer.json", "special_tokens_map.json", "generation_config.json", "eval_results.json",
                 "conversion.json"):
        (folder / name).write_text("{}")
    (folder / "checkpoint-10").mkdir()
    (folder / "checkpoint-10" / "model.safetensors").write_bytes(b"x")
    upload, skipped = hub.select_files(folder)
    assert upload == ["config.json", "configuration_x.py", "conversion.json", "eval_results.json",
                      "generation_config.json", "model.safetensors", "modeling_x.py", "pooling_x.py",
                      "special_tokens_map.json", "tokenizer.json"]
    assert hub.files_to_upload(folder) == upload
    reasons = dict(entry.split(" ", 1) for entry in skipped)
    assert set(reasons) == {"optimizer.pt", "rng_state.pth", "training_args.bin", "README.md", ".hidden",
                            "hf_token.txt", "train.log", "notes.ipynb", "trainer_state.json", "pytorch_model.bin",
                            "stray.py", "checkpoint-10/"}
    assert "not part of a checkpoint" in reasons["hf_token.txt"] and "model card" in reasons["README.md"]
    assert "optimizer" in reasons["optimizer.pt"] and "folder" in reasons["checkpoint-10/"]
    assert "pickle" in reasons["pytorch_model.bin"]
    # asked for by name, a file is uploaded; one outside the folder is refused
    assert "notes.ipynb" in hub.select_files(folder, extra_files=["notes.ipynb"])[0]
    with pytest.raises(hub.CheckpointError, match="not a file inside"):
        hub.select_files(folder, extra_files=["../elsewhere.txt"])


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "padded"])
def test_push_refuses_damaged_weights_before_any_upload(tmp_path, damage, monkeypatch):
    folder = _local_checkpoint(tmp_path)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[:-5], "garbage": os.urandom(len(data)), "empty": b"",
                         "padded": data + b"\0" * 8}[damage])
    monkeypatch.setattr(hub, "resolve_token", lambda token=None: pytest.fail("reached the network step"))
    with pytest.raises(hub.CheckpointError, match="model.safetensors is truncated or corrupt"):
        hub.push_checkpoint(folder, "me/x", token="unused")


def test_push_refuses_damaged_sharded_weights(tmp_path):
    folder = _local_checkpoint(tmp_path)
    (folder / "model.safetensors").unlink()
    _save_weights(folder / "model-00001-of-00002.safetensors", {"w": torch.ones(2, 3)})
    _save_weights(folder / "model-00002-of-00002.safetensors", {"b": torch.zeros(3)})
    index = {"metadata": {}, "weight_map": {"w": "model-00001-of-00002.safetensors",
                                            "b": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert hub.check_checkpoint(folder)["model_type"] == "contextpool"
    assert {"model.safetensors.index.json", "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors"} <= set(hub.files_to_upload(folder))
    shard = folder / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-4])
    with pytest.raises(hub.CheckpointError, match="model-00002-of-00002.safetensors is truncated"):
        hub.check_checkpoint(folder)
    _save_weights(shard, {"other": torch.zeros(3)})  # intact, but not the tensor the index names
    with pytest.raises(hub.CheckpointError, match="lacks tensors.*: b"):
        hub.check_checkpoint(folder)
    (folder / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(hub.CheckpointError, match="not a readable JSON index"):
        hub.check_checkpoint(folder)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../model.safetensors"}}))
    with pytest.raises(hub.CheckpointError, match="not a .safetensors file name"):
        hub.check_checkpoint(folder)


def test_push_refuses_symlinks_leaving_the_folder(tmp_path):
    (tmp_path / "a").mkdir()
    folder = _local_checkpoint(tmp_path / "a")
    outside = tmp_path / "secret.json"
    outside.write_text('{"token": "hf_secret"}')
    (folder / "tokenizer_config.json").symlink_to(outside)
    with pytest.raises(hub.CheckpointError, match="symlinks point outside the folder.*tokenizer_config.json"):
        hub.push_checkpoint(folder, "me/x", token="unused")
    (folder / "tokenizer_config.json").unlink()
    (folder / "tokenizer_config.json").symlink_to(folder / "config.json")  # inside the folder: fine
    assert "tokenizer_config.json" in hub.files_to_upload(folder)
    (folder / "linked_dir").symlink_to(tmp_path, target_is_directory=True)  # not entered, listed as skipped
    assert any(entry.startswith("linked_dir/") for entry in hub.select_files(folder)[1])
    weights = folder / "model.safetensors"
    weights.rename(tmp_path / "weights.safetensors")
    weights.symlink_to(tmp_path / "weights.safetensors")
    with pytest.raises(hub.CheckpointError, match="model.safetensors ->"):
        hub.push_checkpoint(folder, "me/x", token="unused")


def test_cli_unreachable_endpoint_is_one_line(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    from contextpool_hf import cli

    folder = _local_checkpoint(tmp_path)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    code = cli.main(["push", str(folder), "--repo_id", "me/x", "--token", "hf_cli_unreachable_token"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert "could not reach the Hub at http://127.0.0.1:9" in err and "Traceback" not in err
    assert "hf_cli_unreachable_token" not in err


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no such file"), ("{oops", "not valid JSON"), ("[1, 2]", "must be a JSON object"),
     ('{"eval_accuracy": "high"}', "eval_accuracy.*not finite numbers"), ('{"eval_loss": NaN}', "not finite")],
)
def test_cli_bad_eval_results_is_one_line(tmp_path, capsys, content, message):
    from contextpool_hf import cli

    folder = _local_checkpoint(tmp_path)
    results = tmp_path / "metrics.json"
    if content is not None:
        results.write_text(content)
    code = cli.main(["push", str(folder), "--repo_id", "me/x", "--token", "t", "--eval_results", str(results)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(message, err), err


def test_cli_dry_run_lists_upload_and_skipped(tmp_path, capsys):
    from contextpool_hf import cli

    folder = _local_checkpoint(tmp_path)
    (folder / "hf_token.txt").write_text("hf_x")
    assert cli.main(["push", str(folder), "--repo_id", "me/x", "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert "would upload: model.safetensors" in out and "skipped: hf_token.txt (not part of a checkpoint)" in out
    (folder / "model.safetensors").write_bytes(b"garbage")
    assert cli.main(["push", str(folder), "--repo_id", "me/x", "--dry_run"]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err


def test_card_written_by_user_is_kept_unless_overwrite(session, fake_hub):
    pushed, _, _ = session
    kept = _value(pushed, "card_kept")
    assert kept["card_kept"] is True and kept["head"] == kept["sha"]
    assert fake_hub.files("test-user/own-card", kept["sha"])["README.md"] == b"# My own card\n"
    assert "model.safetensors" in fake_hub.files("test-user/own-card", kept["sha"])
    replaced = _value(pushed, "card_overwritten")
    assert replaced["card_kept"] is False
    assert "huang2022contextpool" in fake_hub.files("test-user/own-card", replaced["head"])["README.md"].decode()
    ours = _value(pushed, "card_ours_replaced")  # our own card is refreshed without asking
    assert ours["card_kept"] is False
    readme = fake_hub.files("test-user/own-card", "main")["README.md"].decode()
    assert f'revision = "{ours["sha"]}"' in readme


# --- (d) model.push_to_hub() and the Trainer ----------------------------------------------
def test_model_push_to_hub_hook_carries_code_and_card(session, fake_hub):
    pushed, loaded, _ = session
    info = _value(pushed, "hook")
    files = fake_hub.files("test-user/tiny-hook", "main")
    assert {"configuration_tinypool.py", "modeling_tinypool.py", "model.safetensors", "README.md"} <= set(files)
    readme = files["README.md"].decode()
    assert f'revision = "{info["sha"]}"' in readme and "custom_code" in readme
    assert "`pool_sigma_max` | `6.0`" in readme
    assert loaded["hook"]["ok"] and loaded["hook"]["equal"], loaded["hook"]


def test_trainer_push_carries_code_and_card(session, fake_hub):
    pushed, loaded, _ = session
    _value(pushed, "trainer")
    files = fake_hub.files("test-user/tiny-trainer", "main")
    assert {"configuration_tinypool.py", "modeling_tinypool.py", "model.safetensors", "config.json"} <= set(files)
    assert not {"wandb_api_key.txt", "training_args.bin", "trainer_state.json", "optimizer.pt"} & set(files)
    assert not any(name.startswith("checkpoint-") for name in files)
    readme = files["README.md"].decode()
    assert "ContextPool" in readme and "custom_code" in readme and "Adaptive Context Pooling" in readme
    assert "eval_loss" not in readme and "| loss |" in readme  # the Trainer's eval metrics, in the card
    sha = _value(pushed, "trainer")["sha"]
    assert f'revision = "{sha}"' in readme  # the Trainer's push goes through push_checkpoint: the card pins it
    assert loaded["trainer"]["ok"] and loaded["trainer"]["equal"], loaded["trainer"]


# --- (e) CLI ----------------------------------------------------------------------------------
def test_cli_push(session, fake_hub):
    pushed, _, _ = session
    cli = pushed["cli"]
    assert cli["code"] == 0, cli["output"]
    assert TEST_TOKEN not in cli["output"]
    assert "model commit:" in cli["output"]
    assert "skipped: hf_token.txt (not part of a checkpoint)" in cli["output"]
    refs = fake_hub.refs("test-user/tiny-cli")
    assert "exp" in refs and fake_hub.state.repos["test-user/tiny-cli"].private
    files = fake_hub.files("test-user/tiny-cli", "exp")
    sha = cli["output"].split("model commit: ")[1].split()[0]
    assert fake_hub.state.repos["test-user/tiny-cli"].commits[sha].message.startswith("cli push")
    card = files["README.md"].decode()
    assert "base_model: gpt2" in card and f'revision = "{sha}"' in card


def test_cli_reports_bad_folder(tmp_path, capsys):
    from contextpool_hf import cli

    (tmp_path / "empty").mkdir()
    assert cli.main(["push", str(tmp_path / "empty"), "--repo_id", "me/x"]) == 2
    assert "no config.json" in capsys.readouterr().err


# --- the ContextPool classes (skipped until they exist) ------------------------------------
def test_contextpool_round_trip(session, fake_hub):
    pushed, loaded, _ = session
    if pushed["contextpool"].get("skipped"):
        pytest.skip("contextpool_hf.ContextPoolForCausalLM is not importable yet")
    sha = _value(pushed, "contextpool")["sha"]
    files = fake_hub.files("test-user/contextpool-tiny", sha)
    for name in TEXT_MODEL_FILES:
        assert name in files, name
    assert loaded["contextpool"]["ok"], loaded["contextpool"].get("trace")
    assert loaded["contextpool"]["equal"] and loaded["contextpool"]["max_diff"] == 0.0
    assert loaded["contextpool"]["module"].startswith("transformers_modules.")
    readme = fake_hub.files("test-user/contextpool-tiny", "main")["README.md"].decode()
    assert "`pool_sigma_max` | `4.0`" in readme and "`pool_target` | `qkv`" in readme
    assert "use_pooler" not in readme


def test_contextpool_model_push_to_hub_hook(session, fake_hub):
    pushed, loaded, _ = session
    if pushed["contextpool"].get("skipped"):
        pytest.skip("contextpool_hf.ContextPoolForCausalLM is not importable yet")
    value = _value(pushed, "contextpool_hook")
    if not value["hook_installed"]:
        pytest.skip("ContextPoolPreTrainedModel.push_to_hub does not delegate to contextpool_hf.hub.push_model yet")
    files = fake_hub.files("test-user/contextpool-hook", value["sha"])
    assert TEXT_MODEL_FILES <= set(files)
    assert "custom_code" in fake_hub.files("test-user/contextpool-hook", "main")["README.md"].decode()
    assert loaded["contextpool_hook"]["ok"] and loaded["contextpool_hook"]["equal"], loaded["contextpool_hook"]


def test_scripts_push_to_hub(tmp_path, capsys):
    import runpy

    script = runpy.run_path(str(REPO_ROOT / "scripts" / "push_to_hub.py"))
    assert script["main"]([str(tmp_path), "--repo_id", "me/x"]) == 2
    assert "no config.json" in capsys.readouterr().err


# --- every family's push_to_hub goes through push_model (no Hub needed) ---------------------
def _tiny_models():
    import contextpool_hf as cp

    text = cp.ContextPoolForCausalLM(cp.ContextPoolConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1,
                                                          num_attention_heads=2, max_position_embeddings=32))
    seq2seq = cp.ContextPoolForConditionalGeneration(cp.ContextPoolSeq2SeqConfig(
        vocab_size=32, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16, max_position_embeddings=32))
    vit = cp.ContextPoolViTForImageClassification(cp.ContextPoolViTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, image_size=8, patch_size=4))
    resnet = cp.ContextPoolResNetForImageClassification(cp.ContextPoolResNetConfig(
        embedding_size=8, hidden_sizes=[8], depths=[1], layer_type="basic"))
    return {"text": (text, "modeling_contextpool.py"), "seq2seq": (seq2seq, "modeling_contextpool_seq2seq.py"),
            "vit": (vit, "modeling_contextpool_vision.py"), "resnet": (resnet, "modeling_contextpool_vision.py")}


@pytest.mark.parametrize("family", ["text", "seq2seq", "vit", "resnet"])
def test_every_family_push_to_hub_uses_push_model(family, tmp_path, monkeypatch):
    model, modeling_file = _tiny_models()[family]
    calls = []

    def fake_push_model(pushed, repo_id, **kwargs):
        calls.append((pushed, repo_id, kwargs))
        return sorted(hub.write_code_files(pushed, tmp_path))

    monkeypatch.setattr(hub, "push_model", fake_push_model)
    written = model.push_to_hub("test-user/family", private=True)
    assert len(calls) == 1 and calls[0][0] is model and calls[0][1] == "test-user/family"
    assert calls[0][2] == {"private": True}
    assert {modeling_file, "modeling_utils_contextpool.py", "pooling_contextpool.py"} <= set(written)
