"""docs/quickstart.md's Python snippets run as written.

A snippet is tested when the line `<!-- tested -->` (an HTML comment, invisible when the page is
rendered) comes right before its fenced ```python block, blank lines allowed in between. The
tested blocks run in page order as one script, in one fresh Python process (a later block may
use names an earlier one defined), in an empty temporary directory: what they write
(`workdirs/...`) lands there. The repository root is on PYTHONPATH, as it is on `sys.path`
for a reader who runs them from the root (the page says so), and TFDS builds the embedded data
into a temporary folder (or `$SHORTCUT_JAX_TEST_DATA_DIR`), never into ~/tensorflow_datasets.
"""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "quickstart.md"
MARKER = "<!-- tested -->"


def python_blocks(text: str):
  """[(tested, code)] for every fenced ```python block of a Markdown page, in order."""
  lines = text.splitlines()
  blocks, i, marked = [], 0, False
  while i < len(lines):
    line = lines[i].strip()
    if line == MARKER:
      marked = True
    elif line.startswith("```"):
      end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
      if end is None:
        raise ValueError(f"{PAGE}: the code block opened on line {i + 1} is never closed")
      if line[3:].strip() == "python":
        blocks.append((marked, "\n".join(lines[i + 1:end]) + "\n"))
      marked, i = False, end
    elif line:
      marked = False  # The marker applies to the very next block only.
    i += 1
  return blocks


def test_the_parser_reads_markers():
  page = "\n".join(["text", MARKER, "", "```python", "a = 1", "```", "```python", "b = 2", "```",
                    MARKER, "words", "```python", "c = 3", "```", "```bash", "ls", "```"])
  assert python_blocks(page) == [(True, "a = 1\n"), (False, "b = 2\n"), (False, "c = 3\n")]


def test_every_python_block_of_the_quickstart_is_tested():
  blocks = python_blocks(PAGE.read_text())
  assert blocks, f"{PAGE} has no ```python block"
  untested = [code.splitlines()[0] for tested, code in blocks if not tested]
  assert not untested, f"python blocks without {MARKER} in {PAGE}: {untested}"


@pytest.mark.slow
def test_the_quickstart_python_snippets_run(tmp_path):
  script = "\n".join(code for tested, code in python_blocks(PAGE.read_text()) if tested)
  path = tmp_path / "quickstart_snippets.py"
  path.write_text(script)
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
  env["TFDS_DATA_DIR"] = (os.environ.get("SHORTCUT_JAX_TEST_DATA_DIR")
                          or str(tmp_path / "tensorflow_datasets"))
  env.setdefault("JAX_PLATFORMS", "cpu")
  result = subprocess.run([sys.executable, str(path)], cwd=run_dir, env=env,
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, (
      f"the tested snippets of {PAGE} failed (exit {result.returncode}):\n"
      f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
  # The first snippet trained, restored and sampled the smoke model: step 4, 10 digits.
  assert "4 (10, 16, 16, 1)" in result.stdout, result.stdout[-3000:]
  assert (run_dir / "workdirs" / "smoke_python" / "checkpoints").is_dir()
