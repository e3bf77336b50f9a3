"""Is a checkpoint's weights data whole? Checked with the safetensors library's own reader.

Used before a resume (training), before a push (hub) and wherever a folder is trusted to hold
a model: a truncated, padded or garbage `.safetensors` file, a sharded index that names a
missing shard or a tensor its shard does not hold, is a `CheckpointError` naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SAFETENSORS_WEIGHTS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint folder is missing files or holds a truncated/corrupt file."""


def check_safetensors_file(path: str | os.PathLike[str]) -> list[str]:
    """Open `path` with `safetensors.safe_open` (which checks the header and that the file holds
    exactly the bytes the header declares) and return the tensor names in it.

    Raises:
        CheckpointError: the file is missing, empty, truncated, padded or not safetensors at all.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            return list(handle.keys())
    except SafetensorError as error:
        # "header too small" (empty / cut inside the header), "incomplete metadata, file not fully
        # covered" (cut inside the data, or bytes appended), "header too large" (not safetensors)
        raise CheckpointError(
            f"{path} is truncated or corrupt: safetensors cannot read it ({error}); the save was probably "
            "interrupted: save the model again"
        ) from error
    except OSError as error:
        raise CheckpointError(f"{path} is unreadable ({error})") from error


def check_safetensors_index(path: str | os.PathLike[str]) -> list[str]:
    """Check a `model.safetensors.index.json` and every shard it names; return the shard file names.

    Every shard must exist inside the index's folder and pass `check_safetensors_file`, and every
    tensor the `weight_map` assigns to a shard must be in that shard.
    """
    path = Path(path)
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not a readable JSON index ({error})") from error
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{path} has no weight_map (a tensor name -> shard file mapping)")
    folder = path.parent
    by_shard: dict[str, set[str]] = {}
    for tensor, shard in weight_map.items():
        if not isinstance(shard, str) or Path(shard).name != shard or not shard.endswith(".safetensors"):
            raise CheckpointError(f"{path} maps {tensor!r} to {shard!r}, which is not a .safetensors file name")
        by_shard.setdefault(shard, set()).add(tensor)
    missing = sorted(shard for shard in by_shard if not (folder / shard).is_file())
    if missing:
        raise CheckpointError(f"{folder} is missing weight shards listed in {path.name}: {', '.join(missing)}")
    for shard, tensors in sorted(by_shard.items()):
        absent = sorted(tensors - set(check_safetensors_file(folder / shard)))
        if absent:
            raise CheckpointError(
                f"{folder / shard} lacks tensors that {path.name} assigns to it: {', '.join(absent[:5])}"
                + (f" (+{len(absent) - 5} more)" if len(absent) > 5 else "")
            )
    return sorted(by_shard)


def check_safetensors_weights(folder: str | os.PathLike[str]) -> list[str]:
    """Check every safetensors weights file of a model folder; return the files that make up the weights.

    A folder holds `model.safetensors`, or an index and its shards (or both: both are checked).
    Raises CheckpointError when there is neither, or when any of them is damaged.
    """
    folder = Path(folder)
    files = []
    if (folder / SAFETENSORS_WEIGHTS).is_file():
        check_safetensors_file(folder / SAFETENSORS_WEIGHTS)
        files.append(SAFETENSORS_WEIGHTS)
    if (folder / SAFETENSORS_INDEX).is_file():
        files += [SAFETENSORS_INDEX, *check_safetensors_index(folder / SAFETENSORS_INDEX)]
    if not files:
        raise CheckpointError(
            f"{folder} has no weights: expected {SAFETENSORS_WEIGHTS} or {SAFETENSORS_INDEX} "
            "(save with save_pretrained(); .bin weights are not shared)"
        )
    return files
