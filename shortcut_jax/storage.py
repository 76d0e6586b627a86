"""The path layer: every file the library reads or writes goes through this module.

Local paths behave as plain files always did. `gs://bucket/...` goes through etils `epath` with
its fsspec backend (gcsfs) — the same client Orbax uses for its metadata — and through
TensorStore for checkpoint arrays; `s3://` through fsspec's s3fs and TensorStore's S3 driver.
TensorFlow's own GCS client is never used: it ignores test endpoints and would be a second
configuration. Importing this module therefore sets `EPATH_USE_TF=false` (epath would otherwise
pick TensorFlow's client whenever TensorFlow is installed).

One configuration serves every client. To point the library at another GCS endpoint (a local
emulator such as fake-gcs-server, a private endpoint), set `STORAGE_EMULATOR_HOST=http://host:port`
before the program starts: gcsfs reads it, and this module derives TensorStore's
`TENSORSTORE_GCS_HTTP_URL` from it when that is not set (with an emulator, also
`GOOGLE_AUTH_TOKEN_FOR_TESTING=x` so that TensorStore does not look for credentials).

What exists only locally and how remote storage gets it:
  * append-only logs (`log.txt`, `metrics.jsonl`) and TensorBoard event files: written into a
    local staging folder and copied to the remote workdir at each flush (`Mirror`);
  * the workdir lock: a lock object with the run id and a heartbeat (`distributed.WorkdirLock`);
  * libraries that need a real file name (TensorFlow Datasets' readers, PIL on some formats):
    `local_copy(path)` downloads the file once into a temporary folder.

Functions take `str` or `os.PathLike` and accept local and remote paths alike; they return `str`
where they return paths, so callers can keep formatting them into messages.
"""

import builtins
import contextlib
import hashlib
import json
import logging as std_logging
import os
import shutil
import tempfile
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

os.environ.setdefault("EPATH_USE_TF", "false")
if os.environ.get("STORAGE_EMULATOR_HOST") and not os.environ.get("TENSORSTORE_GCS_HTTP_URL"):
  _host = os.environ["STORAGE_EMULATOR_HOST"]
  os.environ["TENSORSTORE_GCS_HTTP_URL"] = _host if "://" in _host else "http://" + _host
# gcsfs warns on every new filesystem that it cannot tell the bucket type without credentials;
# fsspec logs an INFO line per file it opens.
std_logging.getLogger("gcsfs").setLevel(std_logging.ERROR)
std_logging.getLogger("fsspec").setLevel(std_logging.WARNING)

try:
  import fsspec.config  # pylint: disable=g-import-not-at-top
  # No cached folder listings: other processes (and Orbax, through the same client) add steps
  # and files while a run lives, and a stale listing would hide them (a resume would restore an
  # old step).
  for _protocol in ("gs", "gcs", "s3", "s3a"):
    fsspec.config.conf.setdefault(_protocol, {}).setdefault("use_listings_cache", False)
except ImportError:  # Local paths only.
  pass

from etils import epath  # noqa: E402  (after EPATH_USE_TF)

from shortcut_jax import errors

PathLike = Union[str, os.PathLike]

# Scheme -> (the fsspec package that serves it, what to install).
REMOTE_SCHEMES = {"gs": ("gcsfs", "pip install gcsfs"), "s3": ("s3fs", "pip install s3fs")}


class StorageError(errors.UserError, ValueError):
  """A path the library cannot use: unsupported scheme, missing client, bucket or credentials."""


def scheme(p: PathLike) -> Optional[str]:
  """'gs', 's3', ... for a URI, None for a local path."""
  text = os.fspath(p)
  head, sep, _ = text.partition("://")
  return head.lower() if sep and "/" not in head else None


def is_remote(p: PathLike) -> bool:
  return scheme(p) is not None


def path(p: PathLike) -> epath.Path:
  """`p` as an `epath.Path` (local or remote).

  Raises:
    StorageError: a scheme other than gs:// and s3://, or its client package missing.
  """
  s = scheme(p)
  if s is not None:
    if s not in REMOTE_SCHEMES:
      raise StorageError(f"{os.fspath(p)}: unsupported storage scheme {s}:// (supported: local "
                         f"paths, {', '.join(k + '://' for k in REMOTE_SCHEMES)})")
    module, install = REMOTE_SCHEMES[s]
    try:
      __import__(module)
    except ImportError:
      raise StorageError(f"{os.fspath(p)}: {s}:// paths need the {module} package ({install})"
                         ) from None
  return epath.Path(p)


