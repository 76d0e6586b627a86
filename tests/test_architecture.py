"""The import contract (pyproject.toml `[tool.importlinter]`, docs/architecture.md): the package
keeps it, and `lint-imports` (run by scripts/test.sh before the tests, so by CI) fails on an
upward import and on a circle inside a layer — checked on a copy of the package with one import
added."""

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINT = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def _lint(root):
  env = dict(os.environ, PYTHONPATH=str(root))
  proc = subprocess.run([LINT, "--no-cache"], cwd=root, env=env, capture_output=True, text=True,
                        timeout=300)
  return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def lint_copy(tmp_path_factory):
  if not os.path.exists(LINT):
    pytest.fail(f"{LINT} is missing: bash scripts/setup.sh installs import-linter")
  root = tmp_path_factory.mktemp("contract")
  shutil.copytree(os.path.join(REPO, "shortcut_jax"), root / "shortcut_jax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  shutil.copy(os.path.join(REPO, "pyproject.toml"), root / "pyproject.toml")

  def run_with(path, line):
    """lint-imports on the copy with `line` appended to `path`, then the file restored."""
    target = root / "shortcut_jax" / path
    original = target.read_text()
    target.write_text(original + "\n" + line + "\n")
    try:
      return _lint(root)
    finally:
      target.write_text(original)
  return root, run_with


def test_the_package_keeps_the_contract(lint_copy):
  code, out = _lint(lint_copy[0])
  assert code == 0, out
  assert "2 kept, 0 broken" in out, out


def test_an_upward_import_breaks_the_layers(lint_copy):
  # The interpolation paths (core) importing the training loop (a layer far above).
  code, out = lint_copy[1]("core/paths.py", "from shortcut_jax.train import trainer  # noqa")
  assert code != 0, out
  assert "Layers: each imports only from the layers below it BROKEN" in out, out
  assert "shortcut_jax.core.paths -> shortcut_jax.train.trainer" in out, out


def test_a_circle_inside_a_layer_is_found(lint_copy):
  # The shortcut objective imports HOMO, which imports the shortcut objective: same layer.
  code, out = lint_copy[1]("objectives/shortcut.py",
                           "from shortcut_jax.objectives import homo  # noqa")
  assert code != 0, out
  assert "No circles" in out and "BROKEN" in out, out
  assert "No cycles are allowed in shortcut_jax.objectives" in out, out
  assert ".shortcut -> .homo" in out, out
