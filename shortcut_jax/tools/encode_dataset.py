"""Encodes a config's pixel dataset once into VAE posterior moments (`data.latents='precomputed'`).

  python -m shortcut_jax.tools.encode_dataset --config=configs/imagenet_dit_b.py \
      --out=$LATENTS_DIR [--split=train,test] [--flips] [--batch_size=64] [--shard_size=4096] \
      [--dtype=float32|float16]

`--out` defaults to the config's `data.latents_dir`. The images are those the pixel pipeline
yields for `config.data` (`pipeline.make_dataset(train=False)`: stored order, no flips, at
`data.image_size`, in [-1, 1]); the VAE is the config's (`latents.vae_from_config`: `vae.path`,
`vae.dtype`, `vae.chunk_size`, `vae.random_init`). Every example gets the posterior mean and
standard deviation of its image (unscaled) and, with `--flips`, also those of its horizontally
flipped image (training then picks one of the two per example where the dataset flips), plus
the pipeline's label. Single-channel (grayscale) images are repeated to the VAE's
`in_channels` (3 for Stable Diffusion's) before encoding (`vae_input`). `--dtype=float16`
halves the disk (relative error ~5e-4 on the moments); the default float32 stores them
exactly. The folder layout is in `data.latent_dataset`.

Resumable: the split is cut into shards of `--shard_size` examples, each written under a
temporary name and renamed when complete; after a crash or `kill -9` the same command keeps the
completed shards (each read back in full and checked), deletes the partial ones and encodes
the rest. A folder holding latents encoded differently (another dataset, image size, VAE
architecture or weights, flips, dtype or shard size) is refused and left as it is. One run at a
time per folder.

Super-resolution configs (`data.low_res_factor > 0`) give latent pair datasets: every example
also stores `cond_latent`, the posterior mean of its upsampled low-resolution image (the
coupling source and context of `objective.source='cond_image'`; with `--flips` also that of
the flipped one). The pair is encoded from the evaluation crop (central), so training on
precomputed pairs has no random crops: encode a dataset whose stored images are the training
size to use every pixel.

`--out` may be remote (gs://bucket/latents): every shard is written locally and uploaded when
complete, the metadata files are uploaded whole, and a resumed run downloads the shards already
there to check them (`data.latent_dataset`). A remote `data.data_dir` of the pixel dataset is
read from a local cached copy (`data.catalog`).
"""

import hashlib
import os
import sys
import time
from typing import Dict, Optional, Sequence

from absl import flags, logging
import jax
from ml_collections import config_flags
import numpy as np

from shortcut_jax import console
from shortcut_jax import latents as latents_lib
from shortcut_jax import storage
from shortcut_jax.data import catalog
from shortcut_jax.data import latent_dataset as ld
from shortcut_jax.data import latent_writer
from shortcut_jax.data import pipeline
from shortcut_jax.data import preprocess
from shortcut_jax.core.config_value import config_value

DEFAULT_SHARD_SIZE = 4096
# Test hook: seconds to sleep after every encoded batch (makes a run slow enough to kill).
_TEST_DELAY_ENV = "SHORTCUT_JAX_ENCODE_TEST_DELAY"
# Per-example keys of the pixel pipeline that are not stored as they are: the images (their
# moments are: `cond_latent` for the super-resolution input) and padded evaluation's mask.
_NOT_STORED = ("image", "cond_image", "mask")