def join(first: PathLike, *rest: PathLike) -> str:
  """Joins path parts; a URI stays a URI (`gs://b/run` + `x` -> `gs://b/run/x`)."""
  if not is_remote(first):
    return os.path.join(os.fspath(first), *map(os.fspath, rest))
  out = os.fspath(first).rstrip("/")
  for part in rest:
    part = os.fspath(part).strip("/")
    if part:
      out = f"{out}/{part}"
  return out


def absolute(p: PathLike) -> str:
  """An absolute local path, or the URI unchanged."""
  return os.fspath(p) if is_remote(p) else os.path.abspath(os.fspath(p))


def basename(p: PathLike) -> str:
  return os.fspath(p).rstrip("/").rsplit("/", 1)[-1]


def exists(p: PathLike) -> bool:
  return path(p).exists()


def isdir(p: PathLike) -> bool:
  return path(p).is_dir()


def isfile(p: PathLike) -> bool:
  return path(p).is_file()


def makedirs(p: PathLike) -> None:
  """Creates a folder and its parents (no-op where it exists; object stores need no folders)."""
  path(p).mkdir(parents=True, exist_ok=True)


def listdir(p: PathLike) -> List[str]:
  """Names in a folder (sorted)."""
  return sorted(basename(os.fspath(q)) for q in path(p).iterdir())


def walk_files(p: PathLike) -> List[str]:
  """Every file under folder `p`, as paths relative to it ('/'-separated), sorted.

  One listing request on object stores (epath's glob refuses `**` there)."""
  if not is_remote(p):
    root = os.fspath(p)
    return sorted(os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
                  for d, _, files in os.walk(root) for f in files)
  fs, root = _fs_and_key(p)
  root = root.rstrip("/")
  return sorted(k[len(root) + 1:] for k in fs.find(root) if k.startswith(root + "/"))


def size(p: PathLike) -> int:
  return int(path(p).stat().length)


def open(p: PathLike, mode: str = "r"):  # pylint: disable=redefined-builtin
  """A file object for a local or remote file; folders of a written file are created.

  Append mode on object stores rewrites the whole object: use `Mirror` for logs."""
  target = path(p)
  if any(c in mode for c in "wa") and not is_remote(p):
    parent = os.path.dirname(os.fspath(p))
    if parent:
      os.makedirs(parent, exist_ok=True)
  return target.open(mode)


def read_bytes(p: PathLike) -> bytes:
  return path(p).read_bytes()


def read_text(p: PathLike) -> str:
  return path(p).read_text()


def read_json(p: PathLike) -> Any:
  return json.loads(read_text(p))


def write_bytes(p: PathLike, data: bytes) -> None:
  """Writes a whole file. Locally through a temporary file and a rename, so a reader (or a crash)
  never sees half of it; an object store's upload is atomic by itself."""
  if is_remote(p):
    path(p).write_bytes(data)
    return
  target = os.fspath(p)
  parent = os.path.dirname(target)
  if parent:
    os.makedirs(parent, exist_ok=True)
  tmp = f"{target}.tmp.{os.getpid()}"
  with builtins.open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, target)


def write_text(p: PathLike, text: str) -> None:
  write_bytes(p, text.encode("utf-8"))


def write_json(p: PathLike, obj: Any, **kwargs) -> None:
  write_text(p, json.dumps(obj, **kwargs))


def remove(p: PathLike) -> None:
  """Deletes a file (no error if it is gone)."""
  target = path(p)
  if target.exists():
    target.unlink()


def rmtree(p: PathLike) -> None:
  """Deletes a folder and everything under it (no error if it is gone)."""
  target = path(p)
  if target.exists():
    target.rmtree()


def copy(src: PathLike, dst: PathLike) -> None:
  """Copies one file between any two places (through memory for remote ends; folders of the
  target are created)."""
  if not is_remote(src) and not is_remote(dst):
    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(dst))), exist_ok=True)
    shutil.copyfile(os.fspath(src), os.fspath(dst))
    return
  write_bytes(dst, read_bytes(src))


def move_tree(src: PathLike, dst: PathLike) -> None:
  """Renames a folder. Object stores have no rename: each file is copied, then the source
  folder is deleted (only once every copy succeeded)."""
  if not is_remote(src):
    os.rename(os.fspath(src), os.fspath(dst))
    return
  for rel in walk_files(src):
    copy(join(src, rel), join(dst, rel))
  rmtree(src)


def _fs_and_key(p: PathLike):
  """(fsspec filesystem, 'bucket/key') of a remote path."""
  import fsspec  # pylint: disable=g-import-not-at-top
  path(p)  # Checks the scheme and its client package.
  fs, key = fsspec.core.url_to_fs(os.fspath(p))
  return fs, key


def _cache_root() -> str:
  return os.path.join(tempfile.gettempdir(), f"shortcut_jax_{os.getuid()}")


