"""The jitted training step and the matching validation-loss step.

`train_step` is a pure module-level function: the model, objective, optimizer and configs are
bound with `functools.partial` (they are static: Python objects read at trace time) and the result
is jitted once with the state donated (`make_train_step`). Objectives are chosen outside jit
(`objectives.get_objective`); inside, only the chosen objective's functions are traced: its
targets (which see the step and `state.objective_state`), its loss (per-sample MSE unless the
objective defines another) and its state update (`objectives.base`).

Precision: the whole step is traced under the model's matmul precision (`core.precision`).
Accumulation: with `accumulate_steps` = k > 1 the gradient is the mean over k microbatches
(`train.accumulation`, which says what equals one big batch).

Keys: the step's key is `fold_in(state.rng, state.step)` and is split once per use (targets,
dropout), so the randomness of step s does not depend on how many steps ran before in this
process (a resumed run repeats it exactly).
"""

import functools
from typing import Any, Callable, Dict, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from shortcut_jax.core import precision
from shortcut_jax.objectives.base import as_objective, per_sample_mse  # noqa: F401  (re-exported)
from shortcut_jax.train import accumulation
from shortcut_jax.train.train_state import TrainState, ema_update

Array = Any
Metrics = Dict[str, Array]

# Salt folded into the step key for validation, so validation draws never equal training draws.
_EVAL_SALT = 0x5EED
# Salt of the latent posterior sample (latent-space runs), so pixel runs keep their exact draws.
_LATENT_SALT = 0x1A7E


def _axes(entry) -> tuple:
  """The mesh axes of one PartitionSpec entry (a name, a tuple of names or None)."""
  return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def _objective_state(state: TrainState):
  return getattr(state, "objective_state", {})


def loss_metrics(per_sample: Array, groups: Dict[str, Array], prefix: str = "train/") -> Metrics:
  """`loss` (batch mean) and `loss_<group>` (mean over each group's rows; 0 for an empty group)."""
  metrics = {f"{prefix}loss": jnp.mean(per_sample)}
  for name, mask in groups.items():
    mask = mask.astype(jnp.float32)
    metrics[f"{prefix}loss_{name}"] = jnp.sum(per_sample * mask) / jnp.maximum(jnp.sum(mask), 1.0)
  return metrics


def _as_float32(metrics: Metrics) -> Metrics:
  return {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}


def prepare_batch(batch: Dict[str, Array], step_key: Array, encoder, encoder_params):
  """The batch the objective sees: latent-space runs encode it (`latents.LatentEncoder`)."""
  if encoder is None:
    return batch
  return encoder(encoder_params, batch, jax.random.fold_in(step_key, _LATENT_SALT))


def _under_model_precision(step_fn):
  """`step_fn` traced under its model's matmul precision (`core.precision`)."""
  @functools.wraps(step_fn)
  def wrapped(*args, model, **kwargs):
    with precision.scope(getattr(model, "matmul_precision", None)):
      return step_fn(*args, model=model, **kwargs)
  return wrapped


