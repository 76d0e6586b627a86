"""MeanFlow (Geng et al., 2025, "Mean Flows for One-step Generative Modeling"): the network learns
the average velocity over an interval, through a Jacobian-vector product of itself.

Conventions. This repo's time runs from t = 0 (source noise) to t = 1 (data); the paper's runs the
other way (its τ = 1 is noise). With τ = 1 - t, the paper's pair r < τ (r the cleaner end) is here
a start time t = 1 - τ and an end time e = 1 - r > t; the interval length is d = e - t = τ - r
and the velocity has the opposite sign (v = dx/dt = -dx/dτ). The network u(x, t, d) is the
average velocity from t to t + d,

    u(x_t, t, d) = (1/d) ∫_t^{t+d} v(x_s, s) ds,    so    x_{t+d} = x_t + d · u(x_t, t, d),

and the paper's identity u = v - (τ - r) du/dτ becomes, in these variables,

    u(x_t, t, d) = v(x_t, t) + d · D u,   D u = v · ∂_x u + ∂_t u - ∂_d u,

the total derivative along the trajectory with the end e = t + d held fixed (the paper's
tangent (v, 0, 1) on (z, r, τ) is the tangent (v, 1, -1) on (x, t, d) here, or (v, 1, 0) on
(x, t, e)). The target is `v + d · Du` with `(u, Du)` from one `jax.jvp` of the network, under
stop-gradient; v is the conditional velocity of the path (`objective.path`, linear by default).
In training the prediction is that jvp's primal u (`meanflow_loss`, the objective's `loss`: the
network with the online weights, in training mode, called once per step, the gradient flowing
through u alone), as in the paper's code; `meanflow_targets` (validation, loss per t) makes the
same target with the online weights without dropout, and the caller calls the network again.

Conditioning on (t, d). The DiT's time embedder gets the start time t; its step-size embedder
(which takes a raw float "level", the shortcut models' log2 step size) gets

    level = -log2(max(d, 2^-L)),   L = log2(denoise_timesteps),

the shortcut models' scale: a jump of 2^-k is level k exactly as for a shortcut model, and an
interval shorter than 1/M (in particular d = 0, r = t: the instantaneous velocity) is level L,
the level a shortcut model's flow-matching part trains at. So the sampler's step schedule
(`sampling.step_schedule`: N steps of sizes 2^-k, N <= M) and every evaluator work unchanged,
and a sampling step is the average-velocity jump x <- x + d · u(x, t, level) (`mean_flow_step`).

Times (the paper's): τ and r are drawn from a logit-normal (`meanflow_time_mu`,
`meanflow_time_sigma`, in the paper's convention, where τ = 0 is data and τ = 1 noise), sorted so
r <= τ, and the last share `meanflow_equal_share` of the batch gets r = τ (d = 0: plain flow
matching; the paper's best setting is 75 %). Here the start is t = 1 - τ = 1 - max of the two
draws and the end t + d = 1 - r = 1 - min, so with F(x) = Φ((logit x - μ) / σ) the start has
the CDF 1 - F(1 - s)² and the end (where r < τ) (1 - F(1 - s))² (`tests/test_meanflow.py`). A
negative μ moves the draws towards the paper's τ = 0, i.e. towards data (t = 1 here): the
paper's μ = -0.4 favours data relative to μ = 0. (The start is the noisier end of the interval,
so its median is still below 1/2: 0.46 at μ = -0.4, σ = 1.)

Loss: adaptive weighting `w · |u - sg(target)|²` with `w = sg(1 / (|Δ|² + c)^p)`
(`meanflow_adaptive_c`, `meanflow_adaptive_p`; p = 0 is plain MSE). Here |Δ|² is the per-sample
mean squared error (the repo's loss scale), not the paper's sum over dimensions, so c is
relative to a per-dimension error. `train/loss` logs the weighted loss, `train/mse` the plain one.

Left out: the paper's guidance inside the target (training-time CFG, its ω and κ); condition
dropout (`class_dropout_prob`) is applied as for flow matching, so sampling with CFG works as for
the other objectives.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from shortcut_jax.core.conditioning import cond_from_batch
from shortcut_jax.objectives.base import (TrainingTargets, euler_step, per_sample_mse,
                                          register_field_checks, register_objective)
from shortcut_jax.objectives.flow_path import (config_value, finest_level, sample_source,
                                               source_from_config)
from shortcut_jax.core.paths import Path, broadcast_time, path_from_config

Array = Any


@dataclasses.dataclass(frozen=True)
class MeanFlowSettings:
  """The objective config's `meanflow_*` fields (python values at trace time)."""
  finest: int
  time_mu: float
  time_sigma: float
  equal_share: float
  adaptive_p: float
  adaptive_c: float
  path: Path

  @classmethod
  def from_config(cls, config) -> "MeanFlowSettings":
    get = lambda name: config_value(config, name)
    return cls(finest=finest_level(int(get("denoise_timesteps"))),
               time_mu=float(get("meanflow_time_mu")),
               time_sigma=float(get("meanflow_time_sigma")),
               equal_share=float(get("meanflow_equal_share")),
               adaptive_p=float(get("meanflow_adaptive_p")),
               adaptive_c=float(get("meanflow_adaptive_c")),
               path=path_from_config(config))


