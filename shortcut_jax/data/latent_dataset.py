"""Precomputed latents on disk: the folder `tools.encode_dataset` writes and the pipeline reads.

A latents folder (`data.latents_dir`, `--out` of the encode command) holds, for every image of
some splits of a pixel dataset, the Gaussian posterior q(z | image) of a VAE: its mean and
standard deviation, *unscaled* (what `VAE.posterior` returns; the train step draws
`vae.sample_latents(mean, std, key)` each step).

Layout of the folder:
  encode_metadata.json   what was encoded and how (`identity`: source dataset and image size,
                         the VAE's `config.to_dict()` and a SHA-256 of its parameters, flips,
                         storage dtype, shard size, latent shape, per-example keys) and where
                         (`splits`: examples, shards, per-shard examples and bytes, complete or
                         not). Written first (status 'in_progress') and rewritten, atomically,
                         after every completed split (status 'complete' once all are).
  dataset_info.json, features.json
                         TFDS metadata (as `tfds.folder_dataset.write_metadata` writes it;
                         complete splits only): `tfds.builder_from_directory(folder)` reads
                         the dataset.
  latents-<split>.tfrecord-<i>-of-<n>
                         shard i of n (5 digits each): examples `i·shard_size ...` of the
                         source split, in its stored order, as TFDS-serialised tf.Examples.

Features of an example: 'latent_mean', 'latent_std': [h, w, c] in the storage dtype (float32,
or float16 to halve the disk; readers cast to float32), as raw bytes; with flips also
'latent_mean_flipped', 'latent_std_flipped', the moments of the horizontally flipped image;
'label' (int32, the pixel pipeline's label) and any other per-example key of the pixel
pipeline (e.g. 'embedding'). A latent pair dataset (encoded from a super-resolution config,
`identity.source.low_res_factor` > 0) also stores 'cond_latent' (and 'cond_latent_flipped'):
the posterior mean of the upsampled low-resolution image, the coupling source.

Writing. `ShardWriter` writes a shard to `.tmp-<name>`, fsyncs it and renames it to its final
name, so a final name always holds a complete shard; a killed writer leaves only `.tmp-` files,
which the next run deletes (`remove_temporaries`). `check_shard` reads a shard back in full
(TFRecord CRCs) and counts its records.

Reading. `open_latents` checks, before anything is compiled, that the folder holds an encoded
dataset that matches `config.data` (dataset, image size, classes, low-resolution factor,
embedding size) and that every shard named in
the metadata exists with its recorded size; it raises `LatentsNotFoundError` (with the encode
command) or `CorruptLatentsError` (naming the file) and writes nothing.

Remote folders (`data.latents_dir=gs://bucket/latents`). Every file is read and written
through `shortcut_jax.storage`, never through TensorFlow's own GCS client: a shard is written
to a local temporary file and uploaded whole when complete (an upload is atomic: the final name
holds a complete shard, and no `.tmp-` object is ever made); the metadata files are uploaded
whole; `check_shard` downloads the shard it reads back. `open_latents` checks the metadata and
the shard sizes remotely (one listing), then gives TFDS a local cached copy of the folder
(`storage.local_dir_copy`: downloaded once, again only for files whose size changed).
"""

import os
from typing import Dict, List, Optional, Tuple

import tensorflow as tf
import tensorflow_datasets as tfds

from shortcut_jax import storage
from shortcut_jax.data import errors
from shortcut_jax.errors import UserError
from shortcut_jax.latents import COND_LATENT
from shortcut_jax.core.config_value import config_value

FORMAT_VERSION = 1
METADATA_FILE = "encode_metadata.json"
# TFDS's dataset name in the shard file names, and its default file name template.
DATASET_NAME = "latents"
_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
TMP_PREFIX = ".tmp-"
STORAGE_DTYPES = ("float32", "float16")
MOMENTS = ("latent_mean", "latent_std")
# Latent pair datasets (encoded from a super-resolution config) also store `COND_LATENT`.
FLIPPED_SUFFIX = "_flipped"
# The TFDS metadata files `DatasetInfo.write_to_directory` creates.
_TFDS_FILES = ("dataset_info.json", "features.json")


class LatentsNotFoundError(errors.DataNotPreparedError):
  """`data.latents_dir` holds no (complete) encoded dataset: run the encode command."""


class CorruptLatentsError(UserError, IOError):
  """A shard or metadata file of an encoded dataset is missing, truncated or unreadable."""


class IncompatibleLatentsError(UserError, ValueError):
  """The folder holds latents encoded differently (other dataset, VAE, flips, ...)."""


def encode_command(out: Optional[str], config: str = "CONFIG.py") -> str:
  """The command line that writes a latents folder (shown in error messages)."""
  return (f"python -m shortcut_jax.tools.encode_dataset --config={config} "
          f"--out={out or 'DIR'}")


