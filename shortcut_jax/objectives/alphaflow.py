"""α-Flow (Zhang et al., ICLR 2026, "AlphaFlow"; official code snap-research/alphaflow,
`src/training/loss.py`, as summarised in ONESTEP_METHODS.md): one objective that moves, over
training, from trajectory flow matching through shortcut-like consistency to MeanFlow, on
MeanFlow's parameterisation (`objectives.meanflow`: t = 0 noise, u(x, t, d) the average
velocity from t to t + d, times drawn by `meanflow_time_*`, `meanflow_equal_share` rows at d = 0).

With α in [0, 1] at the current step, each row with d > 0 regresses

    u(x_t, t, d)  onto  α ṽ + (1 - α) u⁻(x_t + α d ṽ, t + α d, (1 - α) d),   clipped to ±`alphaflow_clamp`

(the paper's s = α r + (1 - α) t in this library's time: the first α of the interval taken
along ṽ, the rest by the network's own average velocity), where u⁻ is the current weights
without gradient (the paper's choice: an EMA θ⁻ diverges) and ṽ is the path's velocity v, or
with guidance (`alphaflow_cfg_omega` ω, `alphaflow_cfg_kappa` κ, where t is in
[`alphaflow_cfg_t_min`, `alphaflow_cfg_t_max`]) ṽ = ω v + κ u⁻(x_t, t, 0 | c) + (1 - ω - κ)
u⁻(x_t, t, 0 | ∅). α = 1 is trajectory flow matching, α → 0 MeanFlow: where α is 0 the target
is MeanFlow's, ṽ + d Du⁻ by a no-grad jvp along (ṽ, 1, -1). Rows with d = 0 regress ṽ.

The curriculum (Algorithm 2): α(k) = 1 - sigmoid(γ (k - (k_s + k_e) / 2) / (k_e - k_s)) with
γ = `alphaflow_gamma` (25), k_s, k_e = `alphaflow_start`, `alphaflow_end` (steps), snapped to 0
below η = `alphaflow_eta` (5e-3) and to 1 above 1 - η. It is a function of the step, which the
train state carries and checkpoints, so a resumed run continues on the same curriculum.

Loss: the adaptive weight w = α' / sg(mse + c) · mse per sample, α' = α for rows with d > 0
while α > 0, else 1, c = `meanflow_adaptive_c`. Sampling: MeanFlow's average-velocity jumps.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from shortcut_jax.core import guidance
from shortcut_jax.core.conditioning import cond_from_batch
from shortcut_jax.core.paths import broadcast_time
from shortcut_jax.objectives import meanflow
from shortcut_jax.objectives.base import (TrainingTargets, per_sample_mse, register_field_checks,
                                          register_objective)
from shortcut_jax.objectives.flow_path import config_value, sample_source, source_from_config

Array = Any


@dataclasses.dataclass(frozen=True)
class AlphaFlowSettings:
  """MeanFlow's settings plus the curriculum's and the guidance's (python values)."""
  mf: meanflow.MeanFlowSettings
  start: int
  end: int
  gamma: float
  eta: float
  clamp: float
  omega: float
  kappa: float
  t_min: float
  t_max: float

  @classmethod
  def from_config(cls, config) -> "AlphaFlowSettings":
    get = lambda name: config_value(config, f"alphaflow_{name}")
    return cls(mf=meanflow.MeanFlowSettings.from_config(config), start=int(get("start")),
               end=int(get("end")), gamma=float(get("gamma")), eta=float(get("eta")),
               clamp=float(get("clamp")), omega=float(get("cfg_omega")),
               kappa=float(get("cfg_kappa")), t_min=float(get("cfg_t_min")),
               t_max=float(get("cfg_t_max")))

  @property
  def guided(self) -> bool:
    return self.omega != 1.0 or self.kappa != 0.0


def alpha(step, st: AlphaFlowSettings) -> Array:
  """α at training step `step` (module docstring), float32."""
  k = jnp.asarray(step, jnp.float32)
  mid, width = (st.start + st.end) / 2.0, float(max(st.end - st.start, 1))
  a = 1.0 - jax.nn.sigmoid(st.gamma * (k - mid) / width)
  return jnp.where(a < st.eta, 0.0, jnp.where(a > 1.0 - st.eta, 1.0, a))


