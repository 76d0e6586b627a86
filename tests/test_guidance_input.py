"""Guidance as a network input (`model.guidance_input`) and the intrinsic guidance of improved
shortcut models (`objective.guidance_max`): the DiT embeds (w, t_min, t_max) and changes its
output with them; a network that takes guidance is guided by it in one call (samplers included);
the shortcut objective's flow rows regress v + omega (v_c - v_u) and its self-consistency rows
pass w to the teacher; bad combinations are config errors."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from digits_configs import digits_config
from shortcut_jax import config as config_lib
from shortcut_jax import objectives
from shortcut_jax import sampling
from shortcut_jax.core import conditioning as cond_lib
from shortcut_jax.core import guidance
from shortcut_jax.models import dit as dit_lib
from shortcut_jax.models.velocity_model import VelocityModel

pytestmark = pytest.mark.usefixtures("fast_compile")
CLASSES = 10


def tiny_dit(interval=False):
  return dit_lib.DiT(patch_size=2, hidden_size=16, depth=1, num_heads=2, mlp_ratio=2.0,
                     out_channels=1, class_dropout_prob=0.1, num_classes=CLASSES,
                     dtype=jnp.float32, guidance_input=True, guidance_interval=interval)


def _randomised(params, seed=0):
  """Every weight random (the zero-initialised output layers would hide the inputs' effect)."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, l.shape) for k, l in zip(keys, leaves)])


@pytest.mark.parametrize("interval", [False, True])
def test_dit_embeds_the_guidance_and_defaults_to_no_guidance(interval):
  module = tiny_dit(interval)
  params = _randomised(dit_lib.init_params(module, jax.random.PRNGKey(0), (8, 8, 1)))
  names = sorted(k for k in params if k.startswith("GuidanceEmbedder"))
  assert names == [f"GuidanceEmbedder_{i}" for i in range(3 if interval else 1)]
  model = dit_lib.velocity_model(module)
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 8, 1))
  t, level = jnp.array([0.1, 0.5, 0.9]), jnp.zeros((3,))
  cond = {"label": jnp.array([1, 2, 3])}
  call = lambda **c: np.asarray(model(params, x, t, level, dict(cond, **c)))
  plain = call()
  np.testing.assert_array_equal(plain, call(guidance=cond_lib.guidance_rows(1.0, 3)))
  assert np.abs(call(guidance=cond_lib.guidance_rows(2.5, 3)) - plain).max() > 1e-3
  moved = call(guidance=cond_lib.guidance_rows(1.0, 3, interval=(0.3, 1.0)))
  assert (np.abs(moved - plain).max() > 1e-3) == interval  # the interval is an input only if built
  # One call, w as input: the guided velocity of such a network.
  np.testing.assert_allclose(
      np.asarray(guidance.guided_velocity(model, params, x, t, level, cond, 2.5)),
      call(guidance=cond_lib.guidance_rows(2.5, 3)), rtol=1e-6)


def _probe_model(calls):
  """A network that takes labels and guidance: 0.1 for a kept label + 0.5 (w - 1); records the
  batch size of each call (at trace time)."""
  def apply_fn(params, x, t, level, cond, train, rngs):
    calls.append(x.shape[0])
    cond = cond_lib.Conditioning((cond_lib.LabelKind(CLASSES), cond_lib.GuidanceKind())).fill_missing(cond, x.shape[0])
    kept = (cond["label"] != CLASSES).astype(jnp.float32)
    value = 0.1 * kept + 0.5 * (cond["guidance"][:, 0] - 1.0)
    return jnp.zeros_like(x) + value.reshape(-1, 1, 1, 1)
  return VelocityModel(apply_fn=apply_fn, conditioning=cond_lib.Conditioning(
      (cond_lib.LabelKind(CLASSES), cond_lib.GuidanceKind())))


