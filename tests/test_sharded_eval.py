"""Generation, FID and `eval.py --mode=sample` sharded over every device of every process.

Two processes × 4 CPU devices (gloo) against one process × 4 devices, on the same checkpoint and
seeds: the FID, the dataset statistics and the written samples agree, and each process ran
Inception on its share of the images only. Inception has random weights at 75×75 (as in
tests/test_fid_eval.py: no downloads, little CPU). The generated images' statistics are compared
directly; the distance reported from them is a cheap diagonal stand-in (see `_worker`). The
two runs go at the same time, each with XLA's optimisations on (Inception dominates them).

The processes run this file as a script (`python tests/test_sharded_eval.py SPEC.json`): the
device count is fixed when jax is imported, and pytest has imported it with one device.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import sharding_worker
from random_inception import random_inception_variables

pytestmark = pytest.mark.processes  # Scheduled first (tests/conftest.py).

HERE = os.path.dirname(os.path.abspath(__file__))
IMAGE_SIZE = 75
NUM_IMAGES = 36  # Not a multiple of the batch: the last batch is padded.
BATCH = 16  # 2 rows per device on 8 devices, 4 on 4.
STEPS = [1, 2]
REF_SPLIT = "train[:50]"


def _worker(spec_path):
  clock = [time.perf_counter()]
  seconds = {}

  def lap(name):  # Where the time goes, in the results.
    now = time.perf_counter()
    seconds[name], clock[0] = now - clock[0], now
  with open(spec_path) as f:
    spec = json.load(f)
  sys.path.insert(0, HERE)
  import sharding_worker
  jax = sharding_worker._setup(spec)
  from shortcut_jax import evaluation
  from shortcut_jax.evaluators import fid_evaluator
  from shortcut_jax import experiment

  load, loaded = fid_evaluator.load_features, {}

  def load_once(path, **kwargs):
    """Small Inception; the fid and fid_stats modes share one (tracing and compiling it takes
    seconds; what each mode does with it is unchanged)."""
    key = (path, kwargs.get("batch_size"))
    if key not in loaded:
      loaded[key] = load(path, **dict(kwargs, image_size=IMAGE_SIZE))
    return loaded[key]
  fid_evaluator.load_features = load_once
  rows = []  # Valid feature rows this process computed and kept.
  local = fid_evaluator.InceptionFeatures.local_features

  def counted(self, images, count=None):
    out = local(self, images, count)
    rows.append(len(out))
    return out
  fid_evaluator.InceptionFeatures.local_features = counted
  process_local = fid_evaluator.InceptionFeatures.process_local_features

  def counted_process_local(self, images, count=None):  # Dataset statistics: parts of batches.
    out = process_local(self, images, count)
    rows.append(len(out))
    return out
  fid_evaluator.InceptionFeatures.process_local_features = counted_process_local
  split_part, parts = fid_evaluator.split_part, []

  def recorded_part(*args, **kwargs):  # Which part of the split this process read.
    parts.append([kwargs["process_index"], kwargs["process_count"]])
    return split_part(*args, **kwargs)
  fid_evaluator.split_part = recorded_part
  from shortcut_jax.evaluators import fid as fid_lib
  model_stats = []

  def recording(mu, sigma, mu_ref, sigma_ref, **kwargs):
    """Records the generated images' statistics (per budget); returns the Frechet distance of
    the Gaussians' diagonal parts. The full one's 2048x2048 matrix square root costs ~10 s a
    call on 2 cores (6 calls here) and is tested in test_fid.py / test_fid_eval.py; what this
    test checks is that every process gets the one-process statistics, compared below."""
    del kwargs
    model_stats.append((np.asarray(mu), np.asarray(sigma)))
    var, var_ref = np.diag(sigma), np.diag(sigma_ref)
    return float(np.sum((mu - mu_ref) ** 2) + np.sum(var) + np.sum(var_ref)
                 - 2 * np.sum(np.sqrt(np.clip(var * var_ref, 0, None))))
  fid_lib.fid_from_stats = recording

  workdir = spec["workdir"]
  lap("start_up")
  common = dict(steps=STEPS, num_samples=NUM_IMAGES, cfg_scale=1.5, seed=3, batch_size=BATCH)
  fid = evaluation.run("fid", workdir, fid_stats=spec["stats"], inception_path=spec["weights"],
                       **common)
  lap("fid")
  fid_rows = sum(rows)
  rows.clear()
  ref = evaluation.run("fid_stats", None, steps=[], num_samples=0, cfg_scale=None,
                       batch_size=BATCH, config=experiment.load_config(workdir),
                       out=spec["ref_out"], split=REF_SPLIT, inception_path=spec["weights"])
  lap("fid_stats")
  ref_rows = sum(rows)
  written = evaluation.run("sample", workdir, **common)
  lap("sample")
  np.savez(spec["results"] + f".{jax.process_index()}.npz",
           **{f"mu_{n}": m for n, (m, _) in zip(STEPS, model_stats)},
           **{f"sigma_{n}": s for n, (_, s) in zip(STEPS, model_stats)})
  with open(spec["results"] + f".{jax.process_index()}", "w") as f:
    json.dump({"process": jax.process_index(), "devices": jax.device_count(),
               "fid": fid["steps"], "fid_rows": fid_rows, "ref_rows": ref_rows, "ref_parts": parts,
               "ref_count": ref["num_images"], "seconds": seconds, "written": {str(k): v for k, v in written.items()}},
              f)


def _free_port():
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(tmp, name, workdir, stats, weights, processes):
  port = _free_port()
  specs = []
  for i in range(processes):
    spec = {"devices": 4, "workdir": workdir, "stats": stats, "weights": weights,
            "ref_out": str(tmp / f"{name}_ref.npz"), "results": str(tmp / f"{name}.json")}
    if processes > 1:
      spec["distributed"] = {"port": port, "num_processes": processes, "process_id": i}
    specs.append(spec)
  # With XLA's optimisations: Inception runs 5x slower without them (and compiles no faster).
  return sharding_worker.launch(__file__, tmp, name, specs, fast_compile=False)


def _results(tmp, name, procs, deadline):
  for proc, log in procs:
    try:
      code = proc.wait(timeout=max(deadline - time.time(), 1))
    except subprocess.TimeoutExpired:
      for p, _ in procs:
        p.kill()
      raise AssertionError(f"{log}: still running after 600 s:\n" + open(log).read()[-5000:])
    assert code == 0, f"{log}: exit code {code}:\n" + open(log).read()[-5000:]
  return [json.loads((tmp / f"{name}.json.{i}").read_text()) for i in range(len(procs))]


@pytest.mark.slow
@pytest.mark.usefixtures("fast_compile")  # The 4 training steps here.
def test_two_processes_give_the_one_process_fid_and_samples(tmp_path):
  import digits_configs
  from shortcut_jax.train import trainer
  from shortcut_jax.evaluators import fid
  from shortcut_jax.models import inception
  data_dir = os.environ.get("SHORTCUT_JAX_TEST_DATA_DIR") or str(tmp_path / "tfds")
  trained = str(tmp_path / "trained")
  trainer.train_and_evaluate(digits_configs.smoke_config(data_dir), trained)
  weights = str(tmp_path / "inception_random.npz")
  inception.save_inception_variables(weights, random_inception_variables())
  rng = np.random.default_rng(1)
  fake = rng.normal(size=(64, 2048))
  stats = str(tmp_path / "ref.npz")
  fid.save_stats(stats, fake.mean(0), np.cov(fake, rowvar=False))

  # Both runs at once (they share nothing): one's work fills the two processes' waits.
  launched = {}
  for name, processes in (("two", 2), ("one", 1)):
    workdir = str(tmp_path / name)
    shutil.copytree(trained, workdir)
    launched[name] = _launch(tmp_path, name, workdir, stats, weights, processes)
  deadline = time.time() + 600
  runs = {name: _results(tmp_path, name, procs, deadline) for name, procs in launched.items()}
  [one], two = runs["one"], runs["two"]
  print("seconds:", {name: [r["seconds"] for r in rs] for name, rs in runs.items()})
  assert one["devices"] == 4 and all(r["devices"] == 8 for r in two)

  # The same FID (diagonal stand-in, see `_worker`) on every process, equal to the one-process
  # value on the same seeds.
  for r in two:
    assert set(r["fid"]) == {"1", "2"}
    for n in r["fid"]:
      np.testing.assert_allclose(r["fid"][n], one["fid"][n], rtol=1e-4)
  # The statistics of the generated images themselves, on every process.
  with np.load(tmp_path / "one.json.0.npz") as x:
    want = dict(x)
  for i in range(2):
    with np.load(tmp_path / f"two.json.{i}.npz") as y:
      for key, value in want.items():
        np.testing.assert_allclose(y[key], value, rtol=1e-5, atol=1e-5 * np.abs(value).max(),
                                   err_msg=f"process {i}: {key}")
  # Each process ran Inception on its share only: the shares add up to every image once.
  assert one["fid_rows"] == NUM_IMAGES * len(STEPS)
  assert sum(r["fid_rows"] for r in two) == NUM_IMAGES * len(STEPS)
  assert all(0 < r["fid_rows"] < NUM_IMAGES * len(STEPS) for r in two)
  assert sum(r["ref_rows"] for r in two) == one["ref_rows"] == one["ref_count"] == 50
  # ... and each process read only its own part of the split.
  assert one["ref_parts"] == [[0, 1]]
  assert [r["ref_parts"] for r in two] == [[[0, 2]], [[1, 2]]]
  assert all(0 < r["ref_rows"] < 50 for r in two)

  # Dataset statistics (fid_stats mode): sharded the same way, the same values.
  a, b = fid.load_reference_stats(str(tmp_path / "one_ref.npz")), fid.load_reference_stats(
      str(tmp_path / "two_ref.npz"))
  np.testing.assert_allclose(b.mu, a.mu, rtol=1e-5, atol=1e-5 * np.abs(a.mu).max())
  np.testing.assert_allclose(b.sigma, a.sigma, rtol=1e-5, atol=1e-5 * np.abs(a.sigma).max())

  # --mode=sample: process 0 alone writes one file per step budget, with every image in order.
  assert set(two[0]["written"]) == {"1", "2"} and two[1]["written"] == {}
  for n in ("1", "2"):
    with np.load(one["written"][n]) as x, np.load(two[0]["written"][n]) as y:
      assert x["images"].shape == y["images"].shape == (NUM_IMAGES, 16, 16, 1)
      np.testing.assert_array_equal(x["labels"], y["labels"])
      # uint8 images: equal up to a rounding flip where the float sits on a .5 boundary.
      assert np.abs(x["images"].astype(int) - y["images"].astype(int)).max() <= 1
    assert os.path.exists(os.path.join(os.path.dirname(two[0]["written"][n]), f"grid_{n}.png"))


if __name__ == "__main__":
  _worker(sys.argv[1])
