"""One job per workdir: `WorkdirLock`, a file lock on local and shared filesystems, a lock object
with the run's id and a heartbeat on object stores (which have no locks), checked the same way by
every process of a job; `LaunchError` for a launch that cannot go on."""

import errno
import json
import os
import socket
import time
import uuid
from typing import Optional

import jax
import numpy as np
from absl import logging

from shortcut_jax import errors
from shortcut_jax.parallel.exchange import exchange_json


class LaunchError(errors.UserError, RuntimeError):
  """A multi-process launch that is incomplete, or a workdir another run is using."""


class WorkdirLock:
  """`workdir/run.lock`: one training job per workdir, held for the job's lifetime.

  Process 0 of a job takes the lock and writes into it the job's run id (shared by all its
  processes), its process count, host, pid, start time and a heartbeat. Whether it got it is
  then broadcast: when the workdir is held, every process of the job raises the same
  `LaunchError` (naming the workdir and the other run) before training, and none waits at a
  barrier the others never reach. The other processes check that they see the same run id in
  the file (a warning if not: the workdir is then not storage every host shares).

  How it is held:
    * local and network filesystems: an exclusive `fcntl.flock` on the file; the kernel drops
      it when the process exits in any way (a crash, SIGKILL, a preempted VM), so a resumed run,
      with any process count, takes it again. `flock` is exact on one host; across hosts it
      works where the filesystem forwards locks (NFSv4, Lustre with `-o flock`, GPFS). Where
      locking fails outright (ENOLCK, EOPNOTSUPP) the heartbeat record decides, as below.
    * object stores (`gs://`, `s3://`), which have no locks: the record itself is the lock. A
      record from another run is taken as held while its heartbeat is less than
      `stale_after_s` old (refreshed every `stale_after_s / 4` by a background thread) and, when
      it comes from this host, while its pid is alive; a run that ends cleanly marks it
      released. A killed job's lock thus frees itself after `stale_after_s` (at once for a
      restart on the same host). Limit: two jobs that start within the same second can both
      take it (object stores offer no compare-and-swap through this client); the job's record is
      read back after writing to narrow that window.
  """

  FILENAME = "run.lock"

  def __init__(self, workdir: str, stale_after_s: Optional[float] = None):
    from shortcut_jax import storage  # pylint: disable=g-import-not-at-top
    self._storage = storage
    self.workdir = os.fspath(workdir)
    self.path = storage.join(self.workdir, self.FILENAME)
    self.remote = storage.is_remote(self.workdir)
    self.stale_after_s = float(stale_after_s or (120.0 if self.remote else 600.0))
    self.run_id: Optional[str] = None
    self._file = None
    self._locked = False
    self._held_record = False  # This job's record is the lock (object stores, no flock).
    self._beat = None
    self._started = time.strftime("%Y-%m-%d %H:%M:%S")

  def _record(self, released: bool = False):
    return {"run_id": self.run_id, "process_count": jax.process_count(),
            "host": socket.gethostname(), "pid": os.getpid(),
            "started": self._started, "heartbeat": time.time(), "released": released}

  def _read(self) -> dict:
    try:
      return json.loads(self._storage.read_text(self.path) or "{}")
    except (OSError, ValueError):
      return {}

  def _busy(self, other: dict) -> LaunchError:
    who = (f"run {other.get('run_id', '?')} ({other.get('process_count', '?')} process(es), "
           f"host {other.get('host', '?')}, pid {other.get('pid', '?')}, started "
           f"{other.get('started', '?')})" if other else "another run")
    how = (f"; if that run is dead, its lock frees itself {self.stale_after_s:.0f} s after its "
           f"last heartbeat, or delete {self.path}" if self.remote else "")
    return LaunchError(
        f"workdir {self.workdir} is in use by {who}: its {self.path} is locked. Two jobs must "
        "not write one workdir — if this process was meant to join that job, its processes did "
        "not form one cluster (check --coordinator_address/--num_processes/--process_id or the "
        f"launcher); otherwise use another --workdir, or wait for that run to end{how}")

  def _write(self, record: dict) -> None:
    if self._file is None:
      self._storage.write_text(self.path, json.dumps(record))
      return
    self._file.seek(0)
    self._file.truncate()
    self._file.write(json.dumps(record))
    self._file.flush()
    os.fsync(self._file.fileno())

  def _take(self) -> None:
    """Process 0: takes the lock or raises `LaunchError`."""
    if self.remote:
      other = self._read()
      if other and other.get("run_id") != self.run_id and self._alive(other):
        raise self._busy(other)
      self._write(self._record())
      time.sleep(0.05)
      seen = self._read()
      if seen.get("run_id") != self.run_id:  # Another job wrote in between.
        raise self._busy(seen)
      self._held_record = True
      return
    import fcntl  # pylint: disable=g-import-not-at-top
    os.makedirs(self.workdir, exist_ok=True)
    self._file = open(self.path, "a+")
    try:
      fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
      self._locked = True
    except OSError as e:
      if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        other = self._read()
        self._file.close()
        self._file = None
        raise self._busy(other) from None
      # No locks on this filesystem: fall back to the record's heartbeat.
      other = self._read()
      if other and self._alive(other):
        self._file.close()
        self._file = None
        raise self._busy(other) from None
      logging.warning("%s: file locks unsupported here (%s); relying on the heartbeat record",
                      self.path, e)
    self._write(self._record())

  def acquire(self, run_id: Optional[str] = None) -> "WorkdirLock":
    """Takes the lock (process 0) or checks it (other processes); a collective with several.

    Raises:
      LaunchError: another run holds the workdir (on every process, with the same message).
    """
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      token = np.frombuffer(uuid.uuid4().bytes, np.uint32)
      token = np.asarray(multihost_utils.broadcast_one_to_all(token), np.uint32)
      self.run_id = run_id or token.tobytes().hex()[:12]
    else:
      self.run_id = run_id or uuid.uuid4().hex[:12]
    problem = None
    if jax.process_index() == 0:
      try:
        self._take()
      except LaunchError as e:
        problem = str(e)
    problem = exchange_json(problem[:2048] if problem else None)[0]  # Process 0's, on all.
    if problem is not None:
      raise LaunchError(problem)
    if self.remote:
      self._start_heartbeat()
    if jax.process_count() > 1 and jax.process_index() != 0:
      seen = self._read().get("run_id")
      if seen != self.run_id:
        logging.warning("%s holds run %s, not this job's %s: is %s storage that every host "
                        "shares? (checkpoints need it)", self.path, seen, self.run_id,
                        self.workdir)
    return self

  def _alive(self, other: dict) -> bool:
    if other.get("released"):
      return False
    if time.time() - float(other.get("heartbeat", 0)) > self.stale_after_s:
      return False
    if other.get("host") == socket.gethostname():
      try:
        os.kill(int(other.get("pid", -1)), 0)
      except (OSError, ValueError):
        return False
    return True

  def _start_heartbeat(self) -> None:
    if not self._held_record:
      return
    import threading  # pylint: disable=g-import-not-at-top
    stop = threading.Event()

    def beat():
      while not stop.wait(self.stale_after_s / 4):
        try:
          self._write(self._record())
        except Exception as e:  # pylint: disable=broad-except  # Retried at the next beat.
          logging.warning("could not refresh %s: %s", self.path, e)
    thread = threading.Thread(target=beat, name="workdir-lock-heartbeat", daemon=True)
    thread.start()
    self._beat = (stop, thread)

  def heartbeat(self) -> None:
    """Refreshes the record's time where the record is the lock (no flock on the filesystem)."""
    if (self._file is not None and not self._locked) or self._held_record:
      self._write(self._record())

  def release(self) -> None:
    """Drops the lock (the record stays, for the next run's error messages)."""
    if self._beat is not None:
      self._beat[0].set()
      self._beat[1].join(timeout=5)
      self._beat = None
    if self._held_record:
      try:
        self._write(self._record(released=True))
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("could not mark %s released (it frees itself in %.0f s): %s", self.path,
                        self.stale_after_s, e)
      self._held_record = False
    if self._file is not None:
      import fcntl  # pylint: disable=g-import-not-at-top
      if self._locked:
        fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
      self._file.close()
      self._file = None
      self._locked = False

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
    return False
