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
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import digits_configs
from random_inception import random_inception_variables
from shortcut_jax import config as config_lib
from shortcut_jax import evaluation
from shortcut_jax import experiment
from shortcut_jax.train import trainer
from shortcut_jax.data import pipeline
from shortcut_jax.evaluators import fid
from shortcut_jax.evaluators import fid_evaluator
from shortcut_jax.evaluators import generate as gen
from shortcut_jax.evaluators import image_files
from shortcut_jax.evaluators import batch_rows
from shortcut_jax.models import inception

pytestmark = pytest.mark.slow

IMAGE_SIZE = 75
REF_SPLIT = "train[:200]"


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
  # The 4 smoke steps compile with most optimisations off (compiling is their whole cost); the
  # tests' Inception keeps them (it runs 5x slower without).
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  try:
    trainer.train_and_evaluate(config, workdir)
  finally:
    jax.config.update("jax_disable_most_optimizations", previous)
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


_FEATURE_FNS = {}  # One jitted network per weights (compiling it costs seconds).


def numpy_stats(variables, images_grey):
  """Reference statistics computed without the code under test's batching or sharding."""
  if id(variables) not in _FEATURE_FNS:
    _FEATURE_FNS[id(variables)] = (variables, inception.make_feature_fn(variables,
                                                                        image_size=IMAGE_SIZE))
  feature_fn = _FEATURE_FNS[id(variables)][1]
  rgb = np.repeat(images_grey, 3, axis=-1)
  n = len(rgb)
  rgb = np.concatenate([rgb, np.zeros((-n % 100, *rgb.shape[1:]), rgb.dtype)])  # One shape.
  features = np.concatenate([np.asarray(feature_fn(rgb[i:i + 100]))
                             for i in range(0, len(rgb), 100)])[:n].astype(np.float64)
  return features.mean(0), np.cov(features, rowvar=False)


def independent_stats(setup, *, num_images, num_steps, config=None):
  """`numpy_stats` of `generate.generate`'s images (seed 0, EMA, CFG 1.5; no mesh)."""
  exp, state, _ = experiment.restore_experiment(setup["workdir"], config=config)
  images, _ = gen.generate(exp, state.ema_params, num_images=num_images, num_steps=num_steps,
                           cfg_scale=1.5, seed=0)
  return numpy_stats(setup["variables"], images)


def _record_fid_calls(monkeypatch, features=None):
  calls, real = [], fid.fid_from_stats

  def recording(mu1, sigma1, mu2, sigma2, **kwargs):
    k = slice(features)
    value = real(mu1[k], sigma1[k, k], mu2[k], sigma2[k, k], **kwargs)
    calls.append(([np.asarray(a) for a in (mu1, sigma1, mu2, sigma2)], value))
    return value
  monkeypatch.setattr(fid, "fid_from_stats", recording)
  return calls


@pytest.fixture
def fid_calls(monkeypatch):
  """Records every `fid.fid_from_stats` call the code under test makes: (args, result).

  Each call costs a 2048x2048 matrix square root (seconds here); the tests compare the
  statistics that went into a reported FID with independently computed ones instead of
  computing a second FID from those.
  """
  return _record_fid_calls(monkeypatch)


@pytest.fixture
def marginal_fid_calls(monkeypatch):
  """As `fid_calls`, but the FID returned is that of the first 256 features (milliseconds): for
  tests of what is reported, where test_fid_stats_then_fid_write_sane_results has already run
  a whole one."""
  return _record_fid_calls(monkeypatch, features=256)


def assert_stats_close(got, want, rtol=1e-4):
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * np.abs(w).max())


