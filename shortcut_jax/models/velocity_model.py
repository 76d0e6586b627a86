"""The single calling convention between networks and everything that uses them.

Objectives, samplers, evaluators and CFG never call a Flax module directly: they call a
`VelocityModel`, passing the conditioning as one dict (`cond`). Today `cond` holds `label`
(int32 [B], `num_classes` is the null label); later variants add keys such as `cond_image`
or `embedding` without changing any caller.
"""

import dataclasses
from typing import Any, Callable, Mapping, Optional

import jax.numpy as jnp

Array = Any
Cond = Mapping[str, Array]

# Batch keys that are conditioning (everything a model sees besides x, t and level).
COND_KEYS = ("label", "cond_image", "embedding")


def cond_from_batch(batch: Mapping[str, Array]) -> dict:
  """Returns the conditioning part of a batch dict (the keys in `COND_KEYS` it has)."""
  return {k: batch[k] for k in COND_KEYS if k in batch}


@dataclasses.dataclass(frozen=True, eq=False)
class VelocityModel:
  """A network predicting a velocity from (x, t, level, cond).

  Attributes:
    apply_fn: `apply_fn(params, x, t, level, cond, train, rngs) -> velocity` with x NHWC, t float
      [B] in [0, 1] (0 = noise, 1 = data) and level int/float [B] (step size 2^-level).
    num_classes: number of real classes; label `num_classes` is the null (unconditional) label.
      0 when the model takes no labels.
  """
  apply_fn: Callable[..., Array]
  num_classes: int = 0

  def __call__(self, params, x, t, level, cond: Cond, *, train: bool = False,
               rngs: Optional[Mapping[str, Array]] = None) -> Array:
    return self.apply_fn(params, x, t, level, cond, train, rngs)

  def drop_cond(self, cond: Cond, drop: Array) -> dict:
    """Replaces the label by the null label where `drop` (bool [B]) is true."""
    cond = dict(cond)
    if "label" in cond:
      cond["label"] = jnp.where(drop, self.num_classes, cond["label"]).astype(jnp.int32)
    return cond

  def null_cond(self, cond: Cond) -> dict:
    """The unconditional counterpart of `cond` (used for the CFG branch)."""
    if "label" not in cond:
      return dict(cond)
    return self.drop_cond(cond, jnp.ones(cond["label"].shape, bool))
