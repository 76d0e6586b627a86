"""What every training objective returns, and the registry that names them.

An objective is a registered `Objective`: a target function plus, where it needs them, its own
loss, state and sampler step. Every part but the target function has a default that gives the
original's behaviour (per-sample MSE, no state, Euler steps), so `naive` and `shortcut` only
write their targets.

* Targets: a pure function

      targets_fn(model, params, ema_params, batch, rng, config, *, step=None, state=None)
          -> TrainingTargets

  where `model` is a `VelocityModel`, `batch` a dict (`image` float32 NHWC in [-1, 1], optional
  `label`, `cond_image`, ...), `rng` a PRNG key used only inside, `config` the `config.objective`
  section (python values, read at trace time), `step` the int32 training step (traced) and
  `state` the objective's state (`TrainState.objective_state`). The returned `target` is a
  regression constant (the train step stops its gradient).
* Loss: `loss_fn(pred, targets, config) -> (per_sample_loss float32 [B], metrics)`; the train
  step minimises the batch mean of `per_sample_loss` and logs it per group (default `mse_loss`).
* State (optax style): `init_state(params, config) -> pytree`, stored in
  `TrainState.objective_state` (checkpointed, sharded and restored with the rest of the state;
  `{}` for stateless objectives), and `update_state(state, *, step, params, ema_params, config)
  -> state`, applied after each update (a distillation phase, an N schedule, a teacher copy).
  Both are pure, so a resumed run carries on exactly.
* Start: an objective never loads anything. One that `needs_teacher` gets its frozen teacher
  from the training layer when a run starts without a checkpoint (`initialisation`): the
  student starts from the teacher's weights and `objective_state['teacher']` holds the weights
  its calls use (`objectives.teacher`).
* Sampling: `sampler_step(predict, x, t, d, level) -> x_next` is one step of the sampler from
  time t (float32 [B]) by d (a float32 scalar) at the level the schedule gives (int32 [B]),
  where `predict(x, t, level)` is the network output (guided when sampling with CFG); default
  `euler_step`. A step that draws fresh noise (`sampler_noise=True`) is called
  `sampler_step(predict, x, t, d, level, noise)` with `noise` standard normal like x, drawn by
  the sampler from each image's key (`sampling.step_noise`): never derive noise from x itself.
  `schedule(num_steps, denoise_timesteps)`, when set, replaces the default
  (times, sizes, levels) of `shortcut_jax.sampling` (shortcut levels or uniform flow steps).

Objectives are looked up by name outside of jit (`get_objective`), never chosen by string tests
inside traced code.
"""

import dataclasses
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import jax.numpy as jnp

Array = Any


class TrainingTargets(NamedTuple):
  """Model inputs and regression targets for one batch.

  Attributes:
    x: model input x_t, same shape as the batch images.
    t: float32 [B] times in [0, 1].
    level: [B] step-size levels (step 2^-level) the model is asked for: int32, or float32 where
      an objective asks for steps between levels (`meanflow`).
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


def per_sample_mse(pred: Array, target: Array) -> Array:
  """Mean squared error of each sample over all non-batch axes, in float32: [B]."""
  diff = pred.astype(jnp.float32) - target.astype(jnp.float32)
  return jnp.mean(jnp.square(diff), axis=tuple(range(1, diff.ndim)))


def rms(x: Array) -> Array:
  """Root mean square of all of `x` in float32 (0 for an empty array): a logged magnitude."""
  if not x.size:
    return jnp.zeros((), jnp.float32)
  return jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32))))


def mse_loss(pred: Array, targets: "TrainingTargets", config=None):
  """The original's loss: per-sample MSE against `targets.target`, no extra metrics."""
  del config
  return per_sample_mse(pred, targets.target), {}


def empty_state(params, config=None) -> dict:
  """The state of a stateless objective."""
  del params, config
  return {}


def no_config_checks(config, check) -> None:
  """The default `Objective.check_config`: nothing beyond the fields' own checks."""
  del config, check


def keep_state(state, **unused):
  """`update_state` of an objective whose state does not change."""
  del unused
  return state