@_under_model_precision
def train_step(state: TrainState, batch: Dict[str, Array], encoder_params=None, *, model,
               objective, tx: optax.GradientTransformation,
               lr_schedule: Callable[[Array], Array], objective_config,
               ema_rate: Union[float, Callable[[Array], Array]], encoder=None,
               accumulate_steps: int = 1, reduce_once=None) -> Tuple[TrainState, Metrics]:
  """One AdamW update of the online weights, the EMA update, then the objective's state update.

  Args:
    state: the current `TrainState` (donated by `make_train_step`).
    batch: dict with `image` and optional conditioning (`label`, ...), global batch (pixels or
      posterior moments in latent space: `encoder` turns it into latents first).
    encoder_params: the frozen VAE's parameters (latent space only).
    model: the `VelocityModel`.
    objective: a registered `Objective` (or a bare target function: default loss and state).
    tx: the optimizer (`train_state.make_optimizer`).
    lr_schedule: its learning-rate schedule (logged only).
    objective_config: the `config.objective` section.
    ema_rate: EMA rate tau in `ema = tau ema + (1 - tau) params`, or a function of the step.
    encoder: a `latents.LatentEncoder` for latent-space runs, else None.
    accumulate_steps: microbatches per update (`optim.accumulate_steps`; 1 = none).
    reduce_once: with accumulation and replicated parameters (dp), the batch sharding: each
      device then sums its own rows' gradients over the microbatches and they are reduced over
      the devices once (`train.accumulation`; objectives whose targets come first). None: every
      microbatch's gradient is reduced as it comes.

  Returns:
    (new state, flat dict of float32 scalar metrics named `train/...`).
  """
  objective = as_objective(objective)
  objective_state = _objective_state(state)
  step_key = jax.random.fold_in(state.rng, state.step)
  batch = prepare_batch(batch, step_key, encoder, encoder_params)
  targets_key, dropout_key = jax.random.split(step_key)
  if objective.loss is None:  # The targets (no gradient), then the prediction at their inputs.
    targets = objective.targets(model, state.params, state.ema_params, batch, targets_key,
                                objective_config, step=state.step, state=objective_state)
    # Targets are regression constants, whichever weights made them.
    targets = targets._replace(target=jax.lax.stop_gradient(targets.target))
    inputs = targets._replace(metrics={})  # What the gradient pass reads, row by row.
  else:
    inputs = batch

  def loss_fn(params, inputs, targets_key, dropout_key):
    """The mean loss of one (micro)batch: (batch, keys) for an objective with its own loss,
    else (targets, dropout key)."""
    if objective.loss is not None:  # A loss that makes its own prediction (`Objective.loss`).
      per_sample, loss_terms, made = objective.loss(
          model, params, state.ema_params, inputs, targets_key, objective_config,
          step=state.step, state=objective_state, dropout_rng=dropout_key)
    else:
      made = None
      pred = model(params, inputs.x, inputs.t, inputs.level, inputs.cond, train=True,
                   rngs={"dropout": dropout_key})
      per_sample, loss_terms = objective.loss_fn(pred, inputs, objective_config)
    return jnp.mean(per_sample), (per_sample, loss_terms, made)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if accumulate_steps == 1:
    (_, (per_sample, loss_terms, made)), grads = grad_fn(state.params, inputs, targets_key,
                                                         dropout_key)
  else:
    def microbatch_grads(params, microbatch, index):
      (_, aux), grads = grad_fn(params, microbatch, jax.random.fold_in(targets_key, index),
                                jax.random.fold_in(dropout_key, index))
      return grads, aux
    groups, sharding = 1, None
    if reduce_once is not None and objective.loss is None:
      sharding = reduce_once
      groups = int(np.prod([sharding.mesh.shape[a] for a in _axes(sharding.spec[0])]))
    grads, (per_sample, loss_terms, made) = accumulation.accumulate(
        microbatch_grads, state.params, inputs, accumulate_steps, groups, sharding)
  if made is not None:
    targets = made
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  rate = ema_rate(state.step) if callable(ema_rate) else ema_rate
  ema_params = ema_update(state.ema_params, params, rate)

  metrics = loss_metrics(per_sample, targets.groups)
  metrics.update({
      "train/grad_norm": optax.global_norm(grads),
      "train/param_norm": optax.global_norm(params),
      "train/update_norm": optax.global_norm(updates),
      "train/lr": lr_schedule(state.step),
  })
  metrics.update({f"train/{k}": v for k, v in targets.metrics.items()})
  metrics.update({f"train/{k}": v for k, v in loss_terms.items()})
  new_state = state.replace(step=state.step + 1, params=params, ema_params=ema_params,
                            opt_state=opt_state)
  if hasattr(state, "objective_state"):
    new_state = new_state.replace(objective_state=objective.update_state(
        objective_state, step=state.step, params=params, ema_params=ema_params,
        config=objective_config))
  return new_state, _as_float32(metrics)


