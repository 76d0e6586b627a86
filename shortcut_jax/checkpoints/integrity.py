"""Checkpoint integrity: the checksum lists of a step, written off the training loop, and their
verification (the manager's "Checksums" and "Damage" in `checkpoints.manager`).

Each process lists the files it wrote of a committed step (its `state/ocdbt.process_<i>/...`
shards and `state/array_metadatas/process_<i>`; process 0 also everything else) with their sizes
and CRC-32s in `<step>/checksums.process_<i>.json` (`Checksummer`, a background thread); the
single `<step>/checksums.json` of earlier versions is still read. `share` gives the files one
process verifies at resume, `check_files` compares them; a difference is `Damage`, any other
error (I/O, permissions) is raised as it is.
"""

import builtins
import concurrent.futures
import json
import os
import queue
import re
import threading
import time
import zlib
from typing import Any, Dict, List, Optional, Tuple

import jax
from absl import logging

from shortcut_jax import storage

CHECKSUMS = "checksums.json"  # The single list of earlier versions (read only).
COMMIT_MARKER = "commit_success.txt"
_LIST = re.compile(r"^checksums\.process_(\d+)\.json$")
_OWNER = re.compile(r"(?:^|\.)process_(\d+)$")
_CHUNK = 1 << 23
_VERIFY_THREADS = 8  # Per process, at resume (I/O bound on object stores; locally: <= cores).


def first_line(exc: BaseException, limit: int = 300) -> str:
  """The first line of an error, at most `limit` characters (without TensorStore's details)."""
  text = (f"{type(exc).__name__}: {exc}".strip().splitlines() or [type(exc).__name__])[0]
  text = re.sub(r"\s*See full TensorStore details:.*", "", text)
  return text if len(text) <= limit else text[:limit] + "..."


def list_name(process: int) -> str:
  return f"checksums.process_{process}.json"


def writer_of(rel: str) -> int:
  """The process that writes file `rel` of a step: `k` for anything under a `*process_<k>`
  path component (OCDBT's per-process shards, array metadata), else 0."""
  for part in rel.split("/"):
    m = _OWNER.search(part)
    if m:
      return int(m.group(1))
  return 0


def is_list(rel: str) -> bool:
  return "/" not in rel and rel.startswith("checksums.")


def crc32(path: str) -> Tuple[int, int]:
  """(size, CRC-32) of a file's bytes."""
  crc = size = 0
  f = storage.open(path, "rb") if storage.is_remote(path) else builtins.open(path, "rb")
  with f:
    while True:
      chunk = f.read(_CHUNK)
      if not chunk:
        return size, crc
      crc = zlib.crc32(chunk, crc)
      size += len(chunk)


def committed(step_dir: str) -> bool:
  """Whether Orbax has committed a step: the folder exists (locally it appears by rename,
  complete) and, on object stores, holds its commit marker."""
  if storage.is_remote(step_dir):
    return storage.exists(storage.join(step_dir, COMMIT_MARKER))
  return os.path.isdir(step_dir)


class Damage(Exception):
  """Internal: a file of a step is not as its checksum list says (the message says how)."""


def lists(step_dir: str) -> Tuple[List[int], bool]:
  """(processes with a checksum list in the step's folder, whether the old single list is
  there)."""
  names = storage.listdir(step_dir)
  lists = sorted(int(m.group(1)) for m in map(_LIST.match, names) if m)
  return lists, CHECKSUMS in names

def read_list(path: str) -> Dict[str, Any]:
  try:
    data = json.loads(storage.read_text(path))
    files = data["crc32"]
    if not isinstance(files, dict):
      raise TypeError("crc32 is not a mapping")
    return data
  except FileNotFoundError:
    raise Damage(f"{path}: missing") from None
  except (ValueError, KeyError, TypeError) as e:
    raise Damage(f"{path}: unreadable checksum list ({first_line(e)})") from None

def share(step_dir: str, process: int, count: int) -> Optional[Dict[str, List[int]]]:
  """The listed files that process `process` of `count` verifies: those of the lists
  `k ≡ process (mod count)` (of the old single list: the files whose writer `k` is). None
  when the step has no checksum list at all (it cannot be verified)."""
  listed, legacy = lists(step_dir)
  if not listed and not legacy:
    return None
  files = {}
  for k in listed:
    if k % count != process:
      continue
    data = read_list(storage.join(step_dir, list_name(k)))
    files.update(data["crc32"])
    if k == 0:
      missing = sorted(set(range(int(data.get("process_count", 1)))) - set(listed))
      if missing:
        logging.warning("checkpoint %s has no checksum list of process(es) %s (stopped "
                        "before writing it?): their files are not verified", step_dir, missing)
  if legacy and not listed:
    data = read_list(storage.join(step_dir, CHECKSUMS))
    files.update({rel: v for rel, v in data["crc32"].items() if writer_of(rel) % count == process})
  return files

