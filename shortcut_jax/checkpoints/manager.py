"""Orbax checkpoints of the train state, with the input-pipeline position saved beside it.

Layout: `workdir/checkpoints/<step>/{state, meta}` (a local folder or `gs://...`, through
`shortcut_jax.storage`). `state` is the TrainState pytree (saved from all processes, sharded as
it lives on device); `meta` is JSON: the step, the data position (how many global batches the
pipeline has produced) and the config's model shape fields, used to refuse a checkpoint that
does not match the config before any array is read.

Orbax commits each step only when complete (a local step folder appears by an atomic rename; on
an object store its `commit_success.txt` marker is written last), so a process killed at any
moment (even mid-save) leaves the previous complete checkpoint as the latest one. Resume order:
the latest intact step in `workdir/checkpoints`; nothing there → a fresh state.

Checksums, written off the training loop. `save` starts Orbax's (asynchronous) save and returns;
a background thread of each process waits until Orbax has committed the step, then reads back
the files that this process wrote (its `state/ocdbt.process_<i>/...` shards and
`state/array_metadatas/process_<i>`; process 0 also everything else: metadata, the merged OCDBT
root, `meta`, the commit markers) and writes their sizes and CRC-32s to
`<step>/checksums.process_<i>.json`. `wait()` and `close()` wait for those lists. The single
`<step>/checksums.json` of earlier versions is still read.

Damage, and what is not damage. Only an integrity failure makes a step 'damaged': a file whose
bytes differ from its checksum list (truncated, overwritten, bit rot, a bad copy), a listed file
that is missing (the commit marker included), or an unreadable checksum list. Any other error
(an I/O or permission error, running out of memory, a sharding or shape mismatch, an Orbax
version error) stops with a message that names the step, the process and the error, and renames
or deletes nothing. A step without any checksum list cannot be verified: an error reading it is
such an error too, and the message says how to skip the step.

Resume (`restore_latest_intact`) is collective: from the newest step down, every process
verifies its share of the step's checksum lists (list `k` by process `k % process_count`, in
parallel threads), checks that the step's shapes fit the config, and the processes exchange
their verdicts (`process_allgather`), so every process takes the same decision: a damaged
shard that only one process checked is skipped by all; an error on one process stops all of
them with the same message. Every process then restores the chosen step and the outcomes are
exchanged again. Only then, after that point every process reaches, process 0 moves the damaged
newer steps aside to `<step>.damaged` in the same folder (kept, never deleted: Orbax refuses to
save a step at or below one it still lists), and every process waits for it. `restore(step)`
(evaluation) names a damaged step and the intact ones.
"""

import hashlib
import json
from typing import Any, Dict, List, Optional, Tuple

import jax
import orbax.checkpoint as ocp
from absl import logging

from shortcut_jax import storage
from shortcut_jax.checkpoints import agreement
from shortcut_jax.checkpoints import integrity
from shortcut_jax.checkpoints import matching
# What fits a checkpoint, and the errors of one that does not, are `matching`'s; callers of the
# manager find them here too.
from shortcut_jax.checkpoints.matching import (  # noqa: F401
    CheckpointMismatchError, CheckpointReadError, DamagedCheckpointError, run_and_step,
    shape_mismatches)


def checkpoint_dir(workdir: str) -> str:
  return storage.join(storage.absolute(workdir), "checkpoints")


