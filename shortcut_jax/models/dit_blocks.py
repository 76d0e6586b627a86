"""The DiT's layers: the adaLN-Zero transformer block (and its `nn.scan` step), its MLP, the
final layer, and the rematerialisation policies. Module and parameter names are the original's
(`DiTBlock_<i>/MlpBlock_0/Dense_0`, `FinalLayer_0`), so its checkpoints load one to one
(`models.dit` assembles them).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from shortcut_jax.models.dit_embeddings import Dtype, xavier_uniform_torch_style
from shortcut_jax.parallel.sharding import BATCH_AXES

Array = Any

# `model.remat`: rematerialise nothing, every block ('full', the original's True), or all but the
# Dense layers' matmul outputs ('dots').
REMAT_POLICIES = ("none", "full", "dots")


def modulate(x, shift, scale):
  return x * (1 + scale[:, None]) + shift[:, None]


def _dense(features, dtype, name, zero=False):
  return nn.Dense(features, dtype=dtype, name=name, bias_init=nn.initializers.zeros,
                  kernel_init=nn.initializers.zeros if zero else xavier_uniform_torch_style)


class MlpBlock(nn.Module):
  """Dense -> GELU (tanh approximation) -> dropout -> Dense -> dropout."""
  mlp_dim: int
  dtype: Dtype
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool):
    out_dim = x.shape[-1]
    x = _dense(self.mlp_dim, self.dtype, "Dense_0")(x)
    x = nn.gelu(x, approximate=True)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = _dense(out_dim, self.dtype, "Dense_1")(x)
    return nn.Dropout(self.dropout, deterministic=not train)(x)


def _einsum_attention(q, k, v, scale):
  """The original's attention: logits in the compute dtype, softmax and weights in float32."""
  # Divide (as the original does) rather than multiply, so bf16 rounding is identical.
  logits = jnp.einsum("bqhc,bkhc->bhqk", q / jnp.asarray(1.0 / scale, q.dtype), k)
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.einsum("bhqk,bkhc->bqhc", weights, v)


class DiTBlock(nn.Module):
  """Transformer block with adaLN-Zero conditioning."""
  hidden_size: int
  num_heads: int
  mlp_ratio: float
  dtype: Dtype
  dropout: float = 0.0
  attention_impl: str = "xla"
  attention_scale: str = "original"

  @nn.compact
  def __call__(self, x, c, train: bool = False):
    return self.block(x, c, train)

  def block(self, x, c, train):
    mod = _dense(6 * self.hidden_size, self.dtype, "Dense_0")(nn.silu(c))
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=-1)

    h = nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False, dtype=self.dtype)(x)
    h = modulate(h, shift_msa, scale_msa)
    head_dim = self.hidden_size // self.num_heads
    heads = lambda a: a.reshape(a.shape[0], a.shape[1], self.num_heads, head_dim)
    # The original creates the k, q, v projections in this order (Dense_1, Dense_2, Dense_3).
    k = heads(_dense(self.hidden_size, self.dtype, "Dense_1")(h))
    q = heads(_dense(self.hidden_size, self.dtype, "Dense_2")(h))
    v = heads(_dense(self.hidden_size, self.dtype, "Dense_3")(h))
    scale = 1.0 / head_dim if self.attention_scale == "original" else 1.0 / math.sqrt(head_dim)
    if self.attention_impl == "einsum":
      y = _einsum_attention(q, k, v, scale)
    else:
      impl = None if self.attention_impl == "auto" else self.attention_impl
      y = jax.nn.dot_product_attention(q, k, v, scale=scale, implementation=impl)
    y = y.reshape(x.shape)
    x = x + gate_msa[:, None] * _dense(self.hidden_size, self.dtype, "Dense_4")(y)

    h = nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False, dtype=self.dtype)(x)
    h = modulate(h, shift_mlp, scale_mlp)
    h = MlpBlock(int(self.hidden_size * self.mlp_ratio), self.dtype, self.dropout, name="MlpBlock_0")(
        h, train)
    return x + gate_mlp[:, None] * h


class DiTBlockStep(DiTBlock):
  """A `DiTBlock` as one step of `nn.scan` (`DiT(scan_layers=True)`): (x, c) -> (x, None), the
  tokens carried, the conditioning broadcast, `train` fixed for the whole stack."""
  train: bool = False

  @nn.compact
  def __call__(self, x, c):
    return _keep_batch_split(self.block(_keep_batch_split(x), c, self.train)), None


def _keep_batch_split(x):
  """`x` with its rows split over the mesh's batch axes, when the step is traced on a mesh
  (`train_step.make_train_step` sets it). Inside a scan XLA otherwise may give up the batch
  split and run the blocks' matmuls split over features, all-reducing whole-batch
  activations (docs/benchmarks.md, scanned layers on a mesh)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
    return x
  if x.shape[0] % int(np.prod([mesh.shape[a] for a in BATCH_AXES])):
    return x
  return jax.lax.with_sharding_constraint(x, jax.sharding.PartitionSpec(BATCH_AXES))


def remat_policy(remat):
  """`model.remat` ('none' | 'full' | 'dots'; the original's bool: True = 'full') ->
  (rematerialise?, jax.checkpoint policy). 'dots' keeps the outputs of the Dense layers' matmuls
  (no batch dimensions) and recomputes the rest (attention, norms, activations)."""
  if isinstance(remat, bool):
    remat = "full" if remat else "none"
  if remat not in REMAT_POLICIES:
    raise ValueError(f"model.remat must be one of {REMAT_POLICIES}, got {remat!r}")
  if remat == "dots":
    return True, jax.checkpoint_policies.dots_with_no_batch_dims_saveable
  return remat == "full", None


class FinalLayer(nn.Module):
  """adaLN (zero-initialised) -> LayerNorm -> modulate -> Dense to patch pixels (zero-initialised)."""
  patch_size: int
  out_channels: int
  hidden_size: int
  dtype: Dtype

  @nn.compact
  def __call__(self, x, c):
    mod = _dense(2 * self.hidden_size, self.dtype, "Dense_0", zero=True)(nn.silu(c))
    shift, scale = jnp.split(mod, 2, axis=-1)
    x = nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False, dtype=self.dtype)(x)
    x = modulate(x, shift, scale)
    return _dense(self.patch_size ** 2 * self.out_channels, self.dtype, "Dense_1", zero=True)(x)
