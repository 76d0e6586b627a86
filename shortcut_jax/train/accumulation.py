"""Gradient accumulation: one optimizer update from `optim.accumulate_steps` = k microbatches.

The network's forward and backward pass, whose activations are what limits the batch a device
holds, runs over k microbatches in a `lax.scan`; their gradients are averaged and the update,
the EMA and the objective's state step once, as for one batch of the same size.

Microbatch j holds rows j, j + k, j + 2k, ... of the global batch (`split`). A batch split over
devices in contiguous blocks thus gives every device its share of every microbatch (given that k
divides the rows per device, which the launch checks), so no collective moves a row.

What equals one big batch (`train_step`):
* Objectives whose targets come first (no `Objective.loss`: naive, shortcut, HOMO, the
  baselines): the targets of the whole batch are made once, exactly as without accumulation
  (the same draws, bootstrap rows and teacher passes), and only the trained pass is split. The
  update equals the one-batch update to float32 rounding (`tests/test_accumulation.py`), with
  dropout off: microbatch j draws its dropout masks from `fold_in(dropout_key, j)`.
* Objectives that make their own prediction (`Objective.loss`: MeanFlow) draw per microbatch,
  with `fold_in(targets_key, j)`: the same distribution as one batch, not the same draws. The
  update is the mean of the k microbatch gradients (tested against that computation).
Logged per-row losses and groups are put back in batch order; scalar loss terms and objective
metrics are the mean of their k microbatch values.
"""

from typing import Any, Callable, Tuple

import jax
import jax.numpy as jnp

Array = Any


def split(tree, k: int):
  """[B, ...] leaves -> [k, B / k, ...]; microbatch j = rows j, j + k, ... (module docstring)."""
  def one(a):
    if a.shape[0] % k:
      raise ValueError(f"a batch of {a.shape[0]} rows does not split into "
                       f"optim.accumulate_steps={k} microbatches")
    return jnp.swapaxes(a.reshape((a.shape[0] // k, k) + a.shape[1:]), 0, 1)
  return jax.tree.map(one, tree)


def merge(tree):
  """The inverse of `split` for per-row leaves ([k, B / k, ...] -> [B, ...]); stacked scalars
  ([k]) become their mean."""
  def one(a):
    if a.ndim == 1:
      return jnp.mean(a, axis=0)
    return jnp.swapaxes(a, 0, 1).reshape((-1,) + a.shape[2:])
  return jax.tree.map(one, tree)


def accumulate(grad_fn: Callable[[Any, Any, Array], Tuple[Any, Any]], params, inputs,
               k: int) -> Tuple[Any, Any]:
  """The mean gradient of `grad_fn(params, microbatch, j) -> (grads, aux)` over the k
  microbatches of `inputs`, and the auxiliary outputs merged back (`merge`)."""
  def body(total, xs):
    microbatch, j = xs
    grads, aux = grad_fn(params, microbatch, j)
    return jax.tree.map(jnp.add, total, grads), aux

  zeros = jax.tree.map(jnp.zeros_like, params)
  total, aux = jax.lax.scan(body, zeros, (split(inputs, k), jnp.arange(k)))
  return jax.tree.map(lambda g: g / k, total), merge(aux)