def params_sha256(params) -> str:
  """SHA-256 over the parameter tree (paths, dtypes, shapes and values)."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}|".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def _vae_of(config):
  vae = latents_lib.vae_from_config(config)
  if vae is None:  # A pixel-space config: its `vae` section still says which VAE to use.
    c = config.copy_and_resolve_references()
    c.unlock()
    c.data.latents = "precomputed"
    vae = latents_lib.vae_from_config(c)
  return vae


def _identity(data_config, builder, vae, *, flips, dtype, shard_size, extra_features) -> Dict:
  size = data_config.image_size
  latent_shape = vae.latent_shape((size, size, vae.config.in_channels))
  source = dict(name=data_config.name, image_size=size, num_classes=data_config.num_classes,
                folder=config_value(data_config, "folder", section="data"), builder=builder.info.full_name)
  factor = preprocess.low_res_factor_of(data_config)
  if factor:  # A latent pair dataset (absent otherwise: earlier folders stay readable).
    source["low_res_factor"] = factor
  return dict(
      format_version=ld.FORMAT_VERSION,
      source=source,
      vae=dict(config=vae.config.to_dict(), params_sha256=params_sha256(vae.params),
               compute_dtype=np.dtype(vae.dtype).name),
      flips=bool(flips), dtype=dtype, shard_size=shard_size, latent_shape=list(latent_shape),
      extra_features=extra_features)


def _batches(pixel_config, split, start, end, batch_size):
  return pipeline.make_dataset(pixel_config, split=f"{split}[{start}:{end}]",
                               global_batch_size=batch_size, seed=0, train=False,
                               process_index=0, process_count=1)


def _extra_features(pixel_config, split) -> Dict:
  """Shape and dtype of every stored per-example key of the pixel pipeline but the image."""
  first = next(_batches(pixel_config, split, 0, 1, 1))
  return {k: dict(shape=list(v.shape[1:]), dtype=np.dtype(v.dtype).name)
          for k, v in sorted(first.items()) if k not in _NOT_STORED}


def _moments(vae, batch, flips: bool) -> Dict[str, np.ndarray]:
  """The stored latents of one pixel batch: the image's posterior moments and, for a
  super-resolution batch, the posterior mean of its conditioning image (each also of the
  horizontally flipped images with `flips`)."""
  images = latents_lib.vae_input(batch["image"], vae.config.in_channels)
  out = dict(zip(ld.MOMENTS, vae.posterior(images)))
  cond = None
  if "cond_image" in batch:
    cond = latents_lib.vae_input(batch["cond_image"], vae.config.in_channels)
    out[ld.COND_LATENT] = vae.posterior(cond)[0]
  if flips:
    out.update(zip([m + ld.FLIPPED_SUFFIX for m in ld.MOMENTS], vae.posterior(images[:, :, ::-1])))
    if cond is not None:
      out[ld.COND_LATENT + ld.FLIPPED_SUFFIX] = vae.posterior(cond[:, :, ::-1])[0]
  return out


def encode_dataset(config, out: Optional[str] = None, *, splits: Optional[Sequence[str]] = None,
                   flips: bool = False, batch_size: int = 64,
                   shard_size: int = DEFAULT_SHARD_SIZE, dtype: str = "float32",
                   vae=None, progress: bool = True) -> Dict:
  """Encodes `splits` of the config's dataset into `out` (resuming what is there).

  Args:
    config: the experiment config (its `data` and `vae` sections are used).
    out: the latents folder (default `config.data.latents_dir`).
    splits: split names (default: every split of the dataset).
    flips: also store the moments of the horizontally flipped images.
    batch_size: images per VAE call.
    shard_size: examples per shard (the unit of resumption).
    dtype: storage dtype of the moments, 'float32' or 'float16'.
    vae: a `VAE` to use instead of the config's (tests).
    progress: show a tqdm bar.

  Returns:
    The written encode_metadata.json as a dict.

  Raises:
    ValueError: bad arguments.
    FileExistsError: `out` holds files that are not an encoded dataset.
    IncompatibleLatentsError: `out` holds latents encoded differently (nothing is changed).
  """
  out = os.path.expanduser(out or config_value(config.data, "latents_dir", section="data") or "")
  if not out:
    raise ValueError("no output folder: pass --out or set data.latents_dir")
  if dtype not in ld.STORAGE_DTYPES:
    raise ValueError(f"dtype must be one of {ld.STORAGE_DTYPES}, got {dtype!r}")
  if batch_size <= 0 or shard_size <= 0:
    raise ValueError(f"batch_size ({batch_size}) and shard_size ({shard_size}) must be positive")
  pixel_config = latents_lib.pixel_data_config(config.data)
  builder = catalog.get_builder(pixel_config)
  known = list(builder.info.splits.keys())
  splits = list(splits) if splits else sorted(known)
  unknown = [s for s in splits if s not in known]
  if unknown:
    raise ValueError(f"splits {unknown} not in dataset {pixel_config.name!r} (splits: {known}); "
                     f"name whole splits, without slices")
  vae = vae if vae is not None else _vae_of(config)
  identity = _identity(pixel_config, builder, vae, flips=flips, dtype=dtype,
                       shard_size=shard_size,
                       extra_features=_extra_features(pixel_config, splits[0]))

  meta = ld.read_metadata(out) if storage.isdir(out) else None
  if meta is not None:
    diffs = ld.identity_differences(meta["identity"], identity)
    if diffs:
      raise ld.IncompatibleLatentsError(
          f"{out} holds latents encoded differently; nothing was changed. Use another --out, or "
          f"delete {out} to re-encode. Differences:\n  " + "\n  ".join(diffs))
  elif storage.isdir(out):
    # Without metadata nothing there can be trusted (not even shards): only the partial files
    # of a run killed before it wrote the metadata are allowed.
    present = sorted(n for n in storage.listdir(out) if not n.startswith(ld.TMP_PREFIX))
    if present:
      raise FileExistsError(f"{out} is not empty and holds no {ld.METADATA_FILE} ({present[:5]}"
                            f"); choose a new or empty --out")
  storage.makedirs(out)
  for split in splits:
    n = builder.info.splits[split].num_examples
    old = meta["splits"].get(split) if meta else None
    if old is not None and old["num_examples"] != n:
      raise ld.IncompatibleLatentsError(
          f"{out}: split {split!r} was encoded with {old['num_examples']} examples, the dataset "
          f"now has {n}; nothing was changed. Use another --out or delete {out}")
  removed = latent_writer.remove_temporaries(out)
  if removed:
    logging.warning("removed %d partial files of an interrupted run: %s", len(removed), removed)
  if meta is None:
    meta = dict(identity=identity, splits={})
  meta.update(status="in_progress", vae_source=dict(path=config.vae.get("path", None),
                                                    random_init=bool(config.vae.random_init)),
              source_data_dir=catalog.data_dir_of(pixel_config),
              dataset_num_classes=builder.info.features["label"].num_classes)
  for split in splits:
    n = builder.info.splits[split].num_examples
    if split not in meta["splits"]:
      ranges = ld.shard_ranges(n, shard_size)
      meta["splits"][split] = dict(num_examples=n, num_shards=len(ranges),
                                   shard_lengths=[b - a for a, b in ranges], complete=False,
                                   files=[])

  # Which shards are already there and intact (read back in full).
  todo, done = {}, 0
  for split in splits:
    s = meta["splits"][split]
    todo[split] = []
    for i, (a, b) in enumerate(ld.shard_ranges(s["num_examples"], shard_size)):
      path = storage.join(out, ld.shard_name(split, i, s["num_shards"]))
      problem = ld.check_shard(path, b - a)
      if problem is None:
        done += b - a
        continue
      if problem != "missing":
        logging.warning("re-encoding %s: it is %s", path, problem)
        storage.remove(path)
      todo[split].append((i, a, b))
    if todo[split]:
      s["complete"] = False
  latent_writer.write_metadata(out, meta)
  total = sum(s["num_examples"] for s in (meta["splits"][x] for x in splits))
  logging.info("encoding into %s: %d of %d examples already encoded", out, done, total)
  delay = float(os.environ.get(_TEST_DELAY_ENV, "0") or 0)
  features = latent_writer.features_of(identity)
  store_dtype = np.dtype(dtype)

  bar = None
  if progress:
    import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm.tqdm(total=total, initial=done, unit="img", desc=f"encode {pixel_config.name}",
                    dynamic_ncols=True)
  started, encoded = time.perf_counter(), 0
  try:
    for split in splits:
      s = meta["splits"][split]
      for i, a, b in todo[split]:
        path = storage.join(out, ld.shard_name(split, i, s["num_shards"]))
        with latent_writer.ShardWriter(path, features) as writer:
          for batch in _batches(pixel_config, split, a, b, batch_size):
            arrays = {k: np.asarray(v).astype(store_dtype)
                      for k, v in _moments(vae, batch, flips).items()}
            arrays.update({k: np.asarray(batch[k]) for k in identity["extra_features"]})
            rows = len(batch["image"])
            for j in range(rows):
              writer.write({k: v[j] for k, v in arrays.items()})
            encoded += rows
            if bar is not None:
              bar.update(rows)
              bar.set_postfix_str(f"{split} shard {i + 1}/{s['num_shards']}")
            if delay:
              time.sleep(delay)
          if writer.count != b - a:
            raise RuntimeError(f"the pipeline yielded {writer.count} examples for {split}"
                               f"[{a}:{b}]")
      _complete_split(out, meta, split)
  finally:
    if bar is not None:
      bar.close()
  seconds = time.perf_counter() - started
  meta["status"] = ("complete" if all(s["complete"] for s in meta["splits"].values())
                    else "in_progress")
  meta["last_run"] = dict(encoded=encoded, seconds=round(seconds, 3),
                          images_per_second=round(encoded / seconds, 2) if seconds else None)
  latent_writer.write_metadata(out, meta)
  summary = (f"encoded {encoded} examples in {seconds:.1f} s ({encoded / max(seconds, 1e-9):.1f} "
             f"images/s) into {out}: {done} were already there; status {meta['status']}")
  logging.info(summary)
  if progress:
    print(summary)
  return meta


def _complete_split(out: str, meta: Dict, split: str) -> None:
  """Records the split's shard sizes, then writes the TFDS metadata and encode_metadata.json."""
  s = meta["splits"][split]
  s["files"] = []
  sizes = storage.file_sizes(out)
  for i, length in enumerate(s["shard_lengths"]):
    name = ld.shard_name(split, i, s["num_shards"])
    s["files"].append(dict(name=name, num_examples=length, num_bytes=sizes[name]))
  s["complete"] = True
  latent_writer.write_tfds_metadata(out, meta)
  latent_writer.write_metadata(out, meta)


