"""Whether a checkpoint fits: the errors a checkpoint that does not fit raises
(`CheckpointMismatchError`, and `DamagedCheckpointError` / `CheckpointReadError` of recovery),
the leaf-by-leaf shape differences between a checkpoint and a config's state
(`shape_mismatches`), how a state of another layer layout or an older state tree is read into
this run's (`in_stored_layout`, `restore_target`, `to_layout_of`), and which run and step a
checkpoint path names (`run_and_step`)."""

import os
from typing import Optional, Tuple

import jax
import numpy as np

from shortcut_jax import errors
from shortcut_jax.core import layer_stack
from shortcut_jax import storage
from shortcut_jax.parallel.sharding import path_name


class CheckpointMismatchError(errors.UserError, ValueError):
  """A checkpoint's arrays do not fit the state the config describes."""


def run_and_step(path: str, step: int) -> Tuple[str, Optional[int]]:
  """(training workdir, step or None for the latest) of a path that names a workdir, with `step`
  (-1: the latest), or one of its checkpoint folders `<workdir>/checkpoints/<step>` (that step).
  Local paths become absolute; a URI stays one."""
  path = storage.absolute(os.path.expanduser(str(path))).rstrip(os.sep)
  step = int(step)
  head, tail = os.path.split(path)
  if tail.isdigit() and os.path.basename(head) == "checkpoints":
    path, step = os.path.dirname(head), int(tail)
  return path, (None if step < 0 else step)


def shape_mismatches(expected, found) -> list:
  """Differences between two pytrees' leaf paths and shapes, one readable line each.

  Scalars (step counters, Adam's count) are not compared: their stored shape may be () or (1,).
  """
  want = {path_name(k): tuple(np.shape(v)) for k, v in jax.tree_util.tree_leaves_with_path(expected)}
  have = {path_name(k): tuple(getattr(v, "shape", None) or np.shape(v))
          for k, v in jax.tree_util.tree_leaves_with_path(found)}
  problems = [f"{k}: missing in checkpoint" for k in want if k not in have]
  problems += [f"{k}: in checkpoint but not in the model" for k in have if k not in want]
  problems += [f"{k}: checkpoint {have[k]} vs config {want[k]}" for k in want
               if k in have and have[k] != want[k] and np.prod(want[k] or (1,)) > 1]
  return problems


class DamagedCheckpointError(errors.UserError, RuntimeError):
  """A checkpoint's files differ from its checksum lists (or every checkpoint is damaged)."""


class CheckpointReadError(errors.UserError, RuntimeError):
  """A checkpoint could not be verified or restored for a reason other than damage (I/O,
  permissions, memory, sharding, versions). Nothing was renamed or deleted."""


def in_stored_layout(saved, abstract_state):
  """`abstract_state` in the layer layout of the saved tree `saved` (unrolled `DiTBlock_<i>` or
  scanned `DiTBlock_scan`, `core.layer_stack`): itself when they agree or either is unknown."""
  stored, wanted = layer_stack.is_scanned(saved), layer_stack.is_scanned(abstract_state)
  if saved is None or stored is None or wanted is None or stored == wanted:
    return abstract_state
  return layer_stack.convert(abstract_state, stored)


def restore_target(saved, abstract_state):
  """(what to ask Orbax for, fields to fill in afterwards): `abstract_state` itself, or — for a
  checkpoint written before a state field without arrays existed (e.g. an empty
  `objective_state`) — its state dict without those fields, which are then taken from
  `abstract_state` (the second value)."""
  if not isinstance(saved, dict) or not hasattr(abstract_state, "__dataclass_fields__"):
    return abstract_state, {}
  target = {f: getattr(abstract_state, f) for f in abstract_state.__dataclass_fields__}
  missing = {k: v for k, v in target.items() if k not in saved and not jax.tree.leaves(v)}
  if not missing:
    return abstract_state, {}
  return {k: v for k, v in target.items() if k not in missing}, missing


def to_layout_of(state, abstract_state):
  """`state` converted to the layer layout of `abstract_state`, placed on its shardings where
  every leaf has one."""
  shardings = jax.tree.map(lambda a: getattr(a, "sharding", None), abstract_state)
  convert = lambda s: layer_stack.convert(s, layer_stack.is_scanned(abstract_state))
  if all(s is not None for s in jax.tree.leaves(shardings, is_leaf=lambda x: x is None)):
    return jax.jit(convert, out_shardings=shardings)(state)
  return convert(state)