class CheckpointManager:
  """Saves and restores `(train_state, meta)` pairs under `workdir/checkpoints`."""

  def __init__(self, workdir: str, *, every_steps: int = 1, max_to_keep: int = 3,
               async_save: bool = True, read_only: bool = False):
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=every_steps, max_to_keep=max_to_keep,
        enable_async_checkpointing=async_save, create=not read_only, read_only=read_only,
        cleanup_tmp_directories=not read_only)
    self.directory = checkpoint_dir(workdir)
    if read_only and not storage.isdir(self.directory):
      raise FileNotFoundError(
          f"no checkpoints in {self.directory}: train first (train.py --workdir=...) or import one "
          "(python -m shortcut_jax.tools.import_original ...)")
    self._options = options
    self._read_only = read_only
    self._checksummer = integrity.Checksummer(self)
    self._verified = set()  # Steps every process found intact (checked once).
    self._open()

  def _open(self):
    self._manager = ocp.CheckpointManager(
        self.directory, options=self._options,
        item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})

  def step_dir(self, step: int) -> str:
    return storage.join(self.directory, str(int(step)))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self):
    return sorted(self._manager.all_steps())

  # -------------------------------------------------------------------------------------------
  # Saving.

  def save(self, step: int, state: Any, meta: Dict[str, Any], *, force: bool = False) -> bool:
    """Saves if `step` is due (or `force`); returns whether a save was started.

    Returns once Orbax has started its (asynchronous) save; the checksum list of this
    process's files is written by a background thread once the step is committed."""
    meta = dict(meta, step=int(step))
    started = self._manager.save(
        int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                           meta=ocp.args.JsonSave(meta)), force=force)
    if started:
      self._verified.discard(int(step))
      self._checksummer.submit(int(step))
    return started

  def wait(self):
    """Waits until every started save is committed and has its checksum lists."""
    self._manager.wait_until_finished()
    self._checksummer.drain()

  def close(self):
    self._manager.wait_until_finished()
    self._checksummer.drain()
    self._checksummer.stop()
    self._manager.close()
    logging.info("checkpoint manager closed (%s)", self.directory)

  # -------------------------------------------------------------------------------------------
  # Verifying.

  def verify(self, step: int) -> Optional[str]:
    """None if step `step`'s files are as saved (or it has no checksum list), else which file
    is damaged and how. Checks every list, on this process alone (not collective).

    Raises:
      Exception: an error that is not damage (I/O, permissions), as raised.
    """
    if step in self._verified:
      return None
    try:
      files = integrity.share(self.step_dir(step), 0, 1)
      if files is not None:
        integrity.check_files(self.step_dir(step), files)
    except integrity.Damage as e:
      return str(e)
    return None

  def intact_steps(self) -> list:
    """The steps whose files match their checksum lists (or that have none), checked on this
    process alone; a step that cannot be read is left out (with a warning)."""
    out = []
    for step in self.all_steps():
      try:
        if self.verify(step) is None:
          out.append(step)
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("checkpoint step %d could not be verified: %s", step, integrity.first_line(e))
    return out

  def _local_check(self, step: int, abstract_state: Any = None) -> Dict[str, Any]:
    """This process's verdict on `step`: its share of the checksums, then (with
    `abstract_state`) whether the shapes fit. Never raises."""
    me, count = jax.process_index(), jax.process_count()
    record = {"process": me, "step": int(step)}
    try:
      files = integrity.share(self.step_dir(step), me, count)
      if files is not None and step not in self._verified:
        integrity.check_files(self.step_dir(step), files)
      record["verdict"] = "intact" if files is not None else "unverified"
      if abstract_state is not None:
        self._check_compatible(step, abstract_state)
    except integrity.Damage as e:
      record.update(verdict="damaged", message=str(e))
    except CheckpointMismatchError as e:
      record.update(verdict="mismatch", message=str(e))
    except Exception as e:  # pylint: disable=broad-except
      logging.exception("checkpoint step %d: verification failed on process %d", step, me)
      record.update(verdict="failed", message=integrity.first_line(e))
    return record

  def _check(self, step: int, abstract_state: Any = None) -> Tuple[str, Optional[str]]:
    """Every process's verdict on `step`, agreed: ('intact' | 'unverified', None) or
    ('damaged', message) — the same on every process.

    Raises (on every process alike):
      CheckpointReadError: a process could not verify it (not damage).
      CheckpointMismatchError: the step does not fit `abstract_state`.
    """
    reports = agreement.exchange(self._local_check(step, abstract_state))
    failed = [r for r in reports if r["verdict"] == "failed"]
    if failed:
      raise CheckpointReadError(self._failure(step, "verified", failed))
    mismatch = [r for r in reports if r["verdict"] == "mismatch"]
    if mismatch:
      raise CheckpointMismatchError(mismatch[0]["message"])
    damaged = [r for r in reports if r["verdict"] == "damaged"]
    if damaged:
      return "damaged", "; ".join(r["message"] for r in damaged)
    if all(r["verdict"] == "intact" for r in reports):
      self._verified.add(step)
      return "intact", None
    return "unverified", None

  def _failure(self, step: int, what: str, failed: List[Dict[str, Any]],
               unverified: bool = False) -> str:
    where = "; ".join(f"process {r['process']}: {r['message']}" for r in failed)
    text = (f"checkpoint step {step} in {self.directory} could not be {what} ({where}). "
            "Nothing was renamed or deleted: this is not damage (only a file that differs from "
            "its checksum list, or is missing, is), so fix the cause (storage access, "
            "permissions, memory, versions) and run again")
    if unverified:
      older = [s for s in self.all_steps() if s < step]
      text += (f". Step {step} has no checksum list (written by an older version, or the job "
               "stopped before writing it), so damage cannot be told from other errors: if its "
               f"files are damaged, rename {self.step_dir(step)} to "
               f"{self.step_dir(step)}.damaged")
      if older:
        text += f" to resume from step {older[-1]} (or evaluate with --checkpoint_step={older[-1]})"
    return text

  def _damaged(self, step: int, problem: str) -> DamagedCheckpointError:
    others = [s for s in self.intact_steps() if s != step]
    return DamagedCheckpointError(
        f"checkpoint step {step} in {self.directory} is damaged: {problem}. Intact steps: "
        f"{others or 'none'}" + (f" (e.g. --checkpoint_step={others[-1]})" if others else ""))

  # -------------------------------------------------------------------------------------------
  # Restoring.

  def _agreed_steps(self) -> List[int]:
    """The steps, checked to be the same on every process (one collective)."""
    steps, record = agreement.run(self.all_steps)
    if steps is not None:
      record.update(digest=hashlib.sha1(json.dumps(steps).encode()).hexdigest(), n=len(steps),
                    newest=steps[-1] if steps else None)
    reports = agreement.exchange(record)
    failed = [r for r in reports if r["verdict"] != "ok"]
    if failed:
      raise CheckpointReadError(
          f"could not list the checkpoints in {self.directory} ("
          + "; ".join(f"process {r['process']}: {r['message']}" for r in failed) + ")")
    if len({r["digest"] for r in reports}) > 1:
      raise CheckpointReadError(
          f"the processes see different checkpoint steps in {self.directory} ("
          + "; ".join(f"process {i}: {r['n']} steps, newest {r['newest']}"
                      for i, r in enumerate(reports))
          + "): the checkpoint folder must be storage every host shares. Nothing was moved")
    return steps

  def restore_latest_intact(self, abstract_state: Any) -> Tuple[Any, Dict[str, Any]]:
    """Restores the newest step every process finds intact; sets damaged newer ones aside.

    Collective: every process must call it. Damaged newer steps are renamed `<step>.damaged`
    in the checkpoint folder (their files are kept) so that training can save those steps again.

    Raises (on every process alike; nothing is renamed or deleted then):
      DamagedCheckpointError: every step is damaged.
      CheckpointMismatchError: the newest undamaged step does not match `abstract_state`.
      CheckpointReadError: a step could not be verified or restored for another reason.
    """
    steps = self._agreed_steps()
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    damaged = []
    for step in reversed(steps):
      verdict, problem = self._check(step, abstract_state)
      if verdict == "damaged":
        logging.warning("checkpoint step %d is damaged, skipping it: %s", step, problem)
        damaged.append((step, problem))
        continue
      out = self._restore_agreed(abstract_state, step, unverified=verdict == "unverified")
      self._set_aside(damaged)
      return out
    raise DamagedCheckpointError(
        f"every checkpoint in {self.directory} is damaged (nothing was moved or deleted): "
        + "; ".join(f"step {s}: {p}" for s, p in damaged))

  def _restore_agreed(self, abstract_state, step, unverified=False):
    """Restores `step` on every process; if it fails anywhere, raises everywhere."""
    out, record = agreement.run(lambda: self._read(abstract_state, step))
    reports = agreement.exchange(record)
    failed = [r for r in reports if r["verdict"] == "failed"]
    if failed:
      raise CheckpointReadError(self._failure(step, "restored", failed, unverified))
    mismatch = [r for r in reports if r["verdict"] == "mismatch"]
    if mismatch:
      raise CheckpointMismatchError(mismatch[0]["message"])
    return out

  def _set_aside(self, damaged):
    """Process 0 renames the damaged steps `<step>.damaged`, once every process has restored
    the chosen step (the exchange before this is the barrier); every process waits for it."""
    if not damaged or self._read_only:
      return

    def move():
      if jax.process_index() != 0:
        return
      for step, problem in damaged:
        source = self.step_dir(step)
        target, n = source + ".damaged", 1
        while storage.exists(target):
          target, n = f"{source}.damaged.{n}", n + 1
        storage.move_tree(source, target)
        logging.warning("damaged checkpoint step %d moved to %s (kept): %s", step, target, problem)

    _, record = agreement.run(move)
    reports = agreement.exchange(record)
    failed = [r for r in reports if r["verdict"] != "ok"]
    if failed:
      raise CheckpointReadError(
          f"could not move the damaged checkpoint step(s) {[s for s, _ in damaged]} in "
          f"{self.directory} aside ({failed[0]['message']}): move them by hand (rename "
          "<step> to <step>.damaged) and run again")
    self._manager.close()
    self._open()

  def read_meta(self, step: Optional[int] = None) -> Dict[str, Any]:
    """The JSON meta of `step` (default: the latest). Collective with several processes.

    Raises:
      DamagedCheckpointError: the step's files differ from its checksum lists.
      CheckpointReadError: the step could not be verified or read for another reason.
    """
    step = self._resolve(step)
    verdict, problem = self._check(step)
    if verdict == "damaged":
      raise self._damaged(step, problem) from None
    out, record = agreement.run(lambda: self._manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())))
    failed = [r for r in agreement.exchange(record) if r["verdict"] != "ok"]
    if failed:
      raise CheckpointReadError(self._failure(step, "read", failed, verdict == "unverified"))
    return dict(out["meta"])

  def restore(self, abstract_state: Any, step: Optional[int] = None) -> Tuple[Any, Dict[str, Any]]:
    """Restores the state into the shapes, dtypes and shardings of `abstract_state`.

    Collective with several processes (every process must call it).

    Args:
      abstract_state: a pytree of `jax.ShapeDtypeStruct` (with `.sharding`) or arrays, e.g. from
        `jax.eval_shape`; a checkpoint written on any mesh restores into these shardings.
      step: which step; the latest when None.

    Raises:
      CheckpointMismatchError: the checkpoint's tree or shapes differ from `abstract_state`
        (named per parameter), checked before any array is read.
      DamagedCheckpointError: the step's files differ from its checksum lists.
      CheckpointReadError: the step could not be verified or restored for another reason.
    """
    step = self._resolve(step)
    verdict, problem = self._check(step, abstract_state)
    if verdict == "damaged":
      raise self._damaged(step, problem) from None
    return self._restore_agreed(abstract_state, step, unverified=verdict == "unverified")

  def _read(self, abstract_state, step):
    self._check_compatible(step, abstract_state)
    saved = self._saved_tree(step)
    stored = matching.in_stored_layout(saved, abstract_state)
    target, missing = matching.restore_target(saved, stored)
    out = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    state = out["state"]
    if missing:
      state = stored.replace(**state, **missing)
    if stored is not abstract_state:  # The other layer layout: converted, placed as asked.
      state = matching.to_layout_of(state, abstract_state)
      logging.info("checkpoint step %d converted to this run's layer layout (model.scan_layers)",
                   step)
    return state, dict(out["meta"])

  def _saved_tree(self, step):
    """The saved state's tree of array metadata (None where Orbax has none)."""
    saved = self._manager.item_metadata(step)["state"]
    return getattr(saved, "tree", saved)

  def _resolve(self, step):
    steps = self._agreed_steps()
    step = (steps[-1] if steps else None) if step is None else step
    if step is None or step not in steps:
      raise FileNotFoundError(f"no checkpoint {'' if step is None else step} in {self.directory} "
                              f"(available: {steps})")
    return step

  def _check_compatible(self, step, abstract_state):
    saved = self._saved_tree(step)
    if saved is None:
      return
    problems = shape_mismatches(matching.in_stored_layout(saved, abstract_state), saved)
    if problems:
      raise CheckpointMismatchError(
          f"checkpoint step {step} in {self.directory} does not match the config "
          f"({len(problems)} differences): " + "; ".join(problems[:8]))
