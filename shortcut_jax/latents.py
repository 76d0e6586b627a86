"""Latent space (the paper's ImageNet and CelebA-HQ runs: SD-VAE latents): the experiment's frozen
VAE, encoding batches and decoding samples.

The one place that knows whether a run is in pixel or latent space (`config.data.latents`):
  * 'none': the DiT works on pixels; nothing here is used.
  * 'online' (the original's way): the pipeline yields pixel batches (flipped where the dataset
    says so) and the frozen VAE encodes them inside the jitted train step, a posterior sample
    with its own key per step.
  * 'precomputed': the pipeline yields the posterior moments written once by
    `python -m shortcut_jax.tools.encode_dataset` (`latent_mean`, `latent_std`; for
    super-resolution also `cond_latent`, the conditioning image's mean), and the train step
    draws the posterior sample.
Either way the DiT sees scaled latents `scaling_factor * (z - shift_factor)` under the batch key
`image`, and every generated sample is decoded back to pixels (`to_images`) before anything
downstream (grids, `.npz`, FID, metrics) sees it.
"""

import dataclasses
import functools
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from shortcut_jax.models import vae as vae_lib
from shortcut_jax.core.config_value import config_value

Array = Any
LATENT_KEYS = ("latent_mean", "latent_std")
# A latent pair dataset's encoded conditioning image (`tools.encode_dataset` of a
# super-resolution config): its posterior mean, unscaled.
COND_LATENT = "cond_latent"


def mode(config) -> str:
  return config_value(config.data, "latents", section="data")


def uses_latents(config) -> bool:
  return mode(config) != "none"


@functools.lru_cache(maxsize=4)
def _load(path: Optional[str], dtype: str, chunk_size: Optional[int], random_init: bool):
  if random_init:
    return vae_lib.tiny_vae(seed=0, dtype=jnp.dtype(dtype), chunk_size=chunk_size)
  from shortcut_jax.models import vae_weights
  return vae_weights.load_vae(path, dtype=jnp.dtype(dtype), chunk_size=chunk_size)


def vae_from_config(config) -> Optional[vae_lib.VAE]:
  """The frozen VAE of a latent-space config (None for pixel space). Loaded once per process.

  Raises:
    VAEWeightsNotFoundError: the weights are not there (the message says where to get them).
  """
  if not uses_latents(config):
    return None
  v = config.vae
  return _load(v.path, v.dtype, v.chunk_size, bool(v.random_init))


@dataclasses.dataclass(frozen=True, eq=False)
class LatentEncoder:
  """Turns a pipeline batch into a latent batch inside jit: `encoder(vae_params, batch, key)`.

  Attributes:
    vae: the frozen VAE (its module and scaling; its parameters are passed in, so they are a
      jit argument and never a compile-time constant).
    mode: 'online' (encode `image`) or 'precomputed' (sample from `latent_mean`/`latent_std`).
  """
  vae: vae_lib.VAE
  mode: str

  def __call__(self, vae_params, batch: Mapping[str, Array], key: Array) -> Dict[str, Array]:
    batch = dict(batch)
    if self.mode == "online":
      images = vae_input(batch.pop("image"), self.vae.config.in_channels)
      mean, logvar = self.vae.module.apply({"params": vae_params}, images,
                                           method=vae_lib.AutoencoderKL.encode_moments)
      std = jnp.exp(0.5 * logvar)
      if "cond_image" in batch:
        # Super-resolution in latent space: the upsampled LR image is encoded to the HR latent
        # size (its posterior mean: a deterministic condition).
        cond = vae_input(batch["cond_image"], self.vae.config.in_channels)
        cond_mean, _ = self.vae.module.apply({"params": vae_params}, cond,
                                             method=vae_lib.AutoencoderKL.encode_moments)
        batch["cond_image"] = self.vae.scale_latents(cond_mean)
    else:
      mean, std = batch.pop("latent_mean"), batch.pop("latent_std")
      if COND_LATENT in batch:  # A latent pair dataset: the same posterior mean, stored.
        batch["cond_image"] = self.vae.scale_latents(batch.pop(COND_LATENT).astype(jnp.float32))
    noise = jax.random.normal(key, mean.shape, jnp.float32)
    batch["image"] = self.vae.scale_latents(mean.astype(jnp.float32) + std * noise)
    return batch


def encoder_from_config(config) -> Optional[LatentEncoder]:
  vae = vae_from_config(config)
  return None if vae is None else LatentEncoder(vae=vae, mode=mode(config))


def sample_shape(config, data_shape: Tuple[int, int, int]) -> Tuple[int, int, int]:
  """What the DiT generates, from the shape the pipeline reports: pixels for 'none', their
  latent shape for 'online' (loads the VAE), the stored latent shape for 'precomputed'."""
  if mode(config) == "online":
    return tuple(vae_from_config(config).latent_shape(data_shape))
  return tuple(data_shape)


def to_images(config, samples: Array) -> Array:
  """Generated samples -> images in [-1, 1] (not clipped): decoded by the VAE in latent space."""
  vae = vae_from_config(config)
  return samples if vae is None else vae.decode(samples)


def pixel_data_config(data_config):
  """A copy of `config.data` that reads the pixel dataset (`latents='none'`): the images a
  latent run was encoded from, for reference statistics, held-out images and encoding."""
  import ml_collections
  d = ml_collections.ConfigDict(data_config.to_dict())
  if "latents" in d:
    d.latents = "none"
  return d


def vae_input(images, in_channels: int):
  """Pipeline images [b, H, W, C] -> what the VAE encodes: grayscale repeated to `in_channels`
  (numpy or jax arrays, also under jit).

  Raises:
    ValueError: C is neither `in_channels` nor 1.
  """
  channels = images.shape[-1]
  if channels == in_channels:
    return images
  if channels == 1:
    xp = np if isinstance(images, np.ndarray) else jnp
    return xp.repeat(images, in_channels, axis=-1)
  raise ValueError(f"the dataset's images have {channels} channels, the VAE encodes "
                   f"{in_channels} (vae config in_channels)")


def encode_cond(config, cond: Mapping[str, Array]) -> Dict[str, Array]:
  """Conditions as the model takes them: a pixel `cond_image` encoded to its (scaled, mean)
  latent in latent space, as the train step does; unchanged in pixel space."""
  vae = vae_from_config(config)
  if vae is None or "cond_image" not in cond:
    return dict(cond)
  images = vae_input(jnp.asarray(cond["cond_image"]), vae.config.in_channels)
  return dict(cond, cond_image=vae.encode(images))
