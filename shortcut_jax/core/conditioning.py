"""Condition kinds: what a model may be conditioned on, each with its null value and its dropout.

A batch is a dict with optional conditioning keys next to `image`: `label` (int32 [B]) and
`cond_image` (float32 [B, H, W, C], e.g. the upsampled low-resolution input of super-resolution);
`embedding` (a float vector per example) comes with text conditioning. Objectives, samplers,
classifier-free guidance, evaluators and generation pass the whole `cond` dict and never name a
kind: every kind-specific rule lives here.

Each kind says
  * its batch key,
  * its null (unconditional) value and how to recognise it,
  * the objective-config field holding its classifier-free-guidance dropout probability
    (`class_dropout_prob` for labels — the original's field —, `image_dropout_prob` for images),
  * whether it is nulled for the CFG branch (`guided`),
  * whether `cfg_scale == 0` training nulls it (the original trains unconditionally on labels
    then; a super-resolution model keeps its input image),
  * whether a model call may omit it (a missing label means the null label; a missing image is
    an error).

A `Conditioning` is the ordered set of kinds one network takes. Dropout draws use one key: the
first kind draws with the key itself (so a label-only model draws exactly what the original
drew), kind i > 0 with `fold_in(key, i)`.
"""

import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp

from shortcut_jax.core.config_value import config_value

Array = Any
Cond = Mapping[str, Array]


def _rows(mask: Array, value: Array) -> Array:
  """A [B] mask broadcast over the non-batch axes of `value`."""
  return mask.reshape((-1,) + (1,) * (value.ndim - 1))


@dataclasses.dataclass(frozen=True)
class LabelKind:
  """Class labels 0 .. num_classes-1; `num_classes` is the null label (the embedder's last row)."""
  num_classes: int
  key: str = "label"
  drop_prob_field: str = "class_dropout_prob"
  guided: bool = True
  null_when_unguided: bool = True
  required: bool = False

  def null(self, value: Array) -> Array:
    return jnp.full(value.shape, self.num_classes, jnp.int32)

  def missing(self, batch_size: int) -> Array:
    return jnp.full((batch_size,), self.num_classes, jnp.int32)

  def is_null(self, value: Array) -> Array:
    return value == self.num_classes

  def drop(self, value: Array, mask: Array) -> Array:
    return jnp.where(mask, self.num_classes, value).astype(jnp.int32)


class ZeroNullKind:
  """A float condition whose null is all zeros (images, embeddings): null, test, dropout."""

  def null(self, value: Array) -> Array:
    return jnp.zeros_like(value)

  def is_null(self, value: Array) -> Array:
    return jnp.all(value.reshape(value.shape[0], -1) == 0, axis=1)

  def drop(self, value: Array, mask: Array) -> Array:
    return jnp.where(_rows(mask, value), jnp.zeros_like(value), value)


@dataclasses.dataclass(frozen=True)
class ImageKind(ZeroNullKind):
  """An image of the sample's size (NHWC, [-1, 1]); its null is the all-zero (mid-grey) image.

  `guided` (set when the model was trained with image dropout) says whether the CFG branch
  nulls it; a model never trained on the null image keeps its input image in both branches.
  """
  key: str = "cond_image"
  drop_prob_field: str = "image_dropout_prob"
  guided: bool = False
  null_when_unguided: bool = False
  required: bool = True

  def missing(self, batch_size: int):
    raise ValueError(f"the model is conditioned on {self.key!r} but the call has none")


@dataclasses.dataclass(frozen=True)
class EmbeddingKind(ZeroNullKind):
  """A float vector per example (e.g. a CLIP text embedding), [B, D] (or a sequence [B, L, D]).

  Its null is the all-zero vector; a DiT built with `embedding_null='learned'` replaces null
  rows by a learned vector. Nulled for the CFG branch, dropped with `embedding_dropout_prob`,
  kept when `cfg_scale == 0` (only labels follow the original's unconditional training), and
  optional in a model call (missing means null: unconditional samples).
  """
  dim: int
  key: str = "embedding"
  drop_prob_field: str = "embedding_dropout_prob"
  guided: bool = True
  null_when_unguided: bool = False
  required: bool = False

  def missing(self, batch_size: int) -> Array:
    return jnp.zeros((batch_size, self.dim), jnp.float32)


