"""Improved precision and recall (Kynkäänniemi et al. 2019) as ADM's evaluator computes them:
k-th-neighbour radii of each feature set's manifold (`manifold_radii`, in blocks, with ADM's
k = 3), then the share of one set inside the other's manifold (`precision_recall`)."""

import functools
from typing import Any, Tuple

import jax
import jax.numpy as jnp
import numpy as np

Array = Any

NEAREST_K = 3  # ADM's `ManifoldEstimator(nhood_sizes=(3,))`.
DISTANCE_BATCH = 10000  # ADM's row / column batch for pairwise distances.


@jax.jit
def _squared_distances(u: jax.Array, v: jax.Array) -> jax.Array:
  """ADM's `_batch_pairwise_distances`: max(|u|^2 - 2 u.v + |v|^2, 0), here in float32."""
  norm_u = jnp.sum(u * u, axis=1)[:, None]
  norm_v = jnp.sum(v * v, axis=1)[None, :]
  cross = jnp.dot(u, v.T, precision=jax.lax.Precision.HIGHEST)
  return jnp.maximum(norm_u - 2.0 * cross + norm_v, 0.0)


@functools.partial(jax.jit, static_argnums=4)
def _merge_smallest(best, rows, cols, cols_valid, count: int) -> jax.Array:
  """The `count` smallest squared distances of each row so far (padding columns ignored)."""
  d = jnp.where(cols_valid[None, :], _squared_distances(rows, cols), jnp.inf)
  return -jax.lax.top_k(-jnp.concatenate([best, d], axis=1), count)[0]


@jax.jit
def _inside(u, radii_u, v, radii_v):
  """(u within some v's radius, v within some u's radius) for two blocks (padding vectors
  have radius -1, so nothing lies within them)."""
  d = _squared_distances(u, v)
  return jnp.any(d <= radii_v[None, :], axis=1), jnp.any(d <= radii_u[:, None], axis=0)


class _Blocks:
  """Vectors cut into device blocks of `size` rows, the last one padded with zeros, so every
  distance computation has one shape (one compilation)."""

  def __init__(self, features: Array, size: int, name: str):
    x = np.asarray(features, np.float32)
    if x.ndim != 2:
      raise ValueError(f"{name} must be [N, D], got shape {x.shape}")
    self.n, self.size = x.shape[0], size
    x = np.concatenate([x, np.zeros((-self.n % size, x.shape[1]), np.float32)])
    self.blocks = [jnp.asarray(x[i:i + size]) for i in range(0, len(x), size)]
    valid = np.arange(len(x)) < self.n
    self.valid = [jnp.asarray(valid[i:i + size]) for i in range(0, len(x), size)]

  @property
  def dim(self) -> int:
    return self.blocks[0].shape[1] if self.blocks else 0

  def padded(self, values: np.ndarray, fill) -> list:
    """Per-vector `values` [N] cut like the blocks, padding set to `fill`."""
    values = np.concatenate([values, np.full(-self.n % self.size, fill, values.dtype)])
    return [jnp.asarray(values[i:i + self.size]) for i in range(0, len(values), self.size)]


def _radii(x: _Blocks, k: int) -> np.ndarray:
  if x.n <= k:
    raise ValueError(f"a k={k} nearest-neighbour radius needs more than {k} vectors, got {x.n}")
  radii = []
  for rows in x.blocks:
    best = jnp.full((x.size, k + 1), jnp.inf, jnp.float32)
    for cols, valid in zip(x.blocks, x.valid):
      best = _merge_smallest(best, rows, cols, valid, k + 1)
    radii.append(np.asarray(best[:, k]))
  return np.concatenate(radii)[:x.n]


def manifold_radii(features: Array, k: int = NEAREST_K,
                   batch_size: int = DISTANCE_BATCH) -> np.ndarray:
  """Squared distance of every vector to its k-th nearest neighbour in `features` (itself not
  counted: the k+1-th smallest distance including its own zero), as ADM's `manifold_radii`.

  Computed in row and column blocks of `batch_size` (memory: a few [batch, batch] float32
  blocks on the default device), keeping the k+1 smallest distances of each row.

  Returns:
    float32 [N] squared radii.
  """
  n = len(np.asarray(features))
  return _radii(_Blocks(features, max(1, min(batch_size, n)), "features"), k)


def precision_recall(ref_features: Array, sample_features: Array, k: int = NEAREST_K,
                     batch_size: int = DISTANCE_BATCH) -> Tuple[float, float]:
  """ADM's improved precision and recall (Kynkäänniemi et al., 2019) of samples vs references.

  Args:
    ref_features: [N_ref, D] reference features (ADM: pool features of the 10k reference
      images).
    sample_features: [N, D] sample features (ADM: 50k samples; 10k+ is the usual minimum).
    k: the neighbourhood size that sets each vector's radius (ADM: 3).
    batch_size: rows / columns per distance block.

  Returns:
    (precision, recall): the fraction of samples inside the reference manifold (within the
    k-NN radius of some reference vector) and of reference vectors inside the sample manifold.
  """
  size = max(1, min(batch_size, max(len(ref_features), len(sample_features))))
  ref = _Blocks(ref_features, size, "ref_features")
  smp = _Blocks(sample_features, size, "sample_features")
  if ref.dim != smp.dim:
    raise ValueError(f"reference features have dimension {ref.dim}, samples {smp.dim}")
  ref_radii = ref.padded(_radii(ref, k), -1.0)
  smp_radii = smp.padded(_radii(smp, k), -1.0)
  ref_in = [np.zeros(size, bool) for _ in ref.blocks]  # Inside the sample manifold.
  smp_in = [np.zeros(size, bool) for _ in smp.blocks]  # Inside the reference manifold.
  for i, (u, ru) in enumerate(zip(ref.blocks, ref_radii)):
    for j, (v, rv) in enumerate(zip(smp.blocks, smp_radii)):
      a, b = _inside(u, ru, v, rv)
      ref_in[i] |= np.asarray(a)
      smp_in[j] |= np.asarray(b)
  precision = np.concatenate(smp_in)[:smp.n].mean()
  recall = np.concatenate(ref_in)[:ref.n].mean()
  return float(precision), float(recall)
