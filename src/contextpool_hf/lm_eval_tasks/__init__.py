"""Offline lm-evaluation-harness tasks on the held-out KJV books (see kjv_utils.py).

    lm_eval --model hf --model_args pretrained=PATH,trust_remote_code=True \
        --include_path "$(python -c 'from contextpool_hf.lm_eval_tasks import TASKS_DIR; print(TASKS_DIR)')" \
        --tasks kjv_offline

`kjv_offline` is the group of `kjv_verses` (perplexity), `kjv_next_verse` (4-way multiple choice) and
`kjv_verse_completion` (generation).
"""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
TASK_NAMES = ("kjv_verses", "kjv_next_verse", "kjv_verse_completion")
GROUP_NAME = "kjv_offline"

__all__ = ["GROUP_NAME", "TASKS_DIR", "TASK_NAMES"]
