"""The single calling convention between networks and everything that uses them.

Objectives, samplers, evaluators and CFG never call a Flax module directly: they call a
`VelocityModel`, passing the conditioning as one dict (`cond`, see `shortcut_jax.core.conditioning`).
The model checks the dict against the condition kinds it was built for: an unknown key is an
error, a missing optional kind (a label) means its null value.
"""

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from shortcut_jax.core import conditioning as cond_lib
from shortcut_jax.core import precision
from shortcut_jax.core.conditioning import cond_from_batch  # noqa: F401  (re-exported)

Array = Any
Cond = Mapping[str, Array]


@dataclasses.dataclass(frozen=True, eq=False)
class VelocityModel:
  """A network predicting a velocity from (x, t, level, cond).

  Attributes:
    apply_fn: `apply_fn(params, x, t, level, cond, train, rngs) -> velocity` with x NHWC, t float
      [B] in [0, 1] (0 = source, 1 = data), level int/float [B] (step size 2^-level) and cond a
      dict of kinds of `conditioning` (checked; optional kinds may be missing).
    num_classes: shorthand for a label-only model (label `num_classes` is the null label);
      ignored when `conditioning` is given.
    conditioning: the condition kinds the network takes (default: labels only).
    matmul_precision: the precision of its matmuls (`core.precision`; 'default': JAX's).
  """
  apply_fn: Callable[..., Array]
  num_classes: int = 0
  conditioning: Optional[cond_lib.Conditioning] = None
  matmul_precision: str = "default"

  def __post_init__(self):
    if self.conditioning is None:
      object.__setattr__(self, "conditioning", cond_lib.labels_only(self.num_classes))
    label = self.conditioning.kind("label")
    object.__setattr__(self, "num_classes", label.num_classes if label is not None else 0)

  def __call__(self, params, x, t, level, cond: Cond, *, train: bool = False,
               rngs: Optional[Mapping[str, Array]] = None) -> Array:
    cond = self.conditioning.check(cond, x.shape[0])
    with precision.scope(self.matmul_precision):
      return self.apply_fn(params, x, t, level, cond, train, rngs)

  def drop_cond(self, cond: Cond, key: Array, config) -> Tuple[Dict[str, Array], Dict[str, Array]]:
    """CFG dropout of every kind with its own probability: (cond, dropped-ratio metrics)."""
    return self.conditioning.drop(cond, key, config)

  def null_cond(self, cond: Cond) -> Dict[str, Array]:
    """The unconditional counterpart of `cond` (the CFG branch)."""
    return self.conditioning.null(cond)

  def unguided_cond(self, cond: Cond, config) -> Dict[str, Array]:
    """`cond` as trained when `config.cfg_scale == 0` (see `Conditioning.unguided`)."""
    return self.conditioning.unguided(cond, config)
