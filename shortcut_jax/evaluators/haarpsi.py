"""HaarPSI: a perceptual similarity index that needs no learned weights, in numpy.

Reisenhofer, Bosse, Kutyniok & Wiegand, "A Haar wavelet-based perceptual similarity index for
image quality assessment" (Signal Processing: Image Communication, 2018). It compares the local
Haar-wavelet magnitudes of two images at the two finest scales, weights every position by the
coarsest scale's magnitude (where the eye looks: edges and texture, not flat areas), and maps the
weighted mean similarity back through a logistic; 1 for identical images, lower is worse. In the
authors' study it agrees with human quality ratings better than SSIM, FSIM or VIF on the
standard databases, so it sits beside PSNR and SSIM where LPIPS weights are absent.

This follows the conventions of piq's `haarpsi` (the maintained PyTorch package, which the
reference tests compare against): images on a [0, 255] scale; colour images in YIQ, with the
chroma similarity of the 2x2 means of I and Q as a third map; a 2x2 average subsampling first
(viewing distance); Haar filters of sizes 2, 4, 8 with MATLAB's 'same' padding; C = 30,
alpha = 4.2.
"""

import numpy as np

C = 30.0
ALPHA = 4.2
SCALES = 3
MIN_SIZE = 2 ** (SCALES + 1)  # Pixels a side.
# RGB -> YIQ (NTSC), rows Y, I, Q.
_YIQ = np.array([[0.299, 0.587, 0.114],
                 [0.5959, -0.2746, -0.3213],
                 [0.2115, -0.5227, 0.3112]])


def _pad(x: np.ndarray, before: int, after: int) -> np.ndarray:
  """Zero padding of the two image axes of [b, H, W, ...]."""
  widths = [(0, 0), (before, after), (before, after)] + [(0, 0)] * (x.ndim - 3)
  return np.pad(x, widths)


def _correlate(x: np.ndarray, taps: np.ndarray, axis: int) -> np.ndarray:
  """'Valid' correlation of `x` with the 1-D `taps` along `axis`."""
  n = x.shape[axis] - len(taps) + 1
  index = lambda k: (slice(None),) * axis + (slice(k, k + n),)
  return sum(t * x[index(k)] for k, t in enumerate(taps))


def _haar(luma: np.ndarray, size: int):
  """(vertical, horizontal) Haar responses of [b, H, W] at filter size `size`, 'same' size.

  The filter is +1/size on its upper half and -1/size on its lower half (and its transpose),
  with MATLAB conv2's 'same' padding (size/2 - 1 before, size/2 after)."""
  padded = _pad(luma, size // 2 - 1, size // 2)
  sign = np.where(np.arange(size) < size // 2, 1.0, -1.0)
  flat = np.full(size, 1.0 / size)
  rows = _correlate(_correlate(padded, sign, 1), flat, 2)
  cols = _correlate(_correlate(padded, flat, 1), sign, 2)
  return rows, cols


def _similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  return (2.0 * a * b + C) / (a * a + b * b + C)


def haarpsi(reference: np.ndarray, images: np.ndarray) -> np.ndarray:
  """HaarPSI of every image of a batch against its reference.

  Args:
    reference: [b, H, W, C] on a [0, 255] scale, C = 3 (RGB) or 1; H, W >= 16.
    images: same shape and scale.

  Returns:
    float64 [b] in (0, 1], 1 for identical images.
  """
  x = np.asarray(reference, np.float64)
  y = np.asarray(images, np.float64)
  if x.shape != y.shape or x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ValueError(f"expected two batches [b, H, W, 1 or 3] of one shape, got {x.shape} and "
                     f"{y.shape}")
  if min(x.shape[1:3]) < MIN_SIZE:
    raise ValueError(f"HaarPSI needs images of at least {MIN_SIZE} pixels a side, got "
                     f"{x.shape[1]}x{x.shape[2]}")
  colour = x.shape[-1] == 3
  if colour:
    x, y = x @ _YIQ.T, y @ _YIQ.T
  # Subsampling: 2x2 means, after one row and column of zeros when a side is odd.
  odd = max(x.shape[1] % 2, x.shape[2] % 2)
  x, y = _mean_pool(_pad_end(x, odd)), _mean_pool(_pad_end(y, odd))
  coeffs_x = [_haar(x[..., 0], 2 ** (s + 1)) for s in range(SCALES)]
  coeffs_y = [_haar(y[..., 0], 2 ** (s + 1)) for s in range(SCALES)]
  weights, maps = [], []
  for o in range(2):  # The two orientations.
    weights.append(np.maximum(np.abs(coeffs_x[-1][o]), np.abs(coeffs_y[-1][o])))
    maps.append(sum(_similarity(np.abs(coeffs_x[s][o]), np.abs(coeffs_y[s][o]))
                    for s in range(2)) / 2)
  if colour:
    # Chroma: the 2x2 means (one zero row and column after the end) of I and Q.
    mean2 = lambda z: (lambda p: 0.25 * (p[:, :-1, :-1] + p[:, 1:, :-1] + p[:, :-1, 1:]
                                         + p[:, 1:, 1:]))(_pad_end(z[..., 1:], 1))
    cx, cy = np.abs(mean2(x)), np.abs(mean2(y))
    weights.append((weights[0] + weights[1]) / 2)
    maps.append(_similarity(cx, cy).sum(-1) / 2)
  weights, maps = np.stack(weights, 1), np.stack(maps, 1)
  eps = np.finfo(np.float64).eps
  logistic = 1.0 / (1.0 + np.exp(-ALPHA * maps))
  score = ((logistic * weights).sum((1, 2, 3)) + eps) / (weights.sum((1, 2, 3)) + eps)
  return (np.log(score / (1.0 - score)) / ALPHA) ** 2


def _pad_end(x: np.ndarray, n: int) -> np.ndarray:
  """`n` zero rows and columns after the end of the two image axes of [b, H, W, ...]."""
  widths = [(0, 0), (0, n), (0, n)] + [(0, 0)] * (x.ndim - 3)
  return np.pad(x, widths)


def _mean_pool(x: np.ndarray) -> np.ndarray:
  """2x2 means with stride 2 of [b, H, W, C] (a last odd row or column is dropped)."""
  h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
  x = x[:, :h, :w]
  return 0.25 * (x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2])