def check_files(step_dir: str, files: Dict[str, List[int]]) -> None:
  """Compares files with their sizes and CRC-32s, in parallel threads.

  Raises:
    Damage: the first damaged file (sorted by name).
    Exception: any other error (I/O, permissions), as raised.
  """
  items = sorted(files.items())
  if not storage.is_remote(step_dir):  # Cheap checks first: missing or truncated files.
    for rel, (size, _) in items:
      p = storage.join(step_dir, rel)
      try:
        actual = os.path.getsize(p)
      except FileNotFoundError:
        raise Damage(f"{p}: missing") from None
      if actual != size:
        raise Damage(f"{p}: {actual} bytes, {size} when saved (truncated or overwritten)")

  def check(item):
    rel, (size, crc) = item
    p = storage.join(step_dir, rel)
    try:
      got_size, got_crc = crc32(p)
    except FileNotFoundError:
      return f"{p}: missing"
    if got_size != size:
      return f"{p}: {got_size} bytes, {size} when saved (truncated or overwritten)"
    if got_crc != crc:
      return f"{p}: contents changed since the save (CRC-32 mismatch)"
    return None

  if not items:
    return
  threads = _VERIFY_THREADS if storage.is_remote(step_dir) else min(_VERIFY_THREADS,
                                                                        os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(max(1, min(threads, len(items)))) as pool:
    problems = list(pool.map(check, items))  # Re-raises the first non-integrity error.
  for problem in problems:
    if problem is not None:
      raise Damage(problem)


class Checksummer:
  """One background thread per process: writes `checksums.process_<i>.json` for each step
  saved, once Orbax has committed it (reads this process's files back; never blocks `save`)."""

  def __init__(self, owner):  # The `CheckpointManager` whose saves it follows.
    self._owner = owner
    self._queue: "queue.Queue[Optional[int]]" = queue.Queue()
    self._thread = None
    self._last = None  # The step submitted last.

  def submit(self, step: int) -> None:
    if self._thread is None or not self._thread.is_alive():
      self._thread = threading.Thread(target=self._loop, name="shortcut_jax-checksums",
                                      daemon=True)
      self._thread.start()
    self._last = int(step)
    self._queue.put(int(step))

  def drain(self) -> None:
    """Waits until every submitted step has its list (or was given up)."""
    if self._thread is not None:
      self._queue.join()

  def stop(self) -> None:
    if self._thread is not None and self._thread.is_alive():
      self._queue.put(None)
      self._thread.join()
    self._thread = None

  def _loop(self):
    while True:
      step = self._queue.get()
      try:
        if step is None:
          return
        self._seal(step)
      except Exception as e:  # pylint: disable=broad-except
        try:
          gone = not committed(self._owner.step_dir(step))
        except Exception:  # pylint: disable=broad-except
          gone = False
        if not gone:  # A step removed meanwhile (max_to_keep) needs no list.
          logging.warning("could not write the checksums of checkpoint step %d: %s", step,
                          first_line(e))
      finally:
        self._queue.task_done()

  def _seal(self, step: int):
    owner = self._owner
    step_dir = owner.step_dir(step)
    delay = 0.02
    while True:
      busy = owner._manager.is_saving_in_progress()  # pylint: disable=protected-access
      if committed(step_dir):
        break
      last = self._last
      if not busy or (last is not None and last > step and committed(owner.step_dir(last))):
        # The save failed, or the step is already gone (max_to_keep; Orbax commits in order).
        logging.info("checkpoint step %d is not there (its save failed, or max_to_keep removed "
                     "it already): no checksum list written", step)
        return
      time.sleep(delay)
      delay = min(2 * delay, 1.0)
    me, count = jax.process_index(), jax.process_count()
    files = {}
    for rel in storage.walk_files(step_dir):
      if is_list(rel) or writer_of(rel) != me:
        continue
      files[rel] = list(crc32(storage.join(step_dir, rel)))
    payload = {"step": step, "process": me, "process_count": count, "crc32": files}
    target = storage.join(step_dir, list_name(me))
    data = json.dumps(payload).encode("utf-8")
    if storage.is_remote(step_dir):
      storage.write_bytes(target, data)
      if not committed(step_dir):
        storage.remove(target)  # Deleted meanwhile (max_to_keep): leave no stray object.
      return
    tmp = f"{target}.tmp.{os.getpid()}"
    try:  # No folder is created: a step deleted meanwhile stays deleted.
      with builtins.open(tmp, "wb") as f:
        f.write(data)
      os.replace(tmp, target)
    except FileNotFoundError:
      if os.path.isdir(step_dir):
        raise
