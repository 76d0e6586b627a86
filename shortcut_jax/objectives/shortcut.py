"""Shortcut-model objective (Frans et al., "One Step Diffusion via Shortcut Models"; the original
code, kvfrans/shortcut-models, computes it in `targets_shortcut.py`).

The batch is split in two parts (which rows: `faithful_layout`, `default_layout`):

* Bootstrap part, B_b = B // bootstrap_every samples. A sample at level k (step d = 2^-k) gets t
  on the grid of d, `t = randint(0, 2^k) / 2^k`, and the target the teacher (EMA weights when
  `bootstrap_ema`, else the online weights; no gradient) makes with two half steps at level k+1:

      v1 = s(x_t, t, k+1);  x' = clip(x_t + d/2 v1, -4, 4);  v2 = s(x', t + d/2, k+1)
      target = clip((v1 + v2) / 2, -4, 4).

  These samples keep their labels (no dropout). With `bootstrap_cfg` the samples at the finest
  bootstrap level (L-1, whose teacher is the flow velocity at level L) get guided half-step
  velocities `v_u + cfg_scale (v_c - v_u)`; the conditional and unconditional teacher calls are
  one batched network call.
* Flow part, the other B - B_b samples: flow-matching targets at level L = log2(M), each condition
  kind dropped to its null value with its own probability (`class_dropout_prob` for labels,
  `image_dropout_prob` for a conditioning image; `shortcut_jax.core.conditioning`).

With `cfg_scale == 0` every label is nulled first (unconditional training), as the original does;
a conditioning image is kept.

`faithful=True` reproduces the original's `get_targets` bit for bit, flaws included (checked
against that function's own outputs by `shortcut_jax.tools.check_original_targets`):
  * the batch is first shuffled with its own key (the original's update step does this; not with
    `faithful_scope='get_targets'`, `flow_path.batch_for_targets`);
  * level assignment: levels L-1, ..., 0 each repeated B_b // L times, padded with level 0, so
    when B_b < L (e.g. batch 32, bootstrap_every 8) every bootstrap sample is at level 0 and only
    one-step jumps are trained, from an untrained level-1 teacher; `bootstrap_dt_bias = 1` gives
    levels L-1, ..., 2 each (B_b // 2) // L times, B_b // 4 each of levels 1 and 0, padded with 0;
  * one key split in three (label, time, noise) and each of the time and noise keys used twice
    (bootstrap and flow part), so the two parts' draws are correlated;
  * the flow part takes the first B - B_b rows of the batch, so the first B_b images appear in
    both parts and the last B_b images are never used;
  * the CFG'd samples are the first B_b // L (resp. (B_b // 2) // L) bootstrap samples.
  (`faithful_layout`.)

The default (`faithful=False`) fixes these:
  * level assignment: when B_b is at least the number of levels, every level gets at least one
    sample and the counts follow the target distribution as closely as integers allow (largest
    remainder; ties go to the coarser levels, whose jumps matter most for few-step sampling):
    uniform over 0 .. L-1 for `bootstrap_dt_bias = 0` (B_b = 16, L = 7 -> 3, 3, 2, 2, 2, 2, 2 for
    levels 0 .. 6), and a quarter each to levels 0 and 1 with the other half spread evenly over
    levels 2 .. L-1 for `bootstrap_dt_bias = 1`. When B_b is smaller, a fixed set of levels
    would leave some levels untrained forever, and each level is the teacher of the next coarser
    one, so B_b distinct levels are drawn at random every step (with the same weights): every
    level is trained over time and no level repeats within a step. Levels are ordered finest
    first in both cases, as in the original.
  * independent keys for every draw and no batch shuffle (the input pipeline shuffles);
  * every image is used exactly once, and in place: the bootstrap rows are every
    `bootstrap_every`-th row of the batch (rows 0, k, 2k, ...; `bootstrap_rows`), the flow rows
    the others, and row i of the targets is made from row i of the batch. A batch split over
    devices thus keeps each row on its device, and every device holds its share of the
    teacher's rows (the original's first B_b rows all live on the first devices of a pod: the
    teacher ran there, or XLA moved rows; docs/benchmarks.md, "Collectives per train step");
  * CFG is applied to exactly the samples at the finest bootstrap level L-1 (the original's
    intent: with its level assignment its `num_dt_cfg` first samples are those at level L-1).
    The teacher calls every bootstrap row twice (conditional and unconditional, adjacent rows),
    guided where the level is L-1: 2 B_b rows instead of B_b + num_cfg, a count the devices
    divide, and no more rows per device when B_b / devices is 1 (batch 8 per device, k = 8).
  (`default_layout`.)

Both layouts share the bootstrap part (`bootstrap_part`) and the flow part's path
(`objective.path`, linear by default: the original's).

Two ingredients of improved shortcut models (iSM, Nguyen et al., NeurIPS 2025), each a switch,
off by default:
  * twin EMA (`target_ema_rate`, the paper's 0.95): the teacher of the bootstrap targets is a
    fast EMA of the online weights, kept in the objective state (`twin_ema_state`,
    `update_twin_ema`: checkpointed and resumed with the rest of the state, sharded like the
    parameters), while the slow EMA (`optim.ema_rate`) is the one sampled;
  * the multi-level wavelet loss (`wavelet_levels`, the paper's 5; `core.wavelets`) in place of
    the per-sample MSE, on every row;
  * sOT (`ot_pool`, the paper's 32; `data.ot_coupling`): the rows start from noise matched to
    their images by one optimal assignment over `ot_pool` batches, made in the input pipeline;
  * intrinsic guidance (`guidance_max`, the paper's 3.5; needs `model.guidance_input`): every
    row gets a guidance omega from the grid {0, 0.25, ...} as the network's input w = 1 + omega
    (this library's meaning of w: v_u + w (v_c - v_u)); the flow rows regress
    v + omega sg(v_c - v_u) (`intrinsic_guidance_target`; v_c, v_u: the teacher at w = 1, no
    guidance where t < `guidance_t_min`, the paper's 0.3), the self-consistency rows pass their
    w to the teacher's half steps (guided self-consistency); `bootstrap_cfg` is off. The
    model then samples a guided image with one call per step (`--cfg_scale=w`). Choices where
    the paper's text is not public (ONESTEP_METHODS.md): v_c and v_u come from the teacher's
    weights (the bootstrap teacher), omega is drawn for every row (flow rows with omega = 0
    are plain flow matching), and the interval acts in the target only (w stays the input).
"""

