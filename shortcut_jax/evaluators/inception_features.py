"""Inception features of images for FID and ADM's metrics: the jitted network over batches,
data parallel over the devices where there are several (`InceptionFeatures`), and the weights
file it reads (`load_features`)."""

from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from shortcut_jax.parallel import sharding
from shortcut_jax.evaluators import batch_rows
from shortcut_jax.models import inception


class InceptionFeatures:
  """FID Inception features with every batch sharded over a 1-D device mesh.

  Call it on any number of images (NHWC, [-1, 1], 1 or 3 channels; numpy or jax): they are cut
  into batches of `batch_size`, the last one padded so the network compiles once.
  """

  def __init__(self, variables, *, batch_size: int, mesh: Optional[Mesh] = None,
               image_size: Optional[int] = inception.IMAGE_SIZE,
               outputs: Sequence[str] = ("pool",)):
    """Places the weights and jits the network.

    Args:
      variables: FID Inception variables (`inception.load_inception_variables`).
      batch_size: images per call; rounded up to a multiple of the device count.
      mesh: the device mesh (default `batch_rows.data_mesh()`: every device of every process, so
        every process must make the same calls).
      image_size: Inception input side; 299 for FID (smaller only in tests).
      outputs: `inception.OUTPUTS` to compute, concatenated along the feature axis in this
        order (`adm_metrics.split_outputs` splits them); the default is the FID features alone.
    """
    self.outputs = inception.check_outputs(outputs)
    if set(self.outputs) & set(inception.LOGIT_OUTPUTS) and not inception.has_classifier(
        variables):
      raise ValueError(inception.NO_CLASSIFIER_HELP)
    self.mesh = mesh if mesh is not None else batch_rows.data_mesh()
    self.batch_size = batch_rows.round_up_batch(batch_size, self.mesh)
    self.data_sharding = NamedSharding(self.mesh, PartitionSpec(sharding.DATA_AXIS))
    replicated = NamedSharding(self.mesh, PartitionSpec())
    self._variables = jax.device_put(variables, replicated)
    model = inception.InceptionV3(image_size=image_size, antialias=False, clip=True)

    def apply(variables, images):
      if images.shape[-1] == 1:  # Grey images: the same value in R, G and B.
        images = jnp.repeat(images, 3, axis=-1)
      if self.outputs == ("pool",):
        return model.apply(variables, images)
      out = model.apply(variables, images, outputs=self.outputs)
      return jnp.concatenate([out[o] for o in self.outputs], axis=-1)

    self._apply = jax.jit(apply, in_shardings=(replicated, self.data_sharding),
                          out_shardings=self.data_sharding)
    # The rows of every batch this process feeds and keeps ([0, batch_size) with one process).
    self.local_rows = batch_rows.local_rows(self.mesh, self.batch_size)

  def _features(self, images) -> jax.Array:
    if images.shape[0] != self.batch_size:
      raise ValueError(f"expected a batch of {self.batch_size} images, got {images.shape[0]}")
    if images.shape[-1] not in (1, 3):
      raise ValueError(f"FID needs 1- or 3-channel images, got shape {images.shape}")
    return self._apply(self._variables, batch_rows.put_batch(images, self.mesh))

  def batch_features(self, images, count: Optional[int] = None) -> np.ndarray:
    """Features of one batch of exactly `batch_size` images; returns the first `count` rows
    (all rows on every process; a collective with several processes)."""
    return batch_rows.to_host(self._features(images))[:count]

  def local_features(self, images, count: Optional[int] = None) -> np.ndarray:
    """This process's valid rows of one batch's features: rows [lo, min(hi, count)) of the
    batch, where [lo, hi) = `local_rows` (all `count` rows with one process). What
    `RunningStats` accumulates before `combine_processes`."""
    local, lo = batch_rows.local_part(self._features(images))
    count = self.batch_size if count is None else count
    return local[:max(0, min(lo + len(local), count) - lo)]

  def process_local_features(self, local_images, count: Optional[int] = None) -> np.ndarray:
    """Features of one batch of which this process holds only its own rows: `local_images` are
    rows [lo, hi) = `local_rows` of the batch, the other processes pass theirs in the same
    call (a collective with several processes). Returns the features of the first `count` of
    them (default: all), in order."""
    lo, hi = self.local_rows
    local_images = np.asarray(local_images, np.float32)
    if local_images.shape[0] != hi - lo:
      raise ValueError(f"expected this process's {hi - lo} rows of a batch, got "
                       f"{local_images.shape[0]}")
    shape = (self.batch_size, *local_images.shape[1:])
    if batch_rows.is_multi_process(self.mesh):
      batch = jax.make_array_from_process_local_data(self.data_sharding, local_images, shape)
    else:
      batch = jax.device_put(local_images, self.data_sharding)
    if batch.shape[-1] not in (1, 3):
      raise ValueError(f"FID needs 1- or 3-channel images, got shape {batch.shape}")
    local, _ = batch_rows.local_part(self._apply(self._variables, batch))
    return local[:hi - lo if count is None else count]

  def __call__(self, images) -> np.ndarray:
    """Features [n, 2048] of n images (any n)."""
    out = []
    for start in range(0, images.shape[0], self.batch_size):
      chunk = np.asarray(images[start:start + self.batch_size], np.float32)
      n = chunk.shape[0]
      if n < self.batch_size:
        chunk = np.concatenate([chunk, np.zeros((self.batch_size - n, *chunk.shape[1:]),
                                                 np.float32)])
      out.append(self.batch_features(chunk, n))
    if not out:
      shape = jax.ShapeDtypeStruct((self.batch_size, *images.shape[1:]), jnp.float32)
      return np.zeros((0, jax.eval_shape(self._apply, self._variables, shape).shape[-1]),
                      np.float32)
    return np.concatenate(out)


def load_features(inception_path: Optional[str], *, batch_size: int,
                  mesh: Optional[Mesh] = None,
                  image_size: Optional[int] = inception.IMAGE_SIZE,
                  outputs: Sequence[str] = ("pool",)) -> Tuple[InceptionFeatures, str]:
  """Reads the Inception weights (path, else `$SHORTCUT_JAX_INCEPTION`; local or remote);
  returns (features, path). `outputs`: as `InceptionFeatures`.

  Raises:
    FileNotFoundError: no path given or the file is missing (the message says where to get it).
  """
  path = inception.resolve_weights_path(inception_path)
  variables = inception.load_inception_variables(path)
  return InceptionFeatures(variables, batch_size=batch_size, mesh=mesh,
                           image_size=image_size, outputs=outputs), path
