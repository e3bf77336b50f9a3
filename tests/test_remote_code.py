"""Remote code: a saved folder loads through every Auto class in a fresh process without this package.

One checkpoint per head is saved; ONE isolated subprocess (tests/remote_utils.py) loads each with
`trust_remote_code=True`, runs fixed inputs and a cached greedy generation, and writes the results;
they must equal the in-process model's exactly.
"""

import ast
import json
import sys

import pytest
import torch
from remote_utils import TEXT_MODEL_FILES, run_without_package

from contextpool_hf import (
    ContextPoolConfig,
    ContextPoolForCausalLM,
    ContextPoolForMaskedLM,
    ContextPoolForQuestionAnswering,
    ContextPoolForSequenceClassification,
    ContextPoolForTokenClassification,
    ContextPoolModel,
)
from contextpool_hf.configuration_contextpool import CONTEXTPOOL_AUTO_MAP

HEADS = {
    "AutoModel": ContextPoolModel,
    "AutoModelForCausalLM": ContextPoolForCausalLM,
    "AutoModelForMaskedLM": ContextPoolForMaskedLM,
    "AutoModelForSequenceClassification": ContextPoolForSequenceClassification,
    "AutoModelForTokenClassification": ContextPoolForTokenClassification,
    "AutoModelForQuestionAnswering": ContextPoolForQuestionAnswering,
}
OUTPUT_FIELDS = ("last_hidden_state", "logits", "start_logits", "end_logits")
ALLOWED_TOP_LEVEL = {"torch", "transformers", "huggingface_hub"}  # huggingface_hub ships with transformers

REMOTE_CODE = """
import json
import sys

import torch
import transformers
from transformers import AutoConfig

root = sys.argv[1] if len(sys.argv) > 1 else {root!r}
torch.set_num_threads({threads})
plan = json.load(open(root + "/plan.json"))
inputs = torch.load(root + "/inputs.pt")
results, modules = {{}}, {{}}

config = AutoConfig.from_pretrained(plan["AutoModel"], trust_remote_code=True)
modules["AutoConfig"] = [type(config).__name__, type(config).__module__]
for auto_name, folder in plan.items():
    model = getattr(transformers, auto_name).from_pretrained(folder, trust_remote_code=True).eval()
    modules[auto_name] = [type(model).__name__, type(model).__module__]
    with torch.no_grad():
        out = model(**inputs, output_pooling_sizes=True)
    for field in {fields!r}:
        if field in out and out[field] is not None:
            results[auto_name + "." + field] = out[field]
    for layer, sigma in enumerate(out.pooling_sizes):
        if sigma is not None:
            results[auto_name + ".sigma" + str(layer)] = sigma
    if auto_name == "AutoModelForCausalLM":
        results["generate"] = model.generate(
            inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=8, do_sample=False,
            use_cache=True, pad_token_id=0,
        )
        # the same checkpoint with its layers offloaded to disk by accelerate (the remote files' fast paths meet
        # weights on the meta device there)
        device_map = {{"model.embed_tokens": "cpu", "model.layers": "disk", "model.norm": "cpu", "lm_head": "cpu"}}
        model = getattr(transformers, auto_name).from_pretrained(
            folder, trust_remote_code=True, device_map=device_map, offload_folder=root + "/offload").eval()
        with torch.no_grad():
            offloaded = {{"logits": model(**inputs).logits, "generate": model.generate(
                inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=8, do_sample=False,
                use_cache=True, pad_token_id=0,
            ), "meta": sum(p.is_meta for p in model.parameters())}}
        torch.save(offloaded, root + "/remote_offloaded.pt")
torch.save(results, root + "/remote_outputs.pt")
json.dump(modules, open(root + "/remote_modules.json", "w"))
"""


def _config(causal: bool) -> ContextPoolConfig:
    return ContextPoolConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=64, pad_token_id=0, num_labels=3, is_causal=causal,
        pool_groups=2, pool_sigma_max=3.0, pool_layers=[1] if causal else None, initializer_range=0.1,
        norm_type="rmsnorm" if causal else "layernorm", mlp_type="gated" if causal else "gelu",
        hidden_act="silu" if causal else "gelu", position_embedding_type="rotary" if causal else "absolute",
    )


