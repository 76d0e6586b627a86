"""Evaluation on remote storage, against a real GCS API server (fake-gcs-server on loopback,
tests/gcs_server.py), and FID reference statistics read in per-process parts.

  * `eval.py --mode=sample` on a gs:// workdir (a subprocess, as a user runs it) and
    `--mode=fid_stats` / `--mode=fid` (through `evaluation.run`, what eval.py calls, with a small
    random Inception as in tests/test_fid_eval.py) read the workdir, the reference statistics
    and the Inception weights from the bucket and write their outputs there; nothing lands in a
    local `gs:` folder. The workdir is a smoke run trained locally, then copied into the bucket
    file by file (so these tests do not depend on training into a bucket).
  * The evaluators' file helpers (images, .npz statistics, LPIPS weights, a super-resolution
    folder) round-trip through gs:// (no network compiled).
  * `fid_evaluator.split_part`: the per-process parts of a split cover it exactly once, in
    order, and the merged per-part statistics are the one-pass numpy statistics of the whole
    split (every part read here by one process, with explicit process_index/process_count).
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import digits_configs
from random_inception import random_inception_variables
from shortcut_jax import storage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = "gs://bucket/eval_run"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return os.environ.get("SHORTCUT_JAX_TEST_DATA_DIR") or str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def gs_workdir(gcs, data_dir, tmp_path_factory):
  """A smoke-trained digits workdir, trained locally and copied file by file into the bucket."""
  from shortcut_jax.train import trainer
  local = str(tmp_path_factory.mktemp("storage_eval") / "trained")
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)  # Compiling is the whole cost.
  try:
    trainer.train_and_evaluate(digits_configs.smoke_config(data_dir), local)
  finally:
    jax.config.update("jax_disable_most_optimizations", previous)
  files = storage.walk_files(local)
  assert "config.json" in files and any(f.startswith("checkpoints/") for f in files), files
  for rel in files:
    storage.copy(os.path.join(local, rel), storage.join(RUN, rel))
  assert set(storage.walk_files(RUN)) == set(files)
  return RUN


def _eval_py(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="true")
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, "eval.py", *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
  console = out.stdout + out.stderr
  assert out.returncode == 0, console[-6000:]
  return console


@pytest.mark.slow
@pytest.mark.usefixtures("no_local_gs_folder")
def test_eval_py_sample_reads_and_writes_a_gs_workdir(gcs, gs_workdir):
  console = _eval_py(f"--workdir={gs_workdir}", "--mode=sample", "--steps=1", "--num_samples=4",
                     "--batch_size=4")
  assert "wrote 4 samples with 1 steps" in console, console[-3000:]
  samples = storage.join(gs_workdir, "samples", "samples_1.npz")
  with storage.open(samples, "rb") as f, np.load(f) as data:
    assert data["images"].shape == (4, 16, 16, 1) and data["images"].dtype == np.uint8
    assert data["labels"].shape == (4,)
  assert storage.isfile(storage.join(gs_workdir, "samples", "grid_1.png"))
  # Objects in the bucket (the server's own files), not a local folder named gs:.
  assert os.path.isfile(os.path.join(gcs.bucket_dir(), "eval_run", "samples", "samples_1.npz"))


@pytest.mark.slow
@pytest.mark.usefixtures("no_local_gs_folder", "fast_compile")
def test_fid_stats_and_fid_on_gs_paths(gcs, gs_workdir, monkeypatch):
  from shortcut_jax import evaluation
  from shortcut_jax.evaluators import fid
  from shortcut_jax.evaluators import fid_evaluator
  from shortcut_jax.models import inception
  load = fid_evaluator.load_features
  monkeypatch.setattr(fid_evaluator, "load_features",  # 75x75 Inception (test_fid_eval.py).
                      lambda *args, **kwargs: load(*args, **dict(kwargs, image_size=75)))
  monkeypatch.setattr(fid, "fid_from_stats",  # The distance of the first 64 features: cheap.
                      lambda m1, s1, m2, s2, real=fid.fid_from_stats: real(
                          m1[:64], s1[:64, :64], m2[:64], s2[:64, :64]))
  weights = "gs://bucket/models/inception_random.npz"
  local_weights = os.path.join(os.path.dirname(gcs.root), "inception_random.npz")
  inception.save_inception_variables(local_weights, random_inception_variables())
  storage.copy(local_weights, weights)
  stats = "gs://bucket/stats/digits_train40.npz"

  from shortcut_jax import experiment
  config = experiment.load_config(gs_workdir)
  ref = evaluation.run("fid_stats", None, steps=[], num_samples=0, cfg_scale=None,
                       batch_size=16, config=config, out=stats, split="train[:40]",
                       inception_path=weights)
  assert ref["num_images"] == 40 and ref["inception"] == weights
  saved = fid.load_reference_stats(stats)
  assert saved.mu.shape == (2048,) and saved.sigma.shape == (2048, 2048)

  out = evaluation.run("fid", gs_workdir, steps=[1], num_samples=8, cfg_scale=1.5,
                       batch_size=8, fid_stats=stats, inception_path=weights)
  written = storage.read_json(storage.join(gs_workdir, "fid.json"))
  assert written == json.loads(json.dumps(out))
  assert set(written["steps"]) == {"1"} and np.isfinite(written["steps"]["1"])
  assert written["reference_stats"] == stats and written["inception_weights"] == weights
  assert os.path.isfile(os.path.join(gcs.bucket_dir(), "eval_run", "fid.json"))


@pytest.mark.usefixtures("no_local_gs_folder")
def test_file_helpers_round_trip_through_gs(gcs, monkeypatch):
  from shortcut_jax.evaluators import fid
  from shortcut_jax.evaluators import fid_evaluator
  from shortcut_jax.evaluators import image_files
  from shortcut_jax.evaluators import lpips
  from shortcut_jax.evaluators import super_resolution
  rng = np.random.default_rng(0)
  root = "gs://bucket/helpers"

  # Images: PNG written and read back exactly (grey and RGB).
  for channels in (1, 3):
    image = rng.integers(0, 256, (5, 7, channels), dtype=np.uint8)
    path = storage.join(root, f"image{channels}.png")
    image_files.save_png(path, image)
    back = super_resolution.read_image(path, channels)
    np.testing.assert_array_equal(image_files.to_uint8(back), image)

  # Reference statistics: saved, found, read back.
  mu, sigma = rng.normal(size=3), np.eye(3) * 2.0
  stats = storage.join(root, "stats.npz")
  fid.save_stats(stats, mu, sigma, num_images=10)
  assert fid_evaluator.resolve_stats_path(stats) == stats
  ref = fid.load_reference_stats(stats)
  np.testing.assert_array_equal(ref.mu, mu)
  np.testing.assert_array_equal(ref.sigma, sigma)
  with pytest.raises(FileNotFoundError, match="do not exist"):
    fid_evaluator.resolve_stats_path(storage.join(root, "missing.npz"))

  # LPIPS weights (random, non-negative linear layers).
  flat = {k: np.abs(rng.normal(size=s)).astype(np.float32)
          for k, s in lpips.expected_shapes().items()}
  weights = storage.join(root, "lpips.npz")
  lpips.save_lpips_variables(weights, lpips.check_variables(flat))
  assert lpips.resolve_weights_path(weights) == weights
  loaded = lpips.flatten_variables(lpips.load_lpips_variables(weights))
  assert set(loaded) == set(flat)
  for key, value in flat.items():
    np.testing.assert_array_equal(loaded[key], value)

  # A super-resolution folder on gs:// (the sampler replaced by the bicubic input itself).
  inputs, outputs = storage.join(root, "hr"), storage.join(root, "sr")
  for name in ("a.png", "b.png"):
    image_files.save_png(storage.join(inputs, name), rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
  storage.write_bytes(storage.join(inputs, "notes.txt"), b"not an image")

  class Exp:
    class config:  # pylint: disable=invalid-name
      class data:  # pylint: disable=invalid-name
        low_res_factor = 2

    class model:  # pylint: disable=invalid-name
      class conditioning:  # pylint: disable=invalid-name
        keys = ("cond_image",)
    image_shape = (8, 8, 3)

  monkeypatch.setattr(super_resolution, "super_resolve_image",
                      lambda exp, params, cond, **kwargs: cond)
  result = super_resolution.super_resolve_folder(Exp, None, inputs, outputs, num_steps=1)
  assert result["written"] == [storage.join(outputs, "a.png"), storage.join(outputs, "b.png")]
  assert storage.listdir(outputs) == ["a.png", "b.png"]
  assert super_resolution.read_image(storage.join(outputs, "a.png"), 3).shape == (8, 8, 3)
  again = super_resolution.super_resolve_folder(Exp, None, inputs, outputs, num_steps=1)
  assert again["written"] == [] and len(again["existing"]) == 2
  assert os.path.isfile(os.path.join(gcs.bucket_dir(), "helpers", "sr", "b.png"))


def test_split_parts_cover_the_split_once_and_merge_to_one_pass_stats(data_dir):
  from shortcut_jax.data import pipeline
  from shortcut_jax.evaluators import fid
  from shortcut_jax.evaluators import fid_evaluator
  data = digits_configs.smoke_config(data_dir).data
  split, processes, batch = "train[:103]", 3, 12  # Parts of 35, 34 and 34 examples.
  whole = np.concatenate([b["image"] for b in pipeline.make_dataset(
      data, split=split, global_batch_size=50, seed=0, train=False, process_index=0,
      process_count=1)])
  assert len(whole) == 103

  def features(images):  # Any fixed function of the images.
    x = np.asarray(images, np.float64).reshape(len(images), -1)
    return np.tanh(x[:, :24] * 1.5 + x[:, 24:48] * x[:, 48:72])

  def read_parts(num_images=None):
    parts = []
    for p in range(processes):
      batches = list(fid_evaluator.split_part(data, split, batch_size=batch, process_index=p,
                                              process_count=processes, num_images=num_images))
      assert all(images.shape == (batch // processes, *whole.shape[1:]) for images, _ in batches)
      # Padding rows are zero images.
      assert all(not np.any(images[n:]) for images, n in batches)
      parts.append(batches)
    # Every process reads the same number of batches (one collective call each).
    assert len({len(b) for b in parts}) == 1
    return parts

  parts = read_parts()
  assert [sum(n for _, n in b) for b in parts] == [35, 34, 34]
  # In process order, the parts are the split: every example once, in stored order.
  rows = np.concatenate([images[:n] for b in parts for images, n in b])
  np.testing.assert_array_equal(rows, whole)

  # Per-part statistics merged (what `combine_processes` does across processes) = one pass.
  merged = fid.RunningStats()
  for b in parts:
    part = fid.RunningStats()
    for images, n in b:
      part.update(features(images[:n]))
    merged.merge(part)
  want = features(whole)
  mu, sigma = merged.result()
  assert merged.count == 103
  np.testing.assert_allclose(mu, want.mean(0), rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(want, rowvar=False), rtol=1e-9, atol=1e-12)

  # The first 50 examples only: part 0 keeps 35, part 1 its first 15, part 2 none.
  parts = read_parts(num_images=50)
  assert [sum(n for _, n in b) for b in parts] == [35, 15, 0]
  np.testing.assert_array_equal(
      np.concatenate([images[:n] for b in parts for images, n in b]), whole[:50])

  # `dataset_stats` (one process here, so one part) agrees with numpy too.
  mu, sigma, count = fid_evaluator.dataset_stats(data, features, split=split, batch_size=32,
                                                 progress=False)
  assert count == 103
  np.testing.assert_allclose(mu, want.mean(0), rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(want, rowvar=False), rtol=1e-9, atol=1e-12)
