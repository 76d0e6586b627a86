"""Tests of precomputed latents: `tools.encode_dataset` (writing) and the pipeline (reading).

Digits (16x16x1) encoded by the tiny random VAE of `vae.random_init` (factor 2: 8x8x4 latents;
grayscale is repeated to its 3 input channels), into pytest temporary folders. The stored
moments are checked against `VAE.posterior` of the pixel pipeline's images, recomputed here.
"""

import dataclasses
import filecmp
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from shortcut_jax import latents as latents_lib
from shortcut_jax.data import catalog
from shortcut_jax.data import latent_dataset as ld
from shortcut_jax.data import pipeline
from shortcut_jax.models import vae as vae_lib
from shortcut_jax.tools import encode_dataset as enc

from digits_configs import smoke_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARD = 256
# Compiling dominates these tiny encodes (the VAE's init most of all); the subprocess of the
# kill test gets the same setting, so its numbers match the in-process runs'.
pytestmark = pytest.mark.usefixtures("fast_compile")


def _config(data_dir, latents_dir, **changes):
  return smoke_config(data_dir, data__latents="precomputed", vae__random_init=True,
                      data__latents_dir=str(latents_dir), **changes)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def encoded(fast_compile, data_dir, tmp_path_factory):
  """Both digits splits encoded with flips, float32, 256 examples a shard."""
  out = tmp_path_factory.mktemp("latents") / "digits"
  c = _config(data_dir, out)
  meta = enc.encode_dataset(c, flips=True, batch_size=64, shard_size=SHARD, progress=False)
  return c, str(out), meta


def _stored(directory, split):
  """The whole split in stored order, read with TFDS alone (not through the pipeline)."""
  builder = tfds.builder_from_directory(directory)
  return tfds.as_numpy(builder.as_dataset(
      split=split, batch_size=-1, shuffle_files=False,
      read_config=tfds.ReadConfig(interleave_cycle_length=1)))


def _pixels(c, split, **kw):
  return pipeline.make_dataset(latents_lib.pixel_data_config(c.data), split=split, seed=c.seed,
                               process_index=0, process_count=1, **kw)


def _posterior(c, images):
  vae = latents_lib.vae_from_config(c)
  mean, std = vae.posterior(np.repeat(images, 3, axis=-1))
  return np.asarray(mean), np.asarray(std)


def _snapshot(directory):
  return {n: (os.stat(os.path.join(directory, n)).st_ino,
              os.stat(os.path.join(directory, n)).st_mtime_ns,
              open(os.path.join(directory, n), "rb").read())
          for n in sorted(os.listdir(directory))}


# --- writing ---------------------------------------------------------------------------------