import dataclasses
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from shortcut_jax.core import guidance
from shortcut_jax.core.conditioning import NOISE, cond_from_batch, take_rows
from shortcut_jax.objectives import teacher as teacher_lib
from shortcut_jax.objectives import top_level_anchor
from shortcut_jax.objectives.base import TrainingTargets, register_objective, rms
from shortcut_jax.objectives.improved_shortcut import (  # noqa: F401  (TARGET_EMA re-exported)
    TARGET_EMA, check_config, intrinsic_guidance_target, intrinsic_scales, shortcut_loss,
    twin_ema_state, update_twin_ema)
from shortcut_jax.objectives.flow_path import (Source, batch_for_targets, config_value,
                                               finest_level, sample_source, source_from_config)
from shortcut_jax.core.paths import Path, path_from_config
from shortcut_jax.objectives.shortcut_levels import (faithful_levels, level_weights,
                                                     balanced_level_counts, default_levels)  # noqa: F401

Array = Any

TEACHER_CLIP = teacher_lib.TEACHER_CLIP


def teacher_output(model, params, x, t, level, cond, num_cfg: int, cfg_mask: Optional[Array],
                   cfg_scale: float):
  """s(x, t, level), CFG-guided on the first `num_cfg` rows where `cfg_mask` (one batched call;
  with `num_cfg` = every row and a mask, each row's two calls are adjacent rows of it)."""
  interleave = cfg_mask is not None and num_cfg == x.shape[0]
  return guidance.guided_velocity(model, params, x, t, level, cond, cfg_scale,
                                  guided_rows=num_cfg, mask=cfg_mask, interleave=interleave)


def bootstrap_targets(model, teacher_params, x_t, t, level, cond, *, num_cfg: int = 0,
                      cfg_mask: Optional[Array] = None, cfg_scale: float = 0.0):
  """Two teacher half steps at level+1 from (x_t, t): the self-consistency target for level.

  Args:
    model: the `VelocityModel`.
    teacher_params: weights of the teacher (no gradient flows into them).
    x_t: [n, H, W, C] inputs; t: float32 [n]; level: int32 [n]; cond: conditioning of the rows.
    num_cfg: the first `num_cfg` rows get guided velocities (where `cfg_mask`, if given).
    cfg_mask: optional bool [num_cfg].
    cfg_scale: guidance weight w in v_u + w (v_c - v_u).

  Returns:
    (target, v1, v2), each like x_t.
  """
  teacher = lambda x, tt, lvl: teacher_output(model, teacher_params, x, tt, lvl, cond, num_cfg,
                                              cfg_mask, cfg_scale)
  v1, v2 = teacher_lib.two_half_steps(teacher, x_t, t, level)
  target = jnp.clip((v1 + v2) / 2, -TEACHER_CLIP, TEACHER_CLIP)
  return target, v1, v2


