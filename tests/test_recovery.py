"""Checkpoint recovery: only integrity failures count as damage, the choice of step is
collective, and checksums are written off the training loop.

Single process, a small state saved with `CheckpointManager` directly: the checksum lists are
written by a background thread (a slow checksum never delays `save`); a missing data file, a
missing commit marker or damage under the old single `checksums.json` is damage (skipped and set
aside); an injected OSError, a step without checksum lists that cannot be read, and a state of
other shapes stop with an error and rename nothing; on a gs:// checkpoint folder (a real GCS API
server) damage is found and set aside too.

Two processes (2 CPU devices each, gloo), one launch of this file as a script running three
scenarios in turn: (c) a config whose shapes do not match the checkpoint stops both processes
with `CheckpointMismatchError` before anything is touched; (b) an OSError injected into process
1's checksum reader stops both with the same error naming the step and process 1, nothing
renamed, no hang; (a) process 1's data of the newest step damaged: both processes resume from
the previous step (process 0 never reads that file) and end exactly where an undamaged resume
from that step ends.
"""

import hashlib
import json
import os
import shutil
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shortcut_jax import storage
from shortcut_jax.checkpoints import integrity
from shortcut_jax.checkpoints.manager import (CheckpointManager, CheckpointMismatchError,
                                              CheckpointReadError)

pytestmark = pytest.mark.processes  # Scheduled first (tests/conftest.py).

HERE = os.path.dirname(os.path.abspath(__file__))


def _state(seed=0, width=64):
  keys = jax.random.split(jax.random.PRNGKey(seed), 3)
  return {"w": jax.random.normal(keys[0], (width, 256)), "v": jax.random.normal(keys[1], (256,)),
          "u": jax.random.normal(keys[2], (32, 32)), "step": jnp.int32(seed)}


def _abstract(state):
  return jax.eval_shape(lambda: state)


def _saved(directory, steps=(1, 2), async_save=True):
  """A checkpoint folder with `steps` saved (state seed = step); returns the states."""
  ckpt = CheckpointManager(directory, async_save=async_save, max_to_keep=5)
  states = {s: _state(s) for s in steps}
  for s in steps:
    assert ckpt.save(s, states[s], {"data_position": s}, force=True)
  ckpt.close()
  return states


def _data_file(step_dir):
  """The largest data file of a local step folder."""
  folder = os.path.join(step_dir, "state", "ocdbt.process_0", "d")
  return max((os.path.join(folder, n) for n in os.listdir(folder)), key=os.path.getsize)


def _flip(path):
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([byte[0] ^ 0xFF]))


def _tree_digest(folder):
  out = {}
  for root, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, folder)] = hashlib.sha1(f.read()).hexdigest()
  return out


def _assert_same(a, b):
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


def test_checksums_are_written_in_the_background(tmp_path, monkeypatch):
  crc = integrity.crc32

  def slow(path):
    time.sleep(0.2)
    return crc(path)
  monkeypatch.setattr(integrity, "crc32", slow)
  ckpt = CheckpointManager(str(tmp_path), async_save=False)
  state = _state(1)
  t0 = time.perf_counter()
  ckpt.save(1, state, {"data_position": 1}, force=True)  # Synchronous Orbax save: committed.
  blocked = time.perf_counter() - t0
  step_dir = ckpt.step_dir(1)
  listing = os.path.join(step_dir, "checksums.process_0.json")
  assert not os.path.exists(listing)  # Not yet: >= 10 files x 200 ms are being read back.
  ckpt.wait()
  listed = json.load(open(listing))
  ckpt.close()
  files = sorted(storage.walk_files(step_dir))
  assert sorted(listed["crc32"]) == [f for f in files if not f.startswith("checksums.")]
  assert "commit_success.txt" in listed["crc32"] and listed["process_count"] == 1
  assert blocked < 0.2 * len(listed["crc32"])
  for rel, (size, value) in listed["crc32"].items():
    assert crc(os.path.join(step_dir, rel)) == (size, value)


def _damage_missing_file(step_dir):
  os.remove(_data_file(step_dir))


def _damage_missing_marker(step_dir):
  os.remove(os.path.join(step_dir, "commit_success.txt"))


def _damage_under_old_list(step_dir):
  """A step written by the previous version (one list by process 0), then damaged."""
  os.rename(os.path.join(step_dir, "checksums.process_0.json"),
            os.path.join(step_dir, "checksums.json"))
  _flip(_data_file(step_dir))


@pytest.mark.parametrize("damage", [_damage_missing_file, _damage_missing_marker,
                                    _damage_under_old_list])
