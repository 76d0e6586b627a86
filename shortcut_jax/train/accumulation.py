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

Reducing once (`groups` > 1, data parallel): summed in the scan, every microbatch's gradient
would be reduced over the devices before it is added (the sum has the parameters' replicated
layout). Instead each microbatch is cut into `groups` blocks of rows, one per device, whose
gradients are computed side by side (`vmap`) and kept apart in a [groups, ...] sum split over
the devices; the one reduction over devices comes after the loop. Under FSDP the parameters are
split and every device needs the whole gradient of its shard, so each microbatch is reduced
as it comes (ZeRO-3's schedule).
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


def _constrain(tree, sharding):
  if sharding is None:
    return tree
  return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, sharding), tree)


def _per_group(grad_fn, groups: int, group_sharding):
  """`grad_fn` over `groups` blocks of a microbatch's rows at once: ([groups, ...] gradients,
  aux with rows back in order); block g of microbatch j draws with index j * groups + g."""
  def fn(params, microbatch, j):
    blocks = _constrain(jax.tree.map(
        lambda a: a.reshape((groups, a.shape[0] // groups) + a.shape[1:]), microbatch),
        group_sharding)
    # Traced off the mesh: the blocks axis carries the split over the devices, so a model that
    # keeps its rows split on the mesh's batch axes (scanned DiT layers) must not split them too.
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), ())):
      grads, aux = jax.vmap(grad_fn, in_axes=(None, 0, 0))(params, blocks,
                                                           j * groups + jnp.arange(groups))
    aux = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]) if a.ndim >= 2
                       else jnp.mean(a, axis=0), aux)
    return _constrain(grads, group_sharding), aux
  return fn


def accumulate(grad_fn: Callable[[Any, Any, Array], Tuple[Any, Any]], params, inputs,
               k: int, groups: int = 1, group_sharding=None) -> Tuple[Any, Any]:
  """The mean gradient of `grad_fn(params, microbatch, index) -> (grads, aux)` over the k
  microbatches of `inputs`, and the auxiliary outputs merged back (`merge`).

  `index` numbers the calls (it seeds their draws): j for microbatch j, or with `groups` > 1
  (module docstring) j * groups + g for block g. `group_sharding`: how a [groups, ...] array is
  split over the devices (the batch sharding), or None (no constraint: one device, tests).
  """
  if groups > 1:
    grad_fn = _per_group(grad_fn, groups, group_sharding)
    zeros = _constrain(jax.tree.map(lambda p: jnp.zeros((groups,) + p.shape, p.dtype), params),
                       group_sharding)
  else:
    zeros = jax.tree.map(jnp.zeros_like, params)

  def body(total, xs):
    microbatch, j = xs
    grads, aux = grad_fn(params, microbatch, j)
    return jax.tree.map(jnp.add, total, grads), aux

  total, aux = jax.lax.scan(body, zeros, (split(inputs, k), jnp.arange(k)))
  if groups > 1:
    total = jax.tree.map(lambda g: jnp.sum(g, axis=0) / groups, total)
  return jax.tree.map(lambda g: g / k, total), merge(aux)
