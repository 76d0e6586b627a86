"""ADM's metrics beside FID (`evaluators/adm_metrics.py`): Inception Score, sFID, precision /
recall, the Inception port's extra outputs and ADM reference batches.

Every formula is checked against an independent implementation on the same numbers, not
against the code itself: the Inception Score against scipy's softmax and KL divergence (and
ADM's own numpy lines), precision / recall against a brute-force k-NN with scikit-learn's
`NearestNeighbors` and scipy's `cdist`, sFID against the Fréchet distance written with
`scipy.linalg.sqrtm` (ADM's `frechet_distance`), and the new Inception outputs against the
network's own Mixed_6d activations and a numpy matrix product. The network runs with random
weights at 75x75 (the smallest input InceptionV3 takes) on two images.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import linalg, special, stats
from scipy.spatial.distance import cdist
from sklearn.neighbors import NearestNeighbors

from random_inception import random_inception_variables
from shortcut_jax import config as config_lib
from shortcut_jax.evaluators import adm_metrics, fid, fid_evaluator
from shortcut_jax.models import inception


# --- Inception Score ---------------------------------------------------------------------------


def scipy_inception_score(logits, split_size):
  """exp(mean KL(p(y|x) || p(y))) per split of consecutive samples, averaged (scipy)."""
  scores = []
  for start in range(0, len(logits), split_size):
    p = special.softmax(np.asarray(logits[start:start + split_size], np.float64), axis=1)
    marginal = p.mean(axis=0)
    scores.append(np.exp(np.mean([stats.entropy(row, marginal) for row in p])))
  return float(np.mean(scores))


def adm_numpy_inception_score(logits, split_size):
  """ADM's `compute_inception_score` lines after its softmax (float64 here)."""
  preds = special.softmax(np.asarray(logits, np.float64), axis=1)
  scores = []
  for i in range(0, len(preds), split_size):
    part = preds[i:i + split_size]
    kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
    scores.append(np.exp(np.mean(np.sum(kl, 1))))
  return float(np.mean(scores))


@pytest.mark.parametrize("num_classes, split_size", [(17, 10), (1008, 5000)])
def test_inception_score_matches_scipy_and_adm_formula(num_classes, split_size):
  logits = np.random.default_rng(0).normal(scale=3.0, size=(23, num_classes))
  got = adm_metrics.inception_score(logits, split_size)
  assert got == pytest.approx(scipy_inception_score(logits, split_size), rel=1e-10)
  assert got == pytest.approx(adm_numpy_inception_score(logits, split_size), rel=1e-10)
  # Splits of 10 (10, 10, 3) are not the same number as one split of 23.
  if split_size < len(logits):
    assert got != pytest.approx(scipy_inception_score(logits, len(logits)), rel=1e-6)


def test_inception_score_closed_forms():
  # Every sample predicts the same distribution: p(y|x) = p(y), KL 0, IS 1.
  assert adm_metrics.inception_score(np.zeros((12, 1008)), 5) == pytest.approx(1.0, abs=1e-12)
  same = np.tile(np.random.default_rng(1).normal(size=(1, 1008)), (9, 1))
  assert adm_metrics.inception_score(same) == pytest.approx(1.0, abs=1e-12)
  # Confident predictions spread evenly over N classes in every split: IS = N.
  for n in (1, 4, 10):
    labels = np.arange(40) % n
    logits = 100.0 * np.eye(1008)[labels]
    assert adm_metrics.inception_score(logits, split_size=2 * n) == pytest.approx(n, rel=1e-9)
    assert adm_metrics.inception_score(logits, split_size=40) == pytest.approx(n, rel=1e-9)
  # Logits are only defined up to a per-row shift.
  logits = np.random.default_rng(2).normal(size=(8, 1008))
  shifted = logits + np.arange(8)[:, None] * 7.0
  assert adm_metrics.inception_score(shifted) == pytest.approx(
      adm_metrics.inception_score(logits), rel=1e-12)
  # Probabilities that underflow to 0 (terms 0 log 0 = 0) keep the score finite, warning-free;
  # such confident predictions score exp(entropy of the split's argmax histogram).
  extreme = np.random.default_rng(3).normal(scale=300.0, size=(50, 1008))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    got = adm_metrics.inception_score(extreme, 20)
  labels = extreme.argmax(1)
  expected = np.mean([np.exp(stats.entropy(np.bincount(labels[i:i + 20])))
                      for i in range(0, 50, 20)])
  assert got == pytest.approx(expected, rel=1e-9)
  with pytest.raises(ValueError, match="N, C"):
    adm_metrics.inception_score(np.zeros((0, 1008)))


