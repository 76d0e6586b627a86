"""Improved MeanFlow (iMF; official JAX code: github.com/Lyy-iiis/imeanflow, `imf.py`): MeanFlow
with guidance as a network input, a guided velocity target, and the jvp's tangent a *predicted*
velocity, in this library's conventions (`objectives.meanflow`: t = 0 noise, the network
u(x, t, d) the average velocity from t to t + d).

Each row draws (t, d) as MeanFlow does (`meanflow_time_*`; the paper's `data_proportion`, the
share of rows with d = 0, is `meanflow_equal_share`, 0.5 in its configs), a guidance scale w and
a guidance interval [t_min, t_max]:

  * w from the power law p(w) ∝ w^-β on [1, 1 + `imf_guidance_max`] (`imf_guidance_beta` β; the
    paper's β = 1, w log-uniform on [1, 8]). w has this library's meaning (`core.guidance`): the
    network learns the velocity v_u + w (v_c - v_u) (the fixed point of the target below);
  * t_min ~ U[0, 0.5], t_max ~ U[0.5, 1] (the paper's interval in its time τ = 1 - t has the same
    law); rows with d = 0 get [0, 1]. The network takes (w, t_min, t_max) as its guidance input
    (`model.guidance_input`, `model.guidance_interval`).

Targets, with w' = w where t_min <= t <= t_max, else 1:

    v_c = u(x_t, t, 0; w', [0, 1], c),   v_u = u(x_t, t, 0; 1, [0, 1], ∅)    (one call, no grad)
    v_g = v + (1 - 1/w') (v_c - v_u)       (v = x1 - x0, the path's velocity; v_g = v for a row
                                            whose label is dropped: the labels are dropped after)
    u, Du = jvp of u(·, ·, ·; w, [t_min, t_max], c) at (x_t, t, d) along (v_c, 1, -1)
    loss = adaptive weight (MeanFlow's) · |u - sg(v_g + d Du)|²

so the prediction is the jvp's primal (the network runs once, forward and tangent, plus its
backward pass, beside the no-grad call on 2B rows). The paper's tangent is the velocity of an
auxiliary head trained with flow matching (dropped at sampling); this implementation takes the
alternative the paper also describes, the boundary u(x_t, t, 0) of the same network (no extra
head: d = 0 is the instantaneous velocity). Sampling: MeanFlow's average-velocity steps with w
(`--cfg_scale`) and the interval (`evals.samples.guidance_interval`, `--guidance_interval`) as the
network's input, one call per step (`core.guidance.guided_velocity`).
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from shortcut_jax.core import guidance
from shortcut_jax.core.conditioning import GUIDANCE, cond_from_batch, guidance_rows
from shortcut_jax.core.paths import broadcast_time
from shortcut_jax.objectives import meanflow
from shortcut_jax.objectives.base import TrainingTargets, register_field_checks, register_objective
from shortcut_jax.objectives.flow_path import config_value, sample_source, source_from_config

Array = Any


@dataclasses.dataclass(frozen=True)
class IMFSettings:
  """MeanFlow's settings plus the guidance draws' (python values at trace time)."""
  mf: meanflow.MeanFlowSettings
  guidance_max: float
  guidance_beta: float

  @classmethod
  def from_config(cls, config) -> "IMFSettings":
    return cls(mf=meanflow.MeanFlowSettings.from_config(config),
               guidance_max=float(config_value(config, "imf_guidance_max")),
               guidance_beta=float(config_value(config, "imf_guidance_beta")))


def sample_guidance(key, n: int, st: IMFSettings) -> Array:
  """w [n] with density ∝ w^-β on [1, 1 + guidance_max] (inverse CDF of a uniform draw)."""
  u = jax.random.uniform(key, (n,), jnp.float32)
  top = 1.0 + st.guidance_max
  if abs(st.guidance_beta - 1.0) < 1e-9:
    return jnp.power(top, u)
  a = 1.0 - st.guidance_beta
  return jnp.power(1.0 + u * (top ** a - 1.0), 1.0 / a)


def sample_interval(key, instant: Array):
  """(t_min, t_max) [n]: U[0, 0.5] and U[0.5, 1], [0, 1] where `instant` (d = 0)."""
  lo_key, hi_key = jax.random.split(key)
  n = instant.shape[0]
  lo = jax.random.uniform(lo_key, (n,), jnp.float32, 0.0, 0.5)
  hi = jax.random.uniform(hi_key, (n,), jnp.float32, 0.5, 1.0)
  return jnp.where(instant, 0.0, lo), jnp.where(instant, 1.0, hi)


def _targets_and_u(model, params, batch, rng, config, *, train: bool, dropout_rng=None):
  """(u, TrainingTargets) of a batch (module docstring): `params` make the targets and, through
  the jvp's primal, the prediction u."""
  st = IMFSettings.from_config(config)
  images = batch["image"]
  n = images.shape[0]
  cond = model.unguided_cond(cond_from_batch(batch), config)
  label_key, time_key, noise_key, w_key, interval_key = jax.random.split(rng, 5)
  t, d = meanflow.sample_times(time_key, n, st.mf)
  x0 = sample_source(noise_key, images.shape, source_from_config(config), batch)
  x, v = st.mf.path.interpolate(x0, images, t), st.mf.path.velocity(x0, images, t)
  w = sample_guidance(w_key, n, st)
  lo, hi = sample_interval(interval_key, d == 0)
  w_in = jnp.where((t >= lo) & (t <= hi), w, 1.0)

  frozen = jax.lax.stop_gradient(params)
  finest = jnp.full((n,), st.mf.finest, jnp.float32)
  v_c, v_u = guidance.conditional_and_unconditional(
      model, frozen, x, t, finest, dict(cond, **{GUIDANCE: guidance_rows(w_in, n)}),
      interleave=True)
  scale = broadcast_time(1.0 - 1.0 / w_in, x.ndim)
  v_g = v + scale * (v_c - v_u)
  cond, drop_metrics = model.drop_cond(cond, label_key, config)
  dropped = model.conditioning.kind("label").is_null(cond["label"]) if "label" in cond else None
  if dropped is not None:
    v_g = jnp.where(broadcast_time(dropped, x.ndim), v, v_g)
  cond = dict(cond, **{GUIDANCE: jnp.stack([w, lo, hi], axis=1)})

  rngs = None if dropout_rng is None else {"dropout": dropout_rng}
  weights = params if train else frozen
  network = lambda xx, tt, dd: model(weights, xx, tt, meanflow.interval_level(dd, st.mf.finest),
                                     cond, train=train, rngs=rngs)
  along_v_c, u = meanflow.mean_flow_target(network, x, t, d, v_c)
  target = v_g + (along_v_c - v_c)  # v_g + d Du, Du along the predicted velocity v_c
  targets = meanflow.make_targets(x, t, d, st.mf, cond, target, u, drop_metrics)
  targets.metrics.update(guidance_mean=jnp.mean(w), guided_share=jnp.mean(
      (w_in > 1.0).astype(jnp.float32)))
  return u, targets


