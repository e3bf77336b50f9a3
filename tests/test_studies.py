"""The issue-16 studies (scripts/study_char_lm.py, scripts/study_vision.py): helpers, and --quick smokes (slow)."""

import json
import math
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


def test_char_lm_depths_without_the_ablation_depth_need_no_ablations(capsys):
    """More depths can be added to a study later (--depths is not a resume setting); the ablations, compared
    with the headline rows of their depth, still need that depth among --depths."""
    args = study_char_lm.parse(["--depths", "4", "--variants", "off", "cp"])
    assert {d for kind, v, d, *_ in study_char_lm.plan(args)} == {4}
    assert "depths" in study_char_lm.NOT_SETTINGS
    with pytest.raises(SystemExit):
        study_char_lm.parse(["--depths", "4", "--variants", "cp", "cp-fixed"])
    assert "--ablation_depth 2 must be one of --depths [4]" in capsys.readouterr().err


def test_char_lm_opt_in_variants_change_only_their_setting():
    """cp-kv and cp-sigma4 (issue 16 item 5) differ from cp in one config value each, run at the ablation depth,
    and only when named: the default study's run list stays as it was."""
    args = study_char_lm.parse(["--quick"])
    assert not {"cp-kv", "cp-sigma4"} & set(args.variants)
    reference = study_char_lm.build_model("cp", 1, args).config.to_dict()
    for variant, changed in (("cp-kv", {"pool_target": "kv"}), ("cp-sigma4", {"pool_sigma_max": 4.0})):
        config = study_char_lm.build_model(variant, 1, args).config.to_dict()
        differing = {k: v for k, v in config.items() if reference.get(k) != v}
        assert differing == changed, variant
    args = study_char_lm.parse(["--quick", "--variants", "cp", "cp-kv"])
    assert {(v, d) for kind, v, d, *_ in study_char_lm.plan(args)} == {("cp", 1), ("cp", 2), ("cp-kv", 1)}


def _saved_study(folder, args, runs, grids, command):
    folder.mkdir(parents=True)
    meta = {"command": command, "commands": [command], "settings": study_char_lm.saved_settings(args)}
    (folder / "char_lm_study.json").write_text(json.dumps({"runs": runs, "lr_search": grids, "meta": meta}))


def test_char_lm_merge_joins_side_by_side_folders_and_refuses_other_settings(tmp_path):
    args = study_char_lm.parse(["--quick"])
    run = lambda variant, seed, bpc: {"variant": variant, "layers": 1, "seed": seed, "test_bpc": bpc}  # noqa: E731
    grid = lambda variant, lr: {"variant": variant, "layers": 1, "learning_rate": lr, "val_bpc": 3.0}  # noqa: E731
    _saved_study(tmp_path / "a", args, [run("off", 0, 2.0), run("off", 1, 2.1)], [grid("off", 1e-3)], "cmd a")
    _saved_study(tmp_path / "b", args, [run("cp", 0, 1.9), run("off", 0, 9.9)], [grid("cp", 1e-3), grid("off", 1e-3)],
                 "cmd b")  # fmt: skip
    held = {"runs": [run("off", 0, 2.0)], "lr_search": [], "meta": {"commands": ["cmd out"]}}
    merged = study_char_lm.merge_studies(held, [tmp_path / "a", tmp_path / "b"], study_char_lm.saved_settings(args))
    assert [(r["variant"], r["seed"], r["test_bpc"]) for r in merged["runs"]] == [
        ("off", 0, 2.0), ("off", 1, 2.1), ("cp", 0, 1.9)]  # a run held already keeps its own result
    assert [(g["variant"], g["learning_rate"]) for g in merged["lr_search"]] == [("off", 1e-3), ("cp", 1e-3)]
    assert merged["meta"]["commands"] == ["cmd out", "cmd a", "cmd b"]
    other = study_char_lm.parse(["--quick", "--steps", "7"])
    _saved_study(tmp_path / "c", other, [], [], "cmd c")
    with pytest.raises(SystemExit, match="steps: 7 there, 6 now"):
        study_char_lm.merge_studies({}, [tmp_path / "c"], study_char_lm.saved_settings(args))
    with pytest.raises(SystemExit, match="--merge .*missing: no char_lm_study.json there"):
        study_char_lm.merge_studies({}, [tmp_path / "missing"], study_char_lm.saved_settings(args))
    assert "merge" not in study_char_lm.saved_settings(study_char_lm.parse(["--quick", "--merge", "x"]))


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
    resaved = json.loads((tmp_path / "char_lm_study.json").read_text())["meta"]
    assert resaved["commands"] == [resaved["command"]]  # the same command twice is recorded once