def test_fid_stats_then_fid_write_sane_results(setup, fid_calls):
  c, root = setup["config"], setup["root"]
  stats_path = str(root / "digits_train200.npz")
  evaluation.run("fid_stats", None, steps=[], num_samples=0, cfg_scale=None, batch_size=48,
                 config=c, out=stats_path, split=REF_SPLIT, inception_path=setup["weights"])
  ref = fid.load_reference_stats(stats_path)
  assert ref.mu.shape == (2048,) and ref.sigma.shape == (2048, 2048)

  # Same split through an independent path: the statistics agree; noise images are farther
  # from them than the held-out digits are (the Frechet distance of the first 256 features:
  # the same function, milliseconds instead of seconds for all 2048).
  mu_np, sigma_np = numpy_stats(setup["variables"], split_images(c, REF_SPLIT))
  assert_stats_close((ref.mu, ref.sigma), (mu_np, sigma_np))
  k = 256
  marginal = lambda mu, sigma: fid.fid_from_stats(mu[:k], sigma[:k, :k], ref.mu[:k],
                                                  ref.sigma[:k, :k])
  test_images = split_images(c, "test")
  fid_test = marginal(*numpy_stats(setup["variables"], test_images))
  noise = np.random.default_rng(0).uniform(-1, 1, test_images.shape).astype(np.float32)
  fid_noise = marginal(*numpy_stats(setup["variables"], noise))
  assert fid_noise > 2 * fid_test > 0

  # One step budget: each FID of 2048 features costs seconds here (two 2048x2048 `eigh`).
  del fid_calls[:]
  out = evaluation.run("fid", setup["workdir"], steps=[8], num_samples=80, cfg_scale=1.5,
                       batch_size=48, fid_stats=stats_path, inception_path=setup["weights"])
  with open(os.path.join(setup["workdir"], "fid.json")) as f:
    written = json.load(f)
  assert written == json.loads(json.dumps(out))
  assert set(written["steps"]) == {"8"}
  # The reported FID is the distance between the reference file's statistics and those of the
  # same 80 images (seed 0, EMA weights) through the unsharded generator and the numpy side.
  [((mu, sigma, mu_ref, sigma_ref), value)] = fid_calls
  assert written["steps"]["8"] == value
  np.testing.assert_array_equal(mu_ref, ref.mu)
  np.testing.assert_array_equal(sigma_ref, ref.sigma)
  assert_stats_close((mu, sigma), independent_stats(setup, num_images=80, num_steps=8))
  assert written["num_samples"] == 80 and written["cfg_scale"] == 1.5
  assert written["checkpoint_step"] == c.max_steps
  assert written["reference_stats"] == stats_path
  assert written["inception_weights"] == setup["weights"]


def test_generation_does_not_depend_on_batch_size_or_mesh(setup):
  # Same seed -> same images, whatever the batch size and whether a (here 1-device) mesh places
  # the batches.
  exp, state, _ = experiment.restore_experiment(setup["workdir"])
  expected, _ = gen.generate(exp, state.ema_params, num_images=10, num_steps=2, cfg_scale=1.5,
                             seed=3, batch_size=4)
  got = [np.asarray(x)[:n] for x, n in gen.generate_batches(
      exp, state.ema_params, num_images=10, num_steps=2, cfg_scale=1.5, seed=3, batch_size=6,
      mesh=batch_rows.data_mesh())]
  assert [len(g) for g in got] == [6, 4]
  np.testing.assert_allclose(np.concatenate(got), expected, atol=1e-5)


def test_in_training_evaluator_logs_fid_per_step_budget(setup, marginal_fid_calls):
  fid_calls = marginal_fid_calls
  stats_path = str(setup["root"] / "ref_for_evaluator.npz")
  rng = np.random.default_rng(1)
  fake = rng.normal(size=(64, 2048))
  fid.save_stats(stats_path, fake.mean(0), np.cov(fake, rowvar=False))
  c = smoke_config(setup["config"].data.data_dir, every=2, steps=(1,), num_samples=24,
                   batch_size=16, stats_path=stats_path, inception_path=setup["weights"])
  exp, state, _ = experiment.restore_experiment(setup["workdir"], config=c)
  from shortcut_jax.evaluators import registry
  [ev] = registry.build_evaluators(exp, setup["workdir"])
  assert isinstance(ev, fid_evaluator.FIDEvaluator) and ev.due(2) and not ev.due(3)
  metrics = ev.run(state, 4)
  assert set(metrics) == {"fid/steps_1"}
  reference = fid.load_reference_stats(stats_path)
  [((mu, sigma, mu_ref, sigma_ref), value)] = fid_calls
  assert metrics["fid/steps_1"] == value
  np.testing.assert_array_equal(mu_ref, reference.mu)
  np.testing.assert_array_equal(sigma_ref, reference.sigma)
  assert_stats_close((mu, sigma), independent_stats(setup, num_images=24, num_steps=1, config=c))


