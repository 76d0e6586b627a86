"""Checkpoints that never lose state: damaged checkpoints (a data file truncated or overwritten
after the save) are skipped on resume and named by eval, while an error that is not damage (an
I/O error, a step without checksum lists that cannot be read) stops the run and moves nothing;
a failing evaluator keeps the step's checkpoint (saved before evaluators run)."""

import logging
import os
import shutil

import jax
import numpy as np
import pytest

import digits_configs
from shortcut_jax import experiment
from shortcut_jax.train import trainer
from shortcut_jax.checkpoints import integrity
from shortcut_jax.checkpoints.manager import (CheckpointManager, CheckpointReadError,
                                              DamagedCheckpointError)
from shortcut_jax.evaluators.validation import ValidationLossEvaluator

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fast_compile")]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = os.environ.get("SHORTCUT_JAX_TEST_DATA_DIR") or str(tmp_path_factory.mktemp("tfds"))
  os.environ["SHORTCUT_JAX_TEST_DATA_DIR"] = path
  return path


def _config(data_dir, **changes):
  return digits_configs.smoke_config(data_dir, **dict(
      dict(max_steps=6, checkpoint__every_steps=2, checkpoint__max_to_keep=5), **changes))


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
  """A 6-step run with checkpoints at 2, 4 and 6, and its final weights."""
  workdir = str(tmp_path_factory.mktemp("trained") / "w")
  trainer.train_and_evaluate(_config(data_dir), workdir)
  return workdir, _weights(workdir)


def _weights(workdir, step=None):
  _, state, restored = experiment.restore_experiment(workdir, step=step)
  return jax.device_get({"params": state.params, "ema": state.ema_params}), restored


def _copy(trained, tmp_path):
  workdir = str(tmp_path / "w")
  shutil.copytree(trained[0], workdir)
  return workdir


def _largest_data_file(workdir, step):
  folder = os.path.join(workdir, "checkpoints", str(step), "state")
  files = [os.path.join(root, f) for root, _, names in os.walk(folder) for f in names
           if os.sep + "d" + os.sep in os.path.join(root, f)]
  return max(files, key=os.path.getsize)


def _truncate(path):
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])


def _overwrite(path):
  """Same size, a few bytes changed in the middle (bit rot: TensorStore reads it silently)."""
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    f.write(b"\xde\xad\xbe\xef")


def _snapshot(folder):
  out = {}
  for root, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, folder)] = f.read()
  return out


