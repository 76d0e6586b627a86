"""α-Flow (`objectives.alphaflow`): the curriculum's α at chosen steps; at α = 1 the target is
the path's velocity, at α = 0 MeanFlow's target, in between the interpolation through the
network's own average velocity (checked against the exact average velocity of Gaussian data);
the guided ṽ; config checks; a smoke run trains and samples."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import digits_configs
import gaussian_oracle as go
from shortcut_jax import config as config_lib
from shortcut_jax import objectives
from shortcut_jax.objectives import alphaflow

M, S = go.M_SMALL, go.S_SMALL
FINEST, CLASSES = 14, 4


@pytest.fixture(autouse=True, scope="module")
def _fast(fast_compile):
  yield


def _config(**changes):
  return dict(dict(denoise_timesteps=2 ** FINEST, cfg_scale=1.5, class_dropout_prob=0.0,
                   meanflow_equal_share=0.25, alphaflow_start=100, alphaflow_end=300), **changes)


def test_alpha_follows_the_curriculum():
  st = alphaflow.AlphaFlowSettings.from_config(_config())
  steps = np.array([0, 100, 180, 200, 250, 300, 1000])
  got = np.asarray(jax.vmap(lambda k: alphaflow.alpha(k, st))(jnp.asarray(steps)))
  raw = 1 - 1 / (1 + np.exp(-25 * (steps - 200) / 200))
  want = np.where(raw < 5e-3, 0.0, np.where(raw > 1 - 5e-3, 1.0, raw))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  assert got[0] == 1.0 and got[3] == pytest.approx(0.5) and got[-1] == 0.0 and 0 < got[2] < 1


def _oracle(shift=0.0):
  return go.average_velocity_oracle(M, S, num_classes=CLASSES, label_shift=shift,
                                    guidance=False)


def _batch(n=32):
  rng = np.random.default_rng(2)
  images = jnp.asarray(M[None] + S[None] * rng.normal(size=(n,) + M.shape), jnp.float32)
  return {"image": images, "label": jnp.asarray(rng.integers(0, CLASSES, n), jnp.int32)}


def _targets(step, model=None, **changes):
  return objectives.get_objective("alphaflow").targets(
      model or _oracle(), {}, {}, _batch(), jax.random.PRNGKey(4), _config(**changes), step=step)


def test_targets_along_the_curriculum():
  images = _batch()["image"]
  first, middle, last = _targets(0), _targets(200), _targets(1000)
  assert [float(t.metrics["alpha"]) for t in (first, middle, last)] == [1.0, pytest.approx(0.5), 0.0]
  v = go.path_velocity(first, images)
  # α = 1: trajectory flow matching (the path's velocity; nothing here reaches the clip).
  np.testing.assert_allclose(np.asarray(first.target), v, rtol=1e-5, atol=1e-5)
  # α = 0: MeanFlow's target on the same draws.
  mf = objectives.get_objective("meanflow").targets(
      _oracle(), {}, {}, _batch(), jax.random.PRNGKey(4), _config())
  np.testing.assert_allclose(np.asarray(last.target), np.asarray(mf.target), rtol=1e-5, atol=1e-5)
  # α = 1/2: half the interval along v, the rest by the exact average velocity.
  d = np.where(np.asarray(middle.groups["instant"]) > 0, 0.0, np.exp2(-np.asarray(middle.level)))
  avg = d > 0
  x, t = np.asarray(middle.x), np.asarray(middle.t)
  half = (d / 2).reshape(-1, 1, 1, 1)
  rest = np.asarray(go.shortcut_velocity(jnp.asarray(x + half * v), jnp.asarray(t + d / 2),
                                         jnp.asarray(np.maximum(d / 2, 2.0 ** -FINEST)), M, S, jnp))
  want = np.where(avg.reshape(-1, 1, 1, 1), 0.5 * v + 0.5 * rest, v)
  np.testing.assert_allclose(np.asarray(middle.target), want, rtol=1e-4, atol=1e-4)
  assert np.abs(np.asarray(middle.target) - v)[avg].max() > 1e-2  # not the α = 1 target


def test_guided_velocity_in_the_target():
  model = _oracle(shift=0.6)
  plain = _targets(0, model)
  guided = _targets(0, model, alphaflow_cfg_omega=0.5, alphaflow_cfg_kappa=0.8,
                    alphaflow_cfg_t_min=0.3, alphaflow_cfg_t_max=1.0)
  n = plain.t.shape[0]
  finest = jnp.full((n,), FINEST, jnp.float32)
  u_c = np.asarray(model({}, plain.x, plain.t, finest, {"label": _batch()["label"]}))
  u_u = np.asarray(model({}, plain.x, plain.t, finest, {"label": jnp.full((n,), CLASSES)}))
  v = np.asarray(plain.target)  # α = 1: the path's velocity
  inside = (np.asarray(plain.t) >= 0.3).reshape(-1, 1, 1, 1)
  want = np.where(inside, 0.5 * v + 0.8 * u_c - 0.3 * u_u, v)
  average = (np.asarray(plain.groups["average"]) > 0).reshape(-1, 1, 1, 1)
  want = np.where(average, np.clip(want, -4.0, 4.0), want)  # the target's clip (d > 0 rows)
  np.testing.assert_allclose(np.asarray(guided.target), want, rtol=1e-4, atol=1e-4)
  assert inside.any() and (~inside).any()


@pytest.mark.parametrize("changes,message", [
    (dict(objective__alphaflow_start=500, objective__alphaflow_end=100), "alphaflow_start"),
    (dict(objective__alphaflow_cfg_t_min=0.8, objective__alphaflow_cfg_t_max=0.2),
     "alphaflow_cfg_t_min"),
    (dict(objective__alphaflow_clamp=0.0), "alphaflow_clamp"),
])
def test_config_checks(changes, message):
  with pytest.raises(ValueError, match=message):
    config_lib.validate(digits_configs.digits_config(objective__name="alphaflow", **changes))


def test_smoke_run_trains_and_samples(tmp_path, tmp_path_factory):
  from shortcut_jax.train import trainer
  import run_checks
  data_dir = os.environ.get("SHORTCUT_JAX_TEST_DATA_DIR") or str(tmp_path_factory.mktemp("tfds"))
  c = digits_configs.quick_run_config("digits_alphaflow", data_dir, 2)
  c.objective.alphaflow_end = 1  # α = 1 at step 0, then 0: both branches of the target run
  metrics = trainer.train_and_evaluate(c, str(tmp_path / "run"))
  assert np.isfinite(metrics["train/loss"]) and metrics["train/alpha"] == 0.0
  run_checks.assert_samples(tmp_path / "run", (16, 16, 1), steps=(2,), cfg_scale=1.0)