# --- Precision / recall ------------------------------------------------------------------------


def sklearn_precision_recall(ref, samples, k):
  """Brute force: radius = distance to the k-th neighbour (itself excluded, sklearn's k+1-th
  including itself); a vector is in a manifold when within some radius of it (<=)."""
  ref, samples = np.asarray(ref, np.float64), np.asarray(samples, np.float64)

  def radii(x):
    nn = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(x)
    return nn.kneighbors(x)[0][:, k]

  r_ref, r_smp = radii(ref), radii(samples)
  d = cdist(ref, samples)  # [N_ref, N]
  precision = np.mean(np.any(d <= r_ref[:, None], axis=0))
  recall = np.mean(np.any(d <= r_smp[None, :], axis=1))
  return precision, recall, r_ref


def clouds(seed, n_ref=150, n_smp=130, dim=16):
  rng = np.random.default_rng(seed)
  ref = rng.normal(size=(n_ref, dim))
  smp = 1.2 * rng.normal(size=(n_smp, dim)) + 0.4
  return ref.astype(np.float32), smp.astype(np.float32)


@pytest.mark.parametrize("k, batch_size", [(3, 64), (1, 10000)])
def test_precision_recall_matches_sklearn_brute_force(k, batch_size):
  ref, smp = clouds(k)
  precision, recall, radii = sklearn_precision_recall(ref, smp, k)
  got_radii = adm_metrics.manifold_radii(ref, k, batch_size)
  np.testing.assert_allclose(np.sqrt(got_radii), radii, rtol=1e-5)
  got = adm_metrics.precision_recall(ref, smp, k=k, batch_size=batch_size)
  assert got == (pytest.approx(precision, abs=1e-12), pytest.approx(recall, abs=1e-12))
  # The clouds differ, so both fractions are strictly between 0 and 1 (a real test).
  assert 0 < got[0] < 1 and 0 < got[1] < 1


def test_precision_recall_invariants():
  ref, smp = clouds(7)
  # Identical sets: every vector lies in its own ball.
  assert adm_metrics.precision_recall(ref, ref, batch_size=50) == (1.0, 1.0)
  # Far-apart clusters: nothing of one lies in the other's manifold.
  assert adm_metrics.precision_recall(ref, smp + 1000.0, batch_size=50) == (0.0, 0.0)
  # Samples collapsed onto a few reference points: precise, without recall.
  # (The samples' radii are 0: whether the two references they copy count is float rounding,
  # in ADM as here.)
  collapsed = np.repeat(ref[:2], 20, axis=0)
  precision, recall = adm_metrics.precision_recall(ref, collapsed)
  assert precision == 1.0 and recall <= 2 / len(ref)
  with pytest.raises(ValueError, match="more than 3"):
    adm_metrics.manifold_radii(ref[:3])
  with pytest.raises(ValueError, match="dimension"):
    adm_metrics.precision_recall(ref, smp[:, :4])


# --- sFID --------------------------------------------------------------------------------------