def test_integrity_failures_are_damage_and_set_aside(tmp_path, damage, caplog):
  states = _saved(str(tmp_path))
  step_dir = os.path.join(str(tmp_path), "checkpoints", "2")
  damage(step_dir)
  damaged_files = _tree_digest(step_dir)
  ckpt = CheckpointManager(str(tmp_path))
  with caplog.at_level("WARNING"):
    state, meta = ckpt.restore_latest_intact(_abstract(states[1]))
  assert meta["step"] == 1
  _assert_same(state, states[1])
  assert any("checkpoint step 2 is damaged" in r.getMessage() for r in caplog.records)
  assert ckpt.all_steps() == [1]
  ckpt.close()
  assert _tree_digest(step_dir + ".damaged") == damaged_files


def test_injected_io_error_is_not_damage(tmp_path, monkeypatch):
  states = _saved(str(tmp_path))
  before = _tree_digest(str(tmp_path))

  def fail(path):
    raise OSError(5, "injected I/O error", path)
  monkeypatch.setattr(integrity, "crc32", fail)
  ckpt = CheckpointManager(str(tmp_path))
  with pytest.raises(CheckpointReadError) as info:
    ckpt.restore_latest_intact(_abstract(states[2]))
  message = str(info.value)
  assert "step 2" in message and "process 0" in message and "injected I/O error" in message
  assert "Nothing was renamed or deleted" in message
  assert _tree_digest(str(tmp_path)) == before


def test_unverifiable_step_that_cannot_be_read_stops(tmp_path):
  states = _saved(str(tmp_path))
  step_dir = os.path.join(str(tmp_path), "checkpoints", "2")
  os.remove(os.path.join(step_dir, "checksums.process_0.json"))  # As saved by an old version.
  path = _data_file(step_dir)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  before = _tree_digest(str(tmp_path))
  ckpt = CheckpointManager(str(tmp_path))
  with pytest.raises(CheckpointReadError) as info:
    ckpt.restore_latest_intact(_abstract(states[2]))
  message = str(info.value)
  assert "step 2" in message and "no checksum list" in message
  assert f"rename {step_dir} to {step_dir}.damaged to resume from step 1" in message
  assert _tree_digest(str(tmp_path)) == before


def test_shape_mismatch_is_an_error_before_anything_is_touched(tmp_path):
  _saved(str(tmp_path))
  _flip(_data_file(os.path.join(str(tmp_path), "checkpoints", "2")))  # Even with damage.
  before = _tree_digest(str(tmp_path))
  ckpt = CheckpointManager(str(tmp_path))
  with pytest.raises(CheckpointMismatchError, match=r"step 1 .*w: checkpoint \(64, 256\) vs "
                                                    r"config \(96, 256\)"):
    ckpt.restore_latest_intact(_abstract(_state(0, width=96)))
  assert _tree_digest(str(tmp_path)) == before


def test_damage_on_gcs_is_found_and_set_aside(gcs, no_local_gs_folder):
  workdir = "gs://bucket/recovery"
  states = _saved(workdir)
  step_dir = f"{workdir}/checkpoints/2"
  assert storage.exists(f"{step_dir}/checksums.process_0.json")
  _flip(_data_file(os.path.join(gcs.bucket_dir(), "recovery", "checkpoints", "2")))
  ckpt = CheckpointManager(workdir)
  state, meta = ckpt.restore_latest_intact(_abstract(states[2]))
  assert meta["step"] == 1 and ckpt.all_steps() == [1]
  _assert_same(state, states[1])
  ckpt.close()
  assert storage.exists(f"{step_dir}.damaged/checksums.process_0.json")
  assert not storage.exists(f"{step_dir}/commit_success.txt")


# ---------------------------------------------------------------------------------------------
# Two processes.

CONFIG = {"max_steps": 4, "log_every": 1, "checkpoint__every_steps": 2,
          "checkpoint__max_to_keep": 5}