def test_char_lm_interrupted_study_keeps_its_grid_runs(tmp_path, monkeypatch):
    """The grid's runs are saved as they finish: a study stopped before its first headline run resumes without
    training them again."""
    args = ["--quick", "--variants", "off", "--depths", "1", "--out", str(tmp_path)]
    real_train_one, calls = study_char_lm.train_one, []

    def stop_at_first_main_run(*pos, keep_model=False, **kw):
        calls.append(keep_model)
        if keep_model:
            raise KeyboardInterrupt
        return real_train_one(*pos, keep_model=keep_model, **kw)

    monkeypatch.setattr(study_char_lm, "train_one", stop_at_first_main_run)
    with pytest.raises(KeyboardInterrupt):
        study_char_lm.main(args)
    saved = json.loads((tmp_path / "char_lm_study.json").read_text())
    assert sorted(g["learning_rate"] for g in saved["lr_search"]) == sorted(study_char_lm.MODES["quick"]["lr_grid"])
    assert saved["runs"] == [] and calls == [False, False, False, True]
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        study_char_lm.main(args)
    assert calls == [True]  # straight to the headline run


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


def test_vision_study_rerun_with_more_seeds_adds_only_the_new_ones(tmp_path):
    args = ["--quick", "--out", str(tmp_path), "--work_dir", str(tmp_path / "work"), "--variants", "cp-resnet-2S",
            "--max_train_samples", "16", "--max_eval_samples", "16", "--threads", "2"]  # fmt: skip
    first = study_vision.main(args + ["--seeds", "1"])
    more = study_vision.main(args[:-1] + ["1", "--seeds", "2"])  # more seeds, another thread count
    assert [(r["seed"], r["threads"]) for r in more["runs"]] == [(0, 2), (1, 1)]
    assert more["runs"][0]["train_wall_s"] == first["runs"][0]["train_wall_s"]  # kept, not trained again
    saved = json.loads((tmp_path / "vision_study.json").read_text())
    assert saved["summary"][0]["seeds"] == 2
    assert saved["commands"] == [study_command(args + ["--seeds", "1"]), study_command(args[:-1] + ["1", "--seeds", "2"])]


def test_vision_studies_in_parallel_into_one_out_keep_each_others_rows(tmp_path, monkeypatch):
    """One process per variant into the same --out: a run saved by the other one while this one trains
    must survive this one's save (each save re-reads the file under a lock)."""
    args = ["--quick", "--out", str(tmp_path), "--work_dir", str(tmp_path / "work"), "--max_train_samples", "16",
            "--max_eval_samples", "16", "--seeds", "1"]  # fmt: skip
    train = study_vision.run_one

    def run_while_the_other_study_finishes(script, name, *rest):
        if name == "cp-resnet-2S":  # the 'parallel' study trains and saves resnet-3S meanwhile
            study_vision.main(args + ["--variants", "resnet-3S"])
        return train(script, name, *rest)

    monkeypatch.setattr(study_vision, "run_one", run_while_the_other_study_finishes)
    result = study_vision.main(args + ["--variants", "cp-resnet-2S"])
    assert sorted(r["variant"] for r in result["runs"]) == ["cp-resnet-2S", "resnet-3S"]
    saved = json.loads((tmp_path / "vision_study.json").read_text())
    assert [r["variant"] for r in saved["summary"]] == ["resnet-3S", "cp-resnet-2S"]  # VARIANTS order
    assert len(saved["commands"]) == 2


def study_command(argv):
    return "python scripts/study_vision.py " + " ".join(argv)


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