def _assert_same(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize("damage", [_truncate, _overwrite])
def test_resume_skips_damaged_newest_checkpoint(trained, tmp_path, data_dir, caplog, damage):
  workdir = _copy(trained, tmp_path)
  bad = _largest_data_file(workdir, 6)
  damage(bad)
  damaged_files = _snapshot(os.path.join(workdir, "checkpoints", "6"))
  with caplog.at_level(logging.WARNING):
    trainer.train_and_evaluate(_config(data_dir), workdir)
  warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert any("checkpoint step 6 is damaged" in w and os.path.basename(bad) in w
             for w in warnings), warnings
  # Resumed from step 4 (with its data position), trained steps 5 and 6 again: the weights of
  # the uninterrupted run, which is what a run resumed from step 4 gives.
  weights, step = _weights(workdir)
  assert step == 6
  _assert_same(weights, trained[1][0])
  # The damaged step is kept, byte for byte, beside the new one.
  assert _snapshot(os.path.join(workdir, "checkpoints", "6.damaged")) == damaged_files
  assert CheckpointManager(workdir, read_only=True).all_steps() == [2, 4, 6]


def test_read_error_is_not_damage(trained, tmp_path, data_dir, monkeypatch):
  """An I/O error while verifying stops the run, naming the step; nothing is moved."""
  workdir = _copy(trained, tmp_path)
  before = _snapshot(os.path.join(workdir, "checkpoints"))

  def fail(path):
    raise OSError(5, "injected I/O error", path)
  monkeypatch.setattr(integrity, "crc32", fail)
  with pytest.raises(CheckpointReadError, match=r"step 6 .*could not be verified .*process 0: "
                                                r"OSError: .*injected I/O error.*Nothing was "
                                                r"renamed or deleted"):
    trainer.train_and_evaluate(_config(data_dir), workdir)
  assert _snapshot(os.path.join(workdir, "checkpoints")) == before


def test_unverifiable_step_that_cannot_be_read_stops(trained, tmp_path, data_dir):
  """A step without checksum lists (saved by an older version) whose data cannot be read: not
  provably damage, so the run stops and says how to skip the step."""
  workdir = _copy(trained, tmp_path)
  os.remove(os.path.join(workdir, "checkpoints", "6", "checksums.process_0.json"))
  _truncate(_largest_data_file(workdir, 6))
  before = _snapshot(os.path.join(workdir, "checkpoints"))
  with pytest.raises(CheckpointReadError) as info:
    trainer.train_and_evaluate(_config(data_dir), workdir)
  step_dir = os.path.join(workdir, "checkpoints", "6")
  assert (f"step 6 in {os.path.join(workdir, 'checkpoints')} could not be restored"
          in str(info.value))
  assert f"rename {step_dir} to {step_dir}.damaged to resume from step 4" in str(info.value)
  assert _snapshot(os.path.join(workdir, "checkpoints")) == before


def test_eval_names_the_damaged_step_and_the_intact_ones(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  bad = _largest_data_file(workdir, 6)
  _overwrite(bad)
  with pytest.raises(DamagedCheckpointError) as info:
    experiment.restore_experiment(workdir)
  message = str(info.value)
  assert "step 6" in message and bad in message and "Intact steps: [2, 4]" in message
  assert "--checkpoint_step=4" in message
  assert info.value.__cause__ is None and info.value.__suppress_context__
  with pytest.raises(DamagedCheckpointError, match="step 6"):
    experiment.restore_experiment(workdir, step=6)
  _, step = _weights(workdir, step=4)
  assert step == 4
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4", "6"]


def test_all_checkpoints_damaged_is_a_clear_error_and_deletes_nothing(trained, tmp_path, data_dir):
  workdir = _copy(trained, tmp_path)
  for step in (2, 4, 6):
    _truncate(_largest_data_file(workdir, step))
  before = _snapshot(os.path.join(workdir, "checkpoints"))
  with pytest.raises(DamagedCheckpointError, match=r"every checkpoint .* is damaged.*step 6.*"
                                                  r"step 4.*step 2"):
    trainer.train_and_evaluate(_config(data_dir), workdir)
  assert _snapshot(os.path.join(workdir, "checkpoints")) == before


# ---------------------------------------------------------------------------------------------
# Save first, then evaluate.

def _failing_validation(monkeypatch):
  def run(self, state, step):
    raise RuntimeError(f"simulated evaluator failure at {step}")
  monkeypatch.setattr(ValidationLossEvaluator, "run", run)


def test_failing_evaluator_is_logged_and_training_goes_on(tmp_path, data_dir, monkeypatch, caplog):
  _failing_validation(monkeypatch)
  c = _config(data_dir, evals__validation__every=2)
  with caplog.at_level(logging.ERROR):
    trainer.train_and_evaluate(c, str(tmp_path))
  # asyncio's "Future exception was never retrieved" about an earlier test's damaged read can
  # be collected during this one: only the library's own records count here.
  errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name != "asyncio"]
  assert [r.getMessage().split(" (")[0] for r in errors] == [
      f"evaluator ValidationLossEvaluator failed at step {s}" for s in (2, 4, 6)]
  assert all(r.exc_info and "simulated evaluator failure" in str(r.exc_info[1]) for r in errors)
  assert CheckpointManager(str(tmp_path), read_only=True).all_steps() == [2, 4, 6]


def test_failing_evaluator_with_eval_errors_stop_raises_after_the_save(tmp_path, data_dir,
                                                                       monkeypatch):
  _failing_validation(monkeypatch)
  # Evaluated at step 3, not a checkpoint step: 'stop' saves step 3 before raising.
  c = _config(data_dir, evals__validation__every=3, eval_errors="stop")
  with pytest.raises(RuntimeError, match="simulated evaluator failure at 3"):
    trainer.train_and_evaluate(c, str(tmp_path))
  assert CheckpointManager(str(tmp_path), read_only=True).all_steps() == [2, 3]