def scipy_frechet(x, y, eps=1e-6):
  """ADM's `frechet_distance` on np.mean / np.cov statistics, with scipy's sqrtm.

  ADM adds `eps` to the covariance diagonals inside sqrtm only when sqrtm fails; the library
  always does (`fid.fid_from_stats`, a documented difference), so the tight comparisons pass
  the same eps and `eps=0` is ADM's default path.
  """
  mu1, mu2 = x.mean(0), y.mean(0)
  s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
  offset = np.eye(s1.shape[0]) * eps
  covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset)).real
  diff = mu1 - mu2
  return diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def test_sfid_matches_scipy_sqrtm():
  rng = np.random.default_rng(3)
  dim = 21  # e.g. 3 x 1 x 7 spatial features.
  samples = rng.normal(size=(60, dim)) @ rng.normal(size=(dim, dim)) * 0.5
  ref = rng.normal(size=(80, dim)) + 0.3
  expected = scipy_frechet(samples, ref)
  ref_stats = (ref.mean(0), np.cov(ref, rowvar=False))
  streamed = fid.RunningStats()
  for start in range(0, 60, 7):
    streamed.update(samples[start:start + 7])
  for got in (adm_metrics.sfid(samples, ref_stats), adm_metrics.sfid(streamed, ref_stats)):
    assert got == pytest.approx(expected, rel=1e-9)
  assert expected > 1.0
  # The always-added eps moves the number by far less than the digits papers report.
  assert expected == pytest.approx(scipy_frechet(samples, ref, eps=0.0), abs=1e-3)


# --- Inception outputs -------------------------------------------------------------------------


def variables_with_classifier(seed=0):
  variables = random_inception_variables(seed)
  rng = np.random.default_rng(seed + 100)
  variables["params"]["fc"] = {
      "kernel": (rng.normal(size=(2048, 1008)) * 0.05).astype(np.float32),
      "bias": rng.normal(size=1008).astype(np.float32)}
  return variables


@pytest.fixture(scope="module")
def variables():
  return variables_with_classifier()


def test_output_shapes_at_299():
  model = inception.InceptionV3()
  shapes = jax.eval_shape(
      lambda x: model.init_with_output(jax.random.PRNGKey(0), x, outputs=inception.OUTPUTS),
      jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32))
  out, params = shapes
  assert {k: v.shape for k, v in out.items()} == {
      "pool": (2, 2048), "spatial": (2, 17 * 17 * 7), "logits_unbiased": (2, 1008),
      "logits": (2, 1008)}
  flat = inception.flatten_variables(params)
  assert flat["params/fc/kernel"].shape == (2048, 1008)
  assert flat["params/fc/bias"].shape == (1008,)
  # Without outputs nothing changes: the pool array, and no classifier among the variables.
  plain = jax.eval_shape(lambda x: model.init_with_output(jax.random.PRNGKey(0), x),
                         jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32))
  assert plain[0].shape == (2, 2048)
  assert "fc" not in plain[1]["params"]


