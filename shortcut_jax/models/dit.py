"""Diffusion Transformer (DiT) conditioned on time, step-size level and label.

Faithful to the original shortcut-models DiT: the parameter tree (module and parameter names,
shapes, initialisers) is identical, so its released checkpoints load one to one, and the compute
dtype of every layer is the original's (bfloat16 by default, with the second Dense of each
timestep embedder, the conditioning sum and the softmax in float32).

Deliberate additions, all off by default except where noted:
  * attention through `jax.nn.dot_product_attention` with an explicit scale, so a fused kernel
    (`attention_impl='cudnn'`) can be used on GPUs; the default `'xla'` is the plain XLA path.
    It rounds the softmax probabilities to the compute dtype before multiplying by v, so in
    bfloat16 it differs from the original by a few bf16 ulps; `attention_impl='einsum'` keeps
    the original's arithmetic (float32 probabilities) and reproduces it bit for bit.
  * `attention_scale='sqrt'` for new models (1/sqrt(head_dim)); the original scales by
    1/head_dim (`'original'`, the default, needed by its checkpoints).
  * `remat` rematerialises every block in the backward pass: 'full' (the original's `True`;
    less memory, ~30% more FLOPs) or 'dots' (keeps the Dense layers' matmul outputs).
  * `scan_layers=True` runs the blocks as one `nn.scan` over a stacked `DiTBlock_scan` tree (one
    block to compile instead of depth); `core.layer_stack.convert` maps the original's
    `DiTBlock_<i>` tree onto it and back, so its checkpoints still load.
  * non-square inputs (the original asserts square images).
  * `guidance_input` (off by default): a guidance scale w, and with `guidance_interval` the
    interval [t_min, t_max] it applies to, embedded like t and the step size and added to the
    conditioning vector (improved shortcut models, iMF): such a network is guided by its input,
    one call per step (`core.guidance.guided_velocity`).
  * image conditioning (`cond_image_mode`, off by default, so unconditioned models keep the
    original parameter tree exactly): `'concat'` stacks the conditioning image (e.g. the
    upsampled low-resolution input) onto x_t as extra input channels (SR3, fm-boosting);
    `'tokens'` embeds it with a second patch embedding plus the same position embedding, then
    concatenates the two token sequences along features and projects back to the hidden size
    (the super-resolution shortcut project).
"""

import functools
from typing import Any, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from shortcut_jax.core import conditioning as cond_lib
from shortcut_jax.core import layer_stack
from shortcut_jax.models.velocity_model import VelocityModel
from shortcut_jax.models.dit_blocks import (  # noqa: F401  (REMAT_POLICIES re-exported)
    REMAT_POLICIES, DiTBlock, DiTBlockStep, FinalLayer, _dense, remat_policy)
from shortcut_jax.models.dit_embeddings import (Dtype, xavier_uniform_torch_style,
                                                sincos_2d_position_embedding, TimestepEmbedder,
                                                LabelEmbedder, PatchEmbed)  # noqa: F401

Array = Any

# Named sizes (DiT paper): hidden size, depth, heads; mlp_ratio 4 everywhere.
_SIZES = {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16)}
DIT_PRESETS = {
    f"DiT-{name}/{patch}": dict(hidden_size=h, depth=d, num_heads=n, patch_size=patch, mlp_ratio=4.0)
    for name, (h, d, n) in _SIZES.items() for patch in (2, 4, 8)
}

ATTENTION_IMPLS = ("xla", "cudnn", "auto", "einsum")
ATTENTION_SCALES = ("original", "sqrt")
COND_IMAGE_MODES = ("concat", "tokens")
# How a vector condition (`embedding`, e.g. a CLIP text embedding) enters: projected and added
# to the conditioning vector c where the label embedding goes, or as extra tokens.
EMBEDDING_MODES = ("add", "tokens")
EMBEDDING_NULLS = ("zero", "learned")


