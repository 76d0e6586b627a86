"""End-to-end FID: `eval.py`'s fid_stats and fid modes and the in-training FID evaluator.

Real Inception weights are not available here: the tests write random He-scaled weights with
`save_inception_variables` and resize to 75x75 (the smallest input InceptionV3 takes) instead
of 299 to keep CPU time low. The checks do not depend on the weights being the real ones:
statistics are compared with an independent numpy computation, and noise images must be
farther from the digits than held-out digits are.
"""

import inspect
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import digits_configs
from random_inception import random_inception_variables
from shortcut_jax import config as config_lib
from shortcut_jax import evaluation
from shortcut_jax import trainer
from shortcut_jax.data import pipeline
from shortcut_jax.evaluators import fid
from shortcut_jax.evaluators import fid_evaluator
from shortcut_jax.evaluators import generate as gen
from shortcut_jax.models import inception

pytestmark = pytest.mark.slow

IMAGE_SIZE = 75
REF_SPLIT = "train[:400]"


def smoke_config(data_dir, **fid_changes):
  c = digits_configs.smoke_config(data_dir)
  c.evals.fid.update(fid_changes)
  return c


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """A smoke-trained digits workdir, random Inception weights and their variables."""
  root = tmp_path_factory.mktemp("fid")
  data_dir = os.environ.get("SHORTCUT_JAX_TEST_DATA_DIR") or str(root / "tfds")
  variables = random_inception_variables()
  weights = str(root / "inception_random.npz")
  inception.save_inception_variables(weights, variables)
  config = smoke_config(data_dir)
  workdir = str(root / "workdir")
  trainer.train_and_evaluate(config, workdir)
  return dict(root=root, config=config, workdir=workdir, weights=weights, variables=variables)


@pytest.fixture(autouse=True)
def small_inception(monkeypatch):
  """Every Inception the evaluation code loads resizes to 75x75."""
  load = fid_evaluator.load_features
  monkeypatch.setattr(fid_evaluator, "load_features",
                      lambda *args, **kwargs: load(*args, **dict(kwargs, image_size=IMAGE_SIZE)))


def split_images(config, split):
  batches = pipeline.make_dataset(config.data, split=split, global_batch_size=128, seed=0,
                                  train=False, process_index=0, process_count=1)
  return np.concatenate([b["image"] for b in batches])


def numpy_stats(variables, images_grey):
  """Reference statistics computed without the code under test's batching or sharding."""
  feature_fn = inception.make_feature_fn(variables, image_size=IMAGE_SIZE)
  rgb = np.repeat(images_grey, 3, axis=-1)
  n = len(rgb)
  rgb = np.concatenate([rgb, np.zeros((-n % 100, *rgb.shape[1:]), rgb.dtype)])  # One shape.
  features = np.concatenate([np.asarray(feature_fn(rgb[i:i + 100]))
                             for i in range(0, len(rgb), 100)])[:n].astype(np.float64)
  return features.mean(0), np.cov(features, rowvar=False)


def independent_fid(setup, *, num_images, num_steps, reference, config=None):
  """FID of `generate.generate`'s images (seed 0, EMA, CFG 1.5) with `numpy_stats`."""
  exp, state, _ = trainer.restore_experiment(setup["workdir"], config=config)
  images, _ = gen.generate(exp, state.ema_params, num_images=num_images, num_steps=num_steps,
                           cfg_scale=1.5, seed=0)
  return fid.fid_from_stats(*numpy_stats(setup["variables"], images), *reference)


def test_fid_stats_then_fid_write_sane_results(setup):
  c, root = setup["config"], setup["root"]
  stats_path = str(root / "digits_train400.npz")
  evaluation.run("fid_stats", None, steps=[], num_samples=0, cfg_scale=None, batch_size=48,
                 config=c, out=stats_path, split=REF_SPLIT, inception_path=setup["weights"])
  ref = fid.load_reference_stats(stats_path)
  assert ref.mu.shape == (2048,) and ref.sigma.shape == (2048, 2048)

  # Same split through an independent path: the statistics agree, so their FID is ~0, far
  # below the FID of the held-out split.
  mu_np, sigma_np = numpy_stats(setup["variables"], split_images(c, REF_SPLIT))
  np.testing.assert_allclose(ref.mu, mu_np, rtol=1e-4, atol=1e-4 * np.abs(mu_np).max())
  np.testing.assert_allclose(ref.sigma, sigma_np, rtol=1e-4, atol=1e-4 * np.abs(sigma_np).max())
  test_images = split_images(c, "test")
  mu_test, sigma_test = numpy_stats(setup["variables"], test_images)
  fid_self = fid.fid_from_stats(mu_np, sigma_np, ref.mu, ref.sigma)
  fid_test = fid.fid_from_stats(mu_test, sigma_test, ref.mu, ref.sigma)
  noise = np.random.default_rng(0).uniform(-1, 1, test_images.shape).astype(np.float32)
  mu_noise, sigma_noise = numpy_stats(setup["variables"], noise)
  fid_noise = fid.fid_from_stats(mu_noise, sigma_noise, ref.mu, ref.sigma)
  assert abs(fid_self) < 1e-3 * fid_test
  assert fid_noise > 2 * fid_test > 0

  # One step budget: each FID costs a 2048x2048 matrix square root (tens of seconds here).
  out = evaluation.run("fid", setup["workdir"], steps=[8], num_samples=80, cfg_scale=1.5,
                       batch_size=48, fid_stats=stats_path, inception_path=setup["weights"])
  with open(os.path.join(setup["workdir"], "fid.json")) as f:
    written = json.load(f)
  assert written == json.loads(json.dumps(out))
  assert set(written["steps"]) == {"8"}
  # The same 80 images (seed 0, EMA weights) through the unsharded generator and the numpy-side
  # statistics give the same FID.
  np.testing.assert_allclose(written["steps"]["8"], independent_fid(
      setup, num_images=80, num_steps=8, reference=(ref.mu, ref.sigma)), rtol=1e-3)
  assert written["num_samples"] == 80 and written["cfg_scale"] == 1.5
  assert written["checkpoint_step"] == c.max_steps
  assert written["reference_stats"] == stats_path
  assert written["inception_weights"] == setup["weights"]