def test_outputs_are_mixed_6d_branch1x1_and_the_classifier(variables, fast_compile):
  model = inception.InceptionV3(image_size=None)
  images = np.random.default_rng(4).uniform(-1, 1, (2, 75, 75, 3)).astype(np.float32)

  @jax.jit
  def run(v, x):
    out, state = model.apply(v, x, outputs=inception.OUTPUTS,
                             capture_intermediates=lambda m, _: m.name == "Mixed_6d",
                             mutable=["intermediates"])
    return out, state["intermediates"]["Mixed_6d"]["__call__"][0], model.apply(v, x)

  out, mixed_6d, plain = jax.tree_util.tree_map(np.asarray, run(variables, images))
  assert out["spatial"].shape == (2, 3 * 3 * 7) and mixed_6d.shape == (2, 3, 3, 768)
  # TF's mixed_6/conv:0 is Mixed_6d's 1x1 branch: the first 7 of its 192 leading channels,
  # flattened (row, column, channel) as ADM's reshape of NHWC does.
  np.testing.assert_array_equal(out["spatial"], mixed_6d[..., :7].reshape(2, -1))
  np.testing.assert_array_equal(out["pool"], plain)  # The default call is unchanged.
  kernel = variables["params"]["fc"]["kernel"].astype(np.float64)
  unbiased = out["pool"].astype(np.float64) @ kernel
  scale = np.abs(unbiased).max()
  np.testing.assert_allclose(out["logits_unbiased"], unbiased, rtol=1e-5, atol=1e-5 * scale)
  np.testing.assert_allclose(out["logits"], unbiased + variables["params"]["fc"]["bias"],
                             rtol=1e-5, atol=1e-5 * scale)
  assert np.std(out["spatial"]) > 0 and not np.allclose(out["pool"][0], out["pool"][1])

  # The sharded evaluator network concatenates the outputs; split back they are the same.
  outputs = adm_metrics.inception_outputs(adm_metrics.METRICS)
  features = fid_evaluator.InceptionFeatures(variables, batch_size=2, image_size=None,
                                             outputs=outputs)
  split = adm_metrics.split_outputs(features(images), outputs)
  assert list(split) == ["pool", "spatial", "logits_unbiased"]
  for name in outputs:
    np.testing.assert_allclose(split[name], out[name], rtol=1e-5,
                               atol=1e-5 * np.abs(out[name]).max())


def test_weights_without_classifier_still_load(tmp_path, fast_compile):
  old = random_inception_variables()  # What files converted before the classifier hold.
  path = str(tmp_path / "old.npz")
  inception.save_inception_variables(path, old)
  with np.load(path) as data:
    assert int(data["__version__"]) == 1  # Older readers accept it.
  loaded = inception.load_inception_variables(path)
  assert not inception.has_classifier(loaded)
  with pytest.raises(ValueError, match="no classifier layer.*convert_inception"):
    inception.make_feature_fn(loaded, outputs=("pool", "logits_unbiased"))
  with pytest.raises(ValueError, match="no classifier layer"):
    fid_evaluator.InceptionFeatures(loaded, batch_size=2, outputs=("pool", "logits_unbiased"))
  with pytest.raises(ValueError, match="no classifier layer"):
    model = inception.InceptionV3(image_size=None)
    jax.eval_shape(lambda x: model.apply(loaded, x, outputs=("logits",)),
                   jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.float32))
  # FID and sFID need no classifier.
  fid_evaluator.InceptionFeatures(loaded, batch_size=2, outputs=("pool", "spatial"))

  new = variables_with_classifier(1)
  path = str(tmp_path / "new.npz")
  inception.save_inception_variables(path, new)
  with np.load(path) as data:
    assert int(data["__version__"]) == 2
  loaded = inception.load_inception_variables(path)
  np.testing.assert_array_equal(loaded["params"]["fc"]["kernel"], new["params"]["fc"]["kernel"])
  broken = jax.tree_util.tree_map(lambda x: x, new)
  del broken["params"]["fc"]["bias"]
  with pytest.raises(ValueError, match="missing.*fc/bias"):
    inception.check_variables(broken)


# --- Reference batches and wiring --------------------------------------------------------------


def fake_feature_fn(images):
  """A cheap stand-in for Inception: deterministic features of the pixels."""
  x = np.asarray(images, np.float64).reshape(len(images), -1)
  return {"pool": np.stack([x[:, :5].sum(1), x.mean(1), x.std(1), x[:, -3:].sum(1)], 1),
          "spatial": x[:, :6] * np.arange(1, 7)}