def test_vision_study_settings_ignore_paths_variants_seeds_threads_and_grid_options():
    """The resume key: options that do not change a study run must not make its results 'other settings'."""
    plain = study_vision.study_settings(study_vision.parse([]))
    assert study_vision.study_settings(study_vision.parse(
        ["--variants", "resnet-3S", "--out", "elsewhere", "--lr_grid", "1e-3", "--grid_fraction", "0.2",
         "--seeds", "5", "--p2_seeds", "3", "--threads", "1"])) == plain  # fmt: skip
    for changed in (["--learning_rate", "1e-3"], ["--vit_epochs", "40"], ["--batch_size", "32"]):
        assert study_vision.study_settings(study_vision.parse(changed)) != plain, changed
    # results saved while the seed counts and threads were still in the key resume under the new one
    saved_before = {**vars(study_vision.parse([])), "seeds": 3, "p2_seeds": 1, "threads": 2}
    assert study_vision.comparable_settings(saved_before) == plain


def quick_char_lm_settings(argv) -> dict:
    """The settings a --quick char-LM study saves in its JSON's meta (what main compares on resume)."""
    return study_char_lm.saved_settings(study_char_lm.parse(["--quick", *argv]))


def test_char_lm_study_refuses_a_json_made_with_other_settings(tmp_path):
    saved = {"meta": {"command": "python scripts/study_char_lm.py --quick --hidden 48",
                      "settings": quick_char_lm_settings(["--hidden", "48"])},
             "runs": [{"variant": "cp", "layers": 2, "seed": 0, "test_bpc": 3.0}], "lr_search": []}  # fmt: skip
    path = tmp_path / "char_lm_study.json"
    path.write_text(json.dumps(saved))
    before = path.read_bytes()
    with pytest.raises(SystemExit, match="char_lm_study.json holds a char-LM study made with other settings"):
        study_char_lm.main(["--quick", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="hidden: 48 there, 32 now"):  # names the setting that differs
        study_char_lm.main(["--quick", "--out", str(tmp_path)])
    assert path.read_bytes() == before  # the user's results are untouched


def test_char_lm_study_resumes_across_seed_variant_and_thread_changes():
    first = quick_char_lm_settings(["--threads", "2"])
    more = quick_char_lm_settings(["--threads", "1", "--seeds", "3", "--variants", "cp", "llama"])
    assert first != more and study_char_lm.resume_key(first) == study_char_lm.resume_key(more)
    other = quick_char_lm_settings(["--steps", "7"])
    assert study_char_lm.resume_key(other) != study_char_lm.resume_key(first)


class Proceeded(Exception):
    """Raised in place of a study's first data step: the results-file check let the study go on."""


def stop_at_data(monkeypatch, name):
    import contextpool_hf.data

    def proceed(*args, **kwargs):
        raise Proceeded

    monkeypatch.setattr(contextpool_hf.data, name, proceed)


REGENERATE = [  # (script, the README's command for a committed results file, that file, the data step it reaches)
    ("study_lm", [], "lm_study.json", "prepare_lm"),
    ("study_lm", ["--only", "none", "--finetune_samples", "1600", "--finetune_epochs", "2", "--finetune_lr", "5e-5",
                  "--finetune_mix", "0.0", "0.5"], "minilm_finetune/lm_study.json", "prepare_lm"),
    ("study_translation", [], "translation_study.json", "prepare_translation"),
    ("study_translation", ["--steps", "600", "--seeds", "0"], "translation_600steps/translation_study.json",
     "prepare_translation"),
]  # fmt: skip


@pytest.mark.parametrize("script, argv, saved, data_step", REGENERATE)
def test_whole_file_studies_regenerate_their_own_results_and_refuse_others(
    tmp_path, monkeypatch, script, argv, saved, data_step
):
    import importlib

    module = importlib.import_module(script)
    out_flag = "--out" if script == "study_lm" else "--out_dir"
    name = Path(saved).name
    (tmp_path / name).write_bytes((SCRIPTS.parent / "benchmarks" / saved).read_bytes())
    before = (tmp_path / name).read_bytes()
    stop_at_data(monkeypatch, data_step)
    with pytest.raises(Proceeded):  # the committed file's own command passes the check
        module.main([*argv, out_flag, str(tmp_path)])
    with pytest.raises(SystemExit, match=f"{name} holds an? .* study made with other settings"):
        module.main([*argv, "--steps", "3", out_flag, str(tmp_path)])
    assert (tmp_path / name).read_bytes() == before


def test_vision_lr_grid_resume_key_ignores_seed_counts_threads_and_the_rate():
    base = vars(study_vision.parse(["--lr_grid", "1e-3", "2e-3"]))
    other_run_counts = vars(study_vision.parse(["--lr_grid", "4e-3", "--seeds", "1", "--p2_seeds", "3", "--threads", "1",
                                                "--learning_rate", "4e-3"]))  # fmt: skip
    assert study_vision.lr_grid_settings(base) == study_vision.lr_grid_settings(other_run_counts)
    shorter = vars(study_vision.parse(["--lr_grid", "1e-3", "--vit_epochs", "10"]))
    assert study_vision.lr_grid_settings(base) != study_vision.lr_grid_settings(shorter)


def _mean_and_sample_std(values):
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


SEED_VALUES = {"a": [1.0, 2.0, 4.0], "b": [0.5, 0.25, 0.75]}  # two variants, three seeds each, interleaved below


def test_every_study_reports_the_mean_and_sample_std_over_its_seeds():
    """The headline rows are means over seeds with the sample standard deviation (n - 1) as their spread, per
    variant, every seed counted. Before, a summary that reported the first seed (or any one run) passed every
    test: only the slow smokes ran the summaries, on one seed."""
    import study_lm
    import study_translation

    runs = [(name, seed, values[seed]) for seed in range(3) for name, values in SEED_VALUES.items()]
    expected = {name: _mean_and_sample_std(values) for name, values in SEED_VALUES.items()}

    char_rows = [{"variant": name, "layers": 2, "placement": "p", "pooling": "adaptive", "learning_rate": 1e-3,
                  "test_bpc": value, "test_bpc_by_corpus": {c: value for c in study_char_lm.CORPORA},
                  "val_bpc": value, "n_parameters": 10, "train_tokens": 5, "flops_total": 1.0, "flops_pooling": 0.0,
                  "train_seconds": 1.0} for name, _, value in runs]  # fmt: skip
    for row in study_char_lm.summarise(char_rows):
        assert row["seeds"] == 3
        assert (row["test_bpc"], row["test_bpc_std"]) == pytest.approx(expected[row["variant"]])
        assert row["val_bpc"] == pytest.approx(expected[row["variant"]][0])

    lm_rows = [{"section": "lm", "variant": name, "layers": 2, "eval_loss": value, "eval_bpc": 2 * value,
                "train_seconds": 1.0, "n_parameters": 10, "train_tokens": 5, "flops_total": 1.0, "flops_pooling": 0.0}
               for name, _, value in runs]  # fmt: skip
    for row in study_lm.summarise(lm_rows):
        mean, std = expected[row["variant"]]
        assert row["seeds"] == 3 and (row["eval_loss"], row["eval_loss_std"]) == pytest.approx((mean, std))
        assert (row["eval_bpc"], row["eval_bpc_std"]) == pytest.approx((2 * mean, 2 * std))

    variants = dict(zip(SEED_VALUES, ("vit-p4-4L", "cp-vit-p4-4L"), strict=True))
    vision_rows = [{"variant": variants[name], "model": study_vision.VARIANTS[variants[name]][0], "family": "vit",
                    "patch_size": 4, "layers": 4, "epochs": 1, "params": 10, "gflops": 1.0, "test_accuracy": value,
                    "val_accuracy": value, "train_wall_s": 1.0} for name, _, value in runs]  # fmt: skip
    by_variant = {v: k for k, v in variants.items()}
    for row in study_vision.summarize(vision_rows):
        assert row["seeds"] == 3
        assert (row["test_acc_mean"], row["test_acc_std"]) == pytest.approx(expected[by_variant[row["variant"]]])

    models = dict(zip(SEED_VALUES, list(study_translation.MODELS)[:2], strict=True))
    translation_rows = [{"model": models[name], "params": 10, "encoder_layers": 1, "decoder_layers": 1,
                         "test_bleu": value, "test_chrf": 10 * value, "train_seconds": 1.0, "train_pflops_est": 1.0,
                         "train_src_tokens": 1, "train_tgt_tokens": 1} for name, _, value in runs]  # fmt: skip
    by_model = {v: k for k, v in models.items()}
    for row in study_translation.summarise(translation_rows):
        mean, std = expected[by_model[row["model"]]]
        assert row["seeds"] == 3 and row["bleu"] == pytest.approx((mean, std))
        assert row["chrf"] == pytest.approx((10 * mean, 10 * std))
