"""The Stable Diffusion VAE (diffusers' `AutoencoderKL`) in Flax, and a small wrapper around it.

`AutoencoderKL` computes what diffusers' PyTorch `AutoencoderKL` computes for the SD family of
configs (any `block_out_channels`, `layers_per_block`, `latent_channels`, `norm_num_groups`,
in/out channels, optional mid-block attention, optional quant / post-quant 1x1 convs), in NHWC.
Its parameter tree has the names of diffusers' former `FlaxAutoencoderKL` (diffusers <= 0.39,
e.g. `encoder/down_blocks_0/resnets_0/conv1/kernel`, attention `query/key/value/proj_attn`),
so the Flax checkpoints the original shortcut-models code used (`pcuenq/sd-vae-ft-mse-flax`)
load one to one; `vae_weights.load_vae` also converts diffusers' PyTorch safetensors.

`VAE` holds the module and its (float32) parameters and offers jitted, batch-chunked
`encode` (images in [-1, 1] -> scaled latents), `posterior` (mean and std of the latent
Gaussian, unscaled: what precomputed-latent datasets store) and `decode` (scaled latents ->
images). `random_vae` / `tiny_vae` build randomly initialised ones in process (no files), for
smoke runs and tests; `SD_VAE_CONFIG` is the architecture of `stabilityai/sd-vae-ft-mse`.
"""

from typing import Any, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from shortcut_jax.models.vae_layers import (AutoencoderKL, Dtype,  # noqa: F401
                                             VAEConfig)

Array = Any

# diffusers' config.json of stabilityai/sd-vae-ft-mse (also the architecture of
# pcuenq/sd-vae-ft-mse-flax), in diffusers' field names.
SD_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 256,
    "scaling_factor": 0.18215,
}

# A VAE small enough to compile and run in seconds on a CPU (training `:smoke` configs, tests).
TINY_VAE_CONFIG = {
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
}


def init_params(config: VAEConfig, seed: int = 0):
  """Random float32 parameters of `AutoencoderKL(config)` (flax's default initialisers)."""
  module = AutoencoderKL(config)
  side = config.downsample_factor
  images = jnp.zeros((1, side, side, config.in_channels), jnp.float32)
  return jax.jit(module.init)(jax.random.PRNGKey(seed), images)["params"]


def _pad_batch(x, size):
  pad = size - x.shape[0]
  return x if pad == 0 else jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))