def test_in_training_evaluator_reports_adm_metrics(setup, marginal_fid_calls, tmp_path):
  """evals.fid.extra_metrics: IS, sFID and precision / recall of the same samples, against an
  ADM-style reference batch (uint8 images in arr_0), checked with scipy / scikit-learn on
  features an unsharded network computes from `generate.generate`'s images."""
  from scipy import special, stats
  from scipy.spatial.distance import cdist
  from sklearn.neighbors import NearestNeighbors
  from shortcut_jax.evaluators import adm_metrics, registry
  fid_calls = marginal_fid_calls
  variables = random_inception_variables(seed=3)
  rng = np.random.default_rng(3)
  variables["params"]["fc"] = {"kernel": (rng.normal(size=(2048, 1008)) * 0.05).astype(np.float32),
                               "bias": rng.normal(size=1008).astype(np.float32)}
  weights = str(tmp_path / "inception_with_fc.npz")
  inception.save_inception_variables(weights, variables)
  ref_images = np.repeat(split_images(setup["config"], "train[:40]"), 3, axis=-1)
  reference_path = str(tmp_path / "adm_reference.npz")
  np.savez(reference_path, arr_0=image_files.to_uint8(ref_images))
  c = smoke_config(setup["config"].data.data_dir, every=2, steps=(1,), num_samples=24,
                   batch_size=16, stats_path=reference_path, inception_path=weights,
                   extra_metrics=("is", "sfid", "precision_recall"))
  config_lib.validate(c)
  exp, state, _ = experiment.restore_experiment(setup["workdir"], config=c)
  [ev] = registry.build_evaluators(exp, setup["workdir"])
  metrics = ev.run(state, 4)
  assert set(metrics) == {"fid/steps_1", "is/steps_1", "sfid/steps_1", "precision/steps_1",
                          "recall/steps_1"}

  # Independently: the same images (seed 0, EMA, CFG 1.5), one unsharded network.
  images, _ = gen.generate(exp, state.ema_params, num_images=24, num_steps=1, cfg_scale=1.5,
                           seed=0)
  feature_fn = inception.make_feature_fn(variables, image_size=IMAGE_SIZE,
                                         outputs=inception.OUTPUTS)
  ref_in = image_files.to_uint8(ref_images).astype(np.float32) / 127.5 - 1.0
  smp = {k: np.asarray(v, np.float64) for k, v in feature_fn(np.repeat(images, 3, -1)).items()}
  ref = {k: np.asarray(v, np.float64) for k, v in feature_fn(ref_in).items()}
  p = special.softmax(smp["logits_unbiased"], axis=1)
  expected_is = np.exp(np.mean([stats.entropy(row, p.mean(0)) for row in p]))
  assert metrics["is/steps_1"] == pytest.approx(expected_is, rel=1e-4)
  radius = lambda x: NearestNeighbors(n_neighbors=4).fit(x).kneighbors(x)[0][:, 3]
  d = cdist(ref["pool"], smp["pool"])
  assert metrics["precision/steps_1"] == pytest.approx(
      np.mean(np.any(d <= radius(ref["pool"])[:, None], axis=0)))
  assert metrics["recall/steps_1"] == pytest.approx(
      np.mean(np.any(d <= radius(smp["pool"])[None, :], axis=1)))
  # The statistics that went into FID and sFID (recorded calls: FID first, then sFID).
  [(fid_args, fid_value), (sfid_args, sfid_value)] = fid_calls
  assert metrics["fid/steps_1"] == fid_value and metrics["sfid/steps_1"] == sfid_value
  for args, name in ((fid_args, "pool"), (sfid_args, "spatial")):
    assert_stats_close(args[:2], (smp[name].mean(0), np.cov(smp[name], rowvar=False)))
    assert_stats_close(args[2:], (ref[name].mean(0), np.cov(ref[name], rowvar=False)))
  assert sfid_args[0].shape == (3 * 3 * 7,)  # 75x75 inputs: a 3x3 grid at Mixed_6d.


