"""Checkpoints written before a state field existed still restore (an empty field is filled in)
while a real mismatch stays a clear error, never 'damaged'."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from shortcut_jax.train import train_state as train_state_lib
from shortcut_jax.checkpoints.manager import CheckpointManager, CheckpointMismatchError


def _state():
  params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones((3,))}
  return train_state_lib.create_train_state(params, optax.adam(1e-3), jax.random.PRNGKey(0))


def test_checkpoint_without_objective_state_restores(tmp_path):
  state = _state()
  # The layout of a checkpoint written before `objective_state` was added to TrainState.
  old = {"step": state.step, "params": state.params, "ema_params": state.ema_params,
         "opt_state": state.opt_state, "rng": state.rng}
  ckpt = CheckpointManager(str(tmp_path), async_save=False)
  ckpt.save(5, old, {"data_position": 5}, force=True)
  ckpt.close()
  reader = CheckpointManager(str(tmp_path), read_only=True)
  restored, meta = reader.restore(jax.eval_shape(lambda: state))
  reader.close()
  assert meta["step"] == 5 and restored.objective_state == {}
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_checkpoint_of_another_model_is_a_mismatch_not_damage(tmp_path):
  state = _state()
  ckpt = CheckpointManager(str(tmp_path), async_save=False)
  ckpt.save(1, state, {"data_position": 1}, force=True)
  ckpt.close()
  other = state.replace(params={"w": jnp.zeros((4, 3)), "b": jnp.ones((3,))})
  reader = CheckpointManager(str(tmp_path), read_only=True)
  with pytest.raises(CheckpointMismatchError, match="params"):
    reader.restore(jax.eval_shape(lambda: other))
  reader.close()