def _worker(spec_path):
  with open(spec_path) as f:
    spec = json.load(f)
  sys.path.insert(0, HERE)
  import sharding_worker  # pylint: disable=redefined-outer-name
  jax_ = sharding_worker._setup(spec)
  from jax.experimental import multihost_utils
  import digits_configs
  from shortcut_jax.train import trainer
  from shortcut_jax.checkpoints import integrity
  me = jax_.process_index()
  root = spec["root"]
  results = {}

  def config(**changes):
    return digits_configs.smoke_config(spec["data_dir"], **dict(CONFIG, **changes))

  def copy(name, prepare=None):
    target = os.path.join(root, name)
    if me == 0:
      shutil.copytree(os.path.join(root, "base"), target)
      if prepare:
        prepare(os.path.join(target, "checkpoints"))
    multihost_utils.sync_global_devices(f"copied {name}")
    return target

  def attempt(name, fn):
    t0 = time.time()
    try:
      fn()
      results[name] = {"error": None}
    except Exception as e:  # pylint: disable=broad-except
      results[name] = {"type": type(e).__name__, "message": str(e)}
    results[name]["wall_s"] = time.time() - t0
    multihost_utils.sync_global_devices(f"done {name}")

  t0 = time.time()
  trainer.train_and_evaluate(config(), os.path.join(root, "base"))  # Checkpoints 2 and 4.
  results["base_s"] = time.time() - t0
  # (c) Other shapes.
  mismatch = copy("mismatch")
  attempt("mismatch", lambda: trainer.train_and_evaluate(
      config(max_steps=6, model__hidden_size=64), mismatch))
  # (b) An I/O error in process 1's checksum reader only.
  fault = copy("fault")
  original = integrity.crc32
  if me == 1:
    def fail(path):
      raise OSError(5, "injected read fault", path)
    integrity.crc32 = fail
  attempt("fault", lambda: trainer.train_and_evaluate(config(max_steps=6), fault))
  integrity.crc32 = original

  # (a) Process 1's data of step 4 damaged, against an undamaged resume from step 2.
  def damage(folder):
    shards = os.path.join(folder, "4", "state", "ocdbt.process_1")
    files = [os.path.join(d, n) for d, _, names in os.walk(shards) for n in names]
    victim = max(files, key=os.path.getsize)
    _flip(victim)
    results["victim"] = os.path.relpath(victim, folder)
  damaged = copy("damaged", damage)
  reference = copy("reference", lambda folder: shutil.rmtree(os.path.join(folder, "4")))
  attempt("damaged", lambda: trainer.train_and_evaluate(config(max_steps=6), damaged))
  attempt("reference", lambda: trainer.train_and_evaluate(config(max_steps=6), reference))
  with open(os.path.join(root, f"results.{me}.json"), "w") as f:
    json.dump(results, f)


def _weights(workdir):
  from shortcut_jax import experiment
  _, state, step = experiment.restore_experiment(str(workdir))
  return jax.device_get({"params": state.params, "ema": state.ema_params,
                         "opt": state.opt_state}), step


@pytest.mark.slow
def test_two_processes_agree_on_damage_errors_and_mismatches(tmp_path):
  import digits_configs
  import sharding_worker
  from shortcut_jax.data import pipeline
  from test_preemption import _free_port, _tail
  data_dir = os.environ.get("SHORTCUT_JAX_TEST_DATA_DIR") or str(tmp_path / "tfds")
  pipeline.dataset_info(digits_configs.smoke_config(data_dir).data)  # Built once, here.
  port = _free_port()
  specs = [{"devices": 2, "data_dir": data_dir, "root": str(tmp_path), "optimize": False,
            "cache_dir": str(tmp_path / "jax_cache"),
            "distributed": {"port": port, "num_processes": 2, "process_id": i}} for i in (0, 1)]
  procs = sharding_worker.launch(__file__, tmp_path, "recovery", specs)
  deadline = time.time() + 600
  for proc, log in procs:
    try:
      code = proc.wait(timeout=max(deadline - time.time(), 1))
    except Exception:  # pylint: disable=broad-except
      for p, _ in procs:
        p.kill()
      raise AssertionError(f"{log}: still running (a hang?):\n" + _tail(log))
    assert code == 0, f"{log}: exit code {code}:\n" + _tail(log)
  results = [json.loads((tmp_path / f"results.{i}.json").read_text()) for i in (0, 1)]
  logs = [open(log).read() for _, log in procs]
  base = _tree_digest(tmp_path / "base" / "checkpoints")

  # (c) Both processes: the mismatch, named; the checkpoints untouched.
  for r in results:
    assert r["mismatch"]["type"] == "CheckpointMismatchError", r["mismatch"]
    assert "step 4" in r["mismatch"]["message"]
  assert _tree_digest(tmp_path / "mismatch" / "checkpoints") == base

  # (b) Both processes stop with process 1's error; nothing renamed; no hang.
  messages = [r["fault"].get("message", "") for r in results]
  assert all(r["fault"].get("type") == "CheckpointReadError" for r in results), results
  assert messages[0] == messages[1]
  assert "step 4" in messages[0] and "process 1" in messages[0]
  assert "injected read fault" in messages[0] and "Nothing was renamed" in messages[0]
  assert _tree_digest(tmp_path / "fault" / "checkpoints") == base

  # (a) Both processes skip step 4 (damaged in process 1's files only), set it aside once,
  # and end where an undamaged resume from step 2 ends.
  assert results[0]["damaged"]["error"] is None and results[1]["damaged"]["error"] is None
  assert results[0]["victim"].startswith("4/state/ocdbt.process_1/")
  for text in logs:
    assert "checkpoint step 4 is damaged" in text and "ocdbt.process_1" in text
  assert sorted(os.listdir(tmp_path / "damaged" / "checkpoints")) == ["2", "4", "4.damaged", "6"]
  have, step = _weights(tmp_path / "damaged")
  want, want_step = _weights(tmp_path / "reference")
  assert step == want_step == 6
  _assert_same(have, want)
  print("2-process recovery worker times:", {k: round(v["wall_s"], 1) if isinstance(v, dict)
                                             else v for k, v in results[0].items()
                                             if k != "victim"})


if __name__ == "__main__":
  _worker(sys.argv[1])
