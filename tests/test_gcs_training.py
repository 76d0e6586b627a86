"""Training on a gs:// workdir, against a real GCS API server (fake-gcs-server on loopback,
tests/gcs_server.py): a run killed with SIGKILL after its first checkpoint resumes from the
bucket and ends with the weights of an uninterrupted local run; the lock object of a remote
workdir; unusable remote workdirs fail before anything is written; nothing ever lands in a local
`gs:` folder. The 2-process run on a gs:// workdir (gloo; both processes' shards in one
checkpoint, a held workdir stops both) is tests/test_preemption.py's uninterrupted run.

The training processes run this file as a script (`python tests/test_gcs_training.py
SPEC.json`), like tests/test_preemption.py: their device count is fixed before jax is imported.
"""

import json
import os
import signal
import sys
import time

import numpy as np
import pytest

import sharding_worker

pytestmark = pytest.mark.processes  # Scheduled first (tests/conftest.py).

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = {"max_steps": 12, "log_every": 2, "checkpoint__every_steps": 4,
          "checkpoint__max_to_keep": 5}
DELAY_S = 0.4  # Per batch, in the run that is killed (its numbers do not change).


def _worker(spec_path):
  sys.path.insert(0, HERE)
  spec, jax = sharding_worker.start(spec_path)  # A delay makes the kill land mid-training.
  import digits_configs
  from shortcut_jax import console
  from shortcut_jax.train import trainer

  console.setup(spec["workdir"], "test_gcs_training worker")
  config = digits_configs.smoke_config(spec["data_dir"], **CONFIG)
  trainer.train_and_evaluate(config, spec["workdir"])
  print("worker done, process", jax.process_index())


def _launch(tmp, name, data_dir, workdir, batch_delay_s=0.0):
  """One process with one device (what this pytest process has)."""
  spec = {"devices": 1, "data_dir": data_dir, "workdir": workdir, "optimize": False,
          "cache_dir": str(tmp / "jax_cache"), "batch_delay_s": batch_delay_s}
  return sharding_worker.launch(__file__, tmp, name, [spec])


def _wait(procs, timeout=600):
  for proc, log in procs:
    try:
      code = proc.wait(timeout=timeout)
    except Exception:  # pylint: disable=broad-except
      for p, _ in procs:
        p.kill()
      raise AssertionError(f"{log} still running:\n" + open(log).read()[-4000:])
    assert code == 0, f"{log}: exit code {code}:\n" + open(log).read()[-4000:]


def _weights(workdir):
  import jax
  from shortcut_jax import experiment
  _, state, step = experiment.restore_experiment(workdir)
  return jax.device_get({"params": state.params, "ema": state.ema_params}), step


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  import digits_configs
  from shortcut_jax.data import pipeline
  path = os.environ.get("SHORTCUT_JAX_TEST_DATA_DIR") or str(tmp_path_factory.mktemp("tfds"))
  os.environ["SHORTCUT_JAX_TEST_DATA_DIR"] = path
  pipeline.dataset_info(digits_configs.smoke_config(path).data)  # Built once, here.
  return path