@_under_model_precision
def eval_step(state: TrainState, batch: Dict[str, Array], rng: Optional[Array] = None,
              encoder_params=None, *, model, objective, objective_config, use_ema: bool = True,
              encoder=None) -> Metrics:
  """The training loss of a batch, without any update (validation).

  The targets are made exactly as in training (the teacher is still chosen by the objective
  config); only the weights being scored change with `use_ema`. Dropout is off.

  Args:
    state: a `TrainState`.
    batch: dict like a training batch.
    rng: key for the objective's draws; default: derived from `state.rng` and `state.step`
      (fixed for a given state, distinct from the training draws).
    model: the `VelocityModel`.
    objective: a registered `Objective` (or a bare target function).
    objective_config: the `config.objective` section.
    use_ema: score the EMA weights (True) or the online weights.
    encoder_params, encoder: as in `train_step` (latent space).

  Returns:
    Float32 scalars `train/loss`, `train/loss_<group>` and the objective's metrics under the
    same names as in training, so callers can rename them as they like.
  """
  if rng is None:
    rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), _EVAL_SALT)
  objective = as_objective(objective)
  batch = prepare_batch(batch, rng, encoder, encoder_params)
  targets = objective.targets(model, state.params, state.ema_params, batch, rng,
                              objective_config, step=state.step, state=_objective_state(state))
  if isinstance(use_ema, bool):
    params = state.ema_params if use_ema else state.params
  else:
    # A traced flag (jit without static_argnames): select per leaf instead of branching.
    params = jax.tree.map(lambda e, p: jnp.where(use_ema, e, p), state.ema_params, state.params)
  pred = model(params, targets.x, targets.t, targets.level, targets.cond, train=False)
  per_sample, loss_terms = objective.loss_fn(pred, targets, objective_config)
  metrics = loss_metrics(per_sample, targets.groups)
  metrics.update({f"train/{k}": v for k, v in targets.metrics.items()})
  metrics.update({f"train/{k}": v for k, v in loss_terms.items()})
  return _as_float32(metrics)


def _traced_on(mesh, fn):
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args, **kwargs)
  return wrapped


def make_train_step(model, objective, tx, lr_schedule, objective_config, ema_rate, *,
                    donate: bool = True, in_shardings=None, out_shardings=None, encoder=None,
                    encoder_params=None, accumulate_steps: int = 1,
                    reduce_once: bool = False):
  """`train_step` with everything but (state, batch) bound, jitted once.

  Args:
    model, objective, tx, lr_schedule, objective_config, ema_rate: see `train_step`.
    donate: donate the state's buffers to the new state (halves the state's memory).
    in_shardings: optional `jax.jit` in_shardings for (state, batch) (with an encoder, the VAE
      parameters are replicated).
    out_shardings: optional `jax.jit` out_shardings for (state, metrics).
    encoder: a `latents.LatentEncoder` (latent space), else None.
    encoder_params: its VAE's parameters, passed to every call (a jit argument, not a constant).
    accumulate_steps: microbatches per update (`optim.accumulate_steps`).
    reduce_once: parameters replicated (dp): reduce accumulated gradients over the devices once
      per update (`train_step`); needs `in_shardings`.

  Returns:
    `fn(state, batch) -> (state, metrics)`.
  """
  fn = functools.partial(train_step, model=model, objective=objective, tx=tx,
                         lr_schedule=lr_schedule, objective_config=objective_config,
                         ema_rate=ema_rate, encoder=encoder, accumulate_steps=accumulate_steps,
                         reduce_once=in_shardings[1] if (reduce_once and in_shardings) else None)
  kwargs = {}
  if in_shardings is not None:
    if encoder is not None:
      state_sharding, batch_sharding = in_shardings
      replicated = jax.sharding.NamedSharding(batch_sharding.mesh, jax.sharding.PartitionSpec())
      in_shardings = (state_sharding, batch_sharding, replicated)
    kwargs["in_shardings"] = in_shardings
  if out_shardings is not None:
    kwargs["out_shardings"] = out_shardings
  if in_shardings is not None:  # Traced on the mesh: the model may keep the batch split.
    fn = _traced_on(in_shardings[1].mesh, fn)
  jitted = jax.jit(fn, donate_argnums=(0,) if donate else (), **kwargs)
  if encoder is None:
    return jitted
  return lambda state, batch: jitted(state, batch, encoder_params)
