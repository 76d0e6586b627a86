"""Orbax checkpoints of the train state, with the input-pipeline position saved beside it.

Layout: `workdir/checkpoints/<step>/{state, meta}`. `state` is the TrainState pytree (saved
from all processes, sharded as it lives on device); `meta` is JSON: the step, the data position
(how many global batches the pipeline has produced) and the config's model shape fields, used to
refuse a checkpoint that does not match the config before any array is read.

Orbax writes each step to a temporary folder and renames it when complete, so a process killed
at any moment (even mid-save) leaves the previous complete checkpoint as the latest one.
Resume order: the latest complete step in `workdir/checkpoints`; nothing there → a fresh state.

Damaged checkpoints. Once a save is complete, process 0 writes `<step>/checksums.json` (size and
CRC-32 of every file of the step). Before a step is read, `verify` compares the files with it, so a
data file truncated or overwritten after the commit (bit rot, a bad copy) is found, with its
name, before TensorStore reads it; a step without the list (written by an older version, or
cut off before its list was written) is checked by reading it. `restore_latest_intact` (resume)
then falls back to the newest intact step, and moves the damaged ones aside to
`<step>.damaged` in the same folder (kept, never deleted: Orbax refuses to save a step at or
below one it still lists); `restore(step)` names the damaged step and the intact ones.
"""

import json
import os
import re
import zlib
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


class DamagedCheckpointError(RuntimeError):
  """A checkpoint's files changed after it was saved (or cannot be read)."""


class _Damaged(Exception):
  """Internal: one step is damaged (the message says which file and how)."""


CHECKSUMS = "checksums.json"
_CHUNK = 1 << 22


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def _crc32(path: str) -> int:
  crc = 0
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      crc = zlib.crc32(chunk, crc)
  return crc


def _step_files(step_dir: str):
  """Relative paths of the files of a step folder, the checksum list excepted."""
  out = []
  for root, _, files in os.walk(step_dir):
    for name in files:
      rel = os.path.relpath(os.path.join(root, name), step_dir)
      if rel != CHECKSUMS:
        out.append(rel)
  return sorted(out)


