"""The loss-per-t evaluator against the losses written out directly from the model."""

import jax
import numpy as np
import pytest

from digits_configs import digits_config
from shortcut_jax import experiment
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
  exp = experiment.build_experiment(digits_config("smoke", objective__name=objective),
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


def test_run_draws_the_source_independently_of_the_latent_sample(tmp_path, monkeypatch):
  """`run()` encodes each batch (in latent space a VAE posterior sample, drawn with a key) and
  draws the flow's source x0: the two draws must use different keys. Here the "encoder" returns
  its posterior noise itself, so x0 equal to it (the same key) shows as a correlation of 1."""
  from shortcut_jax.data import pipeline
  exp = experiment.build_experiment(digits_config("smoke", objective__name="naive"),
                                 image_shape=SHAPE)
  n = 64

  def make_dataset(*args, **kwargs):
    yield {"image": np.zeros((n, *SHAPE), np.float32), "label": np.zeros((n,), np.int32)}

  def prepare_batch(self, batch, key):  # A posterior sample mean + std · ε with mean 0, std 1.
    return dict(batch, image=jax.random.normal(key, (n, *SHAPE)))

  monkeypatch.setattr(pipeline, "make_dataset", make_dataset)
  monkeypatch.setattr(experiment.Experiment, "prepare_batch", prepare_batch)
  ev = LossPerTEvaluator(exp, str(tmp_path), 1, num_batches=1, num_bins=2)
  seen = []

  def loss(params, teacher, x1, x0, cond, t, level):
    seen.append((np.asarray(x1), np.asarray(x0)))
    return np.zeros(x1.shape[0], np.float32)

  ev._loss = loss
  ev.run(type("State", (), {"params": {}, "ema_params": {}})(), 1)
  x1, x0 = seen[0]
  assert x0.std() > 0.5 and x1.std() > 0.5  # both are noise
  assert abs(np.corrcoef(x0.ravel(), x1.ravel())[0, 1]) < 0.05