def latents_mode(data_config) -> str:
  """`data.latents`: 'none' (pixels; also when the field is absent), 'online' or 'precomputed'."""
  return config_value(data_config, "latents", section="data") or "none"


def latents_dir_of(data_config) -> Optional[str]:
  d = config_value(data_config, "latents_dir", section="data")
  return os.path.expanduser(d) if d else None


def shard_name(split: str, index: int, num_shards: int) -> str:
  """The file name TFDS's default template gives shard `index` of `num_shards` of `split`."""
  return f"{DATASET_NAME}-{split}.tfrecord-{index:05d}-of-{num_shards:05d}"


def shard_ranges(num_examples: int, shard_size: int) -> List[Tuple[int, int]]:
  """[start, end) of each shard: contiguous runs of `shard_size` examples (the last shorter)."""
  return [(a, min(a + shard_size, num_examples)) for a in range(0, num_examples, shard_size)]


# --- metadata --------------------------------------------------------------------------------


def read_metadata(directory: str) -> Optional[Dict]:
  """The folder's encode_metadata.json, or None when there is none.

  Raises:
    CorruptLatentsError: the file exists but is not valid JSON of this format.
  """
  path = storage.join(directory, METADATA_FILE)
  if not storage.exists(path):
    return None
  try:
    meta = storage.read_json(path)
    if not isinstance(meta.get("identity"), dict) or not isinstance(meta.get("splits"), dict):
      raise ValueError("no 'identity' or 'splits'")
  except (ValueError, AttributeError) as e:
    raise CorruptLatentsError(f"{path} is not a readable latents metadata file ({e}); "
                              f"re-encode into a new folder") from e
  return meta


def identity_differences(old: Dict, new: Dict, prefix: str = "") -> List[str]:
  """'field: stored X, now Y' for every leaf where two identity dicts differ."""
  out = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key), new.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      out += identity_differences(a, b, f"{prefix}{key}.")
    elif a != b:
      out.append(f"{prefix}{key}: stored {a!r}, now {b!r}")
  return out


def is_pair_dataset(identity: Dict) -> bool:
  """Whether the folder stores super-resolution pairs (`COND_LATENT` next to the moments)."""
  return bool(identity["source"].get("low_res_factor", 0))


def latent_names(identity: Dict) -> List[str]:
  """The stored latent arrays of an example (without the flipped copies)."""
  return list(MOMENTS) + ([COND_LATENT] if is_pair_dataset(identity) else [])


# --- shards ----------------------------------------------------------------------------------


def check_shard(path: str, num_examples: int) -> Optional[str]:
  """Reads a shard in full (record CRCs) and counts its records (a remote one is downloaded).

  Returns:
    None when it is complete and intact, else what is wrong with it.
  """
  if not storage.exists(path):
    return "missing"
  try:
    count = 0
    with storage.local_copy(path) as local:
      for _ in tf.data.TFRecordDataset(local):
        count += 1
  except tf.errors.OpError as e:
    return f"unreadable ({e.message.strip().splitlines()[0][-200:]})"
  if count != num_examples:
    return f"holds {count} examples, expected {num_examples}"
  return None


def verify(directory: str) -> None:
  """Reads every shard of every complete split in full (CRCs, counts, sizes).

  Raises:
    LatentsNotFoundError / CorruptLatentsError: as `open_latents`, naming the first bad file.
  """
  meta = _read_existing(directory)
  sizes = storage.file_sizes(directory)
  for split, s in meta["splits"].items():
    if not s["complete"]:
      continue
    for f in s["files"]:
      path = storage.join(directory, f["name"])
      problem = (_size_problem(sizes.get(f["name"]), f["num_bytes"])
                 or check_shard(path, f["num_examples"]))
      if problem:
        raise CorruptLatentsError(_corrupt_message(path, problem, directory))


# --- reading ---------------------------------------------------------------------------------


def _corrupt_message(path: str, problem: str, directory: str) -> str:
  return (f"latents shard {path} is {problem}. Re-run the encode command that wrote "
          f"{directory} (`{encode_command(directory)}` with its config and flags): it keeps and "
          f"verifies the intact shards and re-encodes the others")


def _size_problem(size: Optional[int], num_bytes: int) -> Optional[str]:
  """What is wrong with a shard of `size` bytes (None: absent) that should have `num_bytes`."""
  if size is None:
    return "missing"
  if size != num_bytes:
    return f"{size} bytes long, the metadata records {num_bytes} (truncated or overwritten)"
  return None


def _read_existing(directory: str) -> Dict:
  if not storage.isdir(directory):
    raise LatentsNotFoundError(
        f"no precomputed latents at data.latents_dir={directory}: encode the dataset once "
        f"with\n  {encode_command(directory)}\n(CONFIG.py: this run's config)")
  meta = read_metadata(directory)
  if meta is None:
    raise LatentsNotFoundError(
        f"{directory} (data.latents_dir) holds no {METADATA_FILE}, so no encoded dataset: "
        f"encode it with\n  {encode_command(directory)}\n(CONFIG.py: this run's config)")
  if meta["identity"].get("format_version") != FORMAT_VERSION:
    raise IncompatibleLatentsError(f"{directory} was written by another version of the latents "
                                   f"format; re-encode it into a new folder")
  return meta


