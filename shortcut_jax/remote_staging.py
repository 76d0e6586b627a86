"""Append-only files of a remote workdir (the log, metrics.jsonl, TensorBoard events, a profile):
object stores cannot append, so they are written in a local staging folder (`Mirror`, one per
workdir and process: `staging`) and uploaded as they grow (`sync`, `sync_all`)."""

import hashlib
import os

from shortcut_jax import storage


class Mirror:
  """A local staging folder whose files are copied to a remote folder at each `sync()`.

  For files that are appended to (logs, metrics.jsonl, TensorBoard event files): object stores
  cannot append, and rewriting an object per line would be one upload per record. With a local
  `remote`, `local` is `remote` itself and `sync` does nothing.

  `sync` uploads the files whose size changed since the last upload. `pull(name)` first copies
  an existing remote file down so that a resumed run appends to it.
  """

  def __init__(self, remote: storage.PathLike, tag: str = ""):
    self.remote = os.fspath(remote)
    self.active = storage.is_remote(remote)
    if self.active:
      digest = hashlib.sha1(f"{self.remote}|{tag}|{os.getpid()}".encode()).hexdigest()[:16]
      self.local = os.path.join(storage._cache_root(), "mirror", digest)  # pylint: disable=protected-access
      os.makedirs(self.local, exist_ok=True)
    else:
      self.local = self.remote
    self._sizes = {}

  def local_path(self, rel: str) -> str:
    return os.path.join(self.local, rel)

  def pull(self, rel: str) -> None:
    """Copies `remote/rel` into the staging folder if it exists there (before appending)."""
    if not self.active:
      return
    source = storage.join(self.remote, rel)
    if storage.exists(source) and not os.path.exists(self.local_path(rel)):
      storage.copy(source, self.local_path(rel))
      self._sizes[rel] = os.path.getsize(self.local_path(rel))

  def sync(self) -> None:
    """Uploads every staged file that grew (or is new) since the last sync."""
    if not self.active:
      return
    for rel in storage.walk_files(self.local):
      current = os.path.getsize(self.local_path(rel))
      if self._sizes.get(rel) != current:
        storage.copy(self.local_path(rel), storage.join(self.remote, rel))
        self._sizes[rel] = current


_MIRRORS = {}


def staging(workdir: storage.PathLike) -> Mirror:
  """The one `Mirror` of a workdir in this process (the log file, metrics.jsonl and TensorBoard
  events of a remote workdir share it); `sync_all()` uploads every mirror's new bytes."""
  key = storage.absolute(workdir)
  if key not in _MIRRORS:
    _MIRRORS[key] = Mirror(key)
  return _MIRRORS[key]


def sync_all() -> None:
  """Uploads what every staging folder of this process holds that the remote does not yet."""
  for mirror in list(_MIRRORS.values()):
    mirror.sync()
