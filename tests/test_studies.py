"""The issue-16 studies (scripts/study_char_lm.py, scripts/study_vision.py): helpers, and --quick smokes (slow)."""

import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(SCRIPTS))

import study_char_lm  # noqa: E402
import study_vision  # noqa: E402


def test_position_classes_follow_the_words():
    text = "In a be-gun, Lord's\nx"
    window = torch.tensor(list(text.encode()))
    names = [study_char_lm.POSITION_CLASSES[c] for c in study_char_lm.position_classes(window).tolist()]
    expected = (["first letter", "last letter", "space", "single letter", "space", "first letter", "last letter",
                 "punctuation", "first letter", "middle", "last letter", "punctuation", "space", "first letter"]
                + ["middle"] * 4 + ["last letter", "space", "single letter"])  # fmt: skip
    assert names == expected


def test_characters_skip_utf8_continuation_bytes():
    targets = torch.tensor(list("aé€ b".encode()))  # 1 + 2 + 3 + 1 + 1 bytes, 5 characters
    assert len(targets) == 8 and study_char_lm.characters(targets) == 5


def test_char_lm_plan_grids_every_row_before_training_it():
    args = study_char_lm.parse(["--quick"])
    runs = study_char_lm.plan(args)
    kinds = [r[0] for r in runs]
    assert kinds == sorted(kinds)  # "grid" < "main": every grid run comes first
    cells = {(v, d) for kind, v, d, *_ in runs if kind == "main"}
    for variant, depth in cells:
        grid = [r for r in runs if r[:3] == ("grid", variant, depth)]
        assert sorted(r[3] for r in grid) == sorted(args.lr_grid) and len(grid) >= 3
    ablations = {d for v, d in cells if v in study_char_lm.ABLATIONS}
    assert ablations == {args.ablation_depth}
    assert {d for v, d in cells if v == "cp"} == set(args.depths) and len(args.depths) >= 2


def test_char_lm_default_is_long_enough_and_rejects_short_blocks(capsys):
    args = study_char_lm.parse([])
    assert args.block >= 512 and args.seeds == 3 and len(args.lr_grid) >= 3
    with pytest.raises(SystemExit):
        study_char_lm.parse(["--block", "256"])
    assert "--block must be >= 512" in capsys.readouterr().err


def test_vision_variants_cover_both_patch_sizes_and_fewer_layers():
    rows = study_vision.VARIANTS.values()
    for patch in (4, 2):
        vit = [(model, layers) for model, family, p, layers in rows if p == patch]
        assert ("vit", 4) in vit and ("contextpool_vit", 4) in vit and ("contextpool_vit", 2) in vit
    resnet = [(model, layers) for model, family, p, layers in rows if family == "resnet"]
    assert ("resnet", 3) in resnet and ("contextpool_resnet", 3) in resnet and ("contextpool_resnet", 2) in resnet


@pytest.mark.slow
def test_char_lm_quick_smoke(tmp_path):
    state = study_char_lm.main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "char_lm_study.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(state["summary"]))
    keys = {"variant", "layers", "placement", "pooling", "seeds", "test_bpc", "test_bpc_std", "flops_total",
            "flops_pooling", "train_seconds", "n_parameters"}  # fmt: skip
    assert all(keys <= set(row) for row in saved["summary"])
    assert {row["pooling"] for row in saved["summary"]} == {"adaptive", "fixed", "off"}
    assert {row["placement"] for row in saved["summary"]} == {"none", "attention_input", "block_output"}
    assert len(saved["runs"]) == sum(row["seeds"] for row in saved["summary"])
    assert len(saved["sigma_by_position"]["mean_sigma"]) == max(saved["meta"]["settings"]["depths"])
    for name in ("char_lm_study.md", "char_lm_study_curves.png", "char_lm_study_sigma.png"):
        assert (tmp_path / name).stat().st_size > 0
    # a rerun with the same settings resumes: nothing is trained again
    again = study_char_lm.main(["--quick", "--out", str(tmp_path)])
    assert [r["train_seconds"] for r in again["runs"]] == [r["train_seconds"] for r in saved["runs"]]


@pytest.mark.slow
def test_vision_quick_smoke(tmp_path):
    args = ["--quick", "--out", str(tmp_path), "--work_dir", str(tmp_path / "work"), "--seeds", "2", "--p2_seeds", "1",
            "--variants", "vit-p2-4L", "cp-vit-p2-2L", "resnet-3S", "cp-resnet-2S"]  # fmt: skip
    study_vision.main(args)
    saved = json.loads((tmp_path / "vision_study.json").read_text())
    keys = {"variant", "test_acc_mean", "test_acc_std", "seeds", "model", "patch_size", "layers"}
    assert all(keys <= set(row) for row in saved["summary"])
    seeds = {row["variant"]: row["seeds"] for row in saved["summary"]}
    assert seeds == {"vit-p2-4L": 1, "cp-vit-p2-2L": 1, "resnet-3S": 2, "cp-resnet-2S": 2}
    assert (tmp_path / "vision_heatmap_cp-vit-p2-2L_digit3.png").exists()


def test_vision_lr_grid_chooses_on_validation_and_resumes(tmp_path):
    args = ["--quick", "--out", str(tmp_path), "--work_dir", str(tmp_path / "work"), "--variants", "resnet-3S",
            "--lr_grid", "1e-4", "3e-3", "--grid_fraction", "0.5"]  # fmt: skip
    result = study_vision.main(args)
    saved = json.loads((tmp_path / "vision_lr_grid.json").read_text())
    assert saved["chosen"] == result["chosen"]
    assert [(r["variant"], r["learning_rate"], r["epochs"]) for r in saved["runs"]] == [
        ("resnet-3S", 1e-4, 0.5), ("resnet-3S", 3e-3, 0.5)]  # fmt: skip
    best = max(saved["runs"], key=lambda r: (r["val_accuracy"], -r["learning_rate"]))
    assert saved["chosen"] == {"resnet-3S": best["learning_rate"]}
    assert not (tmp_path / "vision_study.json").exists()  # a grid is not a study result
    again = study_vision.main(args)  # same settings: resumed, nothing trained again
    assert [r["train_wall_s"] for r in again["runs"]] == [r["train_wall_s"] for r in saved["runs"]]
    with pytest.raises(SystemExit, match="other settings"):
        study_vision.main(args[:-1] + ["0.25"])


def test_vision_study_settings_ignore_paths_variants_and_grid_options():
    """The resume key: options that do not change a study run must not make its results 'other settings'."""
    plain = study_vision.study_settings(study_vision.parse([]))
    assert study_vision.study_settings(study_vision.parse(
        ["--variants", "resnet-3S", "--out", "elsewhere", "--lr_grid", "1e-3", "--grid_fraction", "0.2"])) == plain
    assert study_vision.study_settings(study_vision.parse(["--learning_rate", "1e-3"])) != plain