def first_order_flow_target(path: Path, x0, x1, t):
  """The flow rows' target of a first-order objective: the path's velocity."""
  return path.velocity(x0, x1, t)


@dataclasses.dataclass(frozen=True)
class JumpRule:
  """What a shortcut-style objective regresses onto, given the shared layout of its rows:
  `flow_target(path, x0, x1, t)` for the flow rows and `bootstrap_targets(model, teacher, x_t,
  t, level, cond, *, num_cfg, cfg_mask, cfg_scale) -> (target, v1, v2)` for the
  self-consistency rows. `FIRST_ORDER` is the shortcut model's; `homo` has a second-order one."""
  flow_target: Any = first_order_flow_target
  bootstrap_targets: Any = bootstrap_targets


FIRST_ORDER = JumpRule()


@dataclasses.dataclass(frozen=True)
class ShortcutSettings:
  """The objective config's fields, read once (python values at trace time)."""
  denoise_timesteps: int
  finest: int
  bootstrap_every: int
  dt_bias: int
  use_cfg: bool
  cfg_scale: float
  path: Path
  rule: JumpRule = FIRST_ORDER
  source: Source = Source()
  guidance_max: float = 0.0  # Intrinsic guidance (iSM), off at 0.
  guidance_grid: float = 0.25
  guidance_t_min: float = 0.0
  top_level_share: float = 0.0  # `top_level_anchor`, off at 0.

  @classmethod
  def from_config(cls, config, rule: JumpRule = FIRST_ORDER) -> "ShortcutSettings":
    m = int(config_value(config, "denoise_timesteps"))
    return cls(denoise_timesteps=m, finest=finest_level(m),
               bootstrap_every=int(config_value(config, "bootstrap_every")),
               dt_bias=int(config_value(config, "bootstrap_dt_bias")),
               use_cfg=bool(config_value(config, "bootstrap_cfg")),
               cfg_scale=float(config_value(config, "cfg_scale")),
               path=path_from_config(config), rule=rule, source=source_from_config(config),
               guidance_max=float(config_value(config, "guidance_max")),
               guidance_grid=float(config_value(config, "guidance_grid")),
               guidance_t_min=float(config_value(config, "guidance_t_min")),
               top_level_share=float(config_value(config, "top_level_share")))


def bootstrap_part(model, teacher, x1, cond, level, time_key, noise_key, *, num_cfg: int,
                   cfg_mask: Optional[Array], cfg_scale: float, path: Path,
                   rule: JumpRule = FIRST_ORDER, source: Source = Source(), noise=None):
  """The bootstrap rows: t on the grid of each row's level, x_t on the path, teacher targets;
  x0 from the rows' OT-coupled `noise` when the batch has it.

  Returns:
    (x_t, t, target, v1, v2).
  """
  n = x1.shape[0]
  grid = jnp.asarray(2, jnp.int32) ** level
  t = (jax.random.randint(time_key, (n,), 0, grid).astype(jnp.float32)
       / jnp.power(2.0, level.astype(jnp.float32)))
  x0 = sample_source(noise_key, x1.shape, source, cond, noise=noise)
  x_t = path.interpolate(x0, x1, t)
  if n:
    target, v1, v2 = rule.bootstrap_targets(model, teacher, x_t, t, level, cond,
                                            num_cfg=num_cfg, cfg_mask=cfg_mask,
                                            cfg_scale=cfg_scale)
  else:
    target = v1 = v2 = jnp.zeros_like(x_t)
  return x_t, t, target, v1, v2


def _flow_draws(path: Path, x1, time_key, noise_key, m: int, st: ShortcutSettings, cond,
                noise=None):
  """(x_t, t, target) of flow-matching rows, t uniform on the grid {0, 1/M, ..., (M-1)/M};
  `cond` (the rows' conditions before dropout) feeds a coupling source, `noise` (OT-coupled)
  replaces the draw."""
  rule = st.rule
  t = jax.random.randint(time_key, (x1.shape[0],), 0, m).astype(jnp.float32) / m
  x0 = sample_source(noise_key, x1.shape, st.source, cond, noise=noise)
  return path.interpolate(x0, x1, t), t, rule.flow_target(path, x0, x1, t)


