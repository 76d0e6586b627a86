"""Fréchet Inception Distance: feature statistics, reference files, the distance.

FID between two Gaussians fitted to Inception pool features, the original code's formula
(kvfrans/shortcut-models; pytorch-fid adds e only when its `sqrtm` fails):

  FID = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 sqrtm((S1 + eI)(S2 + eI))),  e = 1e-6,

where `fid_from_stats` takes the trace of the matrix square root from two symmetric
eigendecompositions (numpy `eigh`, `eigvalsh`) instead of `scipy.linalg.sqrtm`.

Statistics are accumulated in float64 with a streaming (Chan et al.) update so
that any split into batches gives the one-pass `np.mean` / `np.cov` result
(ddof=1, as pytorch-fid and the original use).

Reference statistics are `.npz` files holding `mu` and `sigma` (the
original's and pytorch-fid's), or ADM reference batches whose `arr_0` holds
uint8 images NHWC (and which may also carry `mu`/`sigma`; those are used when
present).
"""

import os
from typing import Any, Callable, Iterable, NamedTuple, Optional, Tuple

from absl import logging
import numpy as np

from shortcut_jax import storage

Array = Any


class RunningStats:
  """Streaming mean and covariance of feature vectors, in float64."""

  def __init__(self, dim: Optional[int] = None):
    """Creates empty statistics.

    Args:
      dim: feature dimension; taken from the first batch when None.
    """
    self.dim = dim
    self.count = 0
    self._mean = None
    self._m2 = None  # Sum of outer products of deviations from the mean.

  def update(self, features: Array) -> None:
    """Adds a batch of features [N, D] (N may be 0)."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
      raise ValueError(f'features must be [N, D], got shape {x.shape}')
    if self.dim is None:
      self.dim = x.shape[1]
    if x.shape[1] != self.dim:
      raise ValueError(f'features have dimension {x.shape[1]}, expected '
                       f'{self.dim}')
    n = x.shape[0]
    if n == 0:
      return
    batch_mean = x.mean(axis=0)
    centred = x - batch_mean
    batch_m2 = centred.T @ centred
    if self.count == 0:
      self._mean, self._m2, self.count = batch_mean, batch_m2, n
      return
    total = self.count + n
    delta = batch_mean - self._mean
    self._mean = self._mean + delta * (n / total)
    self._m2 = self._m2 + batch_m2 + np.outer(delta, delta) * (
        self.count * n / total)
    self.count = total

  def merge(self, other: 'RunningStats') -> None:
    """Adds the feature vectors `other` has seen (Chan et al.'s pairwise update)."""
    if other.count == 0:
      return
    if self.dim is not None and other.dim != self.dim:
      raise ValueError(f'cannot merge statistics of dimension {other.dim} into {self.dim}')
    if self.count == 0:
      self.dim, self.count = other.dim, other.count
      self._mean, self._m2 = other._mean.copy(), other._m2.copy()
      return
    total = self.count + other.count
    delta = other._mean - self._mean
    self._mean = self._mean + delta * (other.count / total)
    self._m2 = self._m2 + other._m2 + np.outer(delta, delta) * (
        self.count * other.count / total)
    self.count = total

  def combine_processes(self) -> 'RunningStats':
    """The statistics of the feature vectors every process of the JAX job has seen.

    A collective: every process calls it. The float64 sums travel bit for bit (as uint32
    pairs, whatever `jax_enable_x64` says) through `multihost_utils.process_allgather` and
    are merged in process order, so every process gets the same result. One process: self.
    Memory: every host holds one [D, D] float64 matrix per process (32 MiB each at D=2048).
    """
    import jax  # pylint: disable=g-import-not-at-top
    if jax.process_count() == 1:
      return self
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    dims = multihost_utils.process_allgather(np.int32(self.dim or 0))
    dim = int(np.max(dims))
    if dim == 0:
      return RunningStats()
    mean = self._mean if self.count else np.zeros(dim)
    m2 = self._m2 if self.count else np.zeros((dim, dim))
    packed = np.concatenate([np.asarray([self.count], np.float64), mean, m2.ravel()])
    gathered = np.asarray(multihost_utils.process_allgather(packed.view(np.uint32)))
    out = RunningStats(dim)
    for row in gathered.reshape(jax.process_count(), -1):
      values = np.ascontiguousarray(row).view(np.float64)
      part = RunningStats(dim)
      part.count = int(values[0])
      if part.count:
        part._mean, part._m2 = values[1:dim + 1], values[dim + 1:].reshape(dim, dim)
        out.merge(part)
    return out

  def result(self) -> Tuple[np.ndarray, np.ndarray]:
    """Returns (mu [D], sigma [D, D]) with the unbiased covariance (ddof=1)."""
    if self.count < 2:
      raise ValueError(f'need at least 2 feature vectors, have {self.count}')
    return self._mean.copy(), self._m2 / (self.count - 1)


def fid_from_stats(mu1: Array, sigma1: Array, mu2: Array, sigma2: Array,
                   eps: float = 1e-6) -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

  Args:
    mu1: mean [D] of the first set.
    sigma1: covariance [D, D] of the first set.
    mu2: mean [D] of the second set.
    sigma2: covariance [D, D] of the second set.
    eps: added to both diagonals inside the matrix square root, so that
      singular covariances (fewer samples than dimensions) stay well posed.

  Returns:
    The distance as a Python float.

  Raises:
    ValueError: shapes disagree, or the covariances are not finite / not
      positive semi-definite.
  """
  mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
  mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f'shapes differ: mu {mu1.shape} vs {mu2.shape}, sigma '
                     f'{sigma1.shape} vs {sigma2.shape}')
  if sigma1.shape != (mu1.shape[0],) * 2:
    raise ValueError(f'sigma shape {sigma1.shape} does not match mu shape '
                     f'{mu1.shape}')
  diff = mu1 - mu2
  offset = np.eye(sigma1.shape[0]) * eps
  a, b = sigma1 + offset, sigma2 + offset
  # Tr sqrtm(A B) = sum of sqrt(eigenvalues of A^1/2 B A^1/2): A^1/2 B A^1/2 is symmetric
  # positive semi-definite and similar to A B, so two `eigh` calls replace the general `sqrtm`
  # (seconds instead of about a minute for 2048-d features) with the same value.
  w, v = np.linalg.eigh((a + a.T) / 2)
  if not np.all(np.isfinite(w)):
    raise ValueError('covariance is not finite; the statistics are degenerate')
  a_half = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  m = a_half @ b @ a_half
  eig = np.linalg.eigvalsh((m + m.T) / 2)
  scale = max(np.abs(eig).max(), 1e-300)
  if eig.min() < -1e-6 * scale:
    raise ValueError(f'covariance product has a negative eigenvalue {eig.min():.3g} '
                     f'(largest {scale:.3g}); the covariances are not positive '
                     'semi-definite')
  tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


class ReferenceStats(NamedTuple):
  """Contents of a reference file.

  Attributes:
    mu: feature mean [D], or None when only images are stored.
    sigma: feature covariance [D, D], or None.
    images: uint8 images [N, H, W, 3] (ADM's `arr_0`), or None.
  """
  mu: Optional[np.ndarray]
  sigma: Optional[np.ndarray]
  images: Optional[np.ndarray]

  @property
  def has_stats(self) -> bool:
    return self.mu is not None and self.sigma is not None


def load_reference_stats(path: str) -> ReferenceStats:
  """Reads reference statistics or ADM reference images from an `.npz`.

  Args:
    path: `.npz` (local or remote, `storage`) with `mu` and `sigma` (original /
      pytorch-fid), or an ADM reference batch with `arr_0` (uint8 NHWC) and optionally
      `mu`/`sigma`.
      When both are present, the images are still returned but `mu`/`sigma`
      are what `reference_mu_sigma` uses.

  Returns:
    A `ReferenceStats`.

  Raises:
    FileNotFoundError: the file does not exist.
    ValueError: the file is not a readable `.npz`, or lacks both
      `mu`+`sigma` and `arr_0`, or the arrays have the wrong shapes.
  """
  path = os.fspath(path) if storage.is_remote(path) else os.path.expanduser(os.fspath(path))
  if not storage.isfile(path):
    raise FileNotFoundError(f'FID reference file {path} does not exist')
  try:
    # A file object: a remote file is read in blocks as numpy asks for them, never twice.
    with storage.open(path, 'rb') as f, np.load(f, allow_pickle=False) as data:
      keys = set(data.files)
      has_stats = {'mu', 'sigma'} <= keys
      mu = np.asarray(data['mu'], np.float64) if has_stats else None
      sigma = np.asarray(data['sigma'], np.float64) if has_stats else None
      images = np.asarray(data['arr_0']) if 'arr_0' in keys else None
  except Exception as e:  # zipfile/zlib/OSError/ValueError on a bad file.
    raise ValueError(f'cannot read FID reference file {path}: not a valid '
                     f'.npz (truncated or corrupt?): {e!r}') from e
  if not has_stats and images is None:
    raise ValueError(f'FID reference file {path} has keys {sorted(keys)}; '
                     "expected 'mu' and 'sigma', or 'arr_0' (ADM images)")
  if has_stats:
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
      raise ValueError(f'{path}: mu shape {mu.shape} and sigma shape '
                       f'{sigma.shape} do not form [D] and [D, D]')
  if images is not None and (images.ndim != 4 or images.shape[-1] != 3):
    raise ValueError(f'{path}: arr_0 has shape {images.shape}; expected '
                     'uint8 images [N, H, W, 3]')
  return ReferenceStats(mu=mu, sigma=sigma, images=images)


def save_stats(path: str, mu: Array, sigma: Array, **meta: Any) -> None:
  """Writes `mu`, `sigma` and scalar/array metadata to an `.npz`.

  Args:
    path: destination (local or remote, `storage`); written exactly there (no suffix is
      added), whole (locally through a temporary file and a rename).
    mu: feature mean [D].
    sigma: feature covariance [D, D].
    **meta: extra entries (e.g. num_images=50000, source='celebahq256'),
      stored as numpy arrays; no pickled objects.
  """
  arrays = {k: np.asarray(v) for k, v in meta.items()}
  for key, value in arrays.items():
    if value.dtype == object:
      raise ValueError(f'metadata {key!r} is not representable without '
                       'pickling')
  storage.write_npz(path, mu=np.asarray(mu, np.float64),
                    sigma=np.asarray(sigma, np.float64), **arrays)


def progress_bar(total: Optional[int], desc: str = 'FID features', unit: str = 'img'):
  """A tqdm bar counting `unit`s (rate and ETA), or None when tqdm is unavailable.

  The library's one progress bar: `progress.progress_bar` wraps it for sampling, FID and SR
  metrics (process 0 only).
  """
  try:
    import tqdm  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return tqdm.tqdm(total=total, unit=unit, desc=desc, leave=False, unit_scale=False,
                   mininterval=1.0)


def compute_stats(feature_fn: Callable[[Array], Array],
                  image_batches: Iterable[Array],
                  num_images: Optional[int] = None,
                  progress: bool = True) -> Tuple[np.ndarray, np.ndarray]:
  """Streams image batches through `feature_fn` into (mu, sigma).

  Args:
    feature_fn: images [B, H, W, 3] float in [-1, 1] -> features [B, D]
      (e.g. from `shortcut_jax.models.inception.load_inception`).
    image_batches: iterable of float image batches in [-1, 1], NHWC.
    num_images: stop after this many images (the last batch is truncated);
      None consumes the whole iterable.
    progress: show a tqdm bar (and log a summary with absl).

  Returns:
    (mu [D], sigma [D, D]) in float64.

  Raises:
    ValueError: the iterable ends before `num_images` images.
  """
  stats = RunningStats()
  bar = progress_bar(num_images) if progress else None
  try:
    for batch in image_batches:
      if num_images is not None and stats.count >= num_images:
        break
      if num_images is not None:
        batch = batch[:num_images - stats.count]
      features = np.asarray(feature_fn(batch))
      stats.update(features)
      if bar is not None:
        bar.update(features.shape[0])
  finally:
    if bar is not None:
      bar.close()
  if num_images is not None and stats.count < num_images:
    raise ValueError(f'image batches ran out after {stats.count} images; '
                     f'{num_images} were asked for')
  if progress:
    logging.info('FID statistics from %d images.', stats.count)
  return stats.result()


def images_to_unit_range(images: Array) -> np.ndarray:
  """uint8 images in [0, 255] -> float32 in [-1, 1]."""
  return np.asarray(images, np.float32) / 127.5 - 1.0


def reference_mu_sigma(reference: ReferenceStats,
                       feature_fn: Optional[Callable[[Array], Array]] = None,
                       batch_size: int = 100,
                       progress: bool = True
                       ) -> Tuple[np.ndarray, np.ndarray]:
  """Returns the reference (mu, sigma), computing them from images if needed.

  Args:
    reference: from `load_reference_stats`.
    feature_fn: needed only when the file holds images without statistics.
    batch_size: images per `feature_fn` call.
    progress: progress display while computing.

  Returns:
    (mu, sigma) in float64.
  """
  if reference.has_stats:
    return reference.mu, reference.sigma
  if feature_fn is None:
    raise ValueError('the reference holds only images; pass feature_fn to '
                     'compute its statistics')
  images = reference.images
  batches = (images_to_unit_range(images[i:i + batch_size])
             for i in range(0, images.shape[0], batch_size))
  return compute_stats(feature_fn, batches, progress=progress)