def _first_line(exc: BaseException, limit: int = 240) -> str:
  text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
  text = re.sub(r"\s*See full TensorStore details:.*", "", text)
  return text if len(text) <= limit else text[:limit] + "..."


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
    self._options = options
    self._read_only = read_only
    self._unsealed = []  # Steps saved whose checksum list is not written yet.
    self._verified = set()  # Steps whose files matched their list (checked once).
    self._open()

  def _open(self):
    self._manager = ocp.CheckpointManager(
        self.directory, options=self._options,
        item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(int(step)))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self):
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: Dict[str, Any], *, force: bool = False) -> bool:
    """Saves if `step` is due (or `force`); returns whether a save was started."""
    meta = dict(meta, step=int(step))
    self._seal()
    started = self._manager.save(
        int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                           meta=ocp.args.JsonSave(meta)), force=force)
    if started:
      self._unsealed.append(int(step))
      if not self._options.enable_async_checkpointing:
        self._seal()
    return started

  def _seal(self):
    """Writes the checksum list of every completed save not yet sealed (process 0 only).

    Waits for a save in progress (Orbax's next `save` waits for it anyway); reads the files
    of the step back once, at disk speed, on process 0."""
    if not self._unsealed:
      return
    self._manager.wait_until_finished()
    steps, self._unsealed = self._unsealed, []
    if jax.process_index() != 0:
      return
    for step in steps:
      step_dir = self.step_dir(step)
      if not os.path.isdir(step_dir):  # Already removed by max_to_keep.
        continue
      try:
        files = {rel: [os.path.getsize(os.path.join(step_dir, rel)),
                       _crc32(os.path.join(step_dir, rel))] for rel in _step_files(step_dir)}
        tmp = os.path.join(step_dir, CHECKSUMS + ".tmp")
        with open(tmp, "w") as f:
          json.dump({"step": step, "crc32": files}, f)
        os.replace(tmp, os.path.join(step_dir, CHECKSUMS))
      except OSError as e:
        logging.warning("could not write the checksums of checkpoint step %d: %s", step, e)

  def verify(self, step: int) -> Optional[str]:
    """None if step `step`'s files are as saved, else which file is damaged and how.

    A step without a checksum list (older, or interrupted before the list was written) is
    reported intact here; reading it is then the test (see `restore_latest_intact`)."""
    if step in self._verified:
      return None
    step_dir = self.step_dir(step)
    listing = os.path.join(step_dir, CHECKSUMS)
    if not os.path.exists(listing):
      return None
    try:
      with open(listing) as f:
        files = json.load(f)["crc32"]
    except (OSError, ValueError, KeyError) as e:
      return f"{listing}: unreadable checksum list ({e})"
    for rel, (size, _) in sorted(files.items()):
      path = os.path.join(step_dir, rel)
      if not os.path.exists(path):
        return f"{path}: missing"
      if os.path.getsize(path) != size:
        return f"{path}: {os.path.getsize(path)} bytes, {size} when saved (truncated or overwritten)"
    for rel, (_, crc) in sorted(files.items()):
      path = os.path.join(step_dir, rel)
      if _crc32(path) != crc:
        return f"{path}: contents changed since the save (CRC-32 mismatch)"
    self._verified.add(step)
    return None

  def intact_steps(self) -> list:
    """The steps whose files match their checksum lists (or that have none)."""
    return [s for s in self.all_steps() if self.verify(s) is None]

  def _damaged(self, step: int, problem: str) -> DamagedCheckpointError:
    others = [s for s in self.intact_steps() if s != step]
    return DamagedCheckpointError(
        f"checkpoint step {step} in {self.directory} is damaged: {problem}. Intact steps: "
        f"{others or 'none'}" + (f" (e.g. --checkpoint_step={others[-1]})" if others else ""))

  def restore_latest_intact(self, abstract_state: Any) -> Tuple[Any, Dict[str, Any]]:
    """Restores the newest step that is intact; warns about (and sets aside) damaged ones.

    Damaged newer steps are renamed `<step>.damaged` in the checkpoint folder (their files are
    kept) so that training can save those steps again.

    Raises:
      DamagedCheckpointError: every step is damaged (nothing is moved or deleted then).
      CheckpointMismatchError: the newest intact step does not match `abstract_state`.
    """
    damaged = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        state, meta = self._restore_step(abstract_state, step)
      except _Damaged as e:
        problem = str(e)
      else:
        self._set_aside(damaged)
        return state, meta
      logging.warning("checkpoint step %d is damaged, skipping it: %s", step, problem)
      damaged.append((step, problem))
    raise DamagedCheckpointError(
        f"every checkpoint in {self.directory} is damaged (nothing was moved or deleted): "
        + "; ".join(f"step {s}: {p}" for s, p in damaged))

  def _set_aside(self, damaged):
    if not damaged or self._read_only:
      return
    if jax.process_index() == 0:
      for step, problem in damaged:
        target = self.step_dir(step) + ".damaged"
        n = 1
        while os.path.exists(target):
          target, n = f"{self.step_dir(step)}.damaged.{n}", n + 1
        os.rename(self.step_dir(step), target)
        logging.warning("damaged checkpoint step %d moved to %s (kept): %s", step, target, problem)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("shortcut_jax: damaged checkpoints set aside")
    self._manager.close()
    self._open()

  def read_meta(self, step: Optional[int] = None) -> Dict[str, Any]:
    """The JSON meta of `step` (default: the latest).

    Raises:
      DamagedCheckpointError: the step's files changed since the save, or cannot be read.
    """
    step = self._resolve(step)
    try:
      problem = self.verify(step)
      if problem is not None:
        raise _Damaged(problem)
      try:
        out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
      except Exception as e:  # pylint: disable=broad-except
        raise _Damaged(f"{self.step_dir(step)}/meta: could not be read ({_first_line(e)})") from e
    except _Damaged as e:
      raise self._damaged(step, str(e)) from None
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
    try:
      return self._restore_step(abstract_state, step)
    except _Damaged as e:
      raise self._damaged(step, str(e)) from None

  def _restore_step(self, abstract_state, step):
    problem = self.verify(step)
    if problem is not None:
      raise _Damaged(problem)
    try:
      self._check_compatible(step, abstract_state)
      target, missing = self._restore_target(step, abstract_state)
      out = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    except CheckpointMismatchError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # TensorStore, JSON, ...
      raise _Damaged(f"{self.step_dir(step)}: could not be read ({_first_line(e)})") from e
    state = out["state"]
    if missing:
      state = abstract_state.replace(**state, **missing)
    return state, dict(out["meta"])

  def _restore_target(self, step, abstract_state):
    """What to ask Orbax for: `abstract_state` itself, or — for a checkpoint written before a
    state field without arrays existed (e.g. an empty `objective_state`) — its state dict
    without those fields, which are then filled from `abstract_state` (returned as `missing`)."""
    saved = self._manager.item_metadata(step)["state"]
    saved = getattr(saved, "tree", saved)
    if not isinstance(saved, dict) or not hasattr(abstract_state, "__dataclass_fields__"):
      return abstract_state, {}
    target = {f: getattr(abstract_state, f) for f in abstract_state.__dataclass_fields__}
    missing = {k: v for k, v in target.items() if k not in saved and not jax.tree.leaves(v)}
    if not missing:
      return abstract_state, {}
    return {k: v for k, v in target.items() if k not in missing}, missing

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
    self._seal()

  def close(self):
    self._manager.wait_until_finished()
    self._seal()
    self._manager.close()
    logging.info("checkpoint manager closed (%s)", self.directory)
