"""Results files of the studies and benchmarks (scripts/study_*.py, scripts/bench_*.py): resume or merge
them, never overwrite them by surprise."""

from __future__ import annotations

import json
import os

START_OVER = "write to another output folder, or move that file away to start over"


def read_matching(
    path, settings: dict, key, what: str, section: str | None = None, field: str | None = "settings",
    remedy: str = START_OVER,
) -> dict:
    """The JSON saved at `path` ({} when there is none yet), whose `key(saved settings)` must equal `settings`.

    `section` names the part of the file that holds the command and, under `field`, the settings (None: the top
    level; field None: the section itself holds them, one key per setting). Results made with other settings
    stop the study with a message naming the file and what differs, then `remedy`, instead of being dropped and
    overwritten when the new study saves.
    """
    if not os.path.exists(path):
        return {}
    with open(path) as handle:
        previous = json.load(handle)
    saved = previous.get(section, {}) if section else previous
    recorded = key(saved.get(field, {}) if field else saved)
    if recorded != settings:
        differing = ", ".join(f"{k}: {recorded.get(k)!r} there, {settings.get(k)!r} now"
                              for k in sorted(set(recorded) | set(settings)) if recorded.get(k) != settings.get(k))  # fmt: skip
        made_by = f"; made by {saved['command']!r}" if saved.get("command") else ""
        raise SystemExit(f"{path} holds {what} made with other settings ({differing}{made_by}); {remedy}")
    return previous


def refuse_other_settings(
    path, settings: dict, field: str | None, what: str, section: str = "meta", remedy: str = START_OVER
) -> dict:
    """Stop a study or benchmark before it would replace or merge into results made with other settings; -> the
    saved results ({} when there are none). `field` is where the file's `section` keeps them (None: the section
    itself). Keys the saved file does not record (it predates them) count as matching, so regenerating results
    with their own command still works."""

    def key(recorded: dict) -> dict:
        return {k: recorded.get(k, v) for k, v in settings.items()}

    return read_matching(path, settings, key, what, section=section, field=field, remedy=remedy)


def recorded_commands(saved: dict) -> list[str]:
    """The commands a results file records, oldest first. `saved` is the part of the file holding
    "command"/"commands" ({} for a new file); files from before "commands" was kept hold only their latest
    "command"."""
    return list(saved.get("commands") or ([saved["command"]] if saved.get("command") else []))


def command_history(saved: dict, command: str) -> list[str]:
    """Every command that added to a results file, oldest first and each once, ending with `command`
    (`recorded_commands` of `saved`, then `command`)."""
    return list(dict.fromkeys([*recorded_commands(saved), command]))
