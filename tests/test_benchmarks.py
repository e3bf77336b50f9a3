"""The benchmark scripts' results files: a smoke or partial run never replaces measured results by surprise."""

import functools
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import bench_model  # noqa: E402
import bench_op  # noqa: E402


def test_bench_op_quick_writes_beside_the_full_sweep():
    assert bench_op.parse_args(["--quick"]).out == Path("benchmarks/bench_op_quick")
    assert bench_op.parse_args([]).out == Path("benchmarks/bench_op")
    assert bench_op.parse_args(["--quick", "--out", "x/y"]).out == Path("x/y")


def _meta(**changes):
    args = bench_model.parse_args(["--quick"])
    meta = bench_model.run_meta(args)
    meta.update(changes)
    return meta


def _row(kind, value, **extra):
    """A results row of the family `kind`; extra fields (e.g. family=..., as rows now carry) as given."""
    measure = "generate" if kind == "generate" else "train_step"
    task = "causal-lm" if kind == "generate" else kind
    return dict(measure=measure, task=task, contextpool="A", vanilla="B", seq_len=8, batch=1, contextpool_value=1.0,
                vanilla_value=1.0, unit="ms/step", ratio=value, ratio_min=value, ratio_max=value, target="<= 1.0",
                status="PASS", **extra)


def _saved(path, meta, rows):
    path.write_text(json.dumps({"meta": meta, "results": rows}))


def test_a_partial_run_replaces_only_its_families_rows(tmp_path):
    path = tmp_path / "bench.json"
    old_meta = dict(_meta(), command="python scripts/bench_model.py --quick")
    # rows from before the `family` field: the family comes from measure/task
    _saved(path, old_meta, [_row("causal-lm", 1.1), _row("masked-lm", 0.6), _row("generate", 0.8)])
    meta = dict(_meta(), command="python scripts/bench_model.py --quick --only generate")
    rows, commands = bench_model.merged_rows(path, meta, [_row("generate", 0.9, family="generate")], ["generate"])
    assert [(bench_model.row_family(r), r["ratio"]) for r in rows] == [
        ("causal-lm", 1.1), ("masked-lm", 0.6), ("generate", 0.9)]  # fmt: skip
    assert commands == [old_meta["command"], meta["command"]]


def test_a_full_run_replaces_the_file_whole(tmp_path):
    path = tmp_path / "bench.json"
    _saved(path, _meta(hidden=999), [_row("masked-lm", 0.6)])
    new = [_row(family, 1.0) for family in bench_model.FAMILIES]
    rows, commands = bench_model.merged_rows(path, _meta(), new, list(bench_model.FAMILIES))
    assert rows == new and commands == [_meta()["command"]]


def test_a_partial_run_refuses_a_file_measured_at_other_sizes(tmp_path):
    path = tmp_path / "bench.json"
    _saved(path, dict(_meta(hidden=256, threads=1), command="python scripts/bench_model.py"), [_row("masked-lm", 0.6)])
    before = path.read_bytes()
    with pytest.raises(SystemExit, match=r"hidden: 256 there, 64 now.*--name or --output-dir"):
        bench_model.check_mergeable(path, _meta(threads=1))
    assert path.read_bytes() == before


