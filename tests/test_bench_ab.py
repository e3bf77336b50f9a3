"""scripts/bench_ab.py: the other revision's code really is the one measured, bad arguments are clear errors, and a
results file is never overwritten."""

import collections
import inspect
import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig

from contextpool_hf import ContextPoolResNetConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_ab  # noqa: E402
import bench_vision  # noqa: E402


def _in_git_checkout() -> bool:
    if shutil.which("git") is None:
        return False
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD:src/contextpool_hf"], capture_output=True)
    return done.returncode == 0


needs_git = pytest.mark.skipif(not _in_git_checkout(), reason="needs a git checkout with a committed package")


@needs_git
def test_the_revision_is_imported_apart_from_the_working_tree(tmp_path):
    registered = type(AutoConfig.for_model("contextpool_resnet"))
    package = bench_ab.import_revision(bench_ab.extract_revision("HEAD", tmp_path).parent)
    assert Path(inspect.getfile(package.ContextPoolResNetForImageClassification)).resolve().is_relative_to(tmp_path.resolve())
    # the revision's classes are not registered over the working tree's
    assert type(AutoConfig.for_model("contextpool_resnet")) is registered is ContextPoolResNetConfig
    with bench_ab.classes_from(package, "resnet"):
        ref_model, _ = bench_vision.make_pair("resnet")
    new_model, _ = bench_vision.make_pair("resnet")  # the patch is undone on leaving
    assert type(ref_model).__module__.startswith(bench_ab.REF_PACKAGE + ".")
    assert type(new_model).__module__.startswith("contextpool_hf.")
    # the same weights (same seed) and the same code at HEAD: the same logits
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    with bench_ab.classes_from(package, "resnet"):
        ref_model, _ = bench_vision.make_pair("resnet")
    new_model, _ = bench_vision.make_pair("resnet")
    new_model.load_state_dict(ref_model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(new_model.eval()(pixel_values=pixels).logits, ref_model.eval()(pixel_values=pixels).logits)


@needs_git
def test_a_quick_run_prints_and_saves_its_ratios(tmp_path, capsys):
    out = tmp_path / "ab.json"
    rows = bench_ab.main(["--ref", "HEAD", "--models", "resnet", "--quick", "--repeats", "1", "--json", str(out)])
    assert [row["family"] for row in rows] == ["resnet"]
    for key in ("new_over_ref", "new_over_vanilla", "ref_over_vanilla"):
        assert 0 < rows[0][key]["min"] <= rows[0][key]["median"] <= rows[0][key]["max"]
    assert "| resnet |" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["rows"] == rows and saved["meta"]["ref"] == "HEAD"
    with pytest.raises(SystemExit):  # the file now exists: never overwritten
        bench_ab.parse_args(["--json", str(out)])
    assert json.loads(out.read_text()) == saved


@needs_git
def test_an_unknown_revision_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="--ref 'no-such-revision-xyz'"):
        bench_ab.extract_revision("no-such-revision-xyz", tmp_path)


@pytest.mark.parametrize("argv", [["--repeats", "0"], ["--threads", "0"], ["--models", "bert"]])
def test_bad_arguments_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as error:
        bench_ab.parse_args(argv)
    assert error.value.code == 2
    assert argv[0] in capsys.readouterr().err


@needs_git
def test_each_extraction_is_imported_afresh(tmp_path):
    first = bench_ab.import_revision(bench_ab.extract_revision("HEAD", tmp_path / "a").parent)
    second = bench_ab.import_revision(bench_ab.extract_revision("HEAD", tmp_path / "b").parent)
    assert first.ContextPoolConfig is not second.ContextPoolConfig
    assert Path(inspect.getfile(second.ContextPoolConfig)).resolve().is_relative_to((tmp_path / "b").resolve())


@pytest.mark.parametrize("count", [2, 3, 4])
def test_no_callable_runs_twice_in_a_row_and_each_follows_every_other(count):
    """The alternation that once ran the first and last callables twice in a row at every turn (warm from their own
    previous step) and the middle one never: the working tree read ~2% faster than the same code as the revision."""
    calls = []
    steps = [lambda i=i: calls.append(i) for i in range(count)]
    times = bench_ab.alternated_cpu_times(steps, repeats=8)
    assert [len(t) for t in times] == [8] * count
    timed = calls[count:]  # after one warm-up call each
    assert sorted(timed) == sorted(list(range(count)) * 8)
    assert all(a != b for a, b in itertools.pairwise(calls))
    for index in range(count if count <= 3 else 0):  # with more, only the no-repeat rule holds
        predecessors = collections.Counter(a for a, b in itertools.pairwise(timed) if b == index)
        assert set(predecessors) == set(range(count)) - {index}
        assert max(predecessors.values()) - min(predecessors.values()) <= 1  # equally often
