"""Improved MeanFlow (`objectives.imf`): on Gaussian data with the exact average velocity as the
network, the target's error is exactly v - v* (the tangent is the network's own velocity, not
the path's: MeanFlow's would be (v - v*)(1 + d k)); the guided target adds (1 - 1/w')(v_c - v_u)
where the row's interval holds t and its label is kept; the guidance draws follow their laws;
config checks; a smoke run trains and samples through `evaluation.run` with the guidance input."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import digits_configs
import gaussian_oracle as go
from shortcut_jax import config as config_lib
from shortcut_jax import objectives
from shortcut_jax.objectives import imf

M, S = go.M_SMALL, go.S_SMALL
FINEST, CLASSES = 14, 4


@pytest.fixture(autouse=True, scope="module")
def _fast(fast_compile):
  yield


def _oracle(shift=0.0):
  return go.average_velocity_oracle(M, S, num_classes=CLASSES, label_shift=shift,
                                    guidance=True)


def _targets(model, images, labels, **config):
  config = dict(dict(denoise_timesteps=2 ** FINEST, cfg_scale=1.5, class_dropout_prob=0.3,
                     meanflow_equal_share=0.25), **config)
  return objectives.get_objective("imf").targets(
      model, {}, {}, {"image": images, "label": labels}, jax.random.PRNGKey(5), config)


def _batch(n=32, shift=0.0):
  rng = np.random.default_rng(1)
  labels = rng.integers(0, CLASSES, n)
  means = np.asarray(go.label_mean(M, labels, CLASSES, shift))
  return jnp.asarray(means + S[None] * rng.normal(size=(n,) + M.shape), jnp.float32), \
      jnp.asarray(labels, jnp.int32)


def test_exact_average_velocity_target_error_is_v_minus_v_star():
  images, labels = _batch()
  tg = _targets(_oracle(), images, labels, imf_guidance_max=1e-6)  # w = 1: no guidance
  d = np.where(np.asarray(tg.groups["instant"]) > 0, 0.0, np.exp2(-np.asarray(tg.level)))
  u_star = np.asarray(go.shortcut_velocity(tg.x, tg.t, jnp.asarray(np.maximum(d, 2.0 ** -FINEST),
                                                                    jnp.float32), M, S, jnp))
  v_star = np.asarray(go.flow_velocity(tg.x, tg.t, M, S, jnp))
  v = go.path_velocity(tg, images)
  err = np.asarray(tg.target) - u_star
  np.testing.assert_allclose(err, v - v_star, rtol=2e-3, atol=2e-3)
  # MeanFlow's tangent (the path's v) would leave (v - v*)(1 + d k): visibly different here.
  assert np.abs(v - v_star).max() > 0.1 and d.max() > 0.3


def test_guided_target_adds_the_guidance_term_where_it_applies():
  images, labels = _batch(64, shift=0.7)
  model = _oracle(shift=0.7)
  on = _targets(model, images, labels, imf_guidance_max=7.0)
  off = _targets(model, images, labels, imf_guidance_max=1e-6)
  w, lo, hi = (np.asarray(on.cond["guidance"][:, i]) for i in range(3))
  t = np.asarray(on.t)
  instant = np.asarray(on.groups["instant"]) > 0
  assert np.all(lo[instant] == 0) and np.all(hi[instant] == 1)
  assert np.all((lo[~instant] <= 0.5) & (hi[~instant] >= 0.5)) and w.min() >= 1 and w.max() <= 8
  inside = (t >= lo) & (t <= hi)
  assert inside.any() and (~inside).any()
  w_in = np.where(inside, w, 1.0)
  kept = np.asarray(on.cond["label"]) != CLASSES
  assert kept.any() and (~kept).any()
  # v_c - v_u of the oracle: the instantaneous velocities for the row's label and the null label.
  n = len(t)
  finest = jnp.full((n,), FINEST, jnp.float32)
  v_c = np.asarray(model({}, on.x, on.t, finest, {"label": labels}))
  v_u = np.asarray(model({}, on.x, on.t, finest, {"label": jnp.full((n,), CLASSES)}))
  want = np.where(kept, 1 - 1 / w_in, 0.0).reshape(-1, 1, 1, 1) * (v_c - v_u)
  np.testing.assert_allclose(np.asarray(on.target) - np.asarray(off.target), want, atol=1e-4)
  assert np.abs(want).max() > 0.1


def test_guidance_draws_follow_the_power_law():
  st = imf.IMFSettings(mf=None, guidance_max=7.0, guidance_beta=1.0)
  w = np.asarray(imf.sample_guidance(jax.random.PRNGKey(0), 200_000, st))
  # beta = 1: log w uniform on [0, log 8].
  np.testing.assert_allclose(np.quantile(np.log(w) / np.log(8.0), [0.1, 0.5, 0.9]),
                             [0.1, 0.5, 0.9], atol=0.01)
  st2 = imf.IMFSettings(mf=None, guidance_max=7.0, guidance_beta=2.0)
  w2 = np.asarray(imf.sample_guidance(jax.random.PRNGKey(1), 200_000, st2))
  # beta = 2: P(w <= x) = (1 - 1/x) / (1 - 1/8).
  for x in (1.5, 3.0, 6.0):
    assert abs(np.mean(w2 <= x) - (1 - 1 / x) / (1 - 1 / 8)) < 0.005


def test_imf_needs_the_guidance_inputs():
  with pytest.raises(ValueError, match="objective 'imf' gives the network its guidance"):
    config_lib.validate(digits_configs.digits_config(objective__name="imf"))
  with pytest.raises(ValueError, match="objective.imf_guidance_max"):
    config_lib.validate(digits_configs.digits_config(
        objective__name="imf", objective__imf_guidance_max=0.0, model__guidance_input=True,
        model__guidance_interval=True))


def test_smoke_run_trains_and_samples_with_the_guidance_input(tmp_path, tmp_path_factory):
  from shortcut_jax import evaluation
  from shortcut_jax.train import trainer
  data_dir = os.environ.get("SHORTCUT_JAX_TEST_DATA_DIR") or str(tmp_path_factory.mktemp("tfds"))
  c = digits_configs.quick_run_config("digits_imf", data_dir, 2)
  metrics = trainer.train_and_evaluate(c, str(tmp_path / "run"))
  for key in ("train/loss", "train/mse", "train/guidance_mean", "train/guided_share"):
    assert np.isfinite(metrics[key])
  with pytest.raises(Exception, match="guidance_interval"):
    evaluation.run("sample", str(tmp_path / "run"), steps=[1], num_samples=2,
                   guidance_interval=[0.7, 0.2])
  written = evaluation.run("sample", str(tmp_path / "run"), steps=[1], num_samples=3,
                           cfg_scale=3.0, guidance_interval=[0.35, 0.6])
  with np.load(written[1]) as f:
    assert f["images"].shape == (3, 16, 16, 1) and f["images"].std() > 0