class VAE:
  """An `AutoencoderKL` with its parameters: jitted, batch-chunked encode / decode.

  Images are NHWC in [-1, 1]; "latents" are scaled, `(z - shift_factor) * scaling_factor`,
  the space a diffusion model works in; `posterior` returns the unscaled Gaussian.

  With `chunk_size` set, a batch larger than it is processed `chunk_size` examples at a time,
  the last chunk zero-padded, so one compiled program serves every batch size (and 256x256
  decoding of a large batch fits in memory); batches up to `chunk_size` run in one call.

  Attributes:
    config: the architecture and latent scaling.
    params: float32 parameters (the tree `AutoencoderKL` expects).
    dtype: the compute dtype (e.g. jnp.bfloat16); outputs are float32 either way.
    chunk_size: examples per compiled call, or None for the whole batch at once.
  """

  def __init__(self, config: VAEConfig, params, dtype: Dtype = jnp.float32,
               chunk_size: Optional[int] = None):
    if chunk_size is not None and chunk_size < 1:
      raise ValueError(f"chunk_size must be positive or None, got {chunk_size}")
    self.config = config
    self.params = params
    self.dtype = dtype
    self.chunk_size = chunk_size
    self.module = AutoencoderKL(config, dtype)
    module = self.module
    self._moments = jax.jit(
        lambda p, x: module.apply({"params": p}, x, method=AutoencoderKL.encode_moments))
    self._decode = jax.jit(lambda p, z: module.apply({"params": p}, z, method=AutoencoderKL.decode))

  @property
  def downsample_factor(self) -> int:
    return self.config.downsample_factor

  @property
  def latent_channels(self) -> int:
    return self.config.latent_channels

  def latent_shape(self, image_shape: Sequence[int]) -> Tuple[int, ...]:
    """[..., H, W, C] of images -> [..., H/f, W/f, latent_channels]."""
    *lead, height, width, _ = image_shape
    f = self.downsample_factor
    if height % f or width % f:
      raise ValueError(f"image size {height}x{width} is not divisible by the VAE's factor {f}")
    return (*lead, height // f, width // f, self.latent_channels)

  def _chunked(self, fn, x):
    n = x.shape[0]
    size = self.chunk_size
    if size is None or n <= size:
      return fn(self.params, x)
    outs = [fn(self.params, _pad_batch(x[i:i + size], size)) for i in range(0, n, size)]
    return jax.tree.map(lambda *parts: jnp.concatenate(parts)[:n], *outs)

  def posterior(self, images) -> Tuple[Array, Array]:
    """Mean and standard deviation of the latent Gaussian q(z | images), unscaled, float32.

    Args:
      images: [B, H, W, in_channels] in [-1, 1].

    Returns:
      (mean, std), each [B, H/f, W/f, latent_channels].
    """
    mean, logvar = self._chunked(self._moments, jnp.asarray(images))
    return mean, jnp.exp(0.5 * logvar)

  def scale_latents(self, z):
    """Unscaled VAE latents -> the diffusion model's latents."""
    if self.config.shift_factor is not None:
      z = z - self.config.shift_factor
    return z * self.config.scaling_factor

  def unscale_latents(self, latents):
    """The diffusion model's latents -> unscaled VAE latents (what the decoder reads)."""
    z = latents / self.config.scaling_factor
    if self.config.shift_factor is not None:
      z = z + self.config.shift_factor
    return z

  def sample_latents(self, mean, std, key):
    """Scaled latents drawn from a stored posterior: scale(mean + std * N(0, 1))."""
    noise = jax.random.normal(key, mean.shape, jnp.float32)
    return self.scale_latents(mean + std * noise)

  def encode(self, images, key=None):
    """Images -> scaled latents: a posterior sample with `key`, the posterior mean without.

    Args:
      images: [B, H, W, in_channels] in [-1, 1].
      key: PRNG key for the sample, or None for the mean (the mode).

    Returns:
      [B, H/f, W/f, latent_channels] float32.
    """
    mean, std = self.posterior(images)
    if key is None:
      return self.scale_latents(mean)
    return self.sample_latents(mean, std, key)

  def decode(self, latents, clip: bool = False):
    """Scaled latents -> images (nominally in [-1, 1]; clipped there when `clip`).

    Args:
      latents: [B, h, w, latent_channels], scaled as `encode` returns them.
      clip: clip the output to [-1, 1] (diffusers does not; set it for display / FID).

    Returns:
      [B, h*f, w*f, out_channels] float32.
    """
    images = self._chunked(self._decode, self.unscale_latents(jnp.asarray(latents, jnp.float32)))
    return jnp.clip(images, -1.0, 1.0) if clip else images


def random_vae(config: Any = None, seed: int = 0, dtype: Dtype = jnp.float32,
               chunk_size: Optional[int] = None) -> VAE:
  """A randomly initialised VAE built in process, no files (smoke runs, tests, benchmarks).

  Args:
    config: a `VAEConfig`, a dict of diffusers config fields, or None for `TINY_VAE_CONFIG`.
    seed: initialisation seed.
    dtype: compute dtype.
    chunk_size: see `VAE`.
  """
  if config is None:
    config = TINY_VAE_CONFIG
  if not isinstance(config, VAEConfig):
    config = VAEConfig.from_dict(config)
  return VAE(config, init_params(config, seed), dtype=dtype, chunk_size=chunk_size)


def tiny_vae(seed: int = 0, dtype: Dtype = jnp.float32, chunk_size: Optional[int] = None,
             **overrides) -> VAE:
  """`random_vae` of `TINY_VAE_CONFIG` (block_out_channels (8, 16), 4 groups, factor 2), with
  any config field overridden by keyword (diffusers' names)."""
  return random_vae({**TINY_VAE_CONFIG, **overrides}, seed=seed, dtype=dtype,
                    chunk_size=chunk_size)
