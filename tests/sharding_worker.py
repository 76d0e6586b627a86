"""Runs the real trainer on faked CPU devices, in its own process, for tests/test_sharding.py.

The device count must be fixed before jax is imported, and the pytest process has already
imported jax with one device, so the multi-device runs happen here:

  python tests/sharding_worker.py SPEC.json

SPEC: {"devices": 8, "data_dir": ..., "results": "out.json", "optimize": true, "cache_dir": ...,
       "distributed": {"port": 12345, "num_processes": 2, "process_id": 0},   # optional
       "jobs": [{"workdir": ..., "config": {"sharding": "fsdp", "mesh__fsdp": 8, ...},
                 "combine_processes": 2,            # optional, see below
                 "dump": "params.npz"}]}            # optional
Each job runs `trainer.train_and_evaluate` on a `configs/digits_shortcut.py:smoke` config changed
by `config` (keys with `__` for nesting), then restores the final checkpoint with
`experiment.restore_experiment` onto this process's devices and reports the shardings it got; with
`dump`, process 0 writes the restored params and EMA params to an .npz.
`combine_processes: k` makes a single process read the concatenation of the per-process slices
of k processes (the global batches a k-process run assembles), for comparisons.
"""

import json
import os
import sys


def launch(script, tmp, name, specs, fast_compile=True):
  """Starts `python script <spec.json>` once per spec (a dict), each logging to
  `tmp/<name>_<i>.log`, by default with most XLA optimisations off (compiling dominates these
  tiny runs and every process compiles the same way; `fast_compile=False` keeps them, for runs
  whose compiled code runs long, e.g. Inception). Returns [(Popen, log path)]."""
  import subprocess
  procs = []
  for i, spec in enumerate(specs):
    path = tmp / f"{name}_{i}_spec.json"
    path.write_text(json.dumps(spec))
    log = open(tmp / f"{name}_{i}.log", "w")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "true" if fast_compile else "false"
    env["XLA_FLAGS"] = cpu_flags()
    procs.append((subprocess.Popen([sys.executable, os.path.abspath(script), str(path)],
                                   stdout=log, stderr=subprocess.STDOUT, env=env), log.name))
  return procs


def cpu_flags():
  """The test run's XLA_FLAGS less any device count (a worker sets its own): its CPU threading
  and emitter choices (scripts/test.sh)."""
  return " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                  if not f.startswith("--xla_force_host_platform_device_count"))


def _setup(spec):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={spec['devices']}")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import jax
  jax.config.update("jax_default_matmul_precision", "highest")
  if not spec.get("optimize", True):
    # Compiling dominates these few-step runs of a tiny model.
    jax.config.update("jax_disable_most_optimizations", True)
  if spec.get("cache_dir"):
    # Jobs with the same program (a resumed run) compile once.
    jax.config.update("jax_compilation_cache_dir", spec["cache_dir"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  dist = spec.get("distributed")
  if dist:
    # Through the library's start-up code, described by the environment as a launcher would.
    os.environ.update(SHORTCUT_JAX_COORDINATOR=f"127.0.0.1:{dist['port']}",
                      SHORTCUT_JAX_NUM_PROCESSES=str(dist["num_processes"]),
                      SHORTCUT_JAX_PROCESS_ID=str(dist["process_id"]),
                      SHORTCUT_JAX_CPU_COLLECTIVES="gloo")
    from shortcut_jax.parallel import distributed
    assert distributed.initialize()
  return jax


def start(spec_path):
  """A test worker's start: (its spec, jax set up as the spec says; `batch_delay_s` slows
  the input down, see `slow_batches`)."""
  with open(spec_path) as f:
    spec = json.load(f)
  jax = _setup(spec)
  if spec.get("batch_delay_s"):
    slow_batches(spec["batch_delay_s"])
  return spec, jax


def slow_batches(delay_s):
  """Patches pipeline.make_dataset to sleep `delay_s` per batch: slows a run down (not its
  numbers) so that a signal or a kill lands mid-training however fast the machine is."""
  import time
  from shortcut_jax.data import pipeline
  original = pipeline.make_dataset

  def slow(*args, **kwargs):
    for batch in original(*args, **kwargs):
      time.sleep(delay_s)
      yield batch
  pipeline.make_dataset = slow


def _combine(k):
  """Patches pipeline.make_dataset to yield the k process slices of each global batch."""
  import numpy as np
  from shortcut_jax.data import pipeline
  original = pipeline.make_dataset

  def make(*args, **kwargs):
    kwargs.pop("process_index", None)
    kwargs.pop("process_count", None)
    its = [original(*args, process_index=i, process_count=k, **kwargs) for i in range(k)]
    for parts in zip(*its):
      yield {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
  pipeline.make_dataset = make
  return lambda: setattr(pipeline, "make_dataset", original)


def run_job(jax, job, data_dir):
  import time
  import numpy as np
  t0 = time.perf_counter()
  from shortcut_jax import experiment
  from shortcut_jax.train import trainer
  import digits_configs  # tests/ is sys.path[0] when this file runs as a script
  c = digits_configs.smoke_config(data_dir, **job.get("config", {}))
  restore = _combine(job["combine_processes"]) if job.get("combine_processes") else None
  try:
    trainer.train_and_evaluate(c, job["workdir"])
  finally:
    if restore:
      restore()
  exp, state, step = experiment.restore_experiment(job["workdir"])
  specs = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(state.params):
    specs["/".join(str(p.key) for p in path)] = str(leaf.sharding.spec)
  mu = state.opt_state[0].mu["DiTBlock_0"]["MlpBlock_0"]["Dense_0"]["kernel"]
  out = {"step": step, "mesh": dict(state.params[
      "DiTBlock_0"]["Dense_0"]["kernel"].sharding.mesh.shape), "param_specs": specs,
         "mu_spec": str(mu.sharding.spec), "ema_spec": str(state.ema_params["DiTBlock_0"][
             "MlpBlock_0"]["Dense_0"]["kernel"].sharding.spec)}
  if job.get("sample"):
    from shortcut_jax.evaluators import generate
    images, _ = generate.generate(exp, state.ema_params, num_images=4, num_steps=2, cfg_scale=1.5)
    out["sample_finite"] = bool(np.all(np.isfinite(images)))
  if job.get("dump"):
    from jax.experimental import multihost_utils
    host = multihost_utils.process_allgather({"params": state.params, "ema": state.ema_params},
                                             tiled=True) if jax.process_count() > 1 else \
        jax.device_get({"params": state.params, "ema": state.ema_params})
    if jax.process_index() == 0:
      flat = {f"{k}/" + "/".join(str(p.key) for p in path): np.asarray(v)
              for k in host for path, v in jax.tree_util.tree_leaves_with_path(host[k])}
      np.savez(job["dump"], **flat)
  out["wall_s"] = time.perf_counter() - t0  # For finding where the tests' time goes.
  return out


def main():
  with open(sys.argv[1]) as f:
    spec = json.load(f)
  jax = _setup(spec)
  results = [run_job(jax, job, spec["data_dir"]) for job in spec["jobs"]]
  if jax.process_index() == 0:
    with open(spec["results"], "w") as f:
      json.dump({"device_count": jax.device_count(), "process_count": jax.process_count(),
                 "jobs": results}, f)


if __name__ == "__main__":
  main()