@pytest.mark.slow
@pytest.mark.usefixtures("no_local_gs_folder")
def test_killed_gs_run_resumes_from_the_bucket_like_an_uninterrupted_local_run(
    gcs, data_dir, tmp_path):
  import jax
  import digits_configs
  from shortcut_jax import storage
  from shortcut_jax.train import trainer
  # The uninterrupted local run, here: one device and the workers' settings (highest-precision
  # matmuls, most XLA optimisations off), so the same program as theirs.
  jax.config.update("jax_disable_most_optimizations", True)
  try:
    trainer.train_and_evaluate(digits_configs.smoke_config(data_dir, **CONFIG),
                               str(tmp_path / "local"))
  finally:
    jax.config.update("jax_disable_most_optimizations", False)

  workdir = "gs://bucket/killed"
  step_dir = os.path.join(gcs.bucket_dir(), "killed", "checkpoints", "4")
  procs = _launch(tmp_path, "killed", data_dir, workdir, batch_delay_s=DELAY_S)
  deadline = time.time() + 300
  # Orbax marks a step complete on object stores with commit_success.txt, written last; the
  # staged log is uploaded right after each checkpoint.
  log_object = os.path.join(gcs.bucket_dir(), "killed", "log.txt")
  while not (os.path.exists(os.path.join(step_dir, "commit_success.txt"))
             and os.path.exists(log_object)):
    assert time.time() < deadline and procs[0][0].poll() is None, (
        "no checkpoint in the bucket:\n" + open(procs[0][1]).read()[-4000:])
    time.sleep(0.1)
  procs[0][0].send_signal(signal.SIGKILL)
  procs[0][0].wait()
  steps = sorted(int(n) for n in storage.listdir(workdir + "/checkpoints") if n.isdigit())
  assert steps and steps[-1] < CONFIG["max_steps"], steps

  _wait(_launch(tmp_path, "resumed", data_dir, workdir))
  resumed_log = open(tmp_path / "resumed_0.log").read()
  assert f"at step {steps[-1]}" in resumed_log, resumed_log[-3000:]
  want, _ = _weights(str(tmp_path / "local"))
  have, step = _weights(workdir)
  assert step == CONFIG["max_steps"]
  jax.tree.map(np.testing.assert_array_equal, have, want)

  # Everything a local run writes is in the bucket.
  names = set(storage.listdir(workdir))
  assert {"config.json", "log.txt", "metrics.jsonl", "starts", "checkpoints", "run.lock"} <= names
  assert any(n.startswith("events.out.tfevents") for n in names), names  # TensorBoard, mirrored.
  assert storage.listdir(workdir + "/starts") == ["000.json", "001.json"]  # One per start.
  start = storage.read_json(workdir + "/starts/001.json")
  assert start["start_step"] == steps[-1] and start["versions"]["jax"] == jax.__version__
  assert start["devices"]["count"] == 1 and start["process_count"] == 1
  logged = [json.loads(line)["step"] for line in storage.read_text(workdir + "/metrics.jsonl")
            .splitlines()]
  assert logged[-1] == CONFIG["max_steps"]
  log = storage.read_text(workdir + "/log.txt")
  assert log.count("==== test_gcs_training worker started") == 2  # Appended across starts.
  assert json.loads(storage.read_text(workdir + "/run.lock"))["released"] is True


@pytest.mark.usefixtures("no_local_gs_folder")
def test_remote_workdir_lock(gcs):
  import socket
  from shortcut_jax.parallel import distributed
  from shortcut_jax import storage
  workdir = "gs://bucket/held"
  other = {"run_id": "elsewhere", "process_count": 8, "host": "other-host", "pid": 1,
           "started": "then", "heartbeat": time.time(), "released": False}
  storage.write_json(workdir + "/run.lock", other)
  with pytest.raises(distributed.LaunchError, match="in use by run elsewhere .8 process.*delete"):
    distributed.WorkdirLock(workdir).acquire()
  # A stale heartbeat, a released record, or a dead process on this host do not hold it.
  for stale in (dict(other, heartbeat=time.time() - 3600), dict(other, released=True),
                dict(other, host=socket.gethostname(), pid=2 ** 22 + 7)):
    storage.write_json(workdir + "/run.lock", stale)
    lock = distributed.WorkdirLock(workdir).acquire(run_id="mine")
    record = storage.read_json(workdir + "/run.lock")
    assert record["run_id"] == "mine" and not record["released"]
    with pytest.raises(distributed.LaunchError, match="in use by run mine"):
      distributed.WorkdirLock(workdir).acquire(run_id="third")  # Held while it lives.
    lock.release()
    assert storage.read_json(workdir + "/run.lock")["released"] is True


@pytest.mark.usefixtures("no_local_gs_folder")
def test_unusable_remote_workdirs_fail_before_anything_is_written(gcs, tmp_path):
  import digits_configs
  from shortcut_jax import storage
  from shortcut_jax import experiment
  from shortcut_jax.train import trainer
  config = digits_configs.smoke_config(str(tmp_path / "tfds_unused"))
  with pytest.raises(storage.StorageError, match="bucket gs://no-such-bucket does not exist"):
    storage.check("gs://no-such-bucket/run", write=True)
  with pytest.raises(storage.StorageError, match="unsupported storage scheme ftp://"):
    storage.check("ftp://host/run")
  saved = sys.modules.get("gcsfs")
  sys.modules["gcsfs"] = None  # As if it were not installed.
  try:
    with pytest.raises(storage.StorageError, match="need the gcsfs package .pip install gcsfs"):
      storage.check("gs://bucket/run")
  finally:
    sys.modules["gcsfs"] = saved
  # The trainer checks the workdir before building anything that compiles or writes.
  calls = []
  original = experiment.build_experiment
  try:
    experiment.build_experiment = lambda *a, **k: calls.append(1) or original(*a, **k)
    with pytest.raises(storage.StorageError, match="no-such-bucket"):
      trainer.train_and_evaluate(config, "gs://no-such-bucket/run")
  finally:
    experiment.build_experiment = original
  assert not calls
  assert not os.path.exists(os.path.join(gcs.root, "no-such-bucket"))


if __name__ == "__main__":
  _worker(sys.argv[1])