def euler_step(predict: Callable[..., Array], x: Array, t: Array, d: Array, level: Array) -> Array:
  """x + d · v(x, t, level): the Euler step of flow models and the shortcut step."""
  return x + d * predict(x, t, level).astype(x.dtype)


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
    loss_fn, init_state, update_state, sampler_step, schedule: see the module docstring.
    sampler_noise: `sampler_step` draws fresh noise each step: it takes a sixth argument, that
      noise (standard normal like x), and sampling needs one key per image (`sampling`).
    needs_jvp: the objective differentiates the network in forward mode (`jax.jvp`); the config
      validation then refuses attention implementations without a jvp rule (cuDNN's).
    takes_context: whether `targets_fn` accepts the `step` and `state` keywords (registered
      objectives do; a bare target function wrapped by `as_objective` does not).
    takes_source: the targets draw x0 from the configured source (`objective.source`, e.g. a
      coupling from the LR image); objectives without it start from their own (noise, zeros)
      and the config validation refuses another source for them.
    splits_batch: B // `bootstrap_every` rows of each batch get other targets
      (self-consistency, reflow), so the batch size must be a multiple of it.
    needs_teacher: the run starts from a frozen teacher (`teacher_workdir`), loaded by the
      training layer (`initialisation.start_from_teacher`).
    phased: training runs in log2(M) phases over `schedule_steps`.
    linear_path_only: the parameterisation assumes the linear path.
    needs_curved_path: part of the objective learns nothing on the linear path (HOMO's
      acceleration); the config validation warns.
    loss: a loss that makes the network's prediction itself, sharing work with its target
      (MeanFlow: the prediction is the primal of the jvp that makes the target), called inside
      the gradient: `loss(model, params, ema_params, batch, rng, config, *, step, state,
      dropout_rng) -> (per-sample loss [B], loss terms, TrainingTargets)` (the targets for the
      metrics: groups, the objective's metrics). None, the default: the targets first (no
      gradient), then the network at their inputs and `loss_fn` (`train_step`).
    outputs: what the network predicts, in order: ('velocity',) for every first-order
      objective; ('velocity', 'acceleration') for `homo`, whose network output concatenates
      both along the channel axis (`models.registry` builds a second network or head for it,
      `velocity_of` reads the first part).
  """
  name: str
  targets_fn: Callable[..., TrainingTargets]
  uses_level: bool
  source: str = "gaussian"
  max_sample_steps: Optional[int] = None
  loss_fn: Callable[..., Tuple[Array, Dict[str, Array]]] = mse_loss
  init_state: Callable[..., Any] = empty_state
  update_state: Callable[..., Any] = keep_state
  sampler_step: Callable[..., Array] = euler_step
  sampler_noise: bool = False
  schedule: Optional[Callable[[int, int], Tuple[Any, Any, Any]]] = None
  needs_jvp: bool = False
  takes_context: bool = True
  outputs: Tuple[str, ...] = ("velocity",)
  takes_source: bool = False
  splits_batch: bool = False
  needs_teacher: bool = False
  phased: bool = False
  linear_path_only: bool = False
  needs_curved_path: bool = False
  loss: Optional[Callable[..., Tuple[Array, Dict[str, Array], "TrainingTargets"]]] = None
  # `check_config(config, check)`: what this objective needs of the rest of the config when it
  # is the one trained (`check(ok, message)` collects a problem; `config.validate`).
  check_config: Callable[[Any, Callable[[bool, str], None]], None] = no_config_checks

  def velocity_of(self, output: Array) -> Array:
    """The velocity part of a network output (all of it for single-output objectives)."""
    if len(self.outputs) == 1:
      return output
    return jnp.split(output, len(self.outputs), axis=-1)[self.outputs.index("velocity")]

  def targets(self, model, params, ema_params, batch, rng, config, *, step=None,
              state=None) -> TrainingTargets:
    """`targets_fn` with the step and the objective state when it takes them."""
    if self.takes_context:
      return self.targets_fn(model, params, ema_params, batch, rng, config, step=step,
                             state=state)
    return self.targets_fn(model, params, ema_params, batch, rng, config)

  def check_steps(self, steps) -> None:
    """Raises ValueError if a step budget in `steps` is more than the model supports."""
    if self.max_sample_steps is not None:
      bad = [n for n in steps if n > self.max_sample_steps]
      if bad:
        raise ValueError(f"objective {self.name!r} samples in at most {self.max_sample_steps} "
                         f"step(s); got step budgets {bad}")


_REGISTRY: Dict[str, Objective] = {}
_FIELD_CHECKS: list = []


def register_field_checks(fn):
  """Decorator registering `fn(objective_config, check)`, the range checks of a module's own
  `objective.*` fields. `config.validate` runs every module's, whichever objective is trained
  (a bad value is an error even where it is not used)."""
  _FIELD_CHECKS.append(fn)
  return fn


def field_checks():
  """The registered field checks (`register_field_checks`), in registration order."""
  return tuple(_FIELD_CHECKS)


def register_objective(name: str, *, uses_level: bool, source: str = "gaussian",
                       max_sample_steps: Optional[int] = None, **parts):
  """Decorator registering `targets_fn` under `name` (see `Objective` for the options; `parts`
  are its `loss_fn`, `init_state`, `update_state`, `sampler_step`, `sampler_noise`, `schedule`)."""
  def wrap(fn):
    if name in _REGISTRY:
      raise ValueError(f"objective {name!r} is registered twice")
    _REGISTRY[name] = Objective(name=name, targets_fn=fn, uses_level=uses_level, source=source,
                                max_sample_steps=max_sample_steps, **parts)
    return fn
  return wrap


def as_objective(objective) -> Objective:
  """A registered `Objective` as is; a bare target function (old signature, no step or state)
  as an objective with the default loss, state and sampler."""
  if isinstance(objective, Objective):
    return objective
  return Objective(name=getattr(objective, "__name__", "targets"), targets_fn=objective,
                   uses_level=True, takes_context=False)


def get_objective(name: str) -> Objective:
  """Returns the registered objective `name`, or raises a ValueError listing the known ones."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown objective {name!r}; known objectives: {sorted(_REGISTRY)}")
  return _REGISTRY[name]


def objective_names():
  return sorted(_REGISTRY)