def open_latents(data_config, split: Optional[str] = None):
  """Opens `data.latents_dir` for reading after checking it (no shard is read).

  Checks: the folder holds an encoded dataset of `data.name` at `data.image_size` with
  compatible classes (`data.num_classes` equal, or 1); `split` (its name before any '[') is
  fully encoded; every shard of every complete split exists with the size in the metadata.

  Args:
    data_config: the `config.data` section (`latents='precomputed'`, `latents_dir`).
    split: a split to require, or None.

  Returns:
    (builder, metadata): a `tfds` read-only builder of the folder and encode_metadata.json.

  Raises:
    LatentsNotFoundError: no encoded dataset there, or `split` not (fully) encoded; the
      message has the encode command.
    CorruptLatentsError: a missing or wrongly sized shard or unreadable metadata (named).
    IncompatibleLatentsError: encoded from another dataset / image size / classes.
  """
  directory = latents_dir_of(data_config)
  if not directory:
    raise ValueError("data.latents_dir must be set when data.latents='precomputed' (write it "
                     f"with `{encode_command(None)}`)")
  meta = _read_existing(directory)
  source = meta["identity"]["source"]
  problems = []
  if source["name"] != data_config.name:
    problems.append(f"data.name is {data_config.name!r}, the latents encode {source['name']!r}")
  if source["image_size"] != data_config.image_size:
    problems.append(f"data.image_size is {data_config.image_size}, the latents encode "
                    f"{source['image_size']}x{source['image_size']} images")
  if data_config.num_classes not in (1, source["num_classes"]):
    problems.append(f"data.num_classes is {data_config.num_classes}, the latents were encoded "
                    f"with {source['num_classes']} (use {source['num_classes']} or 1)")
  if config_value(data_config, "folder", section="data") != source.get("folder", None):
    problems.append(f"data.folder is {data_config.get('folder', None)!r}, the latents encode "
                    f"{source.get('folder')!r}")
  factor = int(config_value(data_config, "low_res_factor", section="data") or 0)
  if factor != int(source.get("low_res_factor", 0)):
    problems.append(f"data.low_res_factor is {factor}, the latents were encoded with "
                    f"{source.get('low_res_factor', 0)} (0: no super-resolution pairs)")
  dim = int(config_value(data_config, "embedding_dim", section="data") or 0)
  stored = meta["identity"]["extra_features"].get("embedding")
  if dim and (stored is None or stored["shape"] != [dim]):
    problems.append(f"data.embedding_dim is {dim}, the latents store "
                    + ("no embeddings" if stored is None else f"embeddings of shape {stored['shape']}"))
  if problems:
    raise IncompatibleLatentsError(f"{directory} (data.latents_dir) does not match config.data: "
                                   + "; ".join(problems))
  if split is not None:
    name = split.split("[")[0]
    s = meta["splits"].get(name)
    if s is None or not s["complete"]:
      done = sorted(k for k, v in meta["splits"].items() if v["complete"])
      state = "is not encoded" if s is None else "is only partly encoded (the encode run stopped)"
      raise LatentsNotFoundError(
          f"split {name!r} of {directory} {state} (complete splits: {done}); run\n  "
          f"{encode_command(directory)} --split={name}")
  sizes = storage.file_sizes(directory)
  for s in meta["splits"].values():
    if not s["complete"]:
      continue
    for f in s["files"]:
      path = storage.join(directory, f["name"])
      problem = _size_problem(sizes.get(f["name"]), f["num_bytes"])
      if problem:
        raise CorruptLatentsError(_corrupt_message(path, problem, directory))
  if not any(s["complete"] for s in meta["splits"].values()):
    raise LatentsNotFoundError(f"{directory} holds no completely encoded split yet; finish it "
                               f"with\n  {encode_command(directory)}")
  try:
    # TFDS reads through TensorFlow's file system: a remote folder is read from a local copy.
    builder = tfds.builder_from_directory(storage.local_dir_copy(directory))
  except Exception as e:  # pylint: disable=broad-except
    raise CorruptLatentsError(f"the TFDS metadata ({', '.join(_TFDS_FILES)}) in {directory} "
                              f"cannot be read ({e}); re-run `{encode_command(directory)}`") from e
  for name, s in meta["splits"].items():
    if s["complete"] and (name not in builder.info.splits or
                          builder.info.splits[name].num_examples != s["num_examples"]):
      raise CorruptLatentsError(f"{directory}/dataset_info.json does not list split {name!r} "
                                f"with {s['num_examples']} examples as {METADATA_FILE} does; "
                                f"re-run `{encode_command(directory)}`")
  return builder, meta
