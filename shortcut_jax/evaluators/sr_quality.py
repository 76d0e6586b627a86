"""Super-resolution quality: PSNR and SSIM on RGB and on the luma (Y) channel, in numpy.

Conventions (those of the SR literature, so the numbers compare with published tables):
  * images in the library's [-1, 1] range are mapped to [0, 255] and, by default, rounded to
    integers (what a saved 8-bit PNG holds) before any metric; `data_range` is then 255;
  * Y is ITU-R BT.601 luma of the studio-swing YCbCr (MATLAB's `rgb2ycbcr`):
    `Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255` for R, G, B in [0, 255];
  * SSIM is Wang et al.'s (2004): an 11×11 Gaussian window (sigma 1.5, truncated at 3.5
    sigma), K1 = 0.01, K2 = 0.03, population (not sample) covariances, averaged over the
    positions where the window fits inside the image, then over channels. This matches
    `skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)`, which the tests compare against;
  * `crop_border` pixels can be shaved off every side first (SR papers shave the scale factor);
  * beside them HaarPSI (`evaluators.haarpsi`), a perceptual index that needs no weights.
`psnr` and `ssim` score one image pair; `sr_metrics_per_image` scores a batch (one value per
image and metric) and `sr_metrics` averages it. `bicubic_baseline` gives the bicubic upscaling
of the LR input, the baseline every SR model must beat.
"""

from typing import Dict, Optional

import numpy as np

from shortcut_jax.data import low_res
from shortcut_jax.evaluators import haarpsi

# ITU-R BT.601 studio-swing luma from RGB in [0, 255] (offset, then weights per 255).
_Y_OFFSET = 16.0
_Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0
# Wang et al.'s SSIM constants and Gaussian window.
_K1, _K2 = 0.01, 0.03
_SIGMA = 1.5
_TRUNCATE = 3.5


def psnr(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
  """Peak signal-to-noise ratio `10 log10(data_range² / MSE)` over all elements, in dB.

  Args:
    a: reference image (any shape).
    b: image to score, same shape.
    data_range: max - min of the value scale (255 for 8-bit images, 2 for [-1, 1]).

  Returns:
    PSNR in dB (inf for identical images).
  """
  a, b = _pair(a, b)
  mse = np.mean((a - b) ** 2)
  if mse == 0:
    return float("inf")
  return float(10.0 * np.log10(data_range ** 2 / mse))


def _pair(a, b):
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"images have different shapes {a.shape} and {b.shape}")
  return a, b


def _gaussian_kernel(sigma: float = _SIGMA, truncate: float = _TRUNCATE) -> np.ndarray:
  radius = int(truncate * sigma + 0.5)
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  kernel = np.exp(-0.5 * (x / sigma) ** 2)
  return kernel / kernel.sum()


def _filter_valid(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
  """Separable correlation of a 2-D array with `kernel`, only where the window fits."""
  taps = len(kernel)
  rows = x.shape[0] - taps + 1
  x = sum(kernel[k] * x[k:k + rows] for k in range(taps))
  cols = x.shape[1] - taps + 1
  return sum(kernel[k] * x[:, k:k + cols] for k in range(taps))


def _ssim_2d(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
  kernel = _gaussian_kernel()
  if min(a.shape) < len(kernel):
    raise ValueError(f"SSIM needs images of at least {len(kernel)}x{len(kernel)} pixels, "
                     f"got {a.shape}")
  mu_a, mu_b = _filter_valid(a, kernel), _filter_valid(b, kernel)
  var_a = _filter_valid(a * a, kernel) - mu_a ** 2
  var_b = _filter_valid(b * b, kernel) - mu_b ** 2
  cov = _filter_valid(a * b, kernel) - mu_a * mu_b
  c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
  ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)
              / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)))
  # The border where the window does not fit is left out, as in Wang et al.'s reference code.
  return float(ssim_map.mean())


