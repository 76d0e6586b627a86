"""Orbax checkpoints of the train state, with the input-pipeline position saved beside it.

Layout: `workdir/checkpoints/<step>/{state, meta}`. `state` is the TrainState pytree (saved
from all processes, sharded as it lives on device); `meta` is JSON: the step, the data position
(how many global batches the pipeline has produced) and the config's model shape fields, used to
refuse a checkpoint that does not match the config before any array is read.

Orbax writes each step to a temporary folder and renames it when complete, so a process killed
at any moment (even mid-save) leaves the previous complete checkpoint as the latest one.
Resume order: the latest complete step in `workdir/checkpoints`; nothing there → a fresh state.
"""

import os
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from shortcut_jax.sharding import path_name


class CheckpointMismatchError(ValueError):
  """A checkpoint's arrays do not fit the state the config describes."""


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


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


class CheckpointManager:
  """Saves and restores `(train_state, meta)` pairs under `workdir/checkpoints`."""

  def __init__(self, workdir: str, *, every_steps: int = 1, max_to_keep: int = 3,
               async_save: bool = True, read_only: bool = False):
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=every_steps, max_to_keep=max_to_keep,
        enable_async_checkpointing=async_save, create=not read_only, read_only=read_only,
        cleanup_tmp_directories=not read_only)
    self.directory = checkpoint_dir(workdir)
    if read_only and not os.path.isdir(self.directory):
      raise FileNotFoundError(
          f"no checkpoints in {self.directory}: train first (train.py --workdir=...) or import one "
          "(python -m shortcut_jax.tools.import_original ...)")
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self):
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: Dict[str, Any], *, force: bool = False) -> bool:
    """Saves if `step` is due (or `force`); returns whether a save was started."""
    meta = dict(meta, step=int(step))
    return self._manager.save(
        int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                           meta=ocp.args.JsonSave(meta)), force=force)

  def read_meta(self, step: Optional[int] = None) -> Dict[str, Any]:
    step = self._resolve(step)
    out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(out["meta"])

  def restore(self, abstract_state: Any, step: Optional[int] = None) -> Tuple[Any, Dict[str, Any]]:
    """Restores the state into the shapes, dtypes and shardings of `abstract_state`.

    Args:
      abstract_state: a pytree of `jax.ShapeDtypeStruct` (with `.sharding`) or arrays, e.g. from
        `jax.eval_shape`; a checkpoint written on any mesh restores into these shardings.
      step: which step; the latest when None.

    Raises:
      CheckpointMismatchError: the checkpoint's tree or shapes differ from `abstract_state`
        (named per parameter), checked before any array is read.
    """
    step = self._resolve(step)
    self._check_compatible(step, abstract_state)
    out = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return out["state"], dict(out["meta"])

  def _resolve(self, step):
    step = self.latest_step() if step is None else step
    if step is None or step not in self.all_steps():
      raise FileNotFoundError(f"no checkpoint {'' if step is None else step} in {self.directory} "
                              f"(available: {self.all_steps()})")
    return step

  def _check_compatible(self, step, abstract_state):
    saved = self._manager.item_metadata(step)["state"]
    if saved is None:
      return
    problems = shape_mismatches(abstract_state, getattr(saved, "tree", saved))
    if problems:
      raise CheckpointMismatchError(
          f"checkpoint step {step} in {self.directory} does not match the config "
          f"({len(problems)} differences): " + "; ".join(problems[:8]))

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()
    logging.info("checkpoint manager closed (%s)", self.directory)
