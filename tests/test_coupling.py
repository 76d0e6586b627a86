"""Coupling flow matching: the `Source` abstraction (noise, zeros, the conditioning image, its
DDPM noising), the objectives' x0 from the batch's LR input, generation that starts from each
image's own condition, config checks, and a smoke run whose sr_metrics start at bicubic."""

import importlib
import os

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from shortcut_jax import config as config_lib
from shortcut_jax import objectives
from shortcut_jax.evaluators import generate as gen
from shortcut_jax.evaluators import conditions
from shortcut_jax.objectives import flow_path
from shortcut_jax.objectives.flow_path import Source, ddpm_alpha_bar, sample_source

SHAPE = (6, 4, 4, 3)


@pytest.fixture(autouse=True, scope="module")
def _fast(fast_compile):
  yield


def _cond_image(seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, SHAPE), jnp.float32)


def test_gaussian_source_is_the_original_draw_bit_for_bit():
  key = jax.random.PRNGKey(3)
  np.testing.assert_array_equal(sample_source(key, SHAPE), jax.random.normal(key, SHAPE))
  np.testing.assert_array_equal(Source().draw(key, SHAPE), jax.random.normal(key, SHAPE))
  np.testing.assert_array_equal(sample_source(key, SHAPE, "zeros"), np.zeros(SHAPE))


def test_cond_image_source_and_its_ddpm_noising():
  c = _cond_image()
  key = jax.random.PRNGKey(0)
  np.testing.assert_array_equal(Source("cond_image").draw(key, SHAPE, {"cond_image": c}), c)
  # ᾱ_400 of the linear schedule, computed independently.
  alpha = float(np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[399])
  np.testing.assert_allclose(ddpm_alpha_bar(400), alpha, rtol=1e-12)
  assert ddpm_alpha_bar(0) == 1.0
  big = (4096, 4, 4, 3)
  cb = jnp.broadcast_to(c[:1], big)
  x0 = Source("cond_image", 400).draw(key, big, {"cond_image": cb})
  eps = (np.asarray(x0) - np.sqrt(alpha) * np.asarray(cb)) / np.sqrt(1 - alpha)
  assert abs(eps.mean()) < 0.02 and abs(eps.std() - 1) < 0.02
  with pytest.raises(ValueError, match="conditioning image"):
    Source("cond_image").draw(key, SHAPE, {})
  with pytest.raises(ValueError, match="same"):
    Source("cond_image").draw(key, (6, 8, 8, 3), {"cond_image": c})
  with pytest.raises(ValueError, match="unknown source"):
    Source("uniform")


def _x0_of(tg, images):
  """x0 recovered from x_t on the linear path: (x_t - t x1) / (1 - (1 - 1e-5) t)."""
  t = np.asarray(tg.t).reshape(-1, 1, 1, 1)
  return (np.asarray(tg.x) - t * np.asarray(images)) / (1 - (1 - 1e-5) * t)


@pytest.mark.parametrize("name", ["naive", "shortcut"])
def test_objectives_start_from_the_low_resolution_image(name):
  from shortcut_jax.models.velocity_model import VelocityModel
  from shortcut_jax.core import conditioning as cond_lib
  images = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (16, 4, 4, 3)), jnp.float32)
  cond_image = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (16, 4, 4, 3)), jnp.float32)
  conditioning = cond_lib.Conditioning((cond_lib.LabelKind(1), cond_lib.ImageKind()))
  zero = VelocityModel(apply_fn=lambda p, x, *a: jnp.zeros_like(x), conditioning=conditioning)
  config = dict(denoise_timesteps=8, cfg_scale=0.0, class_dropout_prob=0.0,
                image_dropout_prob=0.5, source="cond_image")
  obj = objectives.get_objective(name)
  batch = {"image": images, "cond_image": cond_image}
  tg = obj.targets(zero, {}, {}, batch, jax.random.PRNGKey(0), config)
  rows = np.asarray(tg.level) == 3  # flow rows (finest level L = 3)
  # Every row starts at its own LR image, also where CFG dropout hid that image from the model.
  np.testing.assert_allclose(_x0_of(tg, images), cond_image, rtol=1e-4, atol=1e-4)
  assert np.any(np.asarray(tg.cond["cond_image"]).reshape(16, -1).max(1) == 0)
  v = np.asarray(images) - (1 - 1e-5) * np.asarray(cond_image)
  np.testing.assert_allclose(np.asarray(tg.target)[rows], v[rows], rtol=1e-5, atol=1e-5)
  # The default source is noise: x0 is not the LR image.
  tg_noise = obj.targets(zero, {}, {}, batch, jax.random.PRNGKey(0),
                         {**config, "source": "gaussian"})
  assert np.max(np.abs(_x0_of(tg_noise, images) - np.asarray(cond_image))) > 0.5


