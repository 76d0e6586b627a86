"""Preemption across processes: a SIGTERM to one process of a 2-process job (2 CPU devices each,
gloo collectives) makes both save the same step and exit 0; the resumed run ends with the
weights of an uninterrupted one.

The uninterrupted run is also the 2-process run on a gs:// workdir (a real GCS API server,
tests/gcs_server.py): before it trains, both processes try a workdir another run holds and stop
with the same message, no hang; then both write their shards into the one checkpoint in the
bucket and their logs reach it, and nothing lands in a local `gs:` folder.

Cost: three 2-process launches of 24 smoke steps at most. The interrupted run sleeps
`PREEMPTED_DELAY_S` per batch (its numbers do not change), so the signal, sent after step 3,
lands mid-training however slow the machine is: the stop (measured: 2-4 steps after the signal
on a loaded machine) has 21 steps (>= 6 s of sleeping alone) to happen in, and sleeping costs
no CPU.

The processes run this file as a script (`python tests/test_preemption.py SPEC.json`): the device
count is fixed when jax is imported, and pytest has imported it with one device.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import sharding_worker

pytestmark = pytest.mark.processes  # Scheduled first (tests/conftest.py).

HERE = os.path.dirname(os.path.abspath(__file__))
# Only the final step is a regular checkpoint; the preemption save is the only other one.
CONFIG = {"max_steps": 24, "log_every": 1, "checkpoint__every_steps": 24,
          "checkpoint__max_to_keep": 5}
PREEMPTED_DELAY_S = 0.3  # Per batch, in the interrupted run only.
DEVICES = 2  # Per process.
STOP_BOUND_S = 90  # Both processes exit this soon after the SIGTERM (the notice takes ~1 s).


def _worker(spec_path):
  sys.path.insert(0, HERE)
  import sharding_worker
  spec, jax = sharding_worker.start(spec_path)  # A delay makes the signal land mid-training.
  import digits_configs
  from shortcut_jax import console
  from shortcut_jax.parallel import distributed
  from shortcut_jax.train import trainer

  console.setup(spec["workdir"], "test_preemption worker")  # The log file: local or in the bucket.

  # Times the cross-process stop check.
  calls, reached = [], distributed.StopRequest.reached

  def timed(self, step):
    t0 = time.perf_counter()
    out = reached(self, step)
    calls.append((time.perf_counter() - t0, self.mode))
    return out
  distributed.StopRequest.reached = timed
  config = digits_configs.smoke_config(spec["data_dir"], **CONFIG)
  if spec.get("held_workdir"):  # Another run holds it: every process must learn it together.
    try:
      trainer.train_and_evaluate(config, spec["held_workdir"])
      raise AssertionError(f"trained on the held workdir {spec['held_workdir']}")
    except distributed.LaunchError as e:
      print("LaunchError:", str(e).splitlines()[0], flush=True)
    calls.clear()
  t0 = time.time()
  trainer.train_and_evaluate(config, spec["workdir"])
  with open(spec["results"] + f".{jax.process_index()}", "w") as f:
    json.dump({"process": jax.process_index(), "wall_s": time.time() - t0, "checks": len(calls),
               "modes": sorted({m for _, m in calls}),
               "check_mean_us": 1e6 * float(np.mean([t for t, _ in calls])) if calls else None,
               "check_max_us": 1e6 * float(np.max([t for t, _ in calls])) if calls else None}, f)


def _free_port():
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(tmp, name, data_dir, batch_delay_s=0.0, workdir=None, held_workdir=None):
  port = _free_port()
  specs = [{"devices": DEVICES, "data_dir": data_dir, "workdir": workdir or str(tmp / name),
            "optimize": False, "cache_dir": str(tmp / "jax_cache"),
            "results": str(tmp / f"{name}.json"), "batch_delay_s": batch_delay_s,
            "held_workdir": held_workdir,
            "distributed": {"port": port, "num_processes": 2, "process_id": i}} for i in (0, 1)]
  return sharding_worker.launch(__file__, tmp, name, specs)


def _wait(procs, timeout):
  deadline = time.time() + timeout
  codes = []
  for proc, log in procs:
    try:
      codes.append(proc.wait(timeout=max(deadline - time.time(), 1)))
    except subprocess.TimeoutExpired:
      for p, _ in procs:
        p.kill()
      raise AssertionError(f"{log}: still running after {timeout:.0f} s:\n" + _tail(log))
  for code, (_, log) in zip(codes, procs):
    assert code == 0, f"{log}: exit code {code}:\n" + _tail(log)


def _tail(log):
  with open(log) as f:
    return f.read()[-5000:]


def _steps(workdir):
  from shortcut_jax import storage
  folder = storage.join(str(workdir), "checkpoints")
  return sorted(int(n) for n in storage.listdir(folder) if n.isdigit()) if storage.isdir(
      folder) else []


def _weights(workdir):
  import jax
  from shortcut_jax import experiment
  _, state, step = experiment.restore_experiment(str(workdir))
  return jax.device_get({"params": state.params, "ema": state.ema_params}), step


@pytest.mark.slow
@pytest.mark.usefixtures("no_local_gs_folder")
def test_sigterm_to_one_process_stops_both_at_the_same_step(gcs, tmp_path):
  del gcs  # Its environment points the processes at the server.
  import jax
  import digits_configs
  from shortcut_jax.parallel import distributed
  from shortcut_jax import storage
  from shortcut_jax.data import pipeline
  data_dir = os.environ.get("SHORTCUT_JAX_TEST_DATA_DIR") or str(tmp_path / "tfds")
  pipeline.dataset_info(digits_configs.smoke_config(data_dir).data)  # Built once, here.

  # Uninterrupted reference, on a gs:// workdir, after trying one that another run holds.
  straight, held_workdir = "gs://bucket/straight", "gs://bucket/held_by_another_run"
  held = distributed.WorkdirLock(held_workdir).acquire(run_id="holder")
  try:
    _wait(_launch(tmp_path, "straight", data_dir, workdir=straight, held_workdir=held_workdir),
          timeout=600)
  finally:
    held.release()
  errors = [[line for line in open(tmp_path / f"straight_{i}.log").read().splitlines()
             if f"LaunchError: workdir {held_workdir} is in use by run holder" in line]
            for i in (0, 1)]
  assert errors[0] and errors[0][-1] == errors[1][-1], errors
  assert not storage.exists(held_workdir + "/checkpoints")
  assert _steps(straight) == [CONFIG["max_steps"]]
  files = storage.walk_files(f"{straight}/checkpoints/{CONFIG['max_steps']}")
  # Both processes wrote their shards into the one checkpoint in the bucket.
  assert any("ocdbt.process_0/" in f for f in files) and any("ocdbt.process_1/" in f
                                                              for f in files), files
  assert storage.exists(f"{straight}/log.process_1.txt")  # Each process's log reached it.

  # Interrupted: SIGTERM to process 0 only, a few steps in.
  procs = _launch(tmp_path, "preempted", data_dir, batch_delay_s=PREEMPTED_DELAY_S)
  metrics = tmp_path / "preempted" / "metrics.jsonl"
  deadline = time.time() + 300
  while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
    assert time.time() < deadline and all(p.poll() is None for p, _ in procs), (
        "the run did not start:\n" + _tail(procs[0][1]))
    time.sleep(0.2)
  procs[0][0].send_signal(signal.SIGTERM)
  t_signal = time.time()
  _wait(procs, timeout=STOP_BOUND_S)
  stop_s = time.time() - t_signal
  saved = [re.findall(r"saved step (\d+) on every process", open(log).read()) for _, log in procs]
  assert saved[0] and saved[0] == saved[1], saved
  stop_step = int(saved[0][0])
  assert 3 <= stop_step < CONFIG["max_steps"]
  assert _steps(tmp_path / "preempted") == [stop_step]  # Exactly one checkpoint, one step.
  checks = [json.loads((tmp_path / f"preempted.json.{i}").read_text()) for i in (0, 1)]
  assert all(c["modes"] == ["sync_point"] and c["checks"] == stop_step for c in checks), checks

  # Resumed to the end: the weights of the uninterrupted run.
  _wait(_launch(tmp_path, "preempted", data_dir), timeout=600)
  assert _steps(tmp_path / "preempted") == [stop_step, CONFIG["max_steps"]]
  want, _ = _weights(straight)
  have, step = _weights(tmp_path / "preempted")
  assert step == CONFIG["max_steps"]
  jax.tree.map(np.testing.assert_array_equal, have, want)
  print(f"stopped at step {stop_step} {stop_s:.1f} s after the SIGTERM; stop check per step: "
        + ", ".join(f"process {c['process']} mean {c['check_mean_us']:.1f} us "
                    f"(max {c['check_max_us']:.0f} us)" for c in checks))


if __name__ == "__main__":
  _worker(sys.argv[1])
