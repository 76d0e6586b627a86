"""Training state (a pytree), the optimizer and learning-rate schedule, and the EMA update.

The optimizer is the original's: AdamW with a learning rate that warms up linearly from 0 over
`warmup_steps` and then stays constant (`schedule='constant'`) or follows a cosine decay to 0 at
`max_steps` (`schedule='cosine'`, optax's `warmup_cosine_decay_schedule`, whose decay length
counts the warm-up steps).

Two options a large run may want, both off by default (the original's optimizer exactly):
  * `optim.grad_clip_norm` > 0: gradients are rescaled to at most that global L2 norm before
    AdamW (`optax.clip_by_global_norm`);
  * `optim.weight_decay_mask`: 'all' decays every parameter, as the original does;
    'no_bias_norm_embed' leaves biases, normalisation scales and embedding tables undecayed.
Either changes the optimizer-state tree, so set them when a run starts (a checkpoint written
without them does not restore into a state with them, and vice versa).
"""

from typing import Any, Callable, Optional, Tuple, Union

import flax
import jax
import jax.numpy as jnp
import optax

from shortcut_jax.core.config_value import config_value

Array = Any
SCHEDULES = ("constant", "cosine")
WEIGHT_DECAY_MASKS = ("all", "no_bias_norm_embed")


@flax.struct.dataclass
class TrainState:
  """Everything a training step reads and writes.

  Attributes:
    step: int32 scalar, number of updates applied so far.
    params: online network weights.
    ema_params: exponential moving average of `params` (the bootstrap teacher and the weights
      usually sampled from).
    opt_state: optax state of the optimizer.
    rng: base PRNG key; step s uses `fold_in(rng, s)`, so the key of a step does not depend on
      how the run got there (resumes give identical randomness).
    objective_state: the objective's own state (`objectives.base`; `{}` when stateless),
      checkpointed with the rest.
  """
  step: Array
  params: Any
  ema_params: Any
  opt_state: Any
  rng: Array
  objective_state: Any = flax.struct.field(default_factory=dict)


def learning_rate_schedule(optim_config, max_steps: int) -> Callable[[Array], Array]:
  """The learning rate as a function of the step count (see the module docstring).

  Args:
    optim_config: fields `lr`, `warmup_steps`, `schedule`.
    max_steps: total training steps (end of the cosine decay).

  Returns:
    An optax schedule.
  """
  lr = float(optim_config.lr)
  warmup = int(optim_config.warmup_steps)
  schedule = optim_config.schedule
  if schedule not in SCHEDULES:
    raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {schedule!r}")
  if warmup < 0:
    raise ValueError(f"optim.warmup_steps must be >= 0, got {warmup}")
  if schedule == "cosine":
    if max_steps <= warmup:
      raise ValueError(f"cosine schedule needs max_steps ({max_steps}) > warmup_steps ({warmup})")
    return optax.warmup_cosine_decay_schedule(init_value=0.0, peak_value=lr, warmup_steps=warmup,
                                              decay_steps=max_steps, end_value=0.0)
  if warmup > 0:
    # linear_schedule holds its end value after the transition: warm-up then constant.
    return optax.linear_schedule(init_value=0.0, end_value=lr, transition_steps=warmup)
  return optax.constant_schedule(lr)


def _path_names(path) -> Tuple[str, ...]:
  return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def is_decayed(path) -> bool:
  """Whether `no_bias_norm_embed` decays the parameter at `path` (a pytree key path or names):
  not biases, not scales / parameters of normalisation layers, not embedding tables."""
  names = _path_names(path) if path and not isinstance(path[0], str) else tuple(path)
  leaf = names[-1] if names else ""
  if leaf in ("bias", "scale", "embedding"):
    return False
  return not any("norm" in n.lower() for n in names[:-1])


def weight_decay_mask(kind: str) -> Optional[Callable[[Any], Any]]:
  """The `mask` argument of `optax.adamw` for `optim.weight_decay_mask` (None: decay all)."""
  if kind not in WEIGHT_DECAY_MASKS:
    raise ValueError(f"optim.weight_decay_mask must be one of {WEIGHT_DECAY_MASKS}, got {kind!r}")
  if kind == "all":
    return None
  return lambda params: jax.tree_util.tree_map_with_path(lambda p, _: is_decayed(p), params)


def make_optimizer(optim_config, max_steps: int) -> Tuple[optax.GradientTransformation, Callable]:
  """AdamW with the configured schedule, optionally after clipping by global norm.

  Args:
    optim_config: fields `lr`, `b1`, `b2`, `weight_decay`, `warmup_steps`, `schedule`, and
      optionally `grad_clip_norm` (0 = off) and `weight_decay_mask` ('all').
    max_steps: total training steps.

  Returns:
    (optax transformation, learning-rate schedule).
  """
  lr_schedule = learning_rate_schedule(optim_config, max_steps)
  mask = weight_decay_mask(config_value(optim_config, "weight_decay_mask", section="optim"))
  tx = optax.adamw(learning_rate=lr_schedule, b1=float(optim_config.b1),
                   b2=float(optim_config.b2), weight_decay=float(optim_config.weight_decay),
                   mask=mask)
  clip = float(config_value(optim_config, "grad_clip_norm", section="optim") or 0.0)
  if clip < 0:
    raise ValueError(f"optim.grad_clip_norm must be >= 0 (0 = off), got {clip}")
  if clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
  return tx, lr_schedule


def create_train_state(params, tx: optax.GradientTransformation, rng: Array,
                       objective_state: Any = None) -> TrainState:
  """Step 0 state; the EMA starts as a copy of the parameters.

  Args:
    params: initial network weights.
    tx: the optimizer.
    rng: base PRNG key of the run.
    objective_state: the objective's initial state (`Objective.init_state`); None: `{}`.

  Returns:
    A `TrainState`.
  """
  # A real copy, so that donating the state never aliases params and ema_params.
  ema_params = jax.tree.map(jnp.array, params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=ema_params,
                    opt_state=tx.init(params), rng=rng,
                    objective_state={} if objective_state is None else objective_state)


def ema_update(ema_params, params, rate: Union[float, Array]):
  """`rate * ema + (1 - rate) * params`, leaf by leaf (in each leaf's dtype)."""
  return jax.tree.map(
      lambda e, p: (rate * e + (1 - rate) * p).astype(e.dtype), ema_params, params)