def _draws(model, params, batch, rng, config, st):
  """(x_t, t, d, ṽ, cond after dropout, dropout metrics)."""
  images = batch["image"]
  n = images.shape[0]
  cond = model.unguided_cond(cond_from_batch(batch), config)
  label_key, time_key, noise_key = jax.random.split(rng, 3)
  cond, drop_metrics = model.drop_cond(cond, label_key, config)
  t, d = meanflow.sample_times(time_key, n, st.mf)
  x0 = sample_source(noise_key, images.shape, source_from_config(config), batch)
  x, v = st.mf.path.interpolate(x0, images, t), st.mf.path.velocity(x0, images, t)
  if st.guided:
    finest = jnp.full((n,), st.mf.finest, jnp.float32)
    v_c, v_u = guidance.conditional_and_unconditional(model, params, x, t, finest, cond,
                                                      interleave=True)
    guided = st.omega * v + st.kappa * v_c + (1.0 - st.omega - st.kappa) * v_u
    inside = broadcast_time((t >= st.t_min) & (t <= st.t_max), x.ndim)
    v = jnp.where(inside, guided, v)
  return x, t, d, v, cond, drop_metrics


def _target(model, params, x, t, d, v, cond, a, st):
  """The regression target of every row at α = a (no gradient)."""
  network = lambda xx, tt, dd: model(params, xx, tt, meanflow.interval_level(dd, st.mf.finest),
                                     cond, train=False)

  def meanflow_target(_):
    return meanflow.mean_flow_target(network, x, t, d, v)[0]

  def interpolated_target(_):
    db = broadcast_time(d, x.ndim)
    rest = network(x + a * db * v, t + a * d, (1.0 - a) * d)
    return jnp.clip(a * v + (1.0 - a) * rest, -st.clamp, st.clamp)

  target = jax.lax.cond(a > 0, interpolated_target, meanflow_target, None)
  return jnp.where(broadcast_time(d == 0, x.ndim), v, target)


def alphaflow_loss(model, params, ema_params, batch, rng, config, *, step=None, state=None,
                   dropout_rng=None):
  """The training loss (`Objective.loss`): targets from the current weights without gradient,
  then the network's prediction with it, weighted adaptively by α (module docstring).

  Returns:
    (per-sample loss, {'mse', 'alpha'}, the TrainingTargets of the batch).
  """
  del ema_params, state
  targets = alphaflow_targets(model, params, None, batch, rng, config, step=step)
  st = AlphaFlowSettings.from_config(config)
  rngs = None if dropout_rng is None else {"dropout": dropout_rng}
  pred = model(params, targets.x, targets.t, targets.level, targets.cond, train=True, rngs=rngs)
  mse = per_sample_mse(pred, targets.target)
  a = alpha(0 if step is None else step, st)
  scale = jnp.where((targets.groups["average"] > 0) & (a > 0), a, 1.0)
  weight = jax.lax.stop_gradient(scale / (mse + st.mf.adaptive_c))
  return weight * mse, {"mse": jnp.mean(mse)}, targets


def alphaflow_loss_fn(pred, targets: TrainingTargets, config):
  """The per-sample loss of a prediction (validation, loss per t): the adaptive weight with
  α' = 1."""
  return meanflow.adaptive_loss(pred, targets, dict(meanflow_adaptive_p=1.0,
                                                    meanflow_adaptive_c=config_value(
                                                        config, "meanflow_adaptive_c")))


@register_field_checks
def check_fields(o, check) -> None:
  """Ranges of α-Flow's own fields."""
  check(isinstance(o.alphaflow_start, int) and isinstance(o.alphaflow_end, int)
        and 0 <= o.alphaflow_start < o.alphaflow_end,
        f"objective.alphaflow_start ({o.alphaflow_start!r}) and alphaflow_end "
        f"({o.alphaflow_end!r}) must be steps with 0 <= start < end")
  check(o.alphaflow_gamma > 0 and 0 <= o.alphaflow_eta < 0.5 and o.alphaflow_clamp > 0,
        "objective.alphaflow_gamma and alphaflow_clamp must be > 0, alphaflow_eta in [0, 0.5)")
  check(0.0 <= o.alphaflow_cfg_t_min < o.alphaflow_cfg_t_max <= 1.0,
        "objective.alphaflow_cfg_t_min, alphaflow_cfg_t_max: need 0 <= t_min < t_max <= 1")


@register_objective("alphaflow", uses_level=True, loss_fn=alphaflow_loss_fn, loss=alphaflow_loss,
                    sampler_step=meanflow.mean_flow_step, needs_jvp=True, takes_source=True)
def alphaflow_targets(model, params, ema_params, batch, rng, config, *, step=None,
                      state=None) -> TrainingTargets:
  """α-Flow targets at the step's α, from `params` without gradient.

  Returns:
    TrainingTargets with groups `average` (d > 0) and `instant` (d = 0), metric `alpha`.
  """
  del ema_params, state
  st = AlphaFlowSettings.from_config(config)
  frozen = jax.lax.stop_gradient(params)
  x, t, d, v, cond, drop_metrics = _draws(model, frozen, batch, rng, config, st)
  a = alpha(0 if step is None else step, st)
  target = _target(model, frozen, x, t, d, v, cond, a, st)
  targets = meanflow.make_targets(x, t, d, st.mf, cond, target, target, drop_metrics)
  targets.metrics["alpha"] = a
  return targets
