"""Tests for FID statistics, the Fréchet distance and reference-file readers."""

import os

import numpy as np
import pytest

from shortcut_jax.evaluators import fid


def _random_spd(rng, dim, rank=None):
  rank = dim if rank is None else rank
  a = rng.normal(size=(dim, rank))
  return a @ a.T / rank + (0.0 if rank < dim else 0.1) * np.eye(dim)


def _random_rotation(rng, dim):
  q, r = np.linalg.qr(rng.normal(size=(dim, dim)))
  return q * np.sign(np.diag(r))


# --- Fréchet distance --------------------------------------------------------


@pytest.mark.parametrize('eps', [0.0, 1e-6, 1e-2])
def test_fid_diagonal_closed_form(eps):
  rng = np.random.default_rng(0)
  dim = 12
  mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
  a, b = rng.uniform(0.1, 3.0, dim), rng.uniform(0.1, 3.0, dim)
  # For diagonal covariances sqrtm((A+e)(B+e)) = diag(sqrt((a+e)(b+e))).
  expected = (np.sum((mu1 - mu2) ** 2) + np.sum(a) + np.sum(b) -
              2 * np.sum(np.sqrt((a + eps) * (b + eps))))
  got = fid.fid_from_stats(mu1, np.diag(a), mu2, np.diag(b), eps=eps)
  assert got == pytest.approx(expected, rel=1e-10, abs=1e-10)


def test_fid_commuting_covariances_closed_form():
  rng = np.random.default_rng(1)
  dim = 20
  q = _random_rotation(rng, dim)
  a, b = rng.uniform(0.2, 4.0, dim), rng.uniform(0.2, 4.0, dim)
  sigma1, sigma2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
  mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
  eps = 1e-6
  expected = (np.sum((mu1 - mu2) ** 2) + np.sum(a) + np.sum(b) -
              2 * np.sum(np.sqrt((a + eps) * (b + eps))))
  got = fid.fid_from_stats(mu1, sigma1, mu2, sigma2)
  assert got == pytest.approx(expected, rel=1e-9)


def test_fid_random_spd_matches_eigendecomposition():
  rng = np.random.default_rng(2)
  dim, eps = 32, 1e-6
  sigma1, sigma2 = _random_spd(rng, dim), _random_spd(rng, dim)
  mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
  # Tr sqrt(S1 S2) = Tr sqrt(S1^1/2 S2 S1^1/2), a symmetric PSD matrix whose
  # square root trace is the sum of sqrt of its eigenvalues.
  s1 = sigma1 + eps * np.eye(dim)
  s2 = sigma2 + eps * np.eye(dim)
  w, v = np.linalg.eigh(s1)
  root1 = (v * np.sqrt(w)) @ v.T
  tr_sqrt = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1),
                                   0, None)))
  expected = (np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) -
              2 * tr_sqrt)
  got = fid.fid_from_stats(mu1, sigma1, mu2, sigma2, eps=eps)
  assert got == pytest.approx(expected, rel=1e-8)
  assert got > 0
  # The general matrix square root (pytorch-fid's way) gives the same trace.
  import scipy.linalg
  tr_sqrtm = np.trace(scipy.linalg.sqrtm(s1 @ s2)).real
  assert tr_sqrt == pytest.approx(tr_sqrtm, rel=1e-8)


def test_fid_identical_stats_is_zero():
  rng = np.random.default_rng(3)
  dim = 64
  feats = rng.normal(size=(500, dim))
  mu, sigma = feats.mean(0), np.cov(feats, rowvar=False)
  assert fid.fid_from_stats(mu, sigma, mu, sigma, eps=0.0) == pytest.approx(
      0.0, abs=1e-8)
  # With the offset the formula gives exactly -2 * dim * eps.
  assert fid.fid_from_stats(mu, sigma, mu, sigma) == pytest.approx(
      -2 * dim * 1e-6, abs=1e-8)


def test_fid_singular_covariances_stay_finite():
  # Fewer samples than dimensions, as with small evaluation sets.
  rng = np.random.default_rng(4)
  dim = 40
  x, y = rng.normal(size=(10, dim)), rng.normal(size=(10, dim)) + 0.5
  value = fid.fid_from_stats(x.mean(0), np.cov(x, rowvar=False), y.mean(0),
                             np.cov(y, rowvar=False))
  assert np.isfinite(value) and value > 0


