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
from shortcut_jax.parallel import distributed
from shortcut_jax import experiment as experiment_lib
from shortcut_jax.train import initialisation
from shortcut_jax import metric_log
from shortcut_jax.parallel import sharding as sharding_lib
from shortcut_jax import remote_staging
from shortcut_jax import storage
from shortcut_jax.train import train_step as train_step_lib
from shortcut_jax.checkpoints.manager import CheckpointManager
from shortcut_jax.data import ot_coupling, pipeline


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


class _Profiler:
  """Profiles train steps N..M (`config.profile_steps`, 1-based, inclusive) into
  `workdir/profile` with jax.profiler, on process 0; a no-op otherwise."""

  def __init__(self, config, profile_dir: str, is_main: bool):
    self.steps = tuple(config.profile_steps or ()) if is_main else ()
    self.dir, self.active, self.first = profile_dir, False, None

  def before_step(self, step: int, state) -> None:
    """`step` steps done: starts the trace where step + 1 is the first profiled one."""
    if self.steps and not self.active and self.steps[0] <= step + 1 <= self.steps[1]:
      jax.block_until_ready(state)  # The trace holds steps N..M only.
      jax.profiler.start_trace(self.dir)
      self.active, self.first = True, step + 1

  def after_step(self, step: int, state) -> None:
    if self.active and step >= self.steps[1]:
      jax.block_until_ready(state)
      self.close()
      logging.info("profile of steps %d..%d written to %s", self.first, step, self.dir)

  def close(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False


class _Metrics:
  """The train step's metrics: kept on the device until a log or a save needs them (at most two
  steps in flight), then fetched, checked (a NaN/Inf stops the run before any save) and logged
  with the throughput (TensorBoard, metrics.jsonl, console)."""

  def __init__(self, config, writer: metric_log.MetricLog, lock: distributed.WorkdirLock,
               start_step: int):
    self.config, self.writer, self.lock = config, writer, lock
    self.pending, self.last = [], {}
    self.t_last, self.step_last = time.time(), start_step

  def add(self, metrics) -> None:
    self.pending.append(metrics)
    if len(self.pending) > 2:
      # At most two steps in flight: the host stays a step ahead of the device (input and
      # dispatch overlap the computation), and a SIGTERM save never waits behind a long
      # queue of already-dispatched steps.
      jax.block_until_ready(self.pending[-3])

  def fetch(self, step: int) -> None:
    """Every metric since the last fetch is inspected, so no NaN step is ever checkpointed."""
    fetched = jax.device_get(self.pending)
    self.pending = []
    for m in fetched:
      check_finite(m, step)
    self.last = {k: float(v) for k, v in fetched[-1].items()}

  def log(self, step: int) -> None:
    config = self.config
    now = time.time()
    steps_per_s = (step - self.step_last) / max(now - self.t_last, 1e-9)
    self.t_last, self.step_last = now, step
    self.writer.write(step, dict(self.last, **{
        "perf/steps_per_s": steps_per_s, "perf/images_per_s": steps_per_s * config.batch_size}))
    self.lock.heartbeat()
    eta = (config.max_steps - step) / max(steps_per_s, 1e-9)
    logging.info("step %d/%d  loss %.4f  %.2f steps/s  %.0f images/s  ETA %s", step,
                 config.max_steps, self.last.get("train/loss", float("nan")), steps_per_s,
                 steps_per_s * config.batch_size, time.strftime("%H:%M:%S", time.gmtime(eta)))


def _run_evaluators(evaluators, state, step: int, config, writer, save) -> None:
  """The evaluators due at `step`, on a host copy of the state. One that raises is logged and
  training goes on; with `eval_errors='stop'` the step is saved (`save()`) and it re-raises."""
  due = [ev for ev in evaluators if ev.due(step)]
  eval_state = experiment_lib.evaluator_state(state) if due else None
  for ev in due:
    try:
      results = ev.run(eval_state, step)
    except Exception:  # pylint: disable=broad-except
      stop_run = config.eval_errors == "stop"
      logging.exception("evaluator %s failed at step %d (%s)", type(ev).__name__, step,
                        "eval_errors='stop': saving this step and stopping" if stop_run else
                        "training goes on; eval_errors='stop' stops here")
      if stop_run:
        save()
        raise
      continue
    if results:
      writer.write(step, results)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        exp: experiment_lib.Experiment,
                        lock: distributed.WorkdirLock) -> Dict[str, float]:
  """`train_and_evaluate` once the workdir is this job's: the start, then the loop."""
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
  # uploaded as they grow when the workdir is remote (remote_staging.Mirror): one storage client for
  # everything, and TensorFlow's own GCS client is never used.
  mirror = remote_staging.staging(workdir)
  writer = metric_log.MetricLog(config, workdir, mirror, is_main)
  try:
    return _loop(config, workdir, exp, lock, mesh, state_shardings, ckpt, state, start_step,
                 mirror, writer)
  finally:
    writer.close()
    ckpt.close()
    remote_staging.sync_all()