def test_eval_fid_extra_metrics_reach_fid_json(setup, monkeypatch, tmp_path):
  """eval.py --mode=fid --extra_metrics: the network gets the outputs the metrics need, the ADM
  path computes them in one pass per entry, and fid.json reports them (the metrics themselves:
  test_in_training_evaluator_reports_adm_metrics and tests/test_adm_metrics.py)."""
  from shortcut_jax.evaluators import adm_metrics
  seen = {}
  load = fid_evaluator.load_features

  def load_features(*args, **kwargs):
    seen["outputs"] = kwargs.get("outputs")
    return load(*args, **kwargs)

  def model_metrics(exp, params, features, reference, *, entries, num_images, metrics, seed):
    seen["metrics"], seen["reference"] = metrics, reference
    return {e.key: {"fid": 1.0 + e.steps, "is": 2.0, "sfid": 3.0} for e in entries}

  monkeypatch.setattr(fid_evaluator, "load_features", load_features)
  monkeypatch.setattr(adm_metrics, "load_reference", lambda *a, **k: "REFERENCE")
  monkeypatch.setattr(adm_metrics, "model_metrics", model_metrics)
  workdir = str(tmp_path / "workdir")
  shutil.copytree(setup["workdir"], workdir)
  stats = str(tmp_path / "stats.npz")
  fid.save_stats(stats, np.zeros(4), np.eye(4))
  with pytest.raises(ValueError, match="unknown extra metrics"):
    evaluation.run("fid", workdir, steps=[1], num_samples=8, extra_metrics=["kid"],
                   fid_stats=stats, inception_path=setup["weights"])
  with pytest.raises(ValueError, match="--extra_metrics is for --mode=fid"):
    evaluation.run("sample", workdir, steps=[1], num_samples=8, extra_metrics=["is"])
  # Random weights without a classifier: the IS asks for a new conversion, before sampling.
  with pytest.raises(ValueError, match="no classifier layer"):
    evaluation.run("fid", workdir, steps=[1], num_samples=8, extra_metrics=["is"],
                   fid_stats=stats, inception_path=setup["weights"])
  result = evaluation.run("fid", workdir, steps=[1, 2], num_samples=8, fid_stats=stats,
                          inception_path=setup["weights"], extra_metrics=["sfid"])
  assert seen["outputs"] == ("pool", "spatial") and seen["metrics"] == ("sfid",)
  assert seen["reference"] == "REFERENCE"
  on_disk = json.loads((tmp_path / "workdir" / "fid.json").read_text())
  for out in (result, on_disk):
    assert out["steps"] == {"1": 2.0, "2": 3.0}
    assert out["extra_metrics"] == {"1": {"is": 2.0, "sfid": 3.0}, "2": {"is": 2.0, "sfid": 3.0}}


def test_evaluator_with_missing_files_fails_at_construction(setup, tmp_path):
  c = smoke_config(setup["config"].data.data_dir, every=2, stats_path=str(tmp_path / "no.npz"),
                   inception_path=setup["weights"])
  exp = experiment.build_experiment(c, image_shape=(16, 16, 1))
  from shortcut_jax.evaluators import registry
  with pytest.raises(FileNotFoundError, match=r"config.evals.fid.stats_path.*no.npz.*fid_stats"):
    registry.build_evaluators(exp, str(tmp_path))

  stats_path = str(tmp_path / "stats.npz")
  fid.save_stats(stats_path, np.zeros(2048), np.eye(2048))
  c = smoke_config(setup["config"].data.data_dir, every=2, stats_path=stats_path,
                   inception_path=str(tmp_path / "no_weights.npz"))
  exp = experiment.build_experiment(c, image_shape=(16, 16, 1))
  with pytest.raises(FileNotFoundError, match=r"inception_path.*no_weights.npz"):
    registry.build_evaluators(exp, str(tmp_path))

  # Enabled without any stats path: the config itself is rejected before anything is built.
  c = smoke_config(setup["config"].data.data_dir, every=2)
  with pytest.raises(ValueError, match="evals.fid.stats_path must be set"):
    config_lib.validate(c)