def test_partial_runs_merge_end_to_end(tmp_path, monkeypatch):
    """Two real --quick runs of different families into one folder: the second keeps the first's rows."""
    out = tmp_path / "bench"
    out.mkdir()
    meta = _meta(threads=1, command="python scripts/bench_model.py --quick --only generate")
    earlier = _row("generate", 0.5, family="generate", measured="earlier")
    _saved(out / "bench_model_quick.json", meta, [earlier])
    argv = ["bench_model.py", "--quick", "--only", "masked-lm", "--repeats", "1", "--threads", "1",
            "--output-dir", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    bench_model.main()
    saved = json.loads((out / "bench_model_quick.json").read_text())
    assert saved["results"][0] == earlier
    masked = saved["results"][1]
    assert masked["family"] == "masked-lm" and masked["command"].endswith("--output-dir " + str(out))
    assert saved["meta"]["commands"] == [meta["command"], masked["command"]]
    header = (out / "bench_model_quick.csv").read_text().splitlines()[0].split(",")
    assert {"family", "measured", "command", "ratio"} <= set(header)


def _vision_meta(**changes):
    import bench_vision

    meta = bench_vision.run_meta(bench_vision.parse_args(["--quick"]))
    meta.update(changes)
    return meta


def test_a_vision_run_keeps_what_it_did_not_measure(tmp_path):
    import bench_vision

    path = tmp_path / "bench_vision.json"
    old_meta = dict(_vision_meta(), command="python scripts/bench_vision.py --quick --profile --crossover",
                    crossover_measured={"measured": "earlier"})  # fmt: skip
    resnet, old_vit = dict(model="resnet", mode="eager", ratio=1.6), dict(model="vit", mode="eager", ratio=1.3)
    path.write_text(json.dumps({"meta": old_meta, "results": [resnet, old_vit],
                                "profile_ms": {"resnet": {"pool": 1.0}}, "crossover": [{"map": "8x8"}]}))  # fmt: skip
    meta = dict(_vision_meta(), command="python scripts/bench_vision.py --quick --models vit --profile")
    new_vit = dict(model="vit", mode="eager", ratio=1.1, measured="now", command=meta["command"])
    payload = bench_vision.merged_payload(path, meta, [new_vit], {"vit": {"pool": 2.0}}, [])
    assert payload["results"] == [resnet, new_vit]
    assert payload["profile_ms"] == {"resnet": {"pool": 1.0}, "vit": {"pool": 2.0}}
    assert payload["crossover"] == [{"map": "8x8"}] and payload["meta"]["crossover_measured"] == {"measured": "earlier"}
    assert set(payload["meta"]["profile_measured"]) == {"vit"}
    assert payload["meta"]["commands"] == [old_meta["command"], meta["command"]]


def test_a_vision_run_refuses_a_file_made_at_another_batch(tmp_path):
    import bench_vision

    path = tmp_path / "bench_vision.json"
    path.write_text(json.dumps({"meta": dict(_vision_meta(batch=32), command="python scripts/bench_vision.py"),
                                "results": [dict(model="resnet", mode="eager")]}))  # fmt: skip
    before = path.read_bytes()
    with pytest.raises(SystemExit, match=r"batch: 32 there, 8 now"):
        bench_vision.merged_payload(path, _vision_meta(), [], {}, [])
    assert path.read_bytes() == before


def test_bench_op_refuses_to_replace_a_sweep_made_with_other_settings(tmp_path):
    out = tmp_path / "bench_op"
    committed = json.loads((SCRIPTS.parent / "benchmarks" / "bench_op.json").read_text())
    out.with_suffix(".json").write_text(json.dumps(committed))
    bench_op.check_replaceable(bench_op.parse_args(["--out", str(out)]))  # the committed sweep's own command
    bench_op.check_replaceable(bench_op.parse_args(["--out", str(out), "--repeats", "9"]))  # a re-measurement
    with pytest.raises(SystemExit, match=r"sizes: \[256, 512, 1024, 2048, 4096, 8192\] there, \[1024\] now"):
        bench_op.check_replaceable(bench_op.parse_args(["--out", str(out), "--sizes", "1024"]))


# --------------------------------------------------------------------------------------
# --device / --dtype (scripts/bench_device.py)
# --------------------------------------------------------------------------------------


@pytest.mark.skipif(__import__("torch").accelerator.is_available(), reason="this machine has an accelerator")
@pytest.mark.parametrize("script", ["bench_model", "bench_op", "bench_vision"])
def test_bench_scripts_name_a_device_this_machine_lacks(script, capsys):
    module = __import__(script)
    with pytest.raises(SystemExit):
        module.parse_args(["--device", "cuda"])
    assert "--device cuda: this machine has no cuda device" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        module.parse_args(["--device", "gpu0"])
    assert "--device: 'gpu0' is not a device name torch knows" in capsys.readouterr().err


def test_a_bfloat16_run_records_its_dtype_and_never_merges_into_float32_rows(tmp_path, monkeypatch):
    """A real --quick run in bf16 (training under autocast, generation cast) records device and dtype, and a
    float32 run then refuses to merge into its file."""
    out = tmp_path / "bench"
    argv = ["bench_model.py", "--quick", "--only", "masked-lm", "--repeats", "1", "--threads", "1", "--dtype",
            "bfloat16", "--output-dir", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    bench_model.main()
    saved = json.loads((out / "bench_model_quick.json").read_text())
    assert (saved["meta"]["device"], saved["meta"]["dtype"]) == ("cpu", "bfloat16")
    assert saved["results"][0]["family"] == "masked-lm" and saved["results"][0]["ratio"] > 0
    with pytest.raises(SystemExit, match=r"dtype: 'bfloat16' there, 'float32' now"):
        bench_model.check_mergeable(out / "bench_model_quick.json", _meta(threads=1))


# --------------------------------------------------------------------------------------
# --malloc (scripts/bench_device.py)
# --------------------------------------------------------------------------------------

# In a child process (the policy holds for the rest of a process): how far the heap's end (sbrk(0)) moves, in MiB,
# when a 64 MiB tensor is allocated and when it is freed again. glibc maps a block that large on its own by default
# (every use of such a fresh mapping page-faults); retained, it comes from the heap and stays there for reuse.
_HEAP_GROWTH_OF_A_LARGE_BLOCK = """
import ctypes, ctypes.util, sys, torch
sys.path.insert(0, {scripts!r})
import bench_device
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.sbrk.restype, libc.sbrk.argtypes = ctypes.c_void_p, (ctypes.c_long,)
if {retain}:
    assert bench_device.retain_freed_memory() is None
start = libc.sbrk(0)
block = torch.empty(16 * 2**20).fill_(1.0)
allocated = libc.sbrk(0)
del block
print((allocated - start) / 2**20, (libc.sbrk(0) - start) / 2**20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_malloc_retain_serves_large_blocks_from_the_heap_and_keeps_them():
    import subprocess

    growth = {}
    for retain in (False, True):
        code = _HEAP_GROWTH_OF_A_LARGE_BLOCK.format(scripts=str(SCRIPTS), retain=retain)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        growth[retain] = tuple(float(value) for value in done.stdout.split()[-2:])
    assert max(growth[False]) < 8, growth  # the default: a mapping of its own, outside the heap
    allocated, after_free = growth[True]
    assert allocated > 56 and after_free == allocated, growth  # from the heap, and not trimmed when freed


def test_malloc_policy_is_recorded_and_runs_under_another_never_merge(tmp_path, capsys):
    import bench_vision

    assert bench_model.parse_args(["--quick"]).malloc == "default"
    with pytest.raises(SystemExit):
        bench_model.parse_args(["--quick", "--malloc", "jemalloc"])
    assert "--malloc: invalid choice: 'jemalloc'" in capsys.readouterr().err
    path = tmp_path / "bench.json"
    _saved(path, dict(_meta(threads=1, malloc="retain"), command="python scripts/bench_model.py --malloc retain"),
           [_row("masked-lm", 0.6)])  # fmt: skip
    with pytest.raises(SystemExit, match=r"malloc: 'retain' there, 'default' now"):
        bench_model.check_mergeable(path, _meta(threads=1))
    vision = tmp_path / "bench_vision.json"
    vision.write_text(json.dumps({"meta": dict(_vision_meta(malloc="retain"), command="x"), "results": []}))
    with pytest.raises(SystemExit, match=r"malloc: 'retain' there, 'default' now"):
        bench_vision.merged_payload(vision, _vision_meta(), [], {}, [])
    assert _vision_meta()["malloc"] == "default"


def test_the_gpu_benchmark_script_runs_end_to_end_in_smoke_mode(tmp_path):
    """scripts/bench_gpu.sh --smoke: every script it calls, with its device and dtype options, at tiny sizes on the
    CPU, without the package installed (PYTHONPATH=src, as on a bare GPU machine)."""
    import os
    import subprocess

    root = SCRIPTS.parent
    # OUT and DEVICE set as a GPU machine's tooling might: the script must not read them
    env = dict(os.environ, PYTHON=sys.executable, BENCH_GPU_OUT=str(tmp_path), PYTHONPATH="", OUT="/nonexistent",
               DEVICE="cuda")  # fmt: skip
    done = subprocess.run(["bash", "scripts/bench_gpu.sh", "--smoke"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("bench_op.json", "bench_model_quick.json", "bench_vision_quick.json", "profile_model_quick.json"):
        saved = json.loads((tmp_path / name).read_text())
        meta = saved.get("meta") or saved.get("config") or saved
        assert (meta["device"], meta["dtype"]) == ("cpu", "bfloat16"), name
    bad = subprocess.run(["bash", "scripts/bench_gpu.sh", "--fast"], cwd=root, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument '--fast' (allowed: --smoke)" in bad.stderr


@pytest.mark.parametrize("static", [False, True])
def test_the_decoding_stepper_decodes_as_greedy_generate(static):
    """bench_model.decode_step_fn (bench_ab's decode-b* families; decode-static-b*: a new static cache per prompt)
    times one forward per call: the prompt on a new cache, then one token per call, greedy, then the prompt again.
    Its tokens are generate()'s, for ContextPool and for Llama, and a second sequence starts afresh."""
    from transformers import StaticCache

    from contextpool_hf import ContextPoolStaticCache

    args = bench_model.parse_args(["--quick"])
    contextpool, llama = bench_model.causal_pair(args, 64)
    for model, cache in ((contextpool, ContextPoolStaticCache), (llama, StaticCache)):
        cache_class = functools.partial(cache, config=model.config, max_cache_len=16) if static else None
        step = bench_model.decode_step_fn(model, 2, prompt_len=10, new_tokens=5, vocab=args.vocab, cache_class=cache_class)
        seen = []
        original = model.forward

        def record(*a, __forward=original, __seen=seen, **k):
            out = __forward(*a, **k)
            assert isinstance(out.cache, StaticCache) == static
            __seen.append(out.logits[:, -1:].argmax(-1))
            return out

        model.forward = record
        for _ in range(2 * (5 + 1)):  # two sequences: the prompt and 5 steps each
            step()
        del model.forward
        input_ids = torch.randint(3, args.vocab, (2, 10), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            want = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=6,
                                  min_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)[:, 10:]
        for sequence in (seen[:6], seen[6:]):
            assert torch.equal(torch.cat(sequence, 1), want), type(model).__name__


def test_generate_rows_take_more_pairs_and_bad_counts_are_refused(capsys):
    """A generate call is short and noisy, so its rows take 4x --repeats pairs unless --gen-repeats says otherwise;
    a count below 1 is refused with the flag's name (not an empty median later)."""
    assert bench_model.parse_args(["--repeats", "12"]).gen_repeats == 48
    assert bench_model.parse_args(["--repeats", "12", "--gen-repeats", "7"]).gen_repeats == 7
    assert bench_model.parse_args(["--quick"]).gen_repeats == bench_model.parse_args(["--quick"]).repeats
    for flag in ("--repeats", "--gen-repeats"):
        with pytest.raises(SystemExit):
            bench_model.parse_args([flag, "0"])
        assert f"{flag} must be at least 1" in capsys.readouterr().err


def test_the_decoding_profile_times_every_part_and_puts_the_code_back(tmp_path):
    """scripts/profile_decoding.py --quick: every part of the pooling step timed in place, warm and flushed, for
    each batch, the forward of both models beside them; and the step's functions are the originals afterwards (it
    wraps them while it runs)."""
    import profile_decoding

    originals = {part: getattr(owner, name) for part, (owner, name) in profile_decoding.PARTS.items()}
    attention = torch.nn.functional.scaled_dot_product_attention
    out = tmp_path / "profile.json"
    profile_decoding.main(["--quick", "--batches", "1", "2", "--output", str(out)])
    assert {part: getattr(owner, name) for part, (owner, name) in profile_decoding.PARTS.items()} == originals
    assert torch.nn.functional.scaled_dot_product_attention is attention
    saved = json.loads(out.read_text())
    assert saved["meta"]["command"].endswith(f"--quick --batches 1 2 --output {out}")
    assert [(row["batch"], row["part"]) for row in saved["rows"]] == [
        (batch, part) for batch in (1, 2) for part in profile_decoding.PARTS
    ]
    for row in saved["rows"]:
        assert min(row["in_place_us"], row["warm_us"], row["flushed_us"]) > 0, row
    assert [f["batch"] for f in saved["forwards"]] == [1, 2]
    for forward in saved["forwards"]:
        assert min(forward[f"{name}_{what}"] for name in profile_decoding.MODELS for what in ("forward_ms", "prompt_ms", "sdpa_us")) > 0
    with pytest.raises(SystemExit):
        profile_decoding.parse_args(["--repeats", "0"])