def test_top_level_share_trains_the_one_step_level_on_the_flow_target():
  from shortcut_jax.models.velocity_model import VelocityModel
  from shortcut_jax.core import conditioning as cond_lib
  rng = np.random.default_rng(3)
  images = jnp.asarray(rng.uniform(-1, 1, (64, 4, 4, 3)), jnp.float32)
  cond_image = jnp.asarray(rng.uniform(-1, 1, (64, 4, 4, 3)), jnp.float32)
  conditioning = cond_lib.Conditioning((cond_lib.LabelKind(1), cond_lib.ImageKind()))
  zero = VelocityModel(apply_fn=lambda p, x, *a: jnp.zeros_like(x), conditioning=conditioning)
  config = dict(denoise_timesteps=8, cfg_scale=0.0, class_dropout_prob=0.0,
                image_dropout_prob=0.0, source="cond_image")
  obj = objectives.get_objective("shortcut")
  batch = {"image": images, "cond_image": cond_image}
  key = jax.random.PRNGKey(0)
  plain = obj.targets(zero, {}, {}, batch, key, config)
  tg = obj.targets(zero, {}, {}, batch, key, {**config, "top_level_share": 0.5})
  level, boot = np.asarray(tg.level), np.asarray(tg.groups["bootstrap"]) > 0
  anchored = (level == 0) & ~boot
  # About half of the 56 flow rows; each at its LR image, t = 0, with target x1 - x0.
  assert 14 <= anchored.sum() <= 42
  np.testing.assert_array_equal(np.asarray(tg.x)[anchored], np.asarray(cond_image)[anchored])
  np.testing.assert_array_equal(np.asarray(tg.t)[anchored], 0.0)
  v = np.asarray(images) - (1 - 1e-5) * np.asarray(cond_image)
  np.testing.assert_allclose(np.asarray(tg.target)[anchored], v[anchored], rtol=1e-5, atol=1e-5)
  # Every other row is what the objective makes without the option.
  rest = ~anchored
  for a, b in ((tg.x, plain.x), (tg.t, plain.t), (tg.target, plain.target),
               (tg.level, plain.level)):
    np.testing.assert_array_equal(np.asarray(a)[rest], np.asarray(b)[rest])


def _sr_config(**changes):
  import digits_configs
  c = importlib.import_module("configs.photos_coupling_x2").get_config("smoke")
  c.unlock()
  return digits_configs.override(c, **changes)


def test_config_checks():
  config_lib.validate(_sr_config())
  with pytest.raises(ValueError, match="low_res_factor"):
    config_lib.validate(_sr_config(data__low_res_factor=0))
  with pytest.raises(ValueError, match="own source"):
    config_lib.validate(_sr_config(objective__name="livereflow"))
  config_lib.validate(_sr_config(objective__name="regression",  # The residual regressor.
                                 evals__samples__steps=(1,)))
  with pytest.raises(ValueError, match="source_noise_step"):
    config_lib.validate(_sr_config(objective__source="gaussian", objective__source_noise_step=400))
  with pytest.raises(ValueError, match="objective.source"):
    config_lib.validate(_sr_config(objective__source="lr"))
  config_lib.validate(_sr_config(objective__top_level_share=0.25))
  with pytest.raises(ValueError, match="top_level_share must be in"):
    config_lib.validate(_sr_config(objective__top_level_share=1.0))
  with pytest.raises(ValueError, match="use one of them"):
    config_lib.validate(_sr_config(objective__top_level_share=0.25,
                                   objective__guidance_max=1.0, model__guidance_input=True,
                                   objective__bootstrap_cfg=False))
  with pytest.raises(ValueError, match="starts from one point"):
    config_lib.validate(_sr_config(objective__top_level_share=0.25,
                                   objective__source_noise_step=100))


def test_a_fresh_coupling_model_returns_its_input():
  # The DiT's output layer starts at zero: a fresh coupling model's velocity is 0, so every
  # sample is its own upsampled LR input, whatever the step count.
  from shortcut_jax import experiment
  exp = experiment.build_experiment(_sr_config())
  assert exp.source == Source("cond_image", 0)
  params = exp.network.init(jax.random.PRNGKey(0))
  lr = np.random.default_rng(4).uniform(-1, 1, (5,) + exp.image_shape).astype(np.float32)
  cond = conditions.sample_cond(exp, 5, examples={"cond_image": lr})
  for steps in (1, 4):
    images, _ = gen.generate(exp, params, num_images=5, num_steps=steps, cfg_scale=None,
                             cond=cond, batch_size=4)
    np.testing.assert_allclose(images, lr, rtol=1e-5, atol=1e-5)
  # A noise-source model does not.
  exp_noise = experiment.build_experiment(_sr_config(objective__source="gaussian"))
  images, _ = gen.generate(exp_noise, params, num_images=5, num_steps=1, cfg_scale=None,
                           cond=cond, batch_size=4)
  assert np.max(np.abs(images - lr)) > 0.5


@pytest.mark.slow
def test_coupling_smoke_run_starts_at_bicubic(tmp_path, tmp_path_factory):
  from shortcut_jax import evaluation
  from shortcut_jax.train import trainer
  import digits_configs
  c = digits_configs.quick_run_config("photos_coupling_x2", str(tmp_path_factory.mktemp("photos")),
                                      2)
  c.evals.loss_per_t.every = 2  # its x0 comes from the same source
  workdir = str(tmp_path / "w")
  trainer.train_and_evaluate(c, workdir)
  assert os.path.exists(os.path.join(workdir, "plots", "loss_per_t_2.png"))
  results = evaluation.run("sr_metrics", workdir, steps=[1], num_samples=6, cfg_scale=None,
                           seed=0, batch_size=8)
  assert results["factor"] == 2
  model, bicubic = results["steps"]["1"]["psnr_rgb"], results["bicubic"]["psnr_rgb"]
  # Two steps of training barely move the zero-initialised velocity: the 1-step output is
  # within a fraction of a dB of bicubic (a noise-source model is many dB below it).
  assert abs(model - bicubic) < 0.5, (model, bicubic)


@pytest.mark.slow
def test_latent_coupling_config_trains_under_smoke(tmp_path):
  # fm-boosting's setting: latent space, the start noised at DDPM step 400; one smoke step runs.
  import digits_configs
  from shortcut_jax import experiment
  from shortcut_jax.train import trainer
  c = digits_configs.quick_run_config("coupling_latent_x2", str(tmp_path / "tfds"), 1)
  exp = experiment.build_experiment(c)
  assert exp.source == Source("cond_image", 400) and exp.config.data.latents == "online"
  metrics = trainer.train_and_evaluate(c, str(tmp_path / "w"))
  assert np.isfinite(metrics["train/loss"])