class DiT(nn.Module):
  """DiT velocity network v(x, t, level, label).

  Constructor arguments are the original's (plus the additions in the module docstring).
  Call as `DiT(...).apply({'params': p}, x, t, dt, y, train=False)` with x [B, H, W, C],
  t float [B] in [0, 1], dt [B] the step-size level (step 2^-dt), y int [B] labels
  (`num_classes` = null label), and `cond_image=` [B, H, W, C'] when `cond_image_mode` is set.
  Returns [B, H, W, out_channels] in the compute dtype.
  """
  patch_size: int
  hidden_size: int
  depth: int
  num_heads: int
  mlp_ratio: float
  out_channels: int
  class_dropout_prob: float  # Unused by the network (labels are dropped by the objective); kept
                             # so the original's constructor arguments work unchanged.
  num_classes: int
  ignore_dt: bool = False
  dropout: float = 0.0
  dtype: Dtype = jnp.bfloat16
  attention_impl: str = "xla"
  attention_scale: str = "original"
  remat: Any = "none"  # 'none' | 'full' | 'dots' (or the original's bool).
  scan_layers: bool = False
  cond_image_mode: Optional[str] = None
  embedding_mode: Optional[str] = None
  embedding_null: str = "zero"
  guidance_input: bool = False
  guidance_interval: bool = False

  @nn.compact
  def __call__(self, x, t, dt, y, train: bool = False, cond_image=None, embedding=None,
               guidance=None):
    batch, height, width, _ = x.shape
    if (cond_image is None) != (self.cond_image_mode is None):
      raise ValueError(f"DiT(cond_image_mode={self.cond_image_mode!r}) called "
                       f"{'without' if cond_image is None else 'with'} a cond_image")
    if (embedding is None) != (self.embedding_mode is None):
      raise ValueError(f"DiT(embedding_mode={self.embedding_mode!r}) called "
                       f"{'without' if embedding is None else 'with'} an embedding")
    if cond_image is not None and cond_image.shape[1:3] != (height, width):
      raise ValueError(f"cond_image of spatial size {cond_image.shape[1:3]} does not match x "
                       f"({height}x{width}); upsample it to the sample's size first")
    p = self.patch_size
    if height % p or width % p:
      raise ValueError(f"image size {height}x{width} is not divisible by patch_size {p}")
    grid_h, grid_w = height // p, width // p
    if self.ignore_dt:
      dt = jnp.zeros_like(t)

    if self.cond_image_mode == "concat":
      x = jnp.concatenate([x, cond_image.astype(x.dtype)], axis=-1)
    x = PatchEmbed(p, self.hidden_size, self.dtype, name="PatchEmbed_0")(x)
    pos = sincos_2d_position_embedding(self.hidden_size, grid_h, grid_w)
    x = (x.astype(jnp.float32) + pos[None]).astype(self.dtype)
    if self.cond_image_mode == "tokens":
      ctok = PatchEmbed(p, self.hidden_size, self.dtype, name="CondPatchEmbed_0")(cond_image)
      ctok = (ctok.astype(jnp.float32) + pos[None]).astype(self.dtype)
      x = _dense(self.hidden_size, self.dtype, "CondFusion_0")(jnp.concatenate([x, ctok], axis=-1))
    te = TimestepEmbedder(self.hidden_size, self.dtype, name="TimestepEmbedder_0")(t)
    dte = TimestepEmbedder(self.hidden_size, self.dtype, name="TimestepEmbedder_1")(dt)
    ye = LabelEmbedder(self.num_classes, self.hidden_size, self.dtype, name="LabelEmbedder_0")(y)
    c = te + ye + dte  # float32: the timestep embedders' last layers compute in float32.
    if guidance is not None and not self.guidance_input:
      raise ValueError("DiT(guidance_input=False) called with a guidance input")
    if self.guidance_input:
      c = c + self._guidance(guidance, batch)
    num_tokens = x.shape[1]
    if embedding is not None:
      e = self._embedding(embedding)
      if self.embedding_mode == "add":
        c = c + jnp.mean(e, axis=1).astype(c.dtype)
      else:  # 'tokens': extra tokens the image tokens attend to, dropped before the output.
        x = jnp.concatenate([x, e.astype(x.dtype)], axis=1)

    x = self._blocks(x, c, train)
    x = x[:, :num_tokens]
    x = FinalLayer(p, self.out_channels, self.hidden_size, self.dtype, name="FinalLayer_0")(x, c)
    x = x.reshape(batch, grid_h, grid_w, p, p, self.out_channels)
    x = jnp.einsum("bhwpqc->bhpwqc", x).reshape(batch, height, width, self.out_channels)

    # The original learns an (unused) per-time log-variance table; it is kept only so that the
    # parameter tree maps one to one onto its checkpoints. XLA removes the dead computation.
    t_bucket = jnp.clip(jnp.floor(t * 256).astype(jnp.int32), 0, 255)
    nn.Embed(256, 1, embedding_init=nn.initializers.zeros, name="Embed_0")(t_bucket)
    return x

  def _blocks(self, x, c, train):
    """The depth blocks: unrolled (`DiTBlock_<i>`, the original's tree) or one `nn.scan` over a
    stacked `DiTBlock_scan` (`core.layer_stack` converts between the two)."""
    rematerialise, policy = remat_policy(self.remat)
    args = (self.hidden_size, self.num_heads, self.mlp_ratio, self.dtype, self.dropout,
            self.attention_impl, self.attention_scale)
    if self.scan_layers:
      step = nn.remat(DiTBlockStep, policy=policy) if rematerialise else DiTBlockStep
      stack = nn.scan(step, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                      in_axes=nn.broadcast, length=self.depth)
      x, _ = stack(*args, train=train, name="DiTBlock" + layer_stack.SCAN_SUFFIX)(x, c)
      return x
    block_cls = nn.remat(DiTBlock, policy=policy, static_argnums=(3,)) if rematerialise \
        else DiTBlock
    for i in range(self.depth):
      x = block_cls(*args, name=f"DiTBlock_{i}")(x, c, train)
    return x

  def _guidance(self, guidance, batch):
    """The embedding of the guidance rows (w, t_min, t_max) [B, 3] (missing: w = 1 on [0, 1]):
    w through `GuidanceEmbedder_0`, and with `guidance_interval` t_min and t_max through
    `GuidanceEmbedder_1` and `_2`, summed (added to c like the time embeddings)."""
    if guidance is None:
      guidance = cond_lib.guidance_rows(cond_lib.NO_GUIDANCE[0], batch)
    g = jnp.asarray(guidance, jnp.float32)
    if g.shape != (batch, 3):
      raise ValueError(f"guidance input of shape {g.shape}; expected [{batch}, 3] rows "
                       "(w, t_min, t_max)")
    out = 0.0
    for i in range(3 if self.guidance_interval else 1):
      out = out + TimestepEmbedder(self.hidden_size, self.dtype,
                                   name=f"GuidanceEmbedder_{i}")(g[:, i])
    return out

  def _embedding(self, embedding):
    """[B, D] or [B, L, D] vectors -> [B, L, hidden]: null rows (all zero) replaced by a learned
    vector when `embedding_null='learned'`, a two-layer projection, and (tokens mode, L > 1) a
    learned position table."""
    e = jnp.asarray(embedding, jnp.float32)
    if e.ndim == 2:
      e = e[:, None]
    if self.embedding_null == "learned":
      null = self.param("EmbeddingNull_0", nn.initializers.normal(0.02), (e.shape[-1],))
      is_null = cond_lib.EmbeddingKind(e.shape[-1]).is_null(e)
      e = jnp.where(is_null[:, None, None], null[None, None], e)
    h = _dense(self.hidden_size, self.dtype, "EmbeddingProj_0")(e.astype(self.dtype))
    h = _dense(self.hidden_size, self.dtype, "EmbeddingProj_1")(nn.silu(h))
    if self.embedding_mode == "tokens" and e.shape[1] > 1:
      pos = self.param("EmbeddingPos_0", nn.initializers.normal(0.02),
                       (e.shape[1], self.hidden_size))
      h = (h.astype(jnp.float32) + pos[None]).astype(self.dtype)
    return h


