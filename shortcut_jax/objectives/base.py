"""What every training objective returns, and the registry that names them.

An objective is a pure function

    targets_fn(model, params, ema_params, batch, rng, config) -> TrainingTargets

where `model` is a `VelocityModel`, `batch` a dict (`image` float32 NHWC in [-1, 1], optional
`label`, later `cond_image`, `embedding`), `rng` a PRNG key used only inside, and `config` the
`config.objective` section (python values, read at trace time). Objectives are looked up by
name outside of jit (`get_objective`), never chosen by string tests inside traced code.
"""

import dataclasses
from typing import Any, Callable, Dict, NamedTuple, Optional

Array = Any


class TrainingTargets(NamedTuple):
  """Model inputs and regression targets for one batch.

  Attributes:
    x: model input x_t, same shape as the batch images.
    t: float32 [B] times in [0, 1].
    level: int32 [B] step-size levels (step 2^-level) the model is asked for.
    cond: conditioning dict passed to the model (labels possibly dropped).
    target: velocity target, same shape as x.
    groups: name -> float32 [B] mask; the trainer logs `train/loss_<name>` as the mean per-sample
      loss over each group (e.g. `flow`, `bootstrap`).
    metrics: extra scalar metrics (logged under `train/`).
  """
  x: Array
  t: Array
  level: Array
  cond: Dict[str, Array]
  target: Array
  groups: Dict[str, Array]
  metrics: Dict[str, Array]


@dataclasses.dataclass(frozen=True)
class Objective:
  """A registered objective.

  Attributes:
    name: registry name (`config.objective.name`).
    targets_fn: see the module docstring.
    uses_level: whether the network is conditioned on the step-size level (shortcut models);
      when False the DiT is built with `ignore_dt=True` and samplers always use the finest level.
    source: where sampling starts (`flow_path.sample_source`): 'gaussian' noise, or 'zeros'
      for a deterministic one-pass model.
    max_sample_steps: the most sampling steps the objective's model supports (None: any).
  """
  name: str
  targets_fn: Callable[..., TrainingTargets]
  uses_level: bool
  source: str = "gaussian"
  max_sample_steps: Optional[int] = None

  def check_steps(self, steps) -> None:
    """Raises ValueError if a step budget in `steps` is more than the model supports."""
    if self.max_sample_steps is not None:
      bad = [n for n in steps if n > self.max_sample_steps]
      if bad:
        raise ValueError(f"objective {self.name!r} samples in at most {self.max_sample_steps} "
                         f"step(s); got step budgets {bad}")


_REGISTRY: Dict[str, Objective] = {}


def register_objective(name: str, *, uses_level: bool, source: str = "gaussian",
                       max_sample_steps: Optional[int] = None):
  """Decorator registering `targets_fn` under `name` (see `Objective` for the options)."""
  def wrap(fn):
    if name in _REGISTRY:
      raise ValueError(f"objective {name!r} is registered twice")
    _REGISTRY[name] = Objective(name=name, targets_fn=fn, uses_level=uses_level, source=source,
                                max_sample_steps=max_sample_steps)
    return fn
  return wrap


def get_objective(name: str) -> Objective:
  """Returns the registered objective `name`, or raises a ValueError listing the known ones."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown objective {name!r}; known objectives: {sorted(_REGISTRY)}")
  return _REGISTRY[name]


def objective_names():
  return sorted(_REGISTRY)
