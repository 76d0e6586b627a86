"""Preemption across processes: a SIGTERM to one process of a 2-process job (2 CPU devices each,
gloo collectives) makes both save the same step and exit 0; the resumed run ends with the
weights of an uninterrupted one.

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
  from shortcut_jax import distributed
  from shortcut_jax import trainer

  # Times the cross-process stop check.
  calls, reached = [], distributed.StopRequest.reached

  def timed(self, step):
    t0 = time.perf_counter()
    out = reached(self, step)
    calls.append((time.perf_counter() - t0, self.mode))
    return out
  distributed.StopRequest.reached = timed
  t0 = time.time()
  trainer.train_and_evaluate(digits_configs.smoke_config(spec["data_dir"], **CONFIG),
                             spec["workdir"])
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


def _launch(tmp, name, data_dir, batch_delay_s=0.0):
  port = _free_port()
  specs = [{"devices": DEVICES, "data_dir": data_dir, "workdir": str(tmp / name), "optimize": False,
            "cache_dir": str(tmp / "jax_cache"), "results": str(tmp / f"{name}.json"),
            "batch_delay_s": batch_delay_s,
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
  folder = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(folder) if n.isdigit()) if os.path.isdir(folder) else []


def _weights(workdir):
  import jax
  from shortcut_jax import trainer
  _, state, step = trainer.restore_experiment(str(workdir))
  return jax.device_get({"params": state.params, "ema": state.ema_params}), step


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
  import jax
  import digits_configs
  from shortcut_jax.data import pipeline
  data_dir = os.environ.get("SHORTCUT_JAX_TEST_DATA_DIR") or str(tmp_path / "tfds")
  pipeline.dataset_info(digits_configs.smoke_config(data_dir).data)  # Built once, here.

  # Uninterrupted reference.
  _wait(_launch(tmp_path, "straight", data_dir), timeout=600)
  assert _steps(tmp_path / "straight") == [CONFIG["max_steps"]]

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
  want, _ = _weights(tmp_path / "straight")
  have, step = _weights(tmp_path / "preempted")
  assert step == CONFIG["max_steps"]
  jax.tree.map(np.testing.assert_array_equal, have, want)
  print(f"stopped at step {stop_step} {stop_s:.1f} s after the SIGTERM; stop check per step: "
        + ", ".join(f"process {c['process']} mean {c['check_mean_us']:.1f} us "
                    f"(max {c['check_max_us']:.0f} us)" for c in checks))


if __name__ == "__main__":
  _worker(sys.argv[1])