def interval_level(d: Array, finest: int) -> Array:
  """The step-size embedder's input for an interval d: -log2(max(d, 2^-L)), float32."""
  d = jnp.asarray(d, jnp.float32)
  return -jnp.log2(jnp.maximum(d, jnp.float32(2.0 ** -finest)))


def sample_times(rng: Array, n: int, st: MeanFlowSettings):
  """(start t, interval d) float32 [n] in this repo's convention (see the module docstring).

  The paper's τ, r ~ logit-normal(mu, sigma), r <= τ; the last round(share · n) rows get r = τ.
  """
  draws = jax.nn.sigmoid(st.time_mu + st.time_sigma * jax.random.normal(rng, (2, n)))
  tau, r = jnp.max(draws, axis=0), jnp.min(draws, axis=0)
  num_equal = int(round(st.equal_share * n))
  r = jnp.where(jnp.arange(n) >= n - num_equal, tau, r)
  return 1.0 - tau, tau - r


def mean_flow_target(network, x: Array, t: Array, d: Array, v: Array):
  """(target v + d · Du, u) with (u, Du) from `jax.jvp` of `network(x, t, d)` along (v, 1, -1).

  Args:
    network: `fn(x, t, d) -> u`, differentiable (forward mode) in all three.
    x: x_t [B, ...]; t: start times [B]; d: interval lengths [B]; v: the velocity at (x_t, t).
  """
  ones = jnp.ones_like(t)
  u, du = jax.jvp(network, (x, t, d), (v.astype(x.dtype), ones, -ones))
  return v + broadcast_time(d, x.ndim) * du, u


def mean_flow_step(predict, x: Array, t: Array, d: Array, level: Array) -> Array:
  """The average-velocity jump x_{t+d} = x_t + d · u(x_t, t, level(d)); the schedule's levels
  are level(d) (`interval_level` of its dyadic sizes), so this is the Euler step's formula."""
  return euler_step(predict, x, t, d, level)


def adaptive_loss(pred: Array, targets: TrainingTargets, config):
  """`sg(1 / (mse + c)^p) · mse` per sample; metrics: the plain MSE."""
  st = MeanFlowSettings.from_config(config)
  mse = per_sample_mse(pred, targets.target)
  weight = jax.lax.stop_gradient(1.0 / jnp.power(mse + st.adaptive_c, st.adaptive_p))
  return weight * mse, {"mse": jnp.mean(mse)}


def _draws(model, batch, rng, config):
  """(settings, x_t, t, d, v, cond after dropout, dropout metrics) of a batch."""
  st = MeanFlowSettings.from_config(config)
  images = batch["image"]
  cond = model.unguided_cond(cond_from_batch(batch), config)
  label_key, time_key, noise_key = jax.random.split(rng, 3)
  cond, drop_metrics = model.drop_cond(cond, label_key, config)
  t, d = sample_times(time_key, images.shape[0], st)
  x0 = sample_source(noise_key, images.shape, source_from_config(config), batch)
  return (st, st.path.interpolate(x0, images, t), t, d, st.path.velocity(x0, images, t), cond,
          drop_metrics)