@contextlib.contextmanager
def local_copy(p: PathLike) -> Iterator[str]:
  """A local file name with the contents of `p`: `p` itself when local, else a temporary
  download (deleted afterwards). For readers that only take file names."""
  if not is_remote(p):
    yield os.fspath(p)
    return
  with tempfile.TemporaryDirectory(prefix="shortcut_jax_") as tmp:
    local = os.path.join(tmp, basename(p))
    copy(p, local)
    yield local


def local_dir_copy(p: PathLike) -> str:
  """A local folder with the contents of folder `p`: `p` itself when local, else a cached
  download under the temporary folder (downloaded again when a file's size changed). For
  readers that take folder names only (TensorFlow Datasets' builders)."""
  if not is_remote(p):
    return os.fspath(p)
  local = local_cache_dir(p)
  copy_tree(p, local)
  return local


def local_cache_dir(p: PathLike) -> str:
  """The local folder that `local_dir_copy(p)` fills for a remote `p` (created), for readers
  that need their own layout below a local folder (TensorFlow Datasets' data_dir: fill the parts
  it reads with `copy_tree`); `p` itself when local."""
  if not is_remote(p):
    return os.fspath(p)
  digest = hashlib.sha1(os.fspath(p).encode()).hexdigest()[:16]
  local = os.path.join(_cache_root(), "downloads", digest)
  os.makedirs(local, exist_ok=True)
  return local


def file_sizes(p: PathLike) -> Dict[str, int]:
  """`{relative path: bytes}` of every file under folder `p` ('/'-separated; empty when `p` does
  not exist). One listing request on object stores, where a `size` per file would be one each."""
  if not is_remote(p):
    root = os.fspath(p)
    return {rel: os.path.getsize(os.path.join(root, rel)) for rel in walk_files(root)}
  fs, root = _fs_and_key(p)
  root = root.rstrip("/")
  out = {}
  for key, info in sorted(fs.find(root, detail=True).items()):
    rel = key[len(root) + 1:]
    if key.startswith(root + "/") and rel and not rel.endswith("/"):
      out[rel] = int(info["size"])
  return out


def copy_tree(src: PathLike, dst: PathLike, *, last: Sequence[str] = ()) -> List[str]:
  """Copies every file under folder `src` to the same place under folder `dst` unless `dst`
  already holds it with the same size (any two places; an upload or a download of the
  difference). The relative paths in `last` are copied after all others, in that order: marker
  files a reader checks first (TFDS's features.json and dataset_info.json), so that a reader
  never takes a half-copied folder for a complete one. Returns the copied relative paths."""
  have, want = file_sizes(dst), file_sizes(src)
  order = {rel: i + 1 for i, rel in enumerate(last)}
  todo = [rel for rel in sorted(want, key=lambda r: (order.get(r, 0), r))
          if have.get(rel) != want[rel]]
  for rel in todo:
    copy(join(src, rel), join(dst, rel))
  return todo


def check(p: PathLike, *, write: bool = False) -> None:
  """Fails early, with one clear message, when a remote path cannot be used.

  Checks the scheme and its client package, that the bucket exists and that the credentials
  let this process list it (and, with `write`, create and delete a small object). Local paths
  are not checked (the first write says what is wrong there).

  Raises:
    StorageError: naming the path and what to install, create or set.
  """
  if not is_remote(p):
    return
  fs, key = _fs_and_key(p)
  bucket = key.split("/", 1)[0]
  s = scheme(p)
  try:
    if not fs.exists(bucket):
      raise StorageError(f"{os.fspath(p)}: bucket {s}://{bucket} does not exist (or this "
                         "account cannot see it): create it or fix the path")
    if write:
      probe = join(p, f".shortcut_jax_write_check.{os.getpid()}.{time.time_ns()}")
      write_bytes(probe, b"ok")
      remove(probe)
  except StorageError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # gcsfs / google-auth / HTTP errors.
    text = f"{type(e).__name__}: {e}".splitlines()[0][:300]
    hint = ("set up credentials (`gcloud auth application-default login`, or "
            "GOOGLE_APPLICATION_CREDENTIALS=key.json; for a local emulator, "
            "STORAGE_EMULATOR_HOST=http://host:port)" if s == "gs" else
            "set up credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or ~/.aws)")
    raise StorageError(f"{os.fspath(p)}: cannot {'write' if write else 'read'} it ({text}); "
                       f"{hint}") from None


def write_npz(p: PathLike, **arrays) -> None:
  """`np.savez` of `arrays` into `p`, written whole (no `.npz` suffix is added)."""
  import io  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  write_bytes(p, buffer.getvalue())