_SHARDED_SCRIPT = r"""
import os, sys
from shortcut_jax.parallel import cpu_devices
assert cpu_devices.configure(2) == 2  # What eval.py does on a 2-core machine, here forced to 2.
os.environ["JAX_PLATFORMS"] = "cpu"
import jax, numpy as np
from shortcut_jax.evaluators import fid, fid_evaluator
assert jax.device_count() == 2 and "--xla_cpu_multi_thread_eigen=false" in os.environ["XLA_FLAGS"]
variables = random_inception_variables()
features = fid_evaluator.InceptionFeatures(variables, batch_size=3, image_size=75)
assert features.batch_size == 4, features.batch_size  # Rounded up to the device count.
images = np.random.default_rng(0).uniform(-1, 1, (7, 16, 16, 1)).astype(np.float32)
out = features._apply(features._variables, images[:4])
assert len(out.sharding.device_set) == 2 and out.addressable_shards[0].data.shape[0] == 2
got = features(images)
mu, sigma = fid.compute_stats(features, (images[i:i + 4] for i in range(0, 7, 4)), progress=False)
np.savez(sys.argv[1], features=got, mu=mu, sigma=sigma)
print("OK")
"""


def test_features_on_single_threaded_cpu_devices_match_one_device(tmp_path):
  """`cpu_devices.configure(2)` (2 single-threaded CPU devices, eval.py's FID setting) gives the
  features and statistics this process computes on its one default device, unsharded."""
  header, checks = _SHARDED_SCRIPT.split("variables = random_inception_variables()", 1)
  script = header + inspect.getsource(random_inception_variables) + (
      "variables = random_inception_variables()" + checks)
  # XLA's optimisations on, as here: the features are compared at float32 rounding.
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="false")
  for name in ("XLA_FLAGS", "SHORTCUT_JAX_CPU_DEVICES", "JAX_NUM_CPU_DEVICES"):
    env.pop(name, None)
  result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "out.npz")],
                          capture_output=True, text=True, timeout=300, env=env)
  assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
  assert jax.device_count() == 1
  images = np.random.default_rng(0).uniform(-1, 1, (7, 16, 16, 1)).astype(np.float32)
  feature_fn = inception.make_feature_fn(random_inception_variables(), image_size=IMAGE_SIZE)
  expected = np.asarray(feature_fn(np.repeat(images, 3, -1)), np.float64)
  mu, sigma = expected.mean(0), np.cov(expected, rowvar=False)
  with np.load(tmp_path / "out.npz") as got:
    assert got["features"].shape == (7, 2048)
    np.testing.assert_allclose(got["features"], expected, rtol=1e-5,
                               atol=1e-6 * np.abs(expected).max())
    # Covariances of 7 vectors amplify the features' float32 differences (measured: 8.9e-2 at
    # most, 8e-6 of the largest entry, from the single-threaded convolutions' summation order).
    np.testing.assert_allclose(got["mu"], mu, rtol=1e-5, atol=1e-6 * np.abs(mu).max())
    np.testing.assert_allclose(got["sigma"], sigma, rtol=1e-4, atol=3e-5 * np.abs(sigma).max())
  # The tolerance is tight enough to see a wrong or missing row: features of different images
  # differ by far more.
  assert np.abs(expected[0] - expected[1]).max() > 1e-3 * np.abs(expected).max()