def test_stored_moments_are_the_posterior_of_the_pipeline_images(encoded):
  c, out, meta = encoded
  vae = latents_lib.vae_from_config(c)
  for split, n in (("train", 1618), ("test", 179)):
    stored = _stored(out, split)
    images = np.concatenate([b["image"] for b in _pixels(c, split, global_batch_size=100,
                                                         train=False)])
    labels = np.concatenate([b["label"] for b in _pixels(c, split, global_batch_size=100,
                                                         train=False)])
    assert len(images) == n and stored["latent_mean"].shape == (n, 8, 8, 4)
    assert stored["latent_mean"].dtype == np.float32
    mean, std = _posterior(c, images)
    np.testing.assert_allclose(stored["latent_mean"], mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stored["latent_std"], std, rtol=1e-5, atol=1e-6)
    assert np.array_equal(stored["label"], labels)
    s = meta["splits"][split]
    assert s["complete"] and s["num_examples"] == n and s["num_shards"] == -(-n // SHARD)
  assert meta["status"] == "complete"
  on_disk = json.load(open(os.path.join(out, ld.METADATA_FILE)))
  assert on_disk["identity"]["vae"]["config"] == json.loads(json.dumps(vae.config.to_dict()))
  assert on_disk["identity"]["source"]["name"] == "digits"
  assert on_disk["identity"]["source"]["image_size"] == 16
  assert on_disk["identity"]["flips"] is True
  assert not [n for n in os.listdir(out) if n.startswith(ld.TMP_PREFIX)]


def test_flips_store_the_moments_of_the_flipped_image(encoded):
  c, out, _ = encoded
  stored = _stored(out, "test")
  images = next(_pixels(c, "test", global_batch_size=179, train=False))["image"]
  mean, std = _posterior(c, images[:, :, ::-1])
  np.testing.assert_allclose(stored["latent_mean_flipped"], mean, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(stored["latent_std_flipped"], std, rtol=1e-5, atol=1e-6)
  assert not np.allclose(stored["latent_mean_flipped"], stored["latent_mean"], atol=1e-3)


def test_float16_storage_reads_back_as_float32(data_dir, tmp_path, encoded):
  c, full, _ = encoded
  out = tmp_path / "f16"
  c16 = _config(data_dir, out)
  enc.encode_dataset(c16, splits=["test"], dtype="float16", shard_size=100, progress=False)
  assert _stored(str(out), "test")["latent_mean"].dtype == np.float16
  batch = next(pipeline.make_dataset(c16.data, split="test", global_batch_size=179, seed=0,
                                     train=False, process_index=0, process_count=1))
  assert batch["latent_mean"].dtype == np.float32 and batch["latent_std"].dtype == np.float32
  reference = _stored(full, "test")
  np.testing.assert_allclose(batch["latent_mean"], reference["latent_mean"], rtol=2e-3, atol=1e-3)
  np.testing.assert_allclose(batch["latent_std"], reference["latent_std"], rtol=2e-3, atol=1e-5)
  total = lambda d: sum(os.path.getsize(os.path.join(d, n)) for n in os.listdir(d)
                        if n.startswith("latents-test"))
  assert total(str(out)) < 0.3 * total(full)  # Half the bytes, without the flips.


def _tool_command(data_dir, out, *extra):
  return [sys.executable, "-m", "shortcut_jax.tools.encode_dataset",
          "--config=configs/digits_shortcut.py:smoke", "--config.data.latents=precomputed",
          "--config.vae.random_init=True", f"--config.data.data_dir={data_dir}",
          f"--out={out}", *extra]


def test_kill_9_then_rerun_equals_an_uninterrupted_run(data_dir, tmp_path, encoded):
  del encoded  # Only for the digits build in data_dir.
  args = ["--split=test", "--shard_size=20", "--batch_size=10"]
  out = tmp_path / "killed"
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             JAX_DISABLE_MOST_OPTIMIZATIONS="1",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
             **{enc._TEST_DELAY_ENV: "0.5"})
  proc = subprocess.Popen(_tool_command(data_dir, out, *args), cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  shards = lambda: sorted(n for n in os.listdir(out) if n.startswith("latents-")) \
      if out.exists() else []
  deadline = time.time() + 240
  while len(shards()) < 2 and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  proc.stderr.close()
  kept = shards()
  assert 2 <= len(kept) < 9, kept  # 179 examples: 9 shards of 20.
  assert json.load(open(out / ld.METADATA_FILE))["status"] == "in_progress"
  before = {n: os.stat(out / n).st_ino for n in kept}
  with pytest.raises(ld.LatentsNotFoundError, match="partly encoded"):
    pipeline.make_dataset(_config(data_dir, out).data, split="test", global_batch_size=8,
                          seed=0, train=False, process_index=0, process_count=1)

  # The rerun keeps (and verifies) the complete shards, drops the partial one, does the rest.
  c = _config(data_dir, out)
  enc.encode_dataset(c, splits=["test"], shard_size=20, batch_size=10, progress=False)
  assert {n: os.stat(out / n).st_ino for n in kept} == before
  assert not [n for n in os.listdir(out) if n.startswith(ld.TMP_PREFIX)]

  fresh = tmp_path / "uninterrupted"
  enc.encode_dataset(_config(data_dir, fresh), splits=["test"], shard_size=20, batch_size=10,
                     progress=False)
  names = sorted(n for n in os.listdir(fresh) if n.startswith("latents-"))
  assert len(names) == 9 and shards() == names
  a, b = _stored(str(out), "test"), _stored(str(fresh), "test")
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7, err_msg=k)
  # The shards the rerun wrote are byte-identical to the uninterrupted run's.
  assert all(filecmp.cmp(out / n, fresh / n, shallow=False) for n in names if n not in kept)
  meta_a = json.load(open(out / ld.METADATA_FILE))
  meta_b = json.load(open(fresh / ld.METADATA_FILE))
  assert meta_a["identity"] == meta_b["identity"] and meta_a["status"] == "complete"
  assert meta_a["splits"]["test"]["shard_lengths"] == meta_b["splits"]["test"]["shard_lengths"]


def test_a_folder_encoded_differently_is_refused(data_dir, tmp_path, encoded):
  c, full, _ = encoded
  out = tmp_path / "copy"
  shutil.copytree(full, out)
  before = _snapshot(str(out))
  c2 = _config(data_dir, out)
  vae = latents_lib.vae_from_config(c)
  # Other weights, or another VAE config (built without compiling anything).
  other_weights = vae_lib.VAE(vae.config, jax.tree.map(lambda p: p + 1e-3, vae.params))
  other_config = vae_lib.VAE(dataclasses.replace(vae.config, scaling_factor=0.5), vae.params)
  kw = dict(flips=True, shard_size=SHARD, progress=False)
  with pytest.raises(ld.IncompatibleLatentsError, match="params_sha256"):
    enc.encode_dataset(c2, vae=other_weights, **kw)
  with pytest.raises(ld.IncompatibleLatentsError, match="vae.config.scaling_factor"):
    enc.encode_dataset(c2, vae=other_config, **kw)
  with pytest.raises(ld.IncompatibleLatentsError, match="image_size"):
    enc.encode_dataset(_config(data_dir, out, data__image_size=8), **kw)
  with pytest.raises(ld.IncompatibleLatentsError, match="flips"):
    enc.encode_dataset(c2, flips=False, shard_size=SHARD, progress=False)
  with pytest.raises(ld.IncompatibleLatentsError, match="low_res_factor"):  # Pairs: not these.
    enc.encode_dataset(_config(data_dir, out, data__low_res_factor=2), **kw)
  assert _snapshot(str(out)) == before  # Nothing overwritten.

  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="not empty"):
    enc.encode_dataset(_config(data_dir, foreign), progress=False)
  assert os.listdir(foreign) == ["notes.txt"]