def main(argv):
  del argv
  f = flags.FLAGS
  if not f["verbosity"].present:  # TFDS logs every shard it opens; keep the progress bar clean.
    logging.set_verbosity(logging.WARNING)
  try:
    encode_dataset(f.config, f.out, splits=f.split, flips=f.flips, batch_size=f.batch_size,
                   shard_size=f.shard_size, dtype=f.dtype)
  except (ld.IncompatibleLatentsError, FileExistsError, ValueError) as e:
    sys.exit(f"encode_dataset: {e}")  # What to change is in the message; no traceback.


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Experiment config whose dataset and VAE to use.")
  flags.DEFINE_string("out", None, "Latents folder (default: the config's data.latents_dir).")
  flags.DEFINE_list("split", None, "Splits to encode (default: all of the dataset's).")
  flags.DEFINE_bool("flips", False, "Also store the moments of the horizontally flipped images.")
  flags.DEFINE_integer("batch_size", 64, "Images per VAE call.")
  flags.DEFINE_integer("shard_size", DEFAULT_SHARD_SIZE, "Examples per shard (unit of resumption).")
  flags.DEFINE_enum("dtype", "float32", ld.STORAGE_DTYPES, "Storage dtype of the moments.")
  flags.mark_flags_as_required(["config"])
  console.run(main)
