"""The README's snippets run as written.

A fenced block preceded by the line `<!-- runnable -->` is executed: the Python blocks top to bottom in
one interpreter (one shared namespace, as a reader follows along) in an empty folder, the bash blocks
each in `bash -euo pipefail` in that folder. Blocks without the marker (commands that train for minutes,
need the network or a Hub account) are not run. Snippets are written at small sizes so this is quick.
"""

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import package_import_path

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- runnable -->"
BLOCK = re.compile(r"^" + re.escape(MARKER) + r"\n```(\w+)\n(.*?)^```$", re.S | re.M)


def runnable_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of every block marked runnable, in README order."""
    blocks = [(m.group(1), m.group(2)) for m in BLOCK.finditer(text)]
    unmatched = sum(line.strip() == MARKER for line in text.splitlines()) - len(blocks)
    assert unmatched == 0, f"{unmatched} {MARKER} marker(s) not directly followed by a fenced block"
    return blocks


def test_marker_parsing():
    text = f"a\n{MARKER}\n```python\nx = 1\n```\n```python\nnot marked\n```\n{MARKER}\n```bash\necho hi\n```\n"
    assert runnable_blocks(text) == [("python", "x = 1\n"), ("bash", "echo hi\n")]


@pytest.mark.slow  # builds and saves a few small models: about a minute on 2 busy cores
def test_readme_snippets_run(tmp_path):
    blocks = runnable_blocks(README.read_text())
    assert {lang for lang, _ in blocks} <= {"python", "bash"}
    python = [code for lang, code in blocks if lang == "python"]
    assert len(python) >= 5
    script = tmp_path / "readme_snippets.py"
    # Each block is announced, so a failure names the block it happened in.
    script.write_text("\n".join(f"print('--- README python block {i}', flush=True)\n{textwrap.dedent(code)}"
                                for i, code in enumerate(python)))  # fmt: skip
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    bin_dir = str(Path(sys.executable).parent)
    for code in (code for lang, code in blocks if lang == "bash"):
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                              timeout=900, env={"PATH": bin_dir + ":/usr/bin:/bin", "HOME": str(tmp_path),
                                                "HF_HUB_OFFLINE": "1", "PYTHONPATH": package_import_path()})  # fmt: skip
        assert done.returncode == 0, code + done.stdout[-2000:] + done.stderr[-4000:]