def imf_loss(model, params, ema_params, batch, rng, config, *, step=None, state=None,
             dropout_rng=None):
  """The training loss (`Objective.loss`): the prediction is the jvp's primal u.

  Returns:
    (per-sample adaptive loss, {'mse'}, the TrainingTargets of the batch).
  """
  del ema_params, step, state
  u, targets = _targets_and_u(model, params, batch, rng, config, train=True,
                              dropout_rng=dropout_rng)
  per_sample, terms = meanflow.adaptive_loss(u, targets, config)
  return per_sample, terms, targets


@register_field_checks
def check_fields(o, check) -> None:
  """Ranges of iMF's own fields."""
  check(o.imf_guidance_max > 0, f"objective.imf_guidance_max must be > 0, got {o.imf_guidance_max!r}")
  check(o.imf_guidance_beta >= 0, f"objective.imf_guidance_beta must be >= 0, got {o.imf_guidance_beta!r}")


def check_config(c, check) -> None:
  """iMF's network takes the guidance scale and interval as inputs."""
  check(c.model.guidance_input and c.model.guidance_interval, "objective 'imf' gives the network "
        "its guidance scale and interval as inputs: set model.guidance_input=True and "
        "model.guidance_interval=True")


@register_objective("imf", uses_level=True, loss_fn=meanflow.adaptive_loss, loss=imf_loss,
                    sampler_step=meanflow.mean_flow_step, needs_jvp=True, takes_source=True,
                    check_config=check_config)
def imf_targets(model, params, ema_params, batch, rng, config, *, step=None,
                state=None) -> TrainingTargets:
  """iMF targets for a whole batch with the online weights, no dropout (validation, loss per t).

  Returns:
    TrainingTargets with groups `average` (d > 0) and `instant` (d = 0).
  """
  del ema_params, step, state
  return _targets_and_u(model, params, batch, rng, config, train=False)[1]
