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


# Run after the snippets, in their process: `shortcut_jax.load(...).sample` gives the images of
# eval.py's generation path (labels as given, EMA weights, w = 1 conditional) and refuses what
# the model cannot take with one message.
API_CHECKS = """
import numpy as np
import shortcut_jax
from shortcut_jax import errors, experiment
from shortcut_jax.evaluators import generate as gen
from shortcut_jax.evaluators import image_files
loaded = shortcut_jax.load("workdirs/smoke_python")
exp, state, _ = experiment.restore_experiment("workdirs/smoke_python")
want, _ = gen.generate(exp, state.ema_params, num_images=10, num_steps=1, cfg_scale=None,
                       cond={"label": np.arange(10, dtype=np.int32)}, progress=False)
np.testing.assert_array_equal(loaded.sample(labels=range(10), num_steps=1),
                              image_files.to_uint8(want))
assert loaded.sample(labels=2, num_images=3, uint8=False).dtype == np.float32
for bad in ({}, {"prompts": ["seven"]}, {"cond_image": np.zeros((1, 16, 16, 1))},
            {"labels": [1, 2], "num_images": 3}):
  try:
    loaded.sample(**bad)
    raise AssertionError(f"no error for {bad}")
  except errors.ArgumentError as e:
    print("refused", sorted(bad), e)
print("api checks passed")
"""


@pytest.mark.slow
def test_the_quickstart_python_snippets_run(tmp_path):
  script = "\n".join(code for tested, code in python_blocks(PAGE.read_text()) if tested)
  script += API_CHECKS
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
  # The first snippet trained the smoke model and sampled it through shortcut_jax.load, the
  # second restored it and called the sampler: step 4, 10 digits.
  assert "step 4, objective 'shortcut', images (16, 16, 1)) (10, 16, 16, 1) (4, 16, 16, 1)" in (
      result.stdout), result.stdout[-3000:]
  assert "4 (10, 16, 16, 1)" in result.stdout, result.stdout[-3000:]
  assert "api checks passed" in result.stdout, result.stdout[-3000:]
  assert (run_dir / "workdirs" / "smoke_python" / "checkpoints").is_dir()