def _loop(config, workdir, exp, lock, mesh, state_shardings, ckpt, state, start_step, mirror,
          writer) -> Dict[str, float]:
  """The training loop, from `start_step` to `config.max_steps` or a stop request: per step the
  profiler, the update, the metrics, the checkpoint cadence, the remote sync and the evaluators.
  Returns the last fetched metrics."""
  from shortcut_jax.evaluators import registry as evaluators_lib  # Imports plotting code.
  pool = config.objective.ot_pool
  train_iter = pipeline.make_dataset(config.data, split="train",
                                     global_batch_size=config.batch_size, seed=config.seed,
                                     train=True, process_index=jax.process_index(),
                                     process_count=jax.process_count(),
                                     start_step=ot_coupling.group_start(start_step, pool)
                                     if pool else start_step)
  if pool:  # sOT: the noise matched to the images over `pool` batches (data.ot_coupling)
    train_iter = ot_coupling.coupled_batches(train_iter, pool=pool, seed=config.seed,
                                             start_step=start_step,
                                             process_index=jax.process_index(),
                                             by_class=config.objective.ot_within_class)
  batch_sharding = sharding_lib.batch_sharding(mesh)
  encoder = exp.encoder  # Latent space: loads the VAE now, a clear error before compiling.
  step_fn = train_step_lib.make_train_step(
      exp.model, exp.objective, exp.tx, exp.lr_schedule, config.objective, config.optim.ema_rate,
      in_shardings=(state_shardings, batch_sharding),
      out_shardings=(state_shardings, sharding_lib.replicated(mesh)), encoder=encoder,
      accumulate_steps=config.optim.accumulate_steps, reduce_once=config.sharding == "dp",
      encoder_params=None if encoder is None else jax.device_put(
          encoder.vae.params, sharding_lib.replicated(mesh)))
  evaluators = evaluators_lib.build_evaluators(exp, workdir)
  profiler = _Profiler(config, mirror.local_path("profile"), jax.process_index() == 0)
  metrics = _Metrics(config, writer, lock, start_step)
  every, last = config.checkpoint.every_steps, config.max_steps
  t_sync = time.time()
  step = start_step
  stop = distributed.StopRequest()
  try:
    stop.__enter__()
    while step < last:
      profiler.before_step(step, state)
      state, step_metrics = step_fn(state, sharding_lib.global_batch(next(train_iter),
                                                                     batch_sharding))
      step += 1
      profiler.after_step(step, state)
      metrics.add(step_metrics)
      # The same answer on every process (see distributed.StopRequest): all save this step.
      stopping = stop.reached(step)
      log_now = step % config.log_every == 0 or step == last
      save_due = step % every == 0 or step == last or stopping
      if log_now or save_due:
        metrics.fetch(step)
      if log_now:
        metrics.log(step)
      # Save first, then evaluate: an evaluator that fails never costs this step's checkpoint.
      meta = {"data_position": step, "image_shape": list(exp.image_shape)}
      if save_due:
        ckpt.save(step, state, meta, force=stopping or step == last)
      if mirror.active and (save_due or time.time() - t_sync > SYNC_EVERY_S):
        writer.flush()
        remote_staging.sync_all()
        t_sync = time.time()
      if stopping:
        ckpt.wait()
        logging.warning("received %s: saved step %d on every process, exiting", stop.signal, step)
        break

      def save_for_stop(step=step, state=state, meta=meta, saved=save_due):
        if not saved:
          ckpt.save(step, state, meta, force=True)
        ckpt.wait()
      _run_evaluators(evaluators, state, step, config, writer, save_for_stop)
  finally:
    profiler.close()
    stop.__exit__(None, None, None)
  return metrics.last