# A guidance row (w, t_min, t_max) of a network that takes guidance as input: w the guidance
# scale in this library's meaning (`core.guidance`: 1 = conditional, no guidance), [t_min, t_max]
# the interval of times it applies to. Missing: (1, 0, 1).
GUIDANCE = "guidance"
NO_GUIDANCE = (1.0, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class GuidanceKind:
  """The guidance a network takes as an input (`model.guidance_input`): [B, 3] rows (w, t_min,
  t_max) (`NO_GUIDANCE` when missing). Not a condition CFG nulls or drops: a network that
  takes it is guided by it, in one call (`core.guidance.guided_velocity`)."""
  key: str = GUIDANCE
  drop_prob_field: Optional[str] = None
  guided: bool = False
  null_when_unguided: bool = False
  required: bool = False

  def missing(self, batch_size: int) -> Array:
    return guidance_rows(NO_GUIDANCE[0], batch_size)

  def null(self, value: Array) -> Array:
    return value

  def is_null(self, value: Array) -> Array:
    return jnp.zeros(value.shape[:1], bool)


def guidance_rows(w, batch_size: int, interval=NO_GUIDANCE[1:]) -> Array:
  """[B, 3] guidance inputs: scale w (a float or [B]) on the interval (t_min, t_max)."""
  w = jnp.broadcast_to(jnp.asarray(w, jnp.float32), (batch_size,))
  lo, hi = (jnp.full((batch_size,), v, jnp.float32) for v in interval)
  return jnp.stack([w, lo, hi], axis=1)


@dataclasses.dataclass(frozen=True)
class Conditioning:
  """The ordered condition kinds of one network (see the module docstring)."""
  kinds: Tuple[Any, ...] = ()

  @property
  def keys(self) -> Tuple[str, ...]:
    return tuple(k.key for k in self.kinds)

  def kind(self, key: str):
    for k in self.kinds:
      if k.key == key:
        return k
    return None

  def check(self, cond: Cond, batch_size: int) -> Dict[str, Array]:
    """`cond` as a dict, after checking it: raises on unknown keys, on a missing required kind
    and on values whose batch size is not `batch_size`. Missing optional kinds stay missing (the
    network uses their null value; `fill_missing` gives it)."""
    unknown = sorted(set(cond) - set(self.keys))
    if unknown:
      raise ValueError(f"conditioning keys {unknown} are not inputs of this model (it takes "
                       f"{list(self.keys) or 'no conditioning'})")
    out = {}
    for k in self.kinds:
      if k.key in cond:
        value = cond[k.key]
        if value.shape[:1] != (batch_size,):
          raise ValueError(f"cond[{k.key!r}] has shape {value.shape}; expected batch size "
                           f"{batch_size} first")
        out[k.key] = value
      elif k.required:
        raise ValueError(f"the model is conditioned on {k.key!r} but the call has none")
    return out

  def fill_missing(self, cond: Cond, batch_size: int) -> Dict[str, Array]:
    """`cond` with every missing optional kind set to its null value."""
    out = dict(cond)
    for k in self.kinds:
      if k.key not in out:
        out[k.key] = k.missing(batch_size)
    return out

  def null(self, cond: Cond) -> Dict[str, Array]:
    """The CFG branch's condition: every guided kind replaced by its null."""
    cond = dict(cond)
    for k in self.kinds:
      if k.guided and k.key in cond:
        cond[k.key] = k.null(cond[k.key])
    return cond

  def unguided(self, cond: Cond, config) -> Dict[str, Array]:
    """With `config.cfg_scale == 0` the kinds that say so (labels) are nulled: the model is
    trained without them, as the original trains unconditionally."""
    if float(config_value(config, "cfg_scale")) != 0.0:
      return dict(cond)
    cond = dict(cond)
    for k in self.kinds:
      if k.null_when_unguided and k.key in cond:
        cond[k.key] = k.null(cond[k.key])
    return cond

  def drop(self, cond: Cond, key: Array, config) -> Tuple[Dict[str, Array], Dict[str, Array]]:
    """Classifier-free-guidance dropout of every kind present, each with its own probability.

    Args:
      cond: conditioning dict, batch size B.
      key: one PRNG key (see the module docstring for how it is used per kind).
      config: the objective config (each kind reads its `drop_prob_field`, default 0).

    Returns:
      (dropped cond, {`dropped_ratio` (first kind present, the original's metric: the fraction
      of its values that are null after dropout) and `dropped_ratio_<key>` for every kind}).
    """
    cond = dict(cond)
    ratios = {}
    for i, k in enumerate(self.kinds):
      if k.key not in cond or k.drop_prob_field is None:
        continue
      value = cond[k.key]
      p = float(config_value(config, k.drop_prob_field))
      kind_key = key if i == 0 else jax.random.fold_in(key, i)
      mask = jax.random.bernoulli(kind_key, p, value.shape[:1])
      cond[k.key] = k.drop(value, mask)
      ratio = jnp.mean(k.is_null(cond[k.key]).astype(jnp.float32))
      ratios.setdefault("dropped_ratio", ratio)
      ratios[f"dropped_ratio_{k.key}"] = ratio
    if not ratios:
      ratios["dropped_ratio"] = jnp.zeros((), jnp.float32)
    return cond, ratios


# A batch's matched source noise (the OT coupling of `data.ot_coupling`): not a condition.
NOISE = "noise"


def cond_from_batch(batch: Mapping[str, Array]) -> Dict[str, Array]:
  """The conditioning part of a batch: every key but the sample (`image`), the pipeline's
  padding `mask` and OT-coupled source noise (`noise`)."""
  return {k: v for k, v in batch.items() if k not in ("image", "mask", NOISE)}


def take_rows(cond: Cond, rows) -> Dict[str, Array]:
  """Every value of `cond` indexed by `rows` (a slice or an index array) along the batch axis."""
  return jax.tree.map(lambda c: c[rows], dict(cond))


def concat_rows(*conds: Cond) -> Dict[str, Array]:
  """The conds stacked along the batch axis (same keys)."""
  return jax.tree.map(lambda *c: jnp.concatenate(c, axis=0), *[dict(c) for c in conds])


def labels_only(num_classes: int) -> Conditioning:
  return Conditioning((LabelKind(num_classes),))


def from_config(config, *, cond_image: bool, num_classes: Optional[int] = None,
                embedding_dim: int = 0) -> Conditioning:
  """The kinds of an experiment: labels always (the original's DiT has a label table), plus the
  image condition when the data has one (`data.low_res_factor > 0`) and a vector embedding when
  it has one (`data.embedding_dim > 0`), and the guidance input of a network that takes one
  (`model.guidance_input`)."""
  kinds = [LabelKind(config.data.num_classes if num_classes is None else num_classes)]
  if cond_image:
    kinds.append(ImageKind(guided=float(config.objective.image_dropout_prob) > 0))
  if embedding_dim:
    kinds.append(EmbeddingKind(int(embedding_dim),
                               guided=float(config.objective.embedding_dropout_prob) > 0))
  if config_value(config.model, "guidance_input", section="model"):
    kinds.append(GuidanceKind())
  return Conditioning(tuple(kinds))