# --- reading ---------------------------------------------------------------------------------


def test_pipeline_batches_are_the_stored_moments(encoded):
  c, out, _ = encoded
  stored = _stored(out, "test")
  kw = dict(split="test", global_batch_size=64, seed=0, train=False)
  batches = list(pipeline.make_dataset(c.data, process_index=0, process_count=1, **kw))
  assert [len(b["label"]) for b in batches] == [64, 64, 51]
  for b in batches:
    assert set(b) == {"latent_mean", "latent_std", "label"}
    assert b["latent_mean"].dtype == np.float32 and b["latent_mean"].shape[1:] == (8, 8, 4)
    assert b["label"].dtype == np.int32
  for k in ("latent_mean", "latent_std", "label"):
    assert np.array_equal(np.concatenate([b[k] for b in batches]), stored[k]), k

  # Process slices and padding as for pixels.
  halves = [list(pipeline.make_dataset(c.data, process_index=i, process_count=2,
                                       pad_remainder=True, **kw)) for i in range(2)]
  assert [len(h) for h in halves] == [3, 3]  # 90 examples each (89 + 1 padding), 32 a batch.
  got = np.concatenate([b["latent_mean"][b["mask"]] for h in halves for b in h])
  assert np.array_equal(got, stored["latent_mean"])
  padded = halves[1][-1]
  assert not padded["mask"].all() and not padded["latent_std"][~padded["mask"]].any()

  info = pipeline.dataset_info(c.data)
  assert info["latents"] == "precomputed" and info["prepared"]
  assert (info["image_size"], info["channels"], info["pixel_image_size"]) == (8, 4, 16)
  assert info["num_examples"] == {"train": 1618, "test": 179} and info["num_classes"] == 10
  assert info["random_flip"] is False  # Digits do not flip in training.