def test_a_guidance_input_network_samples_with_one_call_per_step():
  calls = []
  model = _probe_model(calls)
  x0 = jnp.zeros((4, 2, 2, 1))
  out = sampling.sample(model, {}, x0, {"label": jnp.arange(4)}, num_steps=2,
                        denoise_timesteps=8, cfg_scale=3.0)
  assert set(calls) == {4}  # no doubled batch
  np.testing.assert_allclose(np.asarray(out), 0.1 + 0.5 * 2.0, rtol=1e-6)  # w = 3 as input


def _config(**overrides):
  c = dict(name="shortcut", denoise_timesteps=8, bootstrap_every=4, bootstrap_ema=True,
           bootstrap_dt_bias=0, bootstrap_cfg=False, cfg_scale=1.5, class_dropout_prob=0.3,
           faithful=False, guidance_max=3.5, guidance_grid=0.25, guidance_t_min=0.3)
  c.update(overrides)
  return ml_collections.ConfigDict(c)


@functools.lru_cache(maxsize=None)
def _targets(guidance_max):
  fn = objectives.get_objective("shortcut").targets_fn
  config = _config(guidance_max=guidance_max)
  return jax.jit(lambda batch, rng: fn(_probe_model([]), {}, {}, batch, rng, config))


def test_intrinsic_guidance_targets():
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.normal(size=(64, 2, 2, 1)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, CLASSES, 64), jnp.int32)}
  key = jax.random.PRNGKey(3)
  on, off = _targets(3.5)(batch, key), _targets(0.0)(batch, key)
  w = np.asarray(on.cond["guidance"][:, 0])
  np.testing.assert_array_equal(np.asarray(on.cond["guidance"][:, 1:]), [[0.0, 1.0]] * 64)
  omega = w - 1.0
  assert set(np.round(omega / 0.25, 6)) <= set(range(15)) and omega.max() > 2 and omega.min() == 0
  boot = np.asarray(on.groups["bootstrap"]) > 0
  flow = ~boot
  # The draws other than the guidance are the same with and without it.
  np.testing.assert_array_equal(np.asarray(on.x), np.asarray(off.x))
  np.testing.assert_array_equal(np.asarray(on.t), np.asarray(off.t))
  # Flow rows: + omega (v_c - v_u) = + omega * 0.1 for a kept label, where t >= 0.3.
  kept = np.asarray(on.cond["label"]) != CLASSES
  t = np.asarray(on.t)
  extra = (np.asarray(on.target) - np.asarray(off.target)).reshape(64, -1)
  want = np.where(kept & (t >= 0.3), 0.1 * omega, 0.0)
  np.testing.assert_allclose(extra[flow], np.repeat(want[flow, None], 4, axis=1), atol=1e-6)
  assert np.abs(want[flow]).max() > 0 and (kept[flow] & (t[flow] < 0.3)).any()
  # Self-consistency rows: the teacher's half steps see the row's w (labels kept there).
  np.testing.assert_allclose(np.asarray(on.target).reshape(64, -1)[boot],
                             np.repeat((0.1 + 0.5 * omega[boot])[:, None], 4, axis=1), atol=1e-6)


@pytest.mark.parametrize("changes,message", [
    (dict(objective__guidance_max=3.5), "set model.guidance_input=True"),
    (dict(objective__guidance_max=3.5, model__guidance_input=True, objective__bootstrap_cfg=True),
     "replaces bootstrap_cfg"),
    (dict(model__guidance_interval=True), "model.guidance_interval is part of the guidance input"),
    (dict(model__guidance_input=True), "does not train the guidance input"),
    (dict(objective__guidance_max=-1.0), "objective.guidance_max must be >= 0"),
    (dict(objective__guidance_t_min=1.5), "objective.guidance_t_min"),
    (dict(objective__guidance_grid=0.0), "objective.guidance_grid"),
    (dict(objective__name="meanflow", objective__guidance_max=2.0, model__guidance_input=True),
     "objective.guidance_max is an option of objective 'shortcut'"),
])
def test_guidance_options_that_cannot_work_are_config_errors(changes, message):
  with pytest.raises(ValueError, match=message):
    config_lib.validate(digits_config(**changes))