def validate_dit_args(*, patch_size, hidden_size, num_heads, depth, mlp_ratio, image_size=None,
                      attention_impl="xla", attention_scale="original", cond_image_mode=None,
                      field_prefix="model."):
  """Raises ValueError (naming the config field) for inconsistent DiT sizes, before compiling."""
  errors = []
  for name, value in (("patch_size", patch_size), ("hidden_size", hidden_size),
                      ("num_heads", num_heads), ("depth", depth)):
    if not isinstance(value, (int, np.integer)) or value <= 0:
      errors.append(f"{field_prefix}{name} must be a positive integer, got {value!r}")
  if not errors:
    if hidden_size % num_heads:
      errors.append(f"{field_prefix}hidden_size ({hidden_size}) must be divisible by "
                    f"{field_prefix}num_heads ({num_heads})")
    if hidden_size % 4:
      errors.append(f"{field_prefix}hidden_size ({hidden_size}) must be divisible by 4 "
                    "(2-D sin-cos position embedding)")
    if image_size is not None and image_size % patch_size:
      errors.append(f"image size {image_size} must be divisible by {field_prefix}patch_size "
                    f"({patch_size})")
  if mlp_ratio <= 0:
    errors.append(f"{field_prefix}mlp_ratio must be positive, got {mlp_ratio!r}")
  if attention_impl not in ATTENTION_IMPLS:
    errors.append(f"{field_prefix}attention_impl must be one of {ATTENTION_IMPLS}, got {attention_impl!r}")
  if attention_scale not in ATTENTION_SCALES:
    errors.append(f"{field_prefix}attention_scale must be one of {ATTENTION_SCALES}, "
                  f"got {attention_scale!r}")
  if cond_image_mode is not None and cond_image_mode not in COND_IMAGE_MODES:
    errors.append(f"{field_prefix}cond_image_mode must be one of {COND_IMAGE_MODES}, got "
                  f"{cond_image_mode!r}")
  if errors:
    raise ValueError("; ".join(errors))


