"""Generating images from a trained model: fixed noise seeds, evenly spread labels, uint8 output."""

from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from shortcut_jax import sampling


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


def generate(exp, params, *, num_images: int, num_steps: int, cfg_scale: Optional[float],
             seed: int = 0, batch_size: int = 256, labels: Optional[np.ndarray] = None
             ) -> Tuple[np.ndarray, np.ndarray]:
  """Samples `num_images` images with `num_steps` steps.

  The noise of image i depends only on (seed, i), so the same seed gives the same images for any
  batch size and any step count (rows of a grid are comparable across step budgets).

  Returns:
    (images float32 NHWC in [-1, 1] (not clipped), labels int32).
  """
  config = exp.config
  if labels is None:
    labels = sample_labels(config, num_images)
  if cfg_scale is not None and not is_conditional(config):
    cfg_scale = None
  sampler = sampling.make_sampler(exp.model, num_steps, config.objective.denoise_timesteps,
                                  exp.objective.uses_level, cfg_scale)
  base = jax.random.PRNGKey(seed)
  noise_fn = jax.jit(jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(base, i), exp.image_shape)))
  out = []
  for start in range(0, num_images, batch_size):
    idx = np.arange(start, min(start + batch_size, num_images))
    n = len(idx)
    # Pad the last batch to the full batch size so the sampler compiles once.
    padded = np.concatenate([idx, np.full(batch_size - n, idx[-1])]) if num_images > batch_size else idx
    x0 = noise_fn(jnp.asarray(padded))
    cond = {"label": jnp.asarray(labels[padded])}
    out.append(np.asarray(sampler(params, x0, cond))[:n])
  return np.concatenate(out), np.asarray(labels)


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
