"""Common base of the package's TFDS builders (none of them downloads anything), and the
remote data_dir.

A remote TFDS data_dir (`data.data_dir=gs://bucket/tfds`, `--data_dir`, or `$TFDS_DATA_DIR`
when none is given) is never handed to TensorFlow Datasets: TFDS reads and writes a data_dir
through TensorFlow's own file system, whose GCS client is a second configuration that ignores
the library's (`shortcut_jax.storage`). `make_builder` gives the builder a local cache folder
(`storage.local_cache_dir`) and first downloads the dataset's folder
(`<data_dir>/<name>/<config>/<version>/`) into it when the remote holds it complete;
`publish` uploads a folder built locally. The metadata files TFDS checks to call a folder
prepared travel last, so a reader never takes a half-copied folder for a prepared one.
"""

import os
from typing import Optional

import tensorflow_datasets as tfds

from shortcut_jax import storage

# The files whose presence makes TFDS call a dataset folder prepared (copied last).
_MARKERS = ("features.json", "dataset_info.json")


class OfflineBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A `GeneratorBasedBuilder` whose data never comes from a URL.

  The builders are not registered in the TFDS catalogue: their names ('digits', ...) are
  generic and registering them at import would clash with other code doing the same. Build
  them by instantiating the class, or through `shortcut_jax.data.catalog.get_builder`.
  """

  # TFDS looks for a checksums file next to the builder's code through `code_path`, and on
  # Python >= 3.9 that lookup imports `importlib_resources`, which tensorflow-datasets 4.9.10
  # does not declare (tensorflow/datasets#11212). These builders download nothing, so there
  # are no checksums to find: skipping the lookup keeps them working without that package.
  code_path = None


def _remote_root(data_dir: Optional[str]) -> Optional[str]:
  """The remote data_dir meant by `data_dir` (None: TFDS's `$TFDS_DATA_DIR`), or None."""
  root = data_dir or os.environ.get("TFDS_DATA_DIR")
  return root if root and storage.is_remote(root) else None


def _remote_folder(builder, root: str) -> str:
  """The remote twin of the builder's local dataset folder."""
  rel = os.path.relpath(os.fspath(builder.data_dir), storage.local_cache_dir(root))
  return storage.join(root, rel.replace(os.sep, "/"))


def make_builder(cls, data_dir: Optional[str], **kwargs):
  """`cls(data_dir=data_dir, **kwargs)`; for a remote data_dir, on its local cache folder,
  after downloading the dataset's folder when the remote holds it complete (module docstring)."""
  root = _remote_root(data_dir)
  if root is None:
    return cls(data_dir=data_dir, **kwargs)
  local = storage.local_cache_dir(root)
  builder = cls(data_dir=local, **kwargs)
  remote = _remote_folder(builder, root)
  if storage.exists(storage.join(remote, _MARKERS[-1])) and storage.copy_tree(
      remote, os.fspath(builder.data_dir), last=_MARKERS):
    builder = cls(data_dir=local, **kwargs)  # Reads the downloaded dataset_info.json.
  return builder


def publish(builder, data_dir: Optional[str]) -> None:
  """Uploads what the builder's local folder holds that a remote data_dir lacks (a dataset
  `make_builder`'s builder prepared); nothing for a local data_dir or an unprepared builder."""
  root = _remote_root(data_dir)
  if root is not None and builder.is_prepared():
    storage.copy_tree(os.fspath(builder.data_dir), _remote_folder(builder, root), last=_MARKERS)
