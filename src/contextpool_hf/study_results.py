"""Results files of the issue-16 studies (scripts/study_*.py): resume them, never overwrite them by surprise."""

from __future__ import annotations

import json
import os


def read_matching(path, settings: dict, key, what: str, section: str | None = None) -> dict:
    """The JSON saved at `path` ({} when there is none yet), whose `key(saved settings)` must equal `settings`.

    `section` names the part of the file that holds "settings" and "command" (None: the top level). Results
    made with other settings stop the study with a message naming the file, instead of being dropped and
    overwritten when the new study saves.
    """
    if not os.path.exists(path):
        return {}
    with open(path) as handle:
        previous = json.load(handle)
    saved = previous.get(section, {}) if section else previous
    if key(saved.get("settings", {})) != settings:
        raise SystemExit(f"{path} holds {what} made with other settings ({saved.get('command')!r}); "
                         "pass another --out, or move that file away to start over")  # fmt: skip
    return previous
