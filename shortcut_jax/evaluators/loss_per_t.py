"""Loss as a function of t for each step-size level (a PNG plot and per-level means).

For the finest level L the loss is the flow-matching loss against the path's velocity (on the
default linear path v = x1 - (1 - 1e-5) x0). For a level k < L it is the self-consistency
residual: the model's step of size d = 2^-k against the average of two of its own (EMA) half
steps at level k + 1 — the quantity shortcut training drives to zero. Flow models (no level
input) are evaluated at level L only. Objectives with several outputs (`homo`) are scored on
their velocity output (`Objective.velocity_of`).
"""

import io

import jax
import jax.numpy as jnp
import numpy as np

from shortcut_jax import storage
from shortcut_jax.core.conditioning import cond_from_batch
from shortcut_jax.data import pipeline
from shortcut_jax.evaluators.base import Evaluator
from shortcut_jax.models.velocity_model import VelocityModel
from shortcut_jax.objectives import flow_path
from shortcut_jax.core import paths
from shortcut_jax.objectives import shortcut


def velocity_model_of(model: VelocityModel, objective) -> VelocityModel:
  """`model` with only its velocity output (the model itself for single-output objectives)."""
  if len(objective.outputs) == 1:
    return model
  return VelocityModel(
      apply_fn=lambda *args: objective.velocity_of(model.apply_fn(*args)),
      conditioning=model.conditioning)


def _loss_fn(model, path, params, teacher_params, x1, x0, cond, t, level, finest, with_levels):
  """Per-sample losses for times t [B] and levels level [B] (one compile for every level)."""
  xt = path.interpolate(x0, x1, t)
  pred = model(params, xt, t, level, cond)
  target = path.velocity(x0, x1, t)
  if with_levels:
    shortcut_target, _, _ = shortcut.bootstrap_targets(model, teacher_params, xt, t, level, cond)
    target = jnp.where((level == finest)[:, None, None, None], target, shortcut_target)
  return jnp.mean((pred - jax.lax.stop_gradient(target)) ** 2, axis=(1, 2, 3))


def source_and_encode_keys(batch_index: int):
  """(source key, encoder key) of held-out batch `batch_index`: x0 from `PRNGKey(i)` (as
  before, so pixel runs score the same draws), the latent encoder's posterior sample from
  `fold_in(PRNGKey(i), 1)`, independent of it."""
  key = jax.random.PRNGKey(batch_index)
  return key, jax.random.fold_in(key, 1)


class LossPerTEvaluator(Evaluator):
  """Writes `workdir/plots/loss_per_t_<step>.png`; returns `loss_per_t/level_<k>` means."""

  def __init__(self, exp, workdir, every, *, num_batches, num_bins):
    super().__init__(exp, workdir, every)
    self.num_batches, self.num_bins = num_batches, num_bins
    self.finest = int(np.log2(exp.config.objective.denoise_timesteps))
    self.levels = list(range(self.finest + 1)) if exp.objective.uses_level else [self.finest]
    with_levels = exp.objective.uses_level
    model = velocity_model_of(exp.model, exp.objective)
    path = paths.path_from_config(exp.config.objective)
    self._loss = jax.jit(lambda p, tp, x1, x0, cond, t, lv: _loss_fn(
        model, path, p, tp, x1, x0, cond, t, lv, self.finest, with_levels))

  def _times(self, level):
    n = 2 ** level
    return np.unique(np.floor(np.linspace(0, n - 1, min(self.num_bins, n)))) / n

  def run(self, state, step):
    c = self.exp.config
    it = pipeline.make_dataset(c.data, split="test", global_batch_size=c.batch_size, seed=c.seed,
                               train=False)
    # Encoded once (latent space), with its source draw, then scored at every level and time.
    # The encoder's posterior sample and the source get independent keys: with one key the
    # flow's x0 would be the latent's own noise.
    inputs = []
    for bi, (_, b) in enumerate(zip(range(self.num_batches), it)):
      noise_key, encode_key = source_and_encode_keys(bi)
      batch = self.exp.prepare_batch(b, encode_key)
      x1 = jnp.asarray(batch["image"])
      cond = {k: jnp.asarray(v) for k, v in cond_from_batch(batch).items()}
      x0 = flow_path.sample_source(noise_key, x1.shape, self.exp.source, cond)
      inputs.append((x1, x0, cond))
    curves, results = {}, {}
    for level in self.levels:
      ts = self._times(level)
      losses = np.zeros(len(ts))
      for x1, x0, cond in inputs:
        b = x1.shape[0]
        for i, t in enumerate(ts):
          out = self._loss(state.params, state.ema_params, x1, x0, cond,
                           jnp.full((b,), t, jnp.float32), jnp.full((b,), level, jnp.int32))
          losses[i] += float(jnp.mean(out)) / len(inputs)
      curves[level] = (ts, losses)
      results[f"loss_per_t/level_{level}"] = float(losses.mean())
    if jax.process_index() == 0:
      self._plot(curves, step)
    return results

  def _plot(self, curves, step):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for level, (ts, losses) in curves.items():
      label = f"level {level} (d=1/{2 ** level})" + (" flow" if level == self.finest else "")
      ax.plot(ts, losses, marker="o", markersize=3, label=label)
    ax.set_xlabel("t (0 = noise, 1 = data)")
    ax.set_ylabel("loss")
    if any(np.any(np.asarray(losses) > 0) for _, losses in curves.values()):
      ax.set_yscale("log")  # A linear scale where every loss is zero (a warning otherwise).
    ax.set_title(f"loss per t, step {step}")
    ax.legend(fontsize=6)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    storage.write_bytes(storage.join(self.workdir, "plots", f"loss_per_t_{step}.png"),
                        buffer.getvalue())
