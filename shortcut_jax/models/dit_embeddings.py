"""The DiT's embeddings, as the original writes them: PyTorch-style Xavier initialisation, fixed
2-D sin-cos position embeddings, the timestep (and step-size) embedder, the label table with its
null row, and the patch embedding. Their Flax names (TimestepEmbedder_0, ...) are the original
checkpoint's, wherever the classes live."""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


def xavier_uniform_torch_style(key, shape, dtype=jnp.float32):
  """Xavier-uniform with PyTorch's fans: fan_out of a conv kernel is its output channels only.

  The original initialises Dense kernels [in, out] and patch-embedding conv kernels
  [k, k, in, out] this way (flax's own xavier would multiply fan_out by k*k).
  """
  if len(shape) == 2:
    fan_in, fan_out = shape
  elif len(shape) == 4:
    fan_in, fan_out = shape[0] * shape[1] * shape[2], shape[3]
  else:
    raise ValueError(f"xavier_uniform_torch_style: unsupported kernel shape {shape}")
  limit = math.sqrt(6.0 / (fan_in + fan_out))
  return jax.random.uniform(key, shape, dtype, -1.0, 1.0) * limit


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
  """[sin(p f), cos(p f)] with f_j = 10000^(-j / (dim/2)); positions any shape -> (..., dim)."""
  freqs = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
  angles = positions.reshape(-1)[:, None] * freqs[None]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d_position_embedding(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
  """Fixed 2-D sin-cos embedding, [grid_h * grid_w, dim], tokens in row-major order.

  As in the original (MAE convention): the first half of the channels encodes the column
  (width) coordinate, the second half the row coordinate.
  """
  if dim % 4:
    raise ValueError(f"hidden_size must be divisible by 4 for the 2-D position embedding, got {dim}")
  rows, cols = np.meshgrid(np.arange(grid_h, dtype=np.float64), np.arange(grid_w, dtype=np.float64),
                           indexing="ij")
  emb = np.concatenate([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], axis=1)
  return emb.astype(np.float32)


class TimestepEmbedder(nn.Module):
  """Sinusoidal features of a scalar (time in [0, 1], or the raw step-size level) -> MLP."""
  hidden_size: int
  dtype: Dtype
  frequency_embedding_size: int = 256

  @nn.compact
  def __call__(self, t):
    half = self.frequency_embedding_size // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    x = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1).astype(self.dtype)
    init = nn.initializers.normal(0.02)
    x = nn.Dense(self.hidden_size, kernel_init=init, dtype=self.dtype, name="Dense_0")(x)
    x = nn.silu(x)
    # The original leaves this layer's dtype unset, so it computes in float32.
    return nn.Dense(self.hidden_size, kernel_init=init, name="Dense_1")(x)


class LabelEmbedder(nn.Module):
  """A table of num_classes + 1 rows; the last row is the null (unconditional) label."""
  num_classes: int
  hidden_size: int
  dtype: Dtype

  @nn.compact
  def __call__(self, labels):
    table = nn.Embed(self.num_classes + 1, self.hidden_size,
                     embedding_init=nn.initializers.normal(0.02), dtype=self.dtype, name="Embed_0")
    return table(labels)


class PatchEmbed(nn.Module):
  """Conv with kernel = stride = patch size, flattened to tokens [B, h*w, hidden]."""
  patch_size: int
  hidden_size: int
  dtype: Dtype

  @nn.compact
  def __call__(self, x):
    p = (self.patch_size, self.patch_size)
    x = nn.Conv(self.hidden_size, p, p, padding="VALID", kernel_init=xavier_uniform_torch_style,
                bias_init=nn.initializers.zeros, dtype=self.dtype, name="Conv_0")(x)
    return x.reshape(x.shape[0], -1, x.shape[-1])
