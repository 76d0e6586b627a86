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

import dataclasses
import functools
import math
from typing import Any, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = Any
Dtype = Any

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

# config.json fields that do not change the computation: diffusers' bookkeeping, the tiling
# tile size, fp16 upcasting advice, the former Flax model's dtype.
_IGNORED_CONFIG_FIELDS = ("sample_size", "force_upcast", "dtype")
_GROUP_NORM_EPS = 1e-6  # diffusers' VAE uses 1e-6 everywhere (resnets, attention, output norms).


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """Architecture and latent scaling of an `AutoencoderKL`; field names and defaults are
  diffusers' (a config.json without a field means diffusers' default).

  Latents handed to a diffusion model are `(z - shift_factor) * scaling_factor` (no shift
  when `shift_factor` is None, as in SD 1.x / 2.x).
  """
  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: Tuple[int, ...] = (64,)
  layers_per_block: int = 1
  latent_channels: int = 4
  norm_num_groups: int = 32
  scaling_factor: float = 0.18215
  shift_factor: Optional[float] = None
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  mid_block_add_attention: bool = True

  def __post_init__(self):
    object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
    for c in self.block_out_channels:
      if c % self.norm_num_groups:
        raise ValueError(f"block_out_channels {self.block_out_channels}: {c} is not divisible by "
                         f"norm_num_groups {self.norm_num_groups}")

  @property
  def downsample_factor(self) -> int:
    """Image side / latent side."""
    return 2 ** (len(self.block_out_channels) - 1)

  @classmethod
  def from_dict(cls, config: Mapping[str, Any]) -> "VAEConfig":
    """Builds a config from diffusers' field names (a parsed config.json).

    Raises:
      ValueError: for a field or value this implementation does not support (another block
        type, activation, `latents_mean`/`latents_std`), so nothing is silently ignored.
    """
    config = dict(config)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    num_blocks = len(config.get("block_out_channels", cls.block_out_channels))
    for key, value in config.items():
      if key.startswith("_") or key in _IGNORED_CONFIG_FIELDS:
        continue
      if key in fields:
        kwargs[key] = value
      elif key == "act_fn":
        if value not in ("silu", "swish"):
          raise ValueError(f"VAE config: act_fn {value!r} is not supported (only 'silu')")
      elif key in ("down_block_types", "up_block_types"):
        expected = "DownEncoderBlock2D" if key == "down_block_types" else "UpDecoderBlock2D"
        if list(value) != [expected] * num_blocks:
          raise ValueError(f"VAE config: {key} {value!r} is not supported (only {expected}, one "
                           f"per entry of block_out_channels)")
      elif key in ("latents_mean", "latents_std"):
        if value is not None:
          raise ValueError(f"VAE config: {key} (per-channel latent normalisation) is not supported")
      else:
        raise ValueError(f"VAE config: unknown field {key!r}")
    if kwargs.get("shift_factor") is not None:
      kwargs["shift_factor"] = float(kwargs["shift_factor"])
    return cls(**kwargs)

  def to_dict(self) -> dict:
    """diffusers' config.json fields (what `from_dict` reads back)."""
    out = dataclasses.asdict(self)
    out["block_out_channels"] = list(self.block_out_channels)
    out["down_block_types"] = ["DownEncoderBlock2D"] * len(self.block_out_channels)
    out["up_block_types"] = ["UpDecoderBlock2D"] * len(self.block_out_channels)
    out["act_fn"] = "silu"
    return out


def _group_norm(groups, dtype, name):
  # Two-pass variance: E[x^2] - E[x]^2 loses digits that PyTorch's GroupNorm keeps.
  return nn.GroupNorm(num_groups=groups, epsilon=_GROUP_NORM_EPS, dtype=dtype,
                      use_fast_variance=False, name=name)