def test_fid_shape_mismatch_raises():
  with pytest.raises(ValueError, match='shapes differ'):
    fid.fid_from_stats(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# --- Streaming statistics ----------------------------------------------------


def test_running_stats_matches_one_pass_numpy():
  rng = np.random.default_rng(5)
  dim = 16
  # A large offset makes a naive sum-of-squares accumulation lose precision.
  features = rng.normal(size=(100, dim)) * rng.uniform(0.1, 3, dim) + 1e3
  stats = fid.RunningStats()
  start = 0
  for size in [1, 7, 0, 30, 2, 60]:
    stats.update(features[start:start + size].astype(np.float64))
    start += size
  assert start == 100 and stats.count == 100
  mu, sigma = stats.result()
  np.testing.assert_allclose(mu, features.mean(0), rtol=0, atol=1e-10)
  np.testing.assert_allclose(sigma, np.cov(features, rowvar=False), rtol=0,
                             atol=1e-10)


def test_running_stats_errors():
  stats = fid.RunningStats()
  stats.update(np.zeros((1, 3)))
  with pytest.raises(ValueError, match='at least 2'):
    stats.result()
  with pytest.raises(ValueError, match='dimension'):
    stats.update(np.zeros((2, 4)))


def test_compute_stats_streams_and_truncates():
  rng = np.random.default_rng(6)
  projection = rng.normal(size=(2 * 2 * 3, 5))
  images = rng.uniform(-1, 1, size=(23, 2, 2, 3)).astype(np.float32)

  def feature_fn(batch):
    return np.asarray(batch).reshape(len(batch), -1) @ projection

  batches = (images[i:i + 4] for i in range(0, 23, 4))
  mu, sigma = fid.compute_stats(feature_fn, batches, num_images=18,
                                progress=True)
  feats = images[:18].reshape(18, -1).astype(np.float64) @ projection
  np.testing.assert_allclose(mu, feats.mean(0), atol=1e-6)
  np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False), atol=1e-6)

  with pytest.raises(ValueError, match='ran out after 23'):
    fid.compute_stats(feature_fn, (images[i:i + 4] for i in range(0, 23, 4)),
                      num_images=30, progress=False)


# --- Reference files ---------------------------------------------------------


def test_load_mu_sigma_npz(tmp_path):
  rng = np.random.default_rng(7)
  mu, sigma = rng.normal(size=8), _random_spd(rng, 8)
  path = tmp_path / 'ref.npz'
  np.savez(path, mu=mu, sigma=sigma)
  ref = fid.load_reference_stats(str(path))
  assert ref.has_stats and ref.images is None
  np.testing.assert_array_equal(ref.mu, mu)
  np.testing.assert_array_equal(ref.sigma, sigma)


def test_load_adm_images_and_compute_stats(tmp_path):
  rng = np.random.default_rng(8)
  images = rng.integers(0, 256, size=(9, 4, 4, 3), dtype=np.uint8)
  path = tmp_path / 'VIRTUAL_tiny.npz'
  np.savez(path, arr_0=images)
  ref = fid.load_reference_stats(str(path))
  assert not ref.has_stats and ref.mu is None
  np.testing.assert_array_equal(ref.images, images)

  def feature_fn(batch):
    batch = np.asarray(batch)
    assert batch.dtype == np.float32
    assert batch.min() >= -1.0 and batch.max() <= 1.0
    return batch.reshape(len(batch), -1)[:, :6]

  mu, sigma = fid.reference_mu_sigma(ref, feature_fn, batch_size=4,
                                     progress=False)
  feats = (images.reshape(9, -1)[:, :6].astype(np.float64) / 127.5 - 1.0)
  np.testing.assert_allclose(mu, feats.mean(0), atol=1e-6)
  np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False), atol=1e-6)
  with pytest.raises(ValueError, match='feature_fn'):
    fid.reference_mu_sigma(ref)


def test_adm_file_with_stats_uses_them(tmp_path):
  images = np.zeros((2, 4, 4, 3), np.uint8)
  path = tmp_path / 'adm.npz'
  np.savez(path, arr_0=images, mu=np.ones(3), sigma=np.eye(3),
           mu_s=np.zeros(2), sigma_s=np.eye(2))
  ref = fid.load_reference_stats(str(path))
  assert ref.has_stats and ref.images is not None

  def feature_fn(_):
    raise AssertionError('statistics were stored; no features needed')

  mu, sigma = fid.reference_mu_sigma(ref, feature_fn)
  np.testing.assert_array_equal(mu, np.ones(3))
  np.testing.assert_array_equal(sigma, np.eye(3))


def test_missing_key_is_a_clear_error(tmp_path):
  path = tmp_path / 'bad.npz'
  np.savez(path, mu=np.zeros(3))
  with pytest.raises(ValueError, match=r"expected 'mu' and 'sigma'"):
    fid.load_reference_stats(str(path))


def test_truncated_file_is_a_clear_error(tmp_path):
  good = tmp_path / 'good.npz'
  np.savez(good, mu=np.zeros(100), sigma=np.eye(100))
  data = good.read_bytes()
  bad = tmp_path / 'truncated.npz'
  bad.write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match='truncated or corrupt'):
    fid.load_reference_stats(str(bad))
  garbage = tmp_path / 'garbage.npz'
  garbage.write_bytes(b'not an npz at all')
  with pytest.raises(ValueError, match=str(garbage)):
    fid.load_reference_stats(str(garbage))


def test_missing_file_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='nope.npz'):
    fid.load_reference_stats(str(tmp_path / 'nope.npz'))


def test_save_stats_round_trip(tmp_path):
  rng = np.random.default_rng(9)
  mu, sigma = rng.normal(size=5), _random_spd(rng, 5)
  path = str(tmp_path / 'stats')  # No suffix: written exactly here.
  fid.save_stats(path, mu, sigma, num_images=123, source='celebahq')
  assert os.path.isfile(path)
  ref = fid.load_reference_stats(path)
  np.testing.assert_array_equal(ref.mu, mu)
  np.testing.assert_array_equal(ref.sigma, sigma)
  with np.load(path) as data:
    assert int(data['num_images']) == 123
    assert str(data['source']) == 'celebahq'
  with pytest.raises(ValueError, match='pickling'):
    fid.save_stats(path, mu, sigma, config={'a': 1})