def ssim(a: np.ndarray, b: np.ndarray, data_range: float,
         channel_axis: Optional[int] = -1) -> float:
  """Structural similarity (Gaussian window; see the module docstring) of one image pair.

  Args:
    a: reference image, [H, W] or with a channel axis.
    b: image to score, same shape.
    data_range: max - min of the value scale (255 for 8-bit images).
    channel_axis: axis of the channels (SSIM is the mean over them), None for a grey [H, W].

  Returns:
    SSIM in [-1, 1] (1 for identical images).
  """
  a, b = _pair(a, b)
  if channel_axis is None:
    if a.ndim != 2:
      raise ValueError(f"expected a grey image [H, W] with channel_axis=None, got {a.shape}")
    return _ssim_2d(a, b, data_range)
  a, b = np.moveaxis(a, channel_axis, -1), np.moveaxis(b, channel_axis, -1)
  if a.ndim != 3:
    raise ValueError(f"expected an image [H, W, C] (channels at {channel_axis}), got {a.shape}")
  return float(np.mean([_ssim_2d(a[..., c], b[..., c], data_range)
                        for c in range(a.shape[-1])]))


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
  """BT.601 studio-swing luma (16..235) of RGB values in [0, 255]; channels last.

  Args:
    rgb: array [..., 3] in [0, 255].

  Returns:
    float64 array [...] (no channel axis).
  """
  rgb = np.asarray(rgb, np.float64)
  if rgb.shape[-1] != 3:
    raise ValueError(f"expected RGB channels last, got shape {rgb.shape}")
  return _Y_OFFSET + rgb @ _Y_WEIGHTS


def to_pixels(images: np.ndarray, quantize: bool = True) -> np.ndarray:
  """Maps [-1, 1] images to [0, 255] (clipped), rounded to integers when `quantize`."""
  pixels = np.clip((np.asarray(images, np.float64) + 1.0) * 127.5, 0.0, 255.0)
  return np.round(pixels) if quantize else pixels


def sr_metrics_per_image(reference: np.ndarray, images: np.ndarray, *, crop_border: int = 0,
                         quantize: bool = True) -> Dict[str, np.ndarray]:
  """PSNR and SSIM of every image of a batch against its reference, on RGB and on Y.

  Args:
    reference: HR images [b, H, W, C] in [-1, 1] (C = 3, or 1 for grey).
    images: super-resolved (or baseline) images, same shape and range.
    crop_border: pixels shaved off each side before scoring.
    quantize: round to 8-bit values first (module docstring).

  Returns:
    `{'psnr_rgb', 'ssim_rgb', 'psnr_y', 'ssim_y', 'haarpsi'}`, each float64 [b] (HaarPSI:
    the perceptual index of `evaluators.haarpsi`, on the colour image; higher is better;
    needs sides of at least 16 pixels, else absent). For grey images
    (C = 1) the Y metrics are those of the single channel.
  """
  reference, images = _pair(reference, images)
  if reference.ndim != 4:
    raise ValueError(f"expected batches [b, H, W, C], got shape {reference.shape}")
  if crop_border:
    reference = reference[:, crop_border:-crop_border, crop_border:-crop_border]
    images = images[:, crop_border:-crop_border, crop_border:-crop_border]
  reference, images = to_pixels(reference, quantize), to_pixels(images, quantize)
  if reference.shape[-1] == 3:
    ref_y, img_y = rgb_to_y(reference), rgb_to_y(images)
  else:
    ref_y, img_y = reference[..., 0], images[..., 0]
  out = {name: np.empty(len(reference)) for name in ("psnr_rgb", "ssim_rgb", "psnr_y", "ssim_y")}
  for i in range(len(reference)):
    out["psnr_rgb"][i] = psnr(reference[i], images[i], 255.0)
    out["ssim_rgb"][i] = ssim(reference[i], images[i], 255.0, channel_axis=-1)
    out["psnr_y"][i] = psnr(ref_y[i], img_y[i], 255.0)
    out["ssim_y"][i] = ssim(ref_y[i], img_y[i], 255.0, channel_axis=None)
  if min(reference.shape[1:3]) >= haarpsi.MIN_SIZE:
    out["haarpsi"] = haarpsi.haarpsi(reference, images)
  return out


def sr_metrics(reference: np.ndarray, images: np.ndarray, *, crop_border: int = 0,
               quantize: bool = True) -> Dict[str, float]:
  """Batch means of `sr_metrics_per_image` (same arguments), as plain floats.

  A pair of identical images has infinite PSNR; the mean is then infinite too.
  """
  per_image = sr_metrics_per_image(reference, images, crop_border=crop_border,
                                   quantize=quantize)
  return {name: float(np.mean(values)) for name, values in per_image.items()}


def bicubic_baseline(hr: np.ndarray, factor: int) -> np.ndarray:
  """The bicubic SR baseline: `hr` degraded to LR by `factor` and upsampled back.

  The same degradation as the training pipeline's `cond_image` (`data.low_res`), so
  `sr_metrics(hr, bicubic_baseline(hr, f))` is what the model has to improve on.

  Args:
    hr: [H, W, C] or [b, H, W, C] in [-1, 1], sides divisible by `factor`.
    factor: the super-resolution factor.

  Returns:
    float32 numpy array, same shape as `hr`.
  """
  return np.asarray(low_res.cond_image(np.asarray(hr, np.float32), factor))