def make_targets(x, t, d, st, cond, target, u, drop_metrics) -> TrainingTargets:
  """The TrainingTargets of MeanFlow-style rows (groups `average`, `instant`; the target under
  stop-gradient)."""
  instant = (d == 0).astype(jnp.float32)
  return TrainingTargets(
      x=x, t=t, level=interval_level(d, st.finest), cond=cond,
      target=jax.lax.stop_gradient(target),
      groups={"average": 1.0 - instant, "instant": instant},
      metrics={**drop_metrics, "interval_mean": jnp.mean(d),
               "u_magnitude": jnp.sqrt(jnp.mean(jnp.square(jax.lax.stop_gradient(u))))},
  )


def meanflow_loss(model, params, ema_params, batch, rng, config, *, step=None, state=None,
                  dropout_rng=None):
  """The training loss (`Objective.loss`): the prediction is the primal u of the jvp that makes
  the target, so the network runs once (forward and tangent) plus its backward pass.

  Returns:
    (per-sample adaptive loss, {'mse'}, the TrainingTargets of the batch).
  """
  del ema_params, step, state
  st, x, t, d, v, cond, drop_metrics = _draws(model, batch, rng, config)
  rngs = None if dropout_rng is None else {"dropout": dropout_rng}
  network = lambda xx, tt, dd: model(params, xx, tt, interval_level(dd, st.finest), cond,
                                     train=True, rngs=rngs)
  target, u = mean_flow_target(network, x, t, d, v)
  targets = make_targets(x, t, d, st, cond, target, u, drop_metrics)
  per_sample, terms = adaptive_loss(u, targets, config)
  return per_sample, terms, targets


@register_field_checks
def check_fields(o, check) -> None:
  """Ranges of MeanFlow's fields (its time sampling and adaptive weight, shared by iMF and
  α-Flow)."""
  check(o.meanflow_time_sigma > 0, f"objective.meanflow_time_sigma must be > 0, got {o.meanflow_time_sigma!r}")
  check(0.0 <= o.meanflow_equal_share <= 1.0,
        f"objective.meanflow_equal_share must be in [0, 1], got {o.meanflow_equal_share!r}")
  check(o.meanflow_adaptive_p >= 0, f"objective.meanflow_adaptive_p must be >= 0, got {o.meanflow_adaptive_p!r}")
  check(o.meanflow_adaptive_c > 0, f"objective.meanflow_adaptive_c must be > 0, got {o.meanflow_adaptive_c!r}")


@register_objective("meanflow", uses_level=True, loss_fn=adaptive_loss, loss=meanflow_loss,
                    sampler_step=mean_flow_step, needs_jvp=True, takes_source=True)
def meanflow_targets(model, params, ema_params, batch, rng, config, *, step=None,
                     state=None) -> TrainingTargets:
  """MeanFlow targets for a whole batch (see the module docstring), for the evaluators that
  score a network's prediction against them (validation, loss per t).

  Args:
    model: the `VelocityModel` (its jvp makes the target).
    params: online weights (the target's network).
    ema_params: unused.
    batch: dict with `image` float32 NHWC and optional conditioning keys.
    rng: PRNG key for this batch.
    config: objective config: `denoise_timesteps`, `path`, `cfg_scale`, the condition kinds'
      dropout probabilities and the `meanflow_*` fields.
    step, state: unused (stateless).

  Returns:
    TrainingTargets with groups `average` (d > 0) and `instant` (r = t).
  """
  del ema_params, step, state
  st, x, t, d, v, cond, drop_metrics = _draws(model, batch, rng, config)
  frozen = jax.lax.stop_gradient(params)
  network = lambda xx, tt, dd: model(frozen, xx, tt, interval_level(dd, st.finest), cond,
                                     train=False)
  target, u = mean_flow_target(network, x, t, d, v)
  return make_targets(x, t, d, st, cond, target, u, drop_metrics)