def velocity_model(module: DiT, conditioning=None) -> VelocityModel:
  """Wraps a DiT as a `VelocityModel` (float32 output).

  Args:
    module: the DiT.
    conditioning: its condition kinds (default: labels, plus `cond_image` when the module has a
      `cond_image_mode`, and the guidance input when it has one). A missing label means the
      null label.
  """
  if conditioning is None:
    if module.embedding_mode is not None:
      raise ValueError("a DiT with an embedding_mode needs its `conditioning` (the embedding's "
                       "size): pass conditioning.from_config(...)")
    kinds = [cond_lib.LabelKind(module.num_classes)]
    if module.cond_image_mode is not None:
      kinds.append(cond_lib.ImageKind())
    if module.guidance_input:
      kinds.append(cond_lib.GuidanceKind())
    conditioning = cond_lib.Conditioning(tuple(kinds))

  def apply_fn(params, x, t, level, cond, train, rngs):
    cond = conditioning.fill_missing(cond, x.shape[0])
    out = module.apply({"params": params}, x, t, level, cond["label"], train=train, rngs=rngs,
                       cond_image=cond.get("cond_image"), embedding=cond.get("embedding"),
                       guidance=cond.get(cond_lib.GUIDANCE))
    return out.astype(jnp.float32)
  return VelocityModel(apply_fn=apply_fn, conditioning=conditioning)


def init_inputs(module: DiT, batch_spec: Mapping[str, Tuple[int, ...]], batch: int = 1):
  """Zero inputs for `module.init`, shaped by a batch spec (key -> per-example shape)."""
  if "image" not in batch_spec:
    raise ValueError(f"batch spec {dict(batch_spec)} has no 'image'")
  shape = (batch, *batch_spec["image"])
  kwargs = {}
  if module.cond_image_mode is not None:
    if "cond_image" not in batch_spec:
      raise ValueError(f"DiT(cond_image_mode={module.cond_image_mode!r}) needs 'cond_image' in "
                       f"the batch spec {dict(batch_spec)}")
    kwargs["cond_image"] = jnp.zeros((batch, *batch_spec["cond_image"]), jnp.float32)
  if module.embedding_mode is not None:
    if "embedding" not in batch_spec:
      raise ValueError(f"DiT(embedding_mode={module.embedding_mode!r}) needs 'embedding' in the "
                       f"batch spec {dict(batch_spec)}")
    kwargs["embedding"] = jnp.zeros((batch, *batch_spec["embedding"]), jnp.float32)
  args = (jnp.zeros(shape, jnp.float32), jnp.zeros((batch,)), jnp.zeros((batch,)),
          jnp.zeros((batch,), jnp.int32))
  return args, kwargs


def batch_spec_of(image_shape, cond_image_shape=None) -> Dict[str, Tuple[int, ...]]:
  spec = {"image": tuple(image_shape)}
  if cond_image_shape is not None:
    spec["cond_image"] = tuple(cond_image_shape)
  return spec


@functools.lru_cache(maxsize=None)
def _cached_init(module: DiT, spec_items, batch: int):
  args, kwargs = init_inputs(module, dict(spec_items), batch)
  return jax.jit(lambda rng: module.init({"params": rng}, *args, **kwargs)["params"])


def init_params(module: DiT, rng, image_shape, batch: int = 1, cond_image_shape=None):
  """Initialises the parameters for images of shape (H, W, C) (and the conditioning image's
  shape when the module takes one; default: the image's)."""
  if module.cond_image_mode is not None and cond_image_shape is None:
    cond_image_shape = tuple(image_shape)
  spec = batch_spec_of(image_shape, cond_image_shape if module.cond_image_mode else None)
  return _cached_init(module, tuple(sorted(spec.items())), batch)(rng)