@pytest.fixture(scope="module")
def remote_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("remote")
    input_ids = torch.randint(1, 99, (2, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(input_ids)
    mask[1, :3] = 0  # left padding: exercises the masks (and generation from a padded prompt)
    input_ids = input_ids.masked_fill(mask == 0, 0)
    inputs = {"input_ids": input_ids, "attention_mask": mask}
    torch.save(inputs, root / "inputs.pt")
    plan, local = {}, {}
    for i, (auto_name, cls) in enumerate(HEADS.items()):
        torch.manual_seed(i)
        model = cls(_config(causal=cls is ContextPoolForCausalLM)).eval()
        folder = root / auto_name
        model.save_pretrained(folder)
        plan[auto_name] = str(folder)
        with torch.no_grad():
            out = model(**inputs, output_pooling_sizes=True)
        for field in OUTPUT_FIELDS:
            if field in out and out[field] is not None:
                local[f"{auto_name}.{field}"] = out[field]
        for layer, sigma in enumerate(out.pooling_sizes):
            if sigma is not None:
                local[f"{auto_name}.sigma{layer}"] = sigma
        if cls is ContextPoolForCausalLM:
            local["generate"] = model.generate(
                input_ids, attention_mask=mask, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0
            )
    (root / "plan.json").write_text(json.dumps(plan))
    code = REMOTE_CODE.format(root=str(root), threads=torch.get_num_threads(), fields=OUTPUT_FIELDS)
    run_without_package(code, timeout=600)
    remote = torch.load(root / "remote_outputs.pt")
    offloaded = torch.load(root / "remote_offloaded.pt")
    modules = json.loads((root / "remote_modules.json").read_text())
    return {"root": root, "plan": plan, "local": local, "remote": remote, "modules": modules, "offloaded": offloaded}


def test_remote_outputs_equal_in_process_outputs(remote_run):
    local, remote = remote_run["local"], remote_run["remote"]
    assert set(remote) == set(local)
    assert any(key.startswith("AutoModelForCausalLM.sigma") for key in local)
    for key, value in local.items():
        assert torch.equal(remote[key], value), key


def test_remote_generation_equals_in_process_generation(remote_run):
    assert remote_run["local"]["generate"].shape == (2, 18)
    assert torch.equal(remote_run["remote"]["generate"], remote_run["local"]["generate"])


def test_remote_code_runs_with_its_layers_offloaded(remote_run):
    """accelerate's disk offloading through the remote files (`tests/test_offload.py` has every family in process)."""
    offloaded, local = remote_run["offloaded"], remote_run["local"]
    assert offloaded["meta"] > 0
    torch.testing.assert_close(offloaded["logits"], local["AutoModelForCausalLM.logits"], rtol=1e-5, atol=1e-5)
    assert torch.equal(offloaded["generate"], local["generate"])


def test_remote_classes_come_from_the_dynamic_modules(remote_run):
    modules = remote_run["modules"]
    expected = {"AutoConfig": "ContextPoolConfig", **{name: cls.__name__ for name, cls in HEADS.items()}}
    assert set(modules) == set(expected)
    for auto_name, (class_name, module) in modules.items():
        assert class_name == expected[auto_name]
        assert module.startswith("transformers_modules."), (auto_name, module)
        assert "contextpool_hf" not in module


def test_config_json_has_the_full_auto_map(remote_run):
    for folder in remote_run["plan"].values():
        config = json.loads((remote_run["root"] / folder / "config.json").read_text())
        assert config["model_type"] == "contextpool"
        assert config["auto_map"] == CONTEXTPOOL_AUTO_MAP
        assert len(config["auto_map"]) == 7


def _unguarded_imports(tree):
    """Import statements outside `try:` blocks (transformers' remote-code check skips guarded ones)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Try):
            stack.extend(node.finalbody)  # body and handlers are guarded
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _imports(path):
    """(absolute top-level module names, relative module names) a file needs to import."""
    absolute, relative = set(), set()
    for node in _unguarded_imports(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            absolute.update(alias.name.split(".")[0] for alias in node.names)
        elif node.level == 0:
            absolute.add(node.module.split(".")[0])
        else:
            assert node.level == 1 and node.module, f"{path.name}: only `from .module import X` is copied"
            relative.add(node.module)
    return absolute, relative


def test_flat_files_import_only_torch_transformers_and_siblings(remote_run):
    from pathlib import Path

    folder = Path(remote_run["plan"]["AutoModelForCausalLM"])
    files = {p.stem: p for p in folder.glob("*.py")}
    assert {Path(name).stem for name in TEXT_MODEL_FILES} <= set(files)
    for path in files.values():
        absolute, relative = _imports(path)
        third_party = absolute - set(sys.stdlib_module_names) - {"__future__"}
        assert third_party <= ALLOWED_TOP_LEVEL, (path.name, third_party)
        assert relative <= set(files), (path.name, relative - set(files))


def test_weights_are_safetensors(remote_run):
    for folder in remote_run["plan"].values():
        names = {p.name for p in (remote_run["root"] / folder).iterdir()}
        assert "model.safetensors" in names and "pytorch_model.bin" not in names


def test_isolation_blocks_the_package():
    out = run_without_package(
        """
        import importlib.util
        try:
            import contextpool_hf.modeling_contextpool
        except ImportError as error:
            print("blocked:", error)
        import os
        print(os.environ["HF_HUB_OFFLINE"], sorted(os.listdir(os.environ["HF_MODULES_CACHE"])))
        """,
        timeout=120,
    )
    assert "blocked: contextpool_hf" in out
    assert "1 []" in out