def test_generation_does_not_depend_on_batch_size_or_mesh(setup):
  # Same seed -> same images, whatever the batch size and whether a (here 1-device) mesh places
  # the batches.
  exp, state, _ = trainer.restore_experiment(setup["workdir"])
  expected, _ = gen.generate(exp, state.ema_params, num_images=10, num_steps=2, cfg_scale=1.5,
                             seed=3, batch_size=4)
  got = [np.asarray(x)[:n] for x, n in gen.generate_batches(
      exp, state.ema_params, num_images=10, num_steps=2, cfg_scale=1.5, seed=3, batch_size=6,
      mesh=gen.data_mesh())]
  assert [len(g) for g in got] == [6, 4]
  np.testing.assert_allclose(np.concatenate(got), expected, atol=1e-5)


def test_in_training_evaluator_logs_fid_per_step_budget(setup):
  stats_path = str(setup["root"] / "ref_for_evaluator.npz")
  rng = np.random.default_rng(1)
  fake = rng.normal(size=(64, 2048))
  fid.save_stats(stats_path, fake.mean(0), np.cov(fake, rowvar=False))
  c = smoke_config(setup["config"].data.data_dir, every=2, steps=(1,), num_samples=24,
                   batch_size=16, stats_path=stats_path, inception_path=setup["weights"])
  exp, state, _ = trainer.restore_experiment(setup["workdir"], config=c)
  from shortcut_jax.evaluators import registry
  [ev] = registry.build_evaluators(exp, setup["workdir"])
  assert isinstance(ev, fid_evaluator.FIDEvaluator) and ev.due(2) and not ev.due(3)
  metrics = ev.run(state, 4)
  assert set(metrics) == {"fid/steps_1"}
  reference = fid.load_reference_stats(stats_path)
  np.testing.assert_allclose(metrics["fid/steps_1"], independent_fid(
      setup, num_images=24, num_steps=1, reference=(reference.mu, reference.sigma), config=c),
      rtol=1e-3)


def test_evaluator_with_missing_files_fails_at_construction(setup, tmp_path):
  c = smoke_config(setup["config"].data.data_dir, every=2, stats_path=str(tmp_path / "no.npz"),
                   inception_path=setup["weights"])
  exp = trainer.build_experiment(c, image_shape=(16, 16, 1))
  from shortcut_jax.evaluators import registry
  with pytest.raises(FileNotFoundError, match=r"config.evals.fid.stats_path.*no.npz.*fid_stats"):
    registry.build_evaluators(exp, str(tmp_path))

  stats_path = str(tmp_path / "stats.npz")
  fid.save_stats(stats_path, np.zeros(2048), np.eye(2048))
  c = smoke_config(setup["config"].data.data_dir, every=2, stats_path=stats_path,
                   inception_path=str(tmp_path / "no_weights.npz"))
  exp = trainer.build_experiment(c, image_shape=(16, 16, 1))
  with pytest.raises(FileNotFoundError, match=r"inception_path.*no_weights.npz"):
    registry.build_evaluators(exp, str(tmp_path))

  # Enabled without any stats path: the config itself is rejected before anything is built.
  c = smoke_config(setup["config"].data.data_dir, every=2)
  with pytest.raises(ValueError, match="evals.fid.stats_path must be set"):
    config_lib.validate(c)


_SHARDED_SCRIPT = r"""
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax, numpy as np
from shortcut_jax.evaluators import fid_evaluator
from shortcut_jax.models import inception
assert jax.device_count() == 2
variables = random_inception_variables()
features = fid_evaluator.InceptionFeatures(variables, batch_size=3, image_size=75)
assert features.batch_size == 4, features.batch_size
images = np.random.default_rng(0).uniform(-1, 1, (5, 16, 16, 1)).astype(np.float32)
out = features._apply(features._variables, images[:4])
assert len(out.sharding.device_set) == 2 and out.addressable_shards[0].data.shape[0] == 2
got = features(images)
expected = np.asarray(inception.make_feature_fn(variables, image_size=75)(np.repeat(images, 3, -1)))
np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
print("OK")
"""


def test_features_are_sharded_over_devices_and_match_one_device():
  # The script defines the random weights the same way this module does, then runs its checks.
  header, checks = _SHARDED_SCRIPT.split("assert jax.device_count", 1)
  script = header + inspect.getsource(random_inception_variables) + "assert jax.device_count" + checks
  result = subprocess.run([sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