def test_parallel_reads_keep_the_stored_order(encoded):
  """7 shards of the train split: files read 3 or 8 at once still give the stored order, in an
  evaluation pass and in a resumed training stream (the shuffle sees the same records)."""
  c, out, meta = encoded
  assert meta["splits"]["train"]["num_shards"] == 7
  stored = _stored(out, "train")
  streams = {}
  for reads in (1, 3, 8):
    data = c.data.copy_and_resolve_references()
    data.parallel_reads = reads
    config = pipeline.stored_order_read_config(
        tfds.builder_from_directory(out), "train", data)
    assert config.interleave_cycle_length == reads
    kw = dict(split="train", global_batch_size=100, seed=0, process_index=0, process_count=1)
    batches = list(pipeline.make_dataset(data, train=False, **kw))
    got = np.concatenate([b["latent_mean"] for b in batches])
    assert np.array_equal(got, stored["latent_mean"]), reads
    it = pipeline.make_dataset(data, train=True, start_step=5, **kw)
    streams[reads] = [next(it)["latent_mean"] for _ in range(3)]
  for reads in (3, 8):
    for a, b in zip(streams[1], streams[reads]):
      assert np.array_equal(a, b), reads


def _train(c, data_config, start_step, n, batch=64):
  it = pipeline.make_dataset(data_config, split="train", global_batch_size=batch, seed=c.seed,
                             start_step=start_step, process_index=0, process_count=1)
  return [next(it) for _ in range(n)]


def _assert_same_batches(expected, got):
  assert len(expected) == len(got)
  for a, b in zip(expected, got):
    for k in a:
      assert np.array_equal(a[k], b[k]), k


