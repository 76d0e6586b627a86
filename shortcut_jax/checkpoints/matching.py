"""Whether a checkpoint fits: the errors a checkpoint that does not fit raises
(`CheckpointMismatchError`, and `DamagedCheckpointError` / `CheckpointReadError` of recovery),
the leaf-by-leaf shape differences between a checkpoint and a config's state
(`shape_mismatches`), and which run and step a checkpoint path names (`run_and_step`)."""

import os
from typing import Optional, Tuple

import jax
import numpy as np

from shortcut_jax import errors
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