def test_load_reference_uses_stored_stats_and_computes_the_rest(tmp_path):
  images = np.random.default_rng(5).integers(0, 256, (23, 8, 8, 3), dtype=np.uint8)
  feats = fake_feature_fn(images.astype(np.float32) / 127.5 - 1.0)
  stored = dict(mu=np.arange(4.0), sigma=np.eye(4), mu_s=np.ones(6), sigma_s=2 * np.eye(6))
  full = str(tmp_path / "VIRTUAL_full.npz")
  np.savez(full, arr_0=images, **stored)
  ref = adm_metrics.load_reference(full, fake_feature_fn, adm_metrics.METRICS, batch_size=5)
  for key in ("mu", "sigma", "mu_s", "sigma_s"):  # Stored statistics win, as in ADM.
    np.testing.assert_array_equal(getattr(ref, key), stored[key])
  np.testing.assert_allclose(ref.features, feats["pool"], rtol=1e-6)

  images_only = str(tmp_path / "images_only.npz")
  np.savez(images_only, arr_0=images)
  ref = adm_metrics.load_reference(images_only, fake_feature_fn, ("sfid",), batch_size=5)
  np.testing.assert_allclose(ref.mu, feats["pool"].mean(0), rtol=1e-6)
  np.testing.assert_allclose(ref.sigma_s, np.cov(feats["spatial"], rowvar=False), rtol=1e-6)
  assert ref.features is None

  stats_only = str(tmp_path / "stats_only.npz")
  np.savez(stats_only, mu=stored["mu"], sigma=stored["sigma"])
  assert adm_metrics.load_reference(stats_only, None, ("is",)).mu_s is None
  with pytest.raises(ValueError, match="precision / recall features.*arr_0"):
    adm_metrics.load_reference(stats_only, fake_feature_fn, ("precision_recall",))
  with pytest.raises(ValueError, match="sFID statistics"):
    adm_metrics.load_reference(stats_only, fake_feature_fn, ("sfid",))


def test_accumulator_reports_every_metric():
  rng = np.random.default_rng(6)
  ref_pool, smp_pool = clouds(8, n_ref=40, n_smp=30, dim=6)
  ref_spatial, smp_spatial = rng.normal(size=(40, 5)), rng.normal(size=(30, 5)) + 0.2
  logits = rng.normal(size=(30, 1008))
  reference = adm_metrics.Reference(
      mu=ref_pool.mean(0), sigma=np.cov(ref_pool, rowvar=False), mu_s=ref_spatial.mean(0),
      sigma_s=np.cov(ref_spatial, rowvar=False), features=ref_pool)
  acc = adm_metrics.Accumulator(adm_metrics.METRICS)
  for start in range(0, 30, 8):
    part = slice(start, start + 8)
    acc.update({"pool": smp_pool[part], "spatial": smp_spatial[part],
                "logits_unbiased": logits[part]})
  got = acc.result(reference, split_size=10)
  assert got["fid"] == pytest.approx(scipy_frechet(smp_pool.astype(np.float64), ref_pool),
                                     rel=1e-5)
  assert got["sfid"] == pytest.approx(scipy_frechet(smp_spatial, ref_spatial), rel=1e-5)
  assert got["is"] == pytest.approx(scipy_inception_score(logits, 10), rel=1e-9)
  precision, recall, _ = sklearn_precision_recall(ref_pool, smp_pool, 3)
  assert (got["precision"], got["recall"]) == (pytest.approx(precision), pytest.approx(recall))


def test_metric_names_and_config_field():
  assert adm_metrics.METRICS == config_lib.EXTRA_FID_METRICS
  assert adm_metrics.inception_outputs(()) == ("pool",)
  assert adm_metrics.inception_outputs(("precision_recall",)) == ("pool",)
  assert adm_metrics.inception_outputs(("is", "sfid", "is")) == (
      "pool", "spatial", "logits_unbiased")
  with pytest.raises(ValueError, match="unknown extra metrics"):
    adm_metrics.check_metrics(("fid", "kid"))
  c = config_lib.base_config()
  assert tuple(c.evals.fid.extra_metrics) == ()
  c.evals.fid.extra_metrics = ("is", "bogus")
  with pytest.raises(ValueError, match="evals.fid.extra_metrics"):
    config_lib.validate(c)