def test_training_batches_resume_exactly_and_flip_like_pixels(encoded, monkeypatch):
  c, _, _ = encoded
  # 64-example batches: step 25 crosses the first epoch boundary (1618 examples).
  whole = _train(c, c.data, 0, 27)
  _assert_same_batches(whole[24:], _train(c, c.data, 24, 3))
  # Same examples in the same order as the pixel pipeline's training batches.
  pixels = _train(c, latents_lib.pixel_data_config(c.data), 24, 1)[0]
  mean, _ = _posterior(c, pixels["image"])
  np.testing.assert_allclose(whole[24]["latent_mean"], mean, rtol=1e-5, atol=1e-5)
  assert np.array_equal(whole[24]["label"], pixels["label"])

  monkeypatch.setitem(catalog.SPECS, "digits",
                      dataclasses.replace(catalog.SPECS["digits"], random_flip=True))
  assert pipeline.dataset_info(c.data)["random_flip"] is True
  flipped = _train(c, c.data, 0, 27)
  _assert_same_batches(flipped[25:], _train(c, c.data, 25, 2))
  # Each example takes the flipped moments exactly when the pixel pipeline flips its image.
  pixels = _train(c, latents_lib.pixel_data_config(c.data), 25, 1)[0]
  mean, std = _posterior(c, pixels["image"])
  np.testing.assert_allclose(flipped[25]["latent_mean"], mean, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(flipped[25]["latent_std"], std, rtol=1e-5, atol=1e-6)
  changed = [not np.array_equal(x, y) for x, y in zip(flipped[25]["latent_mean"],
                                                       whole[25]["latent_mean"])]
  assert 10 < sum(changed) < 54  # About half of the 64 examples are flipped.


# --- damaged or missing latents --------------------------------------------------------------


def _open(c):
  return pipeline.make_dataset(c.data, split="train", global_batch_size=8, seed=0,
                               process_index=0, process_count=1)


def test_missing_latents_name_the_encode_command(data_dir, tmp_path):
  c = _config(data_dir, tmp_path / "nowhere")
  with pytest.raises(ld.LatentsNotFoundError, match="shortcut_jax.tools.encode_dataset"):
    _open(c)
  with pytest.raises(ld.LatentsNotFoundError, match="shortcut_jax.tools.encode_dataset"):
    pipeline.dataset_info(c.data)
  (tmp_path / "empty").mkdir()
  with pytest.raises(ld.LatentsNotFoundError, match=ld.METADATA_FILE):
    _open(_config(data_dir, tmp_path / "empty"))


def test_corrupt_or_missing_shards_are_named(data_dir, tmp_path, encoded):
  c, full, _ = encoded
  out = tmp_path / "damaged"
  shutil.copytree(full, out)
  c2 = _config(data_dir, out)
  name = ld.shard_name("train", 2, 7)
  original = (out / name).read_bytes()

  # Truncated: found when the dataset is opened, before any batch; nothing is rewritten.
  (out / name).write_bytes(original[:-100])
  before = _snapshot(str(out))
  with pytest.raises(ld.CorruptLatentsError, match=name):
    _open(c2)
  with pytest.raises(ld.CorruptLatentsError, match=name):
    pipeline.dataset_info(c2.data)
  assert _snapshot(str(out)) == before

  # Missing.
  (out / name).unlink()
  with pytest.raises(ld.CorruptLatentsError, match=f"{name} is missing"):
    _open(c2)

  # Same size, one bit flipped: the sizes match, the full check (CRCs) names it ...
  damaged = bytearray(original)
  damaged[len(damaged) // 2] ^= 1
  (out / name).write_bytes(bytes(damaged))
  with pytest.raises(ld.CorruptLatentsError, match=name):
    ld.verify(str(out))
  # ... and rerunning the encode command repairs that shard alone.
  others = {n: os.stat(out / n).st_ino for n in os.listdir(out)
            if n.startswith("latents-") and n != name}
  enc.encode_dataset(c2, flips=True, batch_size=64, shard_size=SHARD, progress=False)
  assert (out / name).read_bytes() == original
  assert {n: os.stat(out / n).st_ino for n in others} == others
  ld.verify(str(out))


# --- latent pairs (super-resolution) and embeddings ------------------------------------------


@pytest.fixture(scope="module")
def encoded_pairs(fast_compile, data_dir, tmp_path_factory):
  """The digits as 2x super-resolution pairs, with flips."""
  out = tmp_path_factory.mktemp("pairs") / "digits_x2"
  c = _config(data_dir, out, data__low_res_factor=2, objective__source="cond_image")
  enc.encode_dataset(c, flips=True, batch_size=256, shard_size=1024, progress=False)
  return c, str(out)


def test_pair_datasets_store_the_conditioning_images_posterior_mean(encoded_pairs):
  c, out = encoded_pairs
  stored = _stored(out, "test")
  pixels = next(_pixels(c, "test", global_batch_size=179, train=False))
  assert stored[latents_lib.COND_LATENT].shape == (179, 8, 8, 4)
  np.testing.assert_allclose(stored[latents_lib.COND_LATENT],
                             _posterior(c, pixels["cond_image"])[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(stored[latents_lib.COND_LATENT + ld.FLIPPED_SUFFIX],
                             _posterior(c, pixels["cond_image"][:, :, ::-1])[0], rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(stored["latent_mean"], _posterior(c, pixels["image"])[0],
                             rtol=1e-5, atol=1e-5)
  # The condition is the blurred image, not the image: the two latents differ.
  assert not np.allclose(stored[latents_lib.COND_LATENT], stored["latent_mean"], atol=1e-2)
  # A config without (or with another) low-resolution factor is refused, nothing read.
  for factor in (0, 4):
    with pytest.raises(ld.IncompatibleLatentsError, match="low_res_factor"):
      pipeline.make_dataset(_config(c.data.data_dir, out, data__low_res_factor=factor).data,
                            split="test", global_batch_size=8, seed=0)


def test_pair_batches_flip_together_and_give_the_online_condition(encoded_pairs, monkeypatch):
  from shortcut_jax import experiment
  c, out = encoded_pairs
  stored = _stored(out, "test")
  monkeypatch.setitem(catalog.SPECS, "digits",
                      dataclasses.replace(catalog.SPECS["digits"], random_flip=True))
  batch = next(pipeline.make_dataset(c.data, split="test", global_batch_size=179, seed=3,
                                     process_index=0, process_count=1))
  assert set(batch) == {"latent_mean", "latent_std", latents_lib.COND_LATENT, "label"}
  # Match each training row to its stored example by its moments: the condition is flipped
  # exactly when the image is.
  flips = []
  for mean, cond in zip(batch["latent_mean"], batch[latents_lib.COND_LATENT]):
    plain = np.flatnonzero(np.all(stored["latent_mean"] == mean, axis=(1, 2, 3)))
    flipped = np.flatnonzero(np.all(stored["latent_mean_flipped"] == mean, axis=(1, 2, 3)))
    i, suffix = (plain[0], "") if len(plain) else (flipped[0], ld.FLIPPED_SUFFIX)
    assert np.array_equal(cond, stored[latents_lib.COND_LATENT + suffix][i])
    flips.append(bool(suffix))
  assert 30 < sum(flips) < 150

  # The experiment's encoder gives the model the scaled condition latent, as online encoding
  # of the same pixels does (its posterior mean); the image is a posterior sample.
  exp = experiment.build_experiment(c)
  assert exp.batch_spec == {"image": (8, 8, 4), "cond_image": (8, 8, 4)}
  prepared = exp.prepare_batch(dict(batch), jax.random.PRNGKey(0))
  vae = exp.encoder.vae
  np.testing.assert_allclose(prepared["cond_image"],
                             vae.scale_latents(batch[latents_lib.COND_LATENT]), rtol=1e-6)
  assert prepared["image"].shape == (179, 8, 8, 4) and latents_lib.COND_LATENT not in prepared
  pixels = next(_pixels(c, "test", global_batch_size=179, train=False))
  online = latents_lib.encode_cond(c, {"cond_image": pixels["cond_image"]})["cond_image"]
  unflipped = [i for i, f in enumerate(flips) if not f]
  rows = [int(np.flatnonzero(np.all(stored["latent_mean"] == batch["latent_mean"][i],
                                    axis=(1, 2, 3)))[0]) for i in unflipped]
  np.testing.assert_allclose(np.asarray(prepared["cond_image"])[unflipped],
                             np.asarray(online)[rows], rtol=1e-4, atol=1e-5)


def test_precomputed_latents_carry_embeddings(tmp_path):
  from test_text_conditioning import DIM, _captioned_folder  # pylint: disable=g-import-not-at-top
  emb_path = _captioned_folder(str(tmp_path / "imgs"))
  changes = dict(data__name="image_folder", data__image_size=8, data__num_classes=1,
                 data__folder=str(tmp_path / "imgs"), data__embeddings=emb_path,
                 data__embedding_dim=DIM)
  c = _config(str(tmp_path / "tfds"), tmp_path / "latents", **changes)
  meta = enc.encode_dataset(c, progress=False)
  assert meta["identity"]["extra_features"]["embedding"] == dict(shape=[DIM], dtype="float32")
  batch = next(pipeline.make_dataset(c.data, split="train", global_batch_size=12, seed=0,
                                     train=False, process_index=0, process_count=1))
  pixels = next(_pixels(c, "train", global_batch_size=12, train=False))
  np.testing.assert_array_equal(batch["embedding"], pixels["embedding"])
  # Each row's embedding is its own image's ([i, i, ...] for grey level 12 i).
  level = np.round((pixels["image"][:, 0, 0, 0] + 1) * 127.5 / 12)
  np.testing.assert_allclose(batch["embedding"][:, 0], level)
  with pytest.raises(ld.IncompatibleLatentsError, match="embedding_dim"):
    pipeline.make_dataset(_config(str(tmp_path / "tfds"), tmp_path / "latents",
                                  **dict(changes, data__embedding_dim=DIM + 1)).data,
                          split="train", global_batch_size=4, seed=0)


def test_coupling_run_trains_on_precomputed_pairs(encoded_pairs, tmp_path):
  from shortcut_jax.train import trainer  # pylint: disable=g-import-not-at-top
  c, _ = encoded_pairs
  c = c.copy_and_resolve_references()
  c.unlock()
  c.update(max_steps=3, log_every=1)
  c.checkpoint.every_steps = 3
  metrics = trainer.train_and_evaluate(c, str(tmp_path / "run"))
  assert np.isfinite(metrics["train/loss"]) and metrics["train/loss"] > 0
  assert os.listdir(tmp_path / "run" / "checkpoints")
