"""Generating images from a trained model: fixed noise seeds, one condition per image, uint8 output.

The conditions of image i are `sample_cond(exp, n)[key][i]` for every condition kind the model
takes: labels spread evenly over the classes, and for image-conditioned models (super-resolution)
the conditioning images of the held-out split in stored order (repeated when it has fewer).
"""

import functools
from typing import Dict, Iterator, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from shortcut_jax import sampling
from shortcut_jax import sharding
from shortcut_jax.objectives.flow_path import sample_source


def is_conditional(config) -> bool:
  """Whether the model was trained with labels (CelebA-style unconditional runs were not)."""
  return (config.data.num_classes > 1 and config.objective.class_dropout_prob < 1.0
          and config.objective.cfg_scale != 0)


def sample_labels(config, num_images: int) -> np.ndarray:
  """Labels spread evenly over the classes (0, 1, …, C-1, 0, 1, …); the null label if unconditional."""
  if not is_conditional(config):
    return np.full((num_images,), config.data.num_classes, np.int32)
  return (np.arange(num_images) % config.data.num_classes).astype(np.int32)


def held_out_examples(config, num_images: int, split: str = "test") -> Dict[str, np.ndarray]:
  """The first `num_images` examples of `split` (evaluation preprocessing, stored order; the
  split is cycled when smaller), every key the pipeline yields ('image', 'label',
  'cond_image'). Read whole by every process, so all processes agree."""
  from shortcut_jax.data import pipeline  # TensorFlow is only needed here.
  parts, have = [], 0
  while have < num_images:
    for batch in pipeline.make_dataset(config.data, split=split, global_batch_size=256, seed=0,
                                       train=False, process_index=0, process_count=1):
      parts.append(batch)
      have += len(batch["image"])
      if have >= num_images:
        break
  return {k: np.concatenate([p[k] for p in parts])[:num_images] for k in parts[0]}


def sample_cond(exp, num_images: int, split: str = "test") -> Dict[str, np.ndarray]:
  """The conditions of `num_images` generated images, for every kind the model takes."""
  cond = {"label": sample_labels(exp.config, num_images)}
  if "cond_image" in exp.model.conditioning.keys:
    cond["cond_image"] = held_out_examples(exp.config, num_images, split)["cond_image"]
  return cond


def is_guidable(exp) -> bool:
  """Whether classifier-free guidance applies: a label-conditional model, or one trained with
  dropout of another condition kind (its null branch is then meaningful)."""
  if is_conditional(exp.config):
    return True
  return any(k.guided for k in exp.model.conditioning.kinds if k.key != "label")


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
def _noise_fn(shape: Tuple[int, ...], mesh: Optional[Mesh], source: str = "gaussian"):
  """Jitted `(key, idx [B]) -> sample_source(fold_in(key, idx[i]), shape)` rows, split over
  `mesh`'s data axis when given; cached so that repeated generation compiles it once per shape."""
  noise = jax.vmap(lambda key, i: sample_source(jax.random.fold_in(key, i), shape, source),
                   in_axes=(None, 0))
  if mesh is None:
    return jax.jit(noise)
  data = NamedSharding(mesh, PartitionSpec(sharding.DATA_AXIS))
  return jax.jit(noise, in_shardings=(NamedSharding(mesh, PartitionSpec()), data),
                 out_shardings=data)


def generate_batches(exp, params, *, num_images: int, num_steps: int,
                     cfg_scale: Optional[float], seed: int = 0, batch_size: int = 256,
                     mesh: Optional[Mesh] = None,
                     cond: Optional[Mapping[str, np.ndarray]] = None
                     ) -> Iterator[Tuple[jax.Array, int]]:
  """Samples `num_images` images batch by batch (50,000 images never sit in memory at once).

  Image i starts from the source sample `sample_source(fold_in(PRNGKey(seed), i))` (the
  objective's source: Gaussian noise, or zeros for a regressor) and gets the conditions
  `cond[key][i]`, so the same seed gives the same images for any batch size, any mesh and any
  step count (rows of a grid are comparable across step budgets). Every batch has the same size
  (the last one padded) so the sampler compiles once.

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
    cond: host arrays of conditions, `num_images` rows each (default: `sample_cond`).

  Yields:
    (samples [batch, H, W, C] float32 (not clipped; latents in latent space, see
    `exp.to_images`), number of valid leading rows).
  """
  config = exp.config
  exp.objective.check_steps([num_steps])
  cond = sample_cond(exp, num_images) if cond is None else dict(cond)
  short = {k: len(v) for k, v in cond.items() if len(v) < num_images}
  if short:
    raise ValueError(f"cond arrays {short} have fewer rows than num_images={num_images}")
  if cfg_scale is not None and not is_guidable(exp):
    cfg_scale = None
  sampler = sampling.make_sampler(exp.model, num_steps, config.objective.denoise_timesteps,
                                  exp.objective.uses_level, cfg_scale)
  key = jax.random.PRNGKey(seed)
  if mesh is None:
    batch_size = min(batch_size, num_images)
    put, noise_fn = jnp.asarray, _noise_fn(tuple(exp.image_shape), None, exp.objective.source)
  else:
    # The sampler has no shardings of its own: it runs data parallel because its inputs are.
    batch_size = round_up_batch(batch_size, mesh)
    data = NamedSharding(mesh, PartitionSpec(sharding.DATA_AXIS))
    params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
    put = lambda x: jax.device_put(x, data)
    noise_fn = _noise_fn(tuple(exp.image_shape), mesh, exp.objective.source)
  for start in range(0, num_images, batch_size):
    idx = np.arange(start, min(start + batch_size, num_images))
    n = len(idx)
    idx = np.concatenate([idx, np.full(batch_size - n, idx[-1])])
    x0 = noise_fn(key, put(idx.astype(np.int32)))
    yield sampler(params, x0, {k: put(np.asarray(v)[idx]) for k, v in cond.items()}), n


def generate(exp, params, *, num_images: int, num_steps: int, cfg_scale: Optional[float],
             seed: int = 0, batch_size: int = 256,
             cond: Optional[Mapping[str, np.ndarray]] = None) -> Tuple[np.ndarray, np.ndarray]:
  """All of `generate_batches` (no mesh) on the host.

  Returns:
    (images float32 NHWC in [-1, 1] (not clipped; decoded by the VAE in latent space),
    labels int32).
  """
  cond = sample_cond(exp, num_images) if cond is None else cond
  out = [np.asarray(exp.to_images(x))[:n] for x, n in generate_batches(
      exp, params, num_images=num_images, num_steps=num_steps, cfg_scale=cfg_scale, seed=seed,
      batch_size=batch_size, cond=cond)]
  return np.concatenate(out), np.asarray(cond["label"])


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
