"""Generating images from a trained model: fixed noise seeds, evenly spread labels, uint8 output."""

import functools
from typing import Iterator, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from shortcut_jax import sampling
from shortcut_jax import sharding


def is_conditional(config) -> bool:
  """Whether the model was trained with labels (CelebA-style unconditional runs were not)."""
  return (config.data.num_classes > 1 and config.objective.class_dropout_prob < 1.0
          and config.objective.cfg_scale != 0)


def sample_labels(config, num_images: int) -> np.ndarray:
  """Labels spread evenly over the classes (0, 1, …, C-1, 0, 1, …); the null label if unconditional."""
  if not is_conditional(config):
    return np.full((num_images,), config.data.num_classes, np.int32)
  return (np.arange(num_images) % config.data.num_classes).astype(np.int32)


def to_uint8(images) -> np.ndarray:
  """[-1, 1] floats -> uint8 [0, 255] (clipped)."""
  images = np.asarray(images, np.float32)
  return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def data_mesh() -> Mesh:
  """A 1-D mesh over all local devices; batches are split along its `data` axis."""
  return Mesh(np.asarray(jax.local_devices()), (sharding.DATA_AXIS,))


def round_up_batch(batch_size: int, mesh: Mesh) -> int:
  """The smallest multiple of the mesh size that is >= batch_size."""
  if batch_size <= 0:
    raise ValueError(f"batch size must be positive, got {batch_size}")
  return -(-batch_size // mesh.size) * mesh.size


@functools.lru_cache(maxsize=16)
def _noise_fn(shape: Tuple[int, ...], mesh: Optional[Mesh]):
  """Jitted `(key, idx [B]) -> normal(fold_in(key, idx[i]), shape)` rows, split over `mesh`'s
  data axis when given; cached so that repeated generation compiles it once per shape."""
  noise = jax.vmap(lambda key, i: jax.random.normal(jax.random.fold_in(key, i), shape),
                   in_axes=(None, 0))
  if mesh is None:
    return jax.jit(noise)
  data = NamedSharding(mesh, PartitionSpec(sharding.DATA_AXIS))
  return jax.jit(noise, in_shardings=(NamedSharding(mesh, PartitionSpec()), data),
                 out_shardings=data)


def generate_batches(exp, params, *, num_images: int, num_steps: int,
                     cfg_scale: Optional[float], seed: int = 0, batch_size: int = 256,
                     mesh: Optional[Mesh] = None) -> Iterator[Tuple[jax.Array, int]]:
  """Samples `num_images` images batch by batch (50,000 images never sit in memory at once).

  Image i starts from the noise `normal(fold_in(PRNGKey(seed), i))` and gets the label
  `sample_labels(config)[i]`, so the same seed gives the same images for any batch size, any
  mesh and any step count (rows of a grid are comparable across step budgets). Every batch has
  the same size (the last one padded) so the sampler compiles once.

  Args:
    exp: the `trainer.Experiment`.
    params: the network weights.
    num_images: images in all.
    num_steps: sampling steps N.
    cfg_scale: guidance weight; ignored for an unconditional model.
    seed: noise seed.
    batch_size: images per sampler call. Without a mesh it is capped at `num_images`; with one
      it is rounded up to a multiple of the device count.
    mesh: a 1-D device mesh (`data_mesh()`) to run data parallel on: params are replicated onto
      it and every batch is split along its axis. None: the arrays stay where they are (params
      may then be sharded over any mesh, several processes included).

  Yields:
    (samples [batch, H, W, C] float32 in [-1, 1] (not clipped), number of valid leading rows).
  """
  config = exp.config
  labels = sample_labels(config, num_images)
  if cfg_scale is not None and not is_conditional(config):
    cfg_scale = None
  sampler = sampling.make_sampler(exp.model, num_steps, config.objective.denoise_timesteps,
                                  exp.objective.uses_level, cfg_scale)
  key = jax.random.PRNGKey(seed)
  if mesh is None:
    batch_size = min(batch_size, num_images)
    put, noise_fn = jnp.asarray, _noise_fn(tuple(exp.image_shape), None)
  else:
    # The sampler has no shardings of its own: it runs data parallel because its inputs are.
    batch_size = round_up_batch(batch_size, mesh)
    data = NamedSharding(mesh, PartitionSpec(sharding.DATA_AXIS))
    params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
    put = lambda x: jax.device_put(x, data)
    noise_fn = _noise_fn(tuple(exp.image_shape), mesh)
  for start in range(0, num_images, batch_size):
    idx = np.arange(start, min(start + batch_size, num_images))
    n = len(idx)
    idx = np.concatenate([idx, np.full(batch_size - n, idx[-1])])
    x0 = noise_fn(key, put(idx.astype(np.int32)))
    yield sampler(params, x0, {"label": put(labels[idx])}), n


def generate(exp, params, *, num_images: int, num_steps: int, cfg_scale: Optional[float],
             seed: int = 0, batch_size: int = 256) -> Tuple[np.ndarray, np.ndarray]:
  """All of `generate_batches` (no mesh) on the host.

  Returns:
    (images float32 NHWC in [-1, 1] (not clipped), labels int32).
  """
  out = [np.asarray(x)[:n] for x, n in generate_batches(
      exp, params, num_images=num_images, num_steps=num_steps, cfg_scale=cfg_scale, seed=seed,
      batch_size=batch_size)]
  return np.concatenate(out), sample_labels(exp.config, num_images)


def image_grid(images_uint8: np.ndarray, cols: Optional[int] = None) -> np.ndarray:
  """Tiles NHWC uint8 images into one HWC image with a 1-pixel border."""
  n, h, w, c = images_uint8.shape
  cols = cols or int(np.ceil(np.sqrt(n)))
  rows = int(np.ceil(n / cols))
  grid = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, c), 255, np.uint8)
  for i in range(n):
    r, q = divmod(i, cols)
    grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = images_uint8[i]
  return grid


def save_png(path: str, image_hwc: np.ndarray, upscale: int = 1) -> None:
  from PIL import Image
  if upscale > 1:
    image_hwc = image_hwc.repeat(upscale, 0).repeat(upscale, 1)
  if image_hwc.shape[-1] == 1:
    image_hwc = image_hwc[..., 0]
  Image.fromarray(image_hwc).save(path)
