"""The loss-per-t evaluator against the losses written out directly from the model."""

import jax
import numpy as np
import pytest

from digits_configs import digits_config
from shortcut_jax import trainer
from shortcut_jax.evaluators.loss_per_t import LossPerTEvaluator

SHAPE = (16, 16, 1)


def _perturbed(tree, seed):
  """Random weights everywhere (a fresh DiT's zero-initialised output layer would make every
  velocity zero and the check empty)."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return treedef.unflatten([x + 0.05 * jax.random.normal(k, x.shape, x.dtype)
                            for x, k in zip(leaves, keys)])


@pytest.mark.parametrize("objective", ["shortcut", "naive"])
def test_losses_match_direct_computation(tmp_path, fast_compile, objective):
  exp = trainer.build_experiment(digits_config("smoke", objective__name=objective),
                                 image_shape=SHAPE)
  state = exp.init_state(jax.random.PRNGKey(0))
  params, teacher = _perturbed(state.params, 1), _perturbed(state.params, 2)
  ev = LossPerTEvaluator(exp, str(tmp_path), 1, num_batches=1, num_bins=4)
  finest = ev.finest
  assert finest == 3 and ev.levels == ([0, 1, 2, 3] if objective == "shortcut" else [3])
  rng = np.random.default_rng(0)
  n = 5
  x1 = rng.uniform(-1, 1, (n, *SHAPE)).astype(np.float32)
  x0 = rng.normal(size=(n, *SHAPE)).astype(np.float32)
  cond = {"label": rng.integers(0, 10, n).astype(np.int32)}
  model = exp.model
  for level, t in [(finest, 0.25), (2, 0.5), (0, 0.0)]:
    if level not in ev.levels:
      continue
    tt = np.full((n,), t, np.float32)
    lv = np.full((n,), level, np.int32)
    got = np.asarray(ev._loss(params, teacher, x1, x0, cond, tt, lv))
    xt = (1 - (1 - 1e-5) * t) * x0 + t * x1
    pred = np.asarray(model(params, xt, tt, lv, cond))
    if level == finest:
      target = x1 - (1 - 1e-5) * x0
    else:  # two teacher half steps of size d/2 at the next finer level
      d = 1.0 / 2 ** level
      v1 = np.asarray(model(teacher, xt, tt, lv + 1, cond))
      x_mid = np.clip(xt + d / 2 * v1, -4, 4)
      v2 = np.asarray(model(teacher, x_mid, tt + d / 2, lv + 1, cond))
      target = np.clip((v1 + v2) / 2, -4, 4)
      assert np.abs(target).max() > 1e-3  # the check is not about zeros
    expected = np.mean((pred - target) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-7)
