"""Run Python code in a fresh interpreter that cannot import `contextpool_hf`.

The package is installed (editable) in the test environment, so a plain subprocess would still
find it. `run_without_package` starts `python -I` (no PYTHONPATH, no user site, no cwd on the
path) with a meta-path finder in front that makes `import contextpool_hf` raise ImportError, and
with empty temporary `HF_HOME`/`HF_MODULES_CACHE` and `HF_HUB_OFFLINE=1` set before transformers
is imported. What the code under test gets is exactly what a Hub user without this package gets:
the flat files next to the weights, loaded with `trust_remote_code=True`.
"""

import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path

BLOCKED_PACKAGE = "contextpool_hf"

# The flat files a saved text model must carry: modeling_contextpool.py and every file it imports
# relatively (save_pretrained follows those imports); a remote load fails without any of them.
TEXT_MODEL_FILES = frozenset({
    "configuration_contextpool.py", "modeling_contextpool.py", "outputs_contextpool.py", "cache_contextpool.py",
    "layers_contextpool.py", "decoding_contextpool.py", "attention_contextpool.py", "inputs_contextpool.py",
    "heads_contextpool.py", "modeling_utils_contextpool.py", "pooling_contextpool.py", "checks_contextpool.py",
    "predictor_contextpool.py", "pooling_1d_contextpool.py", "pooling_offsets_contextpool.py", "pooling_2d_contextpool.py",
    "generation_contextpool.py",
})  # fmt: skip
# The seq2seq model reuses the text model's blocks (and so its configuration file), not its models.
SEQ2SEQ_MODEL_FILES = TEXT_MODEL_FILES - {"modeling_contextpool.py", "outputs_contextpool.py", "generation_contextpool.py"} | {
    "configuration_contextpool_seq2seq.py", "modeling_contextpool_seq2seq.py", "layers_contextpool_seq2seq.py",
}  # fmt: skip

_PRELUDE = f'''
import importlib.abc
import sys


class _BlockPackage(importlib.abc.MetaPathFinder):
    """Refuse `{BLOCKED_PACKAGE}` (and its submodules) whatever else is on sys.path."""

    def find_spec(self, name, path=None, target=None):
        if name == "{BLOCKED_PACKAGE}" or name.startswith("{BLOCKED_PACKAGE}."):
            raise ImportError(f"{{name}} is blocked in this remote-code test")
        return None


sys.meta_path.insert(0, _BlockPackage())
try:
    import {BLOCKED_PACKAGE}  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("{BLOCKED_PACKAGE} is importable: the isolation is broken")
'''


def run_without_package(
    code: str, timeout: float = 300, cwd: str | os.PathLike | None = None, args: Sequence[str | os.PathLike] = ()
) -> str:
    """Run `code` in an isolated interpreter (see the module docstring); return its stdout.

    `args` become the script's `sys.argv[1:]`.

    Raises AssertionError with the subprocess's output if it exits with an error.
    """
    with tempfile.TemporaryDirectory(prefix="cp-remote-") as home:
        home = Path(home)
        modules = home / "modules"
        modules.mkdir()
        env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "TRANSFORMERS_"))}
        env.pop("PYTHONPATH", None)
        env.update(
            HF_HOME=str(home / "hf"),
            HF_MODULES_CACHE=str(modules),
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            TOKENIZERS_PARALLELISM="false",
            OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
        )
        script = home / "remote_check.py"
        script.write_text(_PRELUDE + "\n" + textwrap.dedent(code))
        proc = subprocess.run(
            [sys.executable, "-I", str(script), *map(str, args)],
            env=env,
            cwd=str(cwd or home),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"isolated subprocess failed (exit {proc.returncode})\n--- stdout ---\n{proc.stdout}\n"
                f"--- stderr ---\n{proc.stderr[-6000:]}"
            )
        return proc.stdout
