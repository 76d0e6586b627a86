"""The training loop: `train_and_evaluate(config, workdir)`.

Creates the train state (or resumes the latest checkpoint in the workdir), runs the jitted train
step on batches from the input pipeline, logs metrics (TensorBoard, console, metrics.jsonl), runs
the periodic evaluators and saves Orbax checkpoints. Stops cleanly on SIGTERM (saving first) and
stops on a NaN/Inf metric without saving over the last good checkpoint.
"""

import json
import math
import os
import time
from typing import Dict

import jax
import ml_collections
from absl import logging

from shortcut_jax import console
from shortcut_jax import distributed
from shortcut_jax import experiment as experiment_lib
from shortcut_jax import initialisation
from shortcut_jax import metric_log
from shortcut_jax import sharding as sharding_lib
from shortcut_jax import storage
from shortcut_jax import train_step as train_step_lib
from shortcut_jax.checkpoints.manager import CheckpointManager
from shortcut_jax.data import pipeline


# A remote workdir's logs, metrics and TensorBoard events reach it at least this often (and at
# every checkpoint).
SYNC_EVERY_S = 60.0


class NonFiniteMetricError(FloatingPointError):
  """A logged metric became NaN or Inf; the run stops and the last good checkpoint stays."""


def check_finite(metrics: Dict[str, float], step: int) -> None:
  bad = sorted(k for k, v in metrics.items() if not math.isfinite(float(v)))
  if bad:
    raise NonFiniteMetricError(
        f"metric {bad[0]} is {metrics[bad[0]]} at step {step}"
        + (f" (also non-finite: {', '.join(bad[1:])})" if len(bad) > 1 else "")
        + "; stopping without saving — the last good checkpoint is kept")


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes the resolved config as workdir/config.json (what a resume without --config reads)."""
  storage.write_text(storage.join(workdir, "config.json"),
                     config.to_json_best_effort(indent=2, sort_keys=True))


def record_start(config: ml_collections.ConfigDict, workdir: str, mesh, start_step: int) -> str:
  """Keeps this (re)start's provenance as workdir/starts/<n>.json, never overwritten: the
  resolved config, the start step, the command line, package versions, XLA flags, devices,
  mesh and process count (also in the log). Returns the file's path."""
  import importlib.metadata as metadata  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  def version(name):
    try:
      return metadata.version(name)
    except metadata.PackageNotFoundError:
      return None
  record = {
      "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "start_step": int(start_step),
      "command": " ".join(sys.argv),
      "versions": {name: version(name) for name in (
          "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow-datasets",
          "shortcut_jax")},
      "python": sys.version.split()[0], "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "devices": {"platform": jax.default_backend(), "kind": jax.devices()[0].device_kind,
                  "count": jax.device_count(), "local_count": jax.local_device_count()},
      "process_count": jax.process_count(), "mesh": {k: int(v) for k, v in mesh.shape.items()},
      "sharding": config.sharding,
      "config": json.loads(config.to_json_best_effort()),
  }
  folder = storage.join(workdir, "starts")
  taken = storage.listdir(folder) if storage.exists(folder) else []
  index = 1 + max([int(n.split(".")[0]) for n in taken if n.split(".")[0].isdigit()] or [-1])
  path = storage.join(folder, f"{index:03d}.json")
  storage.write_json(path, record, indent=1, sort_keys=True)
  console.detail("start %d at step %d: jax %s, jaxlib %s, flax %s, orbax %s; %d x %s, %d "
               "process(es), mesh %s; provenance in %s", index, start_step,
               record["versions"]["jax"], record["versions"]["jaxlib"],
               record["versions"]["flax"], record["versions"]["orbax-checkpoint"],
               jax.device_count(), record["devices"]["kind"], jax.process_count(),
               record["mesh"], path)
  return path


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, float]:
  """Trains (resuming from `workdir` if it holds a checkpoint) and evaluates periodically.

  Returns:
    The last logged training metrics.
  """
  # An unusable gs:// workdir (no gcsfs, no bucket, no credentials): one error, nothing written.
  storage.check(workdir, write=jax.process_index() == 0)
  exp = experiment_lib.build_experiment(config)
  pipeline.require_data(config.data)  # Missing training data: an error before compiling.
  storage.makedirs(workdir)
  # One job per workdir: a second job (e.g. processes that did not join one cluster) stops here.
  lock = distributed.WorkdirLock(workdir).acquire()
  try:
    return _train_and_evaluate(config, workdir, exp, lock)
  finally:
    lock.release()


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        exp: experiment_lib.Experiment,
                        lock: distributed.WorkdirLock) -> Dict[str, float]:
  """`train_and_evaluate` once the workdir is this job's."""
  from shortcut_jax.evaluators import registry as evaluators_lib  # Imports plotting code.
  is_main = jax.process_index() == 0
  mesh = experiment_lib.make_mesh(config)
  _, state_shardings = experiment_lib.sharded_abstract_state(exp, mesh)
  logging.info("mesh %s, sharding %r, %d processes; sharded parameters:\n%s", dict(mesh.shape),
               config.sharding, jax.process_count(), sharding_lib.describe(
                   jax.tree.map(lambda s: s.spec, state_shardings.params)) or "(none)")

  c = config.checkpoint
  ckpt = CheckpointManager(workdir, every_steps=c.every_steps, max_to_keep=c.max_to_keep,
                           async_save=c.async_save)
  try:
    state, start_step = initialisation.restore_or_init(exp, ckpt, mesh)
  except BaseException:
    ckpt.close()
    raise
  if start_step >= config.max_steps:
    logging.info("step %d >= max_steps %d: nothing to train", start_step, config.max_steps)
    ckpt.close()
    return {}

  if is_main:  # Only now: a start that fails above leaves the workdir as it was.
    save_config(config, workdir)
    record_start(config, workdir, mesh, start_step)
  # Append-only files (TensorBoard events, metrics.jsonl, the profile) are written locally and
  # uploaded as they grow when the workdir is remote (storage.Mirror): one storage client for
  # everything, and TensorFlow's own GCS client is never used.
  mirror = storage.staging(workdir)
  writer = metric_log.MetricLog(config, workdir, mirror, is_main)
  train_iter = pipeline.make_dataset(config.data, split="train",
                                     global_batch_size=config.batch_size,
                                     seed=config.seed, train=True, start_step=start_step,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count())
  batch_sharding = sharding_lib.batch_sharding(mesh)
  encoder = exp.encoder  # Latent space: loads the VAE now, a clear error before compiling.
  step_fn = train_step_lib.make_train_step(
      exp.model, exp.objective, exp.tx, exp.lr_schedule, config.objective, config.optim.ema_rate,
      in_shardings=(state_shardings, batch_sharding),
      out_shardings=(state_shardings, sharding_lib.replicated(mesh)), encoder=encoder,
      encoder_params=None if encoder is None else jax.device_put(
          encoder.vae.params, sharding_lib.replicated(mesh)))
  evaluators = evaluators_lib.build_evaluators(exp, workdir)

  stop = distributed.StopRequest()
  # Profiling steps N..M (config.profile_steps) into workdir/profile, on process 0.
  profile = tuple(config.get("profile_steps", ()) or ())
  profile_dir, profiling = mirror.local_path("profile"), False
  last_metrics, pending = {}, []
  t_last, step_last = time.time(), start_step
  t_sync = time.time()
  step = start_step
  try:
    stop.__enter__()
    while step < config.max_steps:
      if profile and is_main and not profiling and profile[0] <= step + 1 <= profile[1]:
        jax.block_until_ready(state)  # The trace holds steps N..M only.
        jax.profiler.start_trace(profile_dir)
        profiling, profile_first = True, step + 1
      batch = sharding_lib.global_batch(next(train_iter), batch_sharding)
      state, metrics = step_fn(state, batch)
      step += 1
      if profiling and step >= profile[1]:
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
        profiling = False
        logging.info("profile of steps %d..%d written to %s", profile_first, step, profile_dir)
      pending.append(metrics)
      if len(pending) > 2:
        # At most two steps in flight: the host stays a step ahead of the device (input and
        # dispatch overlap the computation), and a SIGTERM save never waits behind a long
        # queue of already-dispatched steps.
        jax.block_until_ready(pending[-3])
      # The same answer on every process (see distributed.StopRequest): all save this step.
      stopping = stop.reached(step)
      log_now = step % config.log_every == 0 or step == config.max_steps
      save_due = step % c.every_steps == 0 or step == config.max_steps or stopping
      if log_now or save_due:
        # Every metric since the last check is inspected, so no NaN step is ever checkpointed.
        fetched = jax.device_get(pending)
        pending = []
        for m in fetched:
          check_finite(m, step)
        last_metrics = {k: float(v) for k, v in fetched[-1].items()}
      if log_now:
        now = time.time()
        steps_per_s = (step - step_last) / max(now - t_last, 1e-9)
        t_last, step_last = now, step
        scalars = dict(last_metrics, **{"perf/steps_per_s": steps_per_s,
                                        "perf/images_per_s": steps_per_s * config.batch_size})
        writer.write(step, scalars)
        lock.heartbeat()
        eta = (config.max_steps - step) / max(steps_per_s, 1e-9)
        logging.info("step %d/%d  loss %.4f  %.2f steps/s  %.0f images/s  ETA %s", step,
                     config.max_steps, last_metrics.get("train/loss", float("nan")), steps_per_s,
                     steps_per_s * config.batch_size, time.strftime("%H:%M:%S", time.gmtime(eta)))
      # Save first, then evaluate: an evaluator that fails never costs this step's checkpoint.
      meta = {"data_position": step, "image_shape": list(exp.image_shape)}
      if save_due:
        ckpt.save(step, state, meta, force=stopping or step == config.max_steps)
      if mirror.active and (save_due or time.time() - t_sync > SYNC_EVERY_S):
        writer.flush()
        storage.sync_all()
        t_sync = time.time()
      if stopping:
        ckpt.wait()
        logging.warning("received %s: saved step %d on every process, exiting", stop.signal, step)
        break
      due = [ev for ev in evaluators if ev.due(step)]
      eval_state = experiment_lib.evaluator_state(state) if due else None
      for ev in due:
        try:
          results = ev.run(eval_state, step)
        except Exception:  # pylint: disable=broad-except
          stop_run = config.get("eval_errors", "continue") == "stop"
          logging.exception("evaluator %s failed at step %d (%s)", type(ev).__name__, step,
                            "eval_errors='stop': saving this step and stopping" if stop_run else
                            "training goes on; eval_errors='stop' stops here")
          if stop_run:
            if not save_due:
              ckpt.save(step, state, meta, force=True)
            ckpt.wait()
            raise
          continue
        if results:
          writer.write(step, results)
  finally:
    if profiling:
      jax.profiler.stop_trace()
    stop.__exit__(None, None, None)
    writer.close()
    ckpt.close()
    storage.sync_all()
  return last_metrics


