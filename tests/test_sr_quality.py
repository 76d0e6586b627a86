"""Tests of `shortcut_jax.evaluators.sr_quality` against scikit-image's metrics."""

import numpy as np
import pytest

from shortcut_jax.evaluators import sr_quality

skimage_metrics = pytest.importorskip("skimage.metrics")


def _skimage_ssim(a, b, data_range, channel_axis):
  return skimage_metrics.structural_similarity(
      a, b, data_range=data_range, channel_axis=channel_axis, gaussian_weights=True, sigma=1.5,
      use_sample_covariance=False)


def _y_reference(rgb):
  """BT.601 studio-swing luma written out channel by channel."""
  return 16 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255


def _noisy_pair(rng, shape, noise):
  a = rng.uniform(0, 255, shape)
  # A smooth reference makes SSIM informative (pure noise gives values near 0).
  a = (a + np.roll(a, 1, 0) + np.roll(a, 1, 1) + np.roll(a, (1, 1), (0, 1))) / 4
  return a, np.clip(a + rng.normal(0, noise, shape), 0, 255)


@pytest.mark.parametrize("shape,noise", [((32, 40, 3), 5.0), ((23, 17, 3), 20.0),
                                         ((64, 48, 1), 2.0)])
def test_psnr_and_ssim_match_skimage(shape, noise):
  rng = np.random.RandomState(shape[0])
  a, b = _noisy_pair(rng, shape, noise)
  ours = sr_quality.psnr(a, b, 255.0)
  ref = skimage_metrics.peak_signal_noise_ratio(a, b, data_range=255.0)
  assert abs(ours - ref) < 1e-6
  assert abs(sr_quality.ssim(a, b, 255.0) - _skimage_ssim(a, b, 255.0, -1)) < 1e-4
  # Grey [H, W] and channels first.
  assert abs(sr_quality.ssim(a[..., 0], b[..., 0], 255.0, channel_axis=None)
             - _skimage_ssim(a[..., 0], b[..., 0], 255.0, None)) < 1e-4
  first = np.moveaxis(a, -1, 0), np.moveaxis(b, -1, 0)
  assert abs(sr_quality.ssim(*first, 255.0, channel_axis=0)
             - _skimage_ssim(*first, 255.0, 0)) < 1e-4


def test_ssim_uint8_and_other_range():
  rng = np.random.RandomState(1)
  a, b = _noisy_pair(rng, (30, 30, 3), 10.0)
  a8, b8 = np.round(a).astype(np.uint8), np.round(b).astype(np.uint8)
  assert abs(sr_quality.ssim(a8, b8, 255) - _skimage_ssim(a8, b8, 255, -1)) < 1e-4
  a1, b1 = a / 127.5 - 1, b / 127.5 - 1
  assert abs(sr_quality.ssim(a1, b1, 2.0) - _skimage_ssim(a1, b1, 2.0, -1)) < 1e-4
  assert abs(sr_quality.psnr(a1, b1, 2.0) - sr_quality.psnr(a, b, 255.0)) < 1e-9


def test_identical_images():
  a = np.random.RandomState(0).uniform(0, 255, (16, 16, 3))
  assert sr_quality.psnr(a, a, 255.0) == float("inf")
  assert abs(sr_quality.ssim(a, a, 255.0) - 1.0) < 1e-12


def test_rgb_to_y_bt601():
  rgb = np.array([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]], float)
  y = sr_quality.rgb_to_y(rgb)
  # Studio swing: black 16, white 235; primaries by the BT.601 weights 0.299/0.587/0.114·219.
  np.testing.assert_allclose(y, [16, 235, 16 + 0.299 * 219, 16 + 0.587 * 219,
                                 16 + 0.114 * 219], atol=0.01)
  # skimage's rgb2ycbcr is the same convention (its input is in [0, 1]).
  color = pytest.importorskip("skimage.color")
  img = np.random.RandomState(2).uniform(0, 255, (8, 8, 3))
  np.testing.assert_allclose(sr_quality.rgb_to_y(img), color.rgb2ycbcr(img / 255.0)[..., 0],
                             atol=1e-9)


def test_batch_metrics_per_image_and_mean():
  rng = np.random.RandomState(3)
  pairs = [_noisy_pair(rng, (24, 24, 3), noise) for noise in (3.0, 12.0)]
  ref = np.stack([p[0] for p in pairs]) / 127.5 - 1
  img = np.stack([p[1] for p in pairs]) / 127.5 - 1
  per_image = sr_quality.sr_metrics_per_image(ref, img, crop_border=2)
  assert set(per_image) >= {"psnr_rgb", "ssim_rgb", "psnr_y", "ssim_y"}
  for i in range(2):
    r = np.round((ref[i] + 1) * 127.5)[2:-2, 2:-2]
    x = np.round((img[i] + 1) * 127.5)[2:-2, 2:-2]
    ry, xy = _y_reference(r), _y_reference(x)
    assert abs(per_image["psnr_rgb"][i]
               - skimage_metrics.peak_signal_noise_ratio(r, x, data_range=255)) < 1e-6
    assert abs(per_image["ssim_rgb"][i] - _skimage_ssim(r, x, 255, -1)) < 1e-4
    assert abs(per_image["psnr_y"][i]
               - skimage_metrics.peak_signal_noise_ratio(ry, xy, data_range=255)) < 1e-6
    assert abs(per_image["ssim_y"][i] - _skimage_ssim(ry, xy, 255, None)) < 1e-4
  assert per_image["psnr_rgb"][0] > per_image["psnr_rgb"][1]  # Less noise scores better.
  means = sr_quality.sr_metrics(ref, img, crop_border=2)
  for name, values in per_image.items():
    assert abs(means[name] - values.mean()) < 1e-12


def test_bicubic_baseline_is_worse_than_identity_and_better_than_flat():
  from skimage import data as sk_data
  hr = sk_data.astronaut()[:128, 160:288].astype(np.float32) / 127.5 - 1
  baseline = sr_quality.bicubic_baseline(hr[None], 4)
  assert baseline.shape == (1, 128, 128, 3) and baseline.dtype == np.float32
  scores = sr_quality.sr_metrics(hr[None], baseline)
  flat = sr_quality.sr_metrics(hr[None], np.full_like(hr[None], hr.mean()))
  assert 18 < scores["psnr_y"] < 40 and 0.3 < scores["ssim_y"] < 0.99
  assert scores["psnr_y"] > flat["psnr_y"] + 3 and scores["ssim_y"] > flat["ssim_y"] + 0.2