def _conv(features, kernel, dtype, name=None, stride=1, padding=None):
  if padding is None:
    padding = [(kernel // 2, kernel // 2)] * 2
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding=padding, dtype=dtype,
                 name=name)


class ResnetBlock(nn.Module):
  """diffusers' `ResnetBlock2D` without time embedding: norm1, SiLU, conv1, norm2, SiLU, conv2,
  plus the input (through a 1x1 `conv_shortcut` when the channel count changes)."""
  out_channels: int
  groups: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = nn.silu(_group_norm(self.groups, self.dtype, "norm1")(x))
    h = _conv(self.out_channels, 3, self.dtype, "conv1")(h)
    h = nn.silu(_group_norm(self.groups, self.dtype, "norm2")(h))
    h = _conv(self.out_channels, 3, self.dtype, "conv2")(h)
    if x.shape[-1] != self.out_channels:
      x = _conv(self.out_channels, 1, self.dtype, "conv_shortcut")(x)
    return x + h


class AttentionBlock(nn.Module):
  """The VAE mid-block attention: GroupNorm, then single-head self-attention over the H*W
  positions (scale 1/sqrt(channels), softmax in float32), output projection, residual."""
  groups: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    batch, height, width, channels = x.shape
    h = _group_norm(self.groups, self.dtype, "group_norm")(x).reshape(batch, -1, channels)
    dense = functools.partial(nn.Dense, channels, dtype=self.dtype)
    q = dense(name="query")(h)
    k = dense(name="key")(h)
    v = dense(name="value")(h)
    logits = jnp.einsum("bqc,bkc->bqk", q, k, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits / math.sqrt(channels), axis=-1)
    h = jnp.einsum("bqk,bkc->bqc", weights.astype(v.dtype), v)
    h = dense(name="proj_attn")(h)
    return x + h.reshape(x.shape)


class Downsample(nn.Module):
  """Zero pad bottom and right by one (diffusers' pad (0, 1, 0, 1)), 3x3 conv with stride 2."""
  channels: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return _conv(self.channels, 3, self.dtype, "conv", stride=2,
                 padding=[(0, 1), (0, 1)])(x)


class Upsample(nn.Module):
  """Nearest-neighbour x2 upsampling, then a 3x3 conv."""
  channels: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return _conv(self.channels, 3, self.dtype, "conv")(x)


class MidBlock(nn.Module):
  """resnet, attention (optional), resnet at the lowest resolution."""
  groups: int
  add_attention: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    x = ResnetBlock(channels, self.groups, self.dtype, name="resnets_0")(x)
    if self.add_attention:
      x = AttentionBlock(self.groups, self.dtype, name="attentions_0")(x)
    return ResnetBlock(channels, self.groups, self.dtype, name="resnets_1")(x)


class DownEncoderBlock(nn.Module):
  """`num_layers` resnets, then (except in the last block) a stride-2 downsample."""
  out_channels: int
  num_layers: int
  groups: int
  add_downsample: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i in range(self.num_layers):
      x = ResnetBlock(self.out_channels, self.groups, self.dtype, name=f"resnets_{i}")(x)
    if self.add_downsample:
      x = Downsample(self.out_channels, self.dtype, name="downsamplers_0")(x)
    return x


class UpDecoderBlock(nn.Module):
  """`num_layers` resnets, then (except in the last block) an x2 upsample."""
  out_channels: int
  num_layers: int
  groups: int
  add_upsample: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i in range(self.num_layers):
      x = ResnetBlock(self.out_channels, self.groups, self.dtype, name=f"resnets_{i}")(x)
    if self.add_upsample:
      x = Upsample(self.out_channels, self.dtype, name="upsamplers_0")(x)
    return x


class Encoder(nn.Module):
  """Images [B, H, W, in] -> [B, H/f, W/f, 2 * latent] (mean and log-variance, concatenated)."""
  config: VAEConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    channels = cfg.block_out_channels
    x = _conv(channels[0], 3, self.dtype, "conv_in")(x)
    for i, out_channels in enumerate(channels):
      x = DownEncoderBlock(out_channels, cfg.layers_per_block, cfg.norm_num_groups,
                           add_downsample=i < len(channels) - 1, dtype=self.dtype,
                           name=f"down_blocks_{i}")(x)
    x = MidBlock(cfg.norm_num_groups, cfg.mid_block_add_attention, self.dtype, name="mid_block")(x)
    x = nn.silu(_group_norm(cfg.norm_num_groups, self.dtype, "conv_norm_out")(x))
    return _conv(2 * cfg.latent_channels, 3, self.dtype, "conv_out")(x)


class Decoder(nn.Module):
  """Latents [B, h, w, latent] (unscaled) -> images [B, h*f, w*f, out]."""
  config: VAEConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z):
    cfg = self.config
    channels = tuple(reversed(cfg.block_out_channels))
    x = _conv(channels[0], 3, self.dtype, "conv_in")(z)
    x = MidBlock(cfg.norm_num_groups, cfg.mid_block_add_attention, self.dtype, name="mid_block")(x)
    for i, out_channels in enumerate(channels):
      x = UpDecoderBlock(out_channels, cfg.layers_per_block + 1, cfg.norm_num_groups,
                         add_upsample=i < len(channels) - 1, dtype=self.dtype,
                         name=f"up_blocks_{i}")(x)
    x = nn.silu(_group_norm(cfg.norm_num_groups, self.dtype, "conv_norm_out")(x))
    return _conv(cfg.out_channels, 3, self.dtype, "conv_out")(x)


class AutoencoderKL(nn.Module):
  """diffusers' `AutoencoderKL` (SD family), NHWC, unscaled latents.

  `apply(v, images, method='encode_moments')` -> (mean, logvar) of the posterior, float32, the
  log-variance clipped to [-30, 20] as diffusers does; `apply(v, z, method='decode')` -> images,
  float32; `apply(v, images)` (used by `init`) -> decode(mean).
  """
  config: VAEConfig
  dtype: Dtype = jnp.float32

  def setup(self):
    cfg = self.config
    self.encoder = Encoder(cfg, self.dtype)
    self.decoder = Decoder(cfg, self.dtype)
    if cfg.use_quant_conv:
      self.quant_conv = _conv(2 * cfg.latent_channels, 1, self.dtype)
    if cfg.use_post_quant_conv:
      self.post_quant_conv = _conv(cfg.latent_channels, 1, self.dtype)

  def encode_moments(self, images):
    h = self.encoder(images.astype(self.dtype))
    if self.config.use_quant_conv:
      h = self.quant_conv(h)
    mean, logvar = jnp.split(h.astype(jnp.float32), 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)

  def decode(self, z):
    z = z.astype(self.dtype)
    if self.config.use_post_quant_conv:
      z = self.post_quant_conv(z)
    return self.decoder(z).astype(jnp.float32)

  def __call__(self, images):
    mean, _ = self.encode_moments(images)
    return self.decode(mean)


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
