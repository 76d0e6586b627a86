"""The Stable Diffusion VAE as Flax modules (diffusers' `AutoencoderKL` layout and parameter
names, so its weights load as they are): its config, the ResNet, attention, down- and
up-sampling blocks, the encoder, the decoder and the autoencoder."""

import dataclasses
import functools
import math
from typing import Any, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

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
