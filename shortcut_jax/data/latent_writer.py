"""Writing an encoded dataset (`tools.encode_dataset`): shards written under a temporary name and
renamed when complete (`ShardWriter`), the metadata that names what was encoded
(`write_metadata`), the TFDS metadata that lets TFDS read the shards
(`write_tfds_metadata`), and the clean-up of an interrupted run (`remove_temporaries`). The
reading side, names and checks are `data.latent_dataset`."""

import json
import os
import shutil
import tempfile
from typing import Dict, List

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from shortcut_jax import storage
from shortcut_jax.data.latent_dataset import (DATASET_NAME, FLIPPED_SUFFIX, METADATA_FILE,
                                               TMP_PREFIX, _TEMPLATE, latent_names)


def _fsync_dir(directory: str) -> None:
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def write_metadata(directory: str, meta: Dict) -> None:
  """Writes encode_metadata.json atomically (temporary file, fsync, rename; one upload for a
  remote folder)."""
  path = storage.join(directory, METADATA_FILE)
  if storage.is_remote(directory):
    storage.write_text(path, json.dumps(meta, indent=2, sort_keys=True))
    return
  tmp = os.path.join(directory, TMP_PREFIX + METADATA_FILE)
  with open(tmp, "w") as f:
    json.dump(meta, f, indent=2, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  _fsync_dir(directory)


def features_of(identity: Dict) -> tfds.features.FeaturesDict:
  """The TFDS features of a dataset with this identity (see the module docstring)."""
  shape = tuple(identity["latent_shape"])
  dtype = np.dtype(identity["dtype"])
  names = latent_names(identity)
  if identity["flips"]:
    names += [m + FLIPPED_SUFFIX for m in names]
  # Raw bytes: tf.Example has no float16 list (TFDS would store float16 as float32).
  feats = {n: tfds.features.Tensor(shape=shape, dtype=dtype, encoding=tfds.features.Encoding.BYTES)
           for n in names}
  for key, spec in identity["extra_features"].items():
    feats[key] = tfds.features.Tensor(shape=tuple(spec["shape"]), dtype=np.dtype(spec["dtype"]))
  return tfds.features.FeaturesDict(feats)


def write_tfds_metadata(directory: str, meta: Dict) -> None:
  """dataset_info.json and features.json for the complete splits of `meta`.

  What `tfds.folder_dataset.write_metadata` writes, without its scan of the folder's files
  (which refuses a folder where some split is still being written); the files are written
  beside and renamed into place (for a remote folder: written locally, then uploaded).
  """
  split_infos = []
  for split, s in sorted(meta["splits"].items()):
    if not s["complete"]:
      continue
    template = tfds.core.ShardedFileTemplate(
        data_dir=directory, template=_TEMPLATE, dataset_name=DATASET_NAME, split=split,
        filetype_suffix="tfrecord")
    split_infos.append(tfds.core.SplitInfo(
        name=split, shard_lengths=[f["num_examples"] for f in s["files"]],
        num_bytes=sum(f["num_bytes"] for f in s["files"]), filename_template=template))
  if not split_infos:
    return
  identity = tfds.core.dataset_info.DatasetIdentity(
      name=DATASET_NAME, version=tfds.core.Version("1.0.0"), data_dir=directory, module_name="")
  info = tfds.core.DatasetInfo(
      builder=identity, features=features_of(meta["identity"]),
      description=(f"VAE posterior moments of {meta['identity']['source']['name']} "
                   f"(shortcut_jax.tools.encode_dataset)"))
  info.set_file_format(tfds.core.FileFormat.TFRECORD)
  info.set_splits(tfds.core.SplitDict(split_infos))
  if storage.is_remote(directory):
    with tempfile.TemporaryDirectory(prefix="shortcut_jax_") as staging:
      info.write_to_directory(staging)
      for name in sorted(os.listdir(staging)):
        storage.copy(os.path.join(staging, name), storage.join(directory, name))
    return
  staging = os.path.join(directory, TMP_PREFIX + "tfds")
  os.makedirs(staging, exist_ok=True)
  info.write_to_directory(staging)
  for name in sorted(os.listdir(staging)):
    os.replace(os.path.join(staging, name), os.path.join(directory, name))
  os.rmdir(staging)
  _fsync_dir(directory)


class ShardWriter:
  """Writes one shard under a temporary name; `commit` makes it appear under its final name.

  Use as a context manager: the shard is committed when the block ends normally and the
  temporary file deleted when it raises. A remote shard is written to a local temporary file
  and uploaded by `commit`.
  """

  def __init__(self, path: str, features: tfds.features.FeaturesDict):
    self.path = path
    self.remote = storage.is_remote(path)
    folder = tempfile.mkdtemp(prefix="shortcut_jax_") if self.remote else os.path.dirname(path)
    self.tmp = os.path.join(folder, TMP_PREFIX + storage.basename(path))
    self.features = features
    self.count = 0
    self._writer = tf.io.TFRecordWriter(self.tmp)

  def write(self, example: Dict[str, np.ndarray]) -> None:
    self._writer.write(self.features.serialize_example(example))
    self.count += 1

  def commit(self) -> int:
    """Flushes, fsyncs and renames the shard to its final name (uploads it); returns its size in
    bytes."""
    self._writer.close()
    if self.remote:
      size = os.path.getsize(self.tmp)
      storage.copy(self.tmp, self.path)
      shutil.rmtree(os.path.dirname(self.tmp))
      return size
    with open(self.tmp, "rb+") as f:
      os.fsync(f.fileno())
    os.replace(self.tmp, self.path)
    _fsync_dir(os.path.dirname(self.path))
    return os.path.getsize(self.path)

  def abort(self) -> None:
    self._writer.close()
    if self.remote:
      shutil.rmtree(os.path.dirname(self.tmp), ignore_errors=True)
    elif os.path.exists(self.tmp):
      os.remove(self.tmp)

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, tb):
    if exc_type is None:
      self.commit()
    else:
      self.abort()
    return False


def remove_temporaries(directory: str) -> List[str]:
  """Deletes the `.tmp-*` files a killed writer left; returns their names."""
  if not storage.isdir(directory):  # A remote folder before its first upload.
    return []
  names = sorted(n for n in storage.listdir(directory) if n.startswith(TMP_PREFIX))
  for n in names:
    path = storage.join(directory, n)
    if storage.isdir(path):
      storage.rmtree(path)
    else:
      storage.remove(path)
  return names
