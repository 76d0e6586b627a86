"""Latent space (SPEC §5): the experiment's frozen VAE, encoding batches and decoding samples.

The one place that knows whether a run is in pixel or latent space (`config.data.latents`):
  * 'none': the DiT works on pixels; nothing here is used.
  * 'online' (the original's way): the pipeline yields pixel batches (flipped where the dataset
    says so) and the frozen VAE encodes them inside the jitted train step, a posterior sample
    with its own key per step.
  * 'precomputed': the pipeline yields the posterior moments written once by
    `python -m shortcut_jax.tools.encode_dataset` (`latent_mean`, `latent_std`), and the train
    step draws the posterior sample.
Either way the DiT sees scaled latents `scaling_factor * (z - shift_factor)` under the batch key
`image`, and every generated sample is decoded back to pixels (`to_images`) before anything
downstream (grids, `.npz`, FID, metrics) sees it.
"""

import dataclasses
import functools
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp

from shortcut_jax.models import vae as vae_lib

Array = Any
LATENT_KEYS = ("latent_mean", "latent_std")


def mode(config) -> str:
  return config.data.get("latents", "none")


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
      mean, logvar = self.vae.module.apply({"params": vae_params}, batch.pop("image"),
                                           method=vae_lib.AutoencoderKL.encode_moments)
      std = jnp.exp(0.5 * logvar)
    else:
      mean, std = batch.pop("latent_mean"), batch.pop("latent_std")
    noise = jax.random.normal(key, mean.shape, jnp.float32)
    batch["image"] = self.vae.scale_latents(mean.astype(jnp.float32) + std * noise)
    if "cond_image" in batch:
      # Super-resolution in latent space: the upsampled LR image is encoded to the HR latent
      # size (its posterior mean: a deterministic condition).
      cond_mean, _ = self.vae.module.apply({"params": vae_params}, batch["cond_image"],
                                           method=vae_lib.AutoencoderKL.encode_moments)
      batch["cond_image"] = self.vae.scale_latents(cond_mean)
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
  """`config.data` of the images a latent run was encoded from ('precomputed' -> 'none'), for
  reference statistics and held-out images; unchanged otherwise."""
  if data_config.get("latents", "none") != "precomputed":
    return data_config
  copy = data_config.copy_and_resolve_references() if hasattr(
      data_config, "copy_and_resolve_references") else dict(data_config)
  if hasattr(copy, "unlock"):
    copy.unlock()
  copy["latents"] = "none"
  return copy


def encode_cond(config, cond: Mapping[str, Array]) -> Dict[str, Array]:
  """Conditions as the model takes them: a pixel `cond_image` encoded to its (scaled, mean)
  latent in latent space, as the train step does; unchanged in pixel space."""
  vae = vae_from_config(config)
  if vae is None or "cond_image" not in cond:
    return dict(cond)
  return dict(cond, cond_image=vae.encode(cond["cond_image"]))