def bootstrap_rows(batch_size: int, every: int) -> Tuple[np.ndarray, np.ndarray]:
  """(bootstrap rows, flow rows) of the default layout, as indices into the batch: every
  `every`-th row (0, every, 2 every, ...) is a bootstrap row, the others flow rows. A batch split
  evenly over devices (B / every a multiple of their count) gives every device its share."""
  boot = np.arange(batch_size // every) * every
  return boot, np.setdiff1d(np.arange(batch_size), boot)


def _boot_of(x, every: int):
  """The bootstrap rows of `x` (`bootstrap_rows`), by a reshape that keeps each row in place."""
  q = x.shape[0] // every
  return x[:q * every].reshape((q, every) + x.shape[1:])[:, 0]


def _flow_of(x, every: int):
  """The flow rows of `x` (`bootstrap_rows`), in batch order."""
  q = x.shape[0] // every
  main = x[:q * every].reshape((q, every) + x.shape[1:])[:, 1:]
  return jnp.concatenate([main.reshape((-1,) + x.shape[1:]), x[q * every:]], axis=0)


def _interleave(boot, flow, every: int):
  """Inverse of (`_boot_of`, `_flow_of`): each row back at its batch position."""
  q, rest = boot.shape[0], boot.shape[1:]
  main = jnp.concatenate([boot[:, None], flow[:q * (every - 1)].reshape((q, every - 1) + rest)],
                         axis=1).reshape((q * every,) + rest)
  return jnp.concatenate([main, flow[q * (every - 1):]], axis=0)


def _concat(boot, flow):
  return jnp.concatenate([boot, flow], axis=0)


def _combine(boot, flow, boot_level, cond_boot, cond_flow, drop_metrics: Dict[str, Array],
             finest: int, merge=_concat, flow_level=None) -> TrainingTargets:
  """Bootstrap and flow rows merged by `merge(boot, flow)` (default: bootstrap rows first), with
  the groups and metrics of the objective; the flow rows at `flow_level` (default: finest)."""
  boot_x, boot_t, boot_target, v1, v2 = boot
  flow_x, flow_t, flow_v = flow
  b_boot, b_flow = boot_x.shape[0], flow_x.shape[0]
  if flow_level is None:
    flow_level = jnp.full((b_flow,), finest, jnp.int32)
  level = merge(boot_level, flow_level)
  is_boot = merge(jnp.ones((b_boot,), bool), jnp.zeros((b_flow,), bool))
  return TrainingTargets(
      x=merge(boot_x, flow_x),
      t=merge(boot_t, flow_t),
      level=level,
      cond=jax.tree.map(merge, dict(cond_boot), dict(cond_flow)),
      target=merge(boot_target, flow_v),
      groups={"flow": (~is_boot).astype(jnp.float32), "bootstrap": is_boot.astype(jnp.float32)},
      metrics={
          **drop_metrics,
          "bootstrap_ratio": jnp.mean(is_boot.astype(jnp.float32)),
          "v_magnitude_bootstrap": rms(boot_target),
          "v_magnitude_b1": rms(v1),
          "v_magnitude_b2": rms(v2),
      },
  )


def faithful_layout(model, teacher, batch, rng, config, st: ShortcutSettings) -> TrainingTargets:
  """The original's `get_targets`, flaws included (see the module docstring)."""
  batch, cond, rng = batch_for_targets(model, batch, rng, config)
  images = batch["image"]
  b = images.shape[0]
  b_boot = b // st.bootstrap_every
  # One split in three; the original reuses the time and noise keys for the flow part.
  label_key, time_key, noise_key = jax.random.split(rng, 3)
  levels_np, num_cfg = faithful_levels(b_boot, st.finest, st.dt_bias)
  if not st.use_cfg:
    num_cfg = 0
  boot_level = jnp.asarray(levels_np)
  cond_boot = take_rows(cond, slice(0, b_boot))
  boot = bootstrap_part(model, teacher, images[:b_boot], cond_boot, boot_level, time_key,
                        noise_key, num_cfg=num_cfg, cfg_mask=None, cfg_scale=st.cfg_scale,
                        path=st.path, rule=st.rule, source=st.source)
  # The flow part is drawn for the whole batch and its first B - B_b rows are kept.
  cond_dropped, drop_metrics = model.drop_cond(cond, label_key, config)
  flow_x, flow_t, flow_v = _flow_draws(st.path, images, time_key, noise_key, st.denoise_timesteps,
                                       st, cond)
  rows = slice(0, b - b_boot)
  flow = (flow_x[rows], flow_t[rows], flow_v[rows])
  return _combine(boot, flow, boot_level, cond_boot, take_rows(cond_dropped, rows), drop_metrics,
                  st.finest)


def default_layout(model, teacher, batch, rng, config, st: ShortcutSettings) -> TrainingTargets:
  """Independent draws, balanced levels, every image used once and in place: bootstrap rows
  0, k, 2k, ... (k = `bootstrap_every`), flow rows the others (see the module docstring)."""
  images = batch["image"]
  every = st.bootstrap_every
  b_boot = images.shape[0] // every
  boot_of = lambda tree: jax.tree.map(lambda a: _boot_of(a, every), tree)
  flow_of = lambda tree: jax.tree.map(lambda a: _flow_of(a, every), tree)
  cond = dict(model.unguided_cond(cond_from_batch(batch), config))
  if st.guidance_max:  # every row's own guidance, the network's input (`intrinsic_scales`)
    cond = guidance.with_guidance(
        model, cond, intrinsic_scales(jax.random.fold_in(rng, 1), images.shape[0], st),
        images.shape[0])
  (label_key, boot_time_key, boot_noise_key, flow_time_key, flow_noise_key,
   level_key) = jax.random.split(rng, 6)
  boot_level, num_cfg, cfg_mask = default_levels(b_boot, st, level_key)
  if not st.use_cfg:
    num_cfg, cfg_mask = 0, None
  elif num_cfg:
    # The rows at level L-1 (the first `num_cfg`), guided in one call of every row paired with
    # its unconditional twin: a row count the devices divide (see `teacher_output`).
    num_cfg, cfg_mask = b_boot, boot_level == st.finest - 1
  cond_boot = boot_of(cond)
  noise = batch.get(NOISE)  # OT-coupled source noise (`data.ot_coupling`), if any
  boot = bootstrap_part(model, teacher, boot_of(images), cond_boot, boot_level, boot_time_key,
                        boot_noise_key, num_cfg=num_cfg, cfg_mask=cfg_mask,
                        cfg_scale=st.cfg_scale, path=st.path, rule=st.rule, source=st.source,
                        noise=None if noise is None else boot_of(noise))
  cond_flow, drop_metrics = model.drop_cond(flow_of(cond), label_key, config)
  flow = _flow_draws(st.path, flow_of(images), flow_time_key, flow_noise_key,
                     st.denoise_timesteps, st, flow_of(cond),
                     noise=None if noise is None else flow_of(noise))
  flow_level = None
  if st.top_level_share:  # Some flow rows train the one-step level (`top_level_anchor`).
    flow, flow_level = top_level_anchor.anchor_rows(
        flow, flow_of(images), flow_of(cond), jax.random.fold_in(rng, 2),
        share=st.top_level_share, finest=st.finest, path=st.path, rule=st.rule, source=st.source)
  if st.guidance_max:
    flow = intrinsic_guidance_target(model, teacher, flow, cond_flow, st)
  return _combine(boot, flow, boot_level, cond_boot, cond_flow, drop_metrics, st.finest,
                  merge=lambda boot_rows, flow_rows: _interleave(boot_rows, flow_rows, every),
                  flow_level=flow_level)


@register_objective("shortcut", uses_level=True, takes_source=True, splits_batch=True,
                    loss_fn=shortcut_loss, init_state=twin_ema_state,
                    update_state=update_twin_ema, check_config=check_config)
def shortcut_targets(model, params, ema_params, batch, rng, config, *, step=None,
                     state=None) -> TrainingTargets:
  """Shortcut-model targets: self-consistency part first, flow-matching part after.

  Args:
    model: the `VelocityModel` (called as the teacher for the bootstrap part).
    params: online weights (teacher when `bootstrap_ema` is off).
    ema_params: EMA weights (teacher when `bootstrap_ema` is on).
    state: the objective state; with twin EMA its `target_ema` is the teacher, whatever
      `bootstrap_ema` says.
    batch: dict with `image` float32 NHWC and optional conditioning keys.
    rng: PRNG key for this batch.
    config: objective config: `denoise_timesteps`, `bootstrap_every`, `bootstrap_ema`,
      `bootstrap_dt_bias`, `bootstrap_cfg`, `cfg_scale`, `faithful`, `faithful_scope`, `path`
      and each condition kind's dropout probability (`class_dropout_prob`,
      `image_dropout_prob`).
    step: unused.

  Returns:
    TrainingTargets with groups `bootstrap` (B // bootstrap_every rows: every
    `bootstrap_every`-th row by default, the first ones with `faithful`) and `flow`.
  """
  del step
  settings = ShortcutSettings.from_config(config)
  teacher = ema_params if config_value(config, "bootstrap_ema") else params
  if state and TARGET_EMA in state:
    teacher = state[TARGET_EMA]
  layout = faithful_layout if config_value(config, "faithful") else default_layout
  return layout(model, teacher, batch, rng, config, settings)
