"""The training loop: `train_and_evaluate(config, workdir)`.

Creates the train state (or resumes the latest checkpoint in the workdir), runs the jitted train
step on batches from the input pipeline, logs metrics (TensorBoard, console, metrics.jsonl), runs
the periodic evaluators and saves Orbax checkpoints. Stops cleanly on SIGTERM (saving first) and
stops on a NaN/Inf metric without saving over the last good checkpoint.
"""

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Dict, Optional, Tuple

import jax
import ml_collections
from absl import logging

from shortcut_jax import config as config_lib
from shortcut_jax import console
from shortcut_jax import distributed
from shortcut_jax import errors
from shortcut_jax import finetune
from shortcut_jax import guidance
from shortcut_jax import latents as latents_lib
from shortcut_jax import metric_log
from shortcut_jax import objectives
from shortcut_jax import sharding as sharding_lib
from shortcut_jax import storage
from shortcut_jax import train_state as train_state_lib
from shortcut_jax import train_step as train_step_lib
from shortcut_jax.checkpoints.manager import CheckpointManager, shape_mismatches
from shortcut_jax.data import pipeline
from shortcut_jax.models import registry as models_lib
from shortcut_jax.models.velocity_model import VelocityModel
from shortcut_jax.objectives import flow_path


# A remote workdir's logs, metrics and TensorBoard events reach it at least this often (and at
# every checkpoint).
SYNC_EVERY_S = 60.0


class NonFiniteMetricError(FloatingPointError):
  """A logged metric became NaN or Inf; the run stops and the last good checkpoint stays."""


@dataclasses.dataclass(frozen=True, eq=False)
class Experiment:
  """Everything built from a config that the train loop, evaluators and eval.py share."""
  config: ml_collections.ConfigDict
  batch_spec: Dict[str, Tuple[int, ...]]  # Batch key -> per-example shape ('image', 'cond_image').
  network: models_lib.Network
  objective: objectives.Objective
  tx: Any
  lr_schedule: Any

  @property
  def image_shape(self) -> Tuple[int, ...]:
    """Shape of one generated sample (H, W, C)."""
    return tuple(self.batch_spec["image"])

  @property
  def module(self):
    return self.network.module

  @property
  def source(self) -> flow_path.Source:
    """Where the run's flows start (`flow_path.Source`): the objective's own fixed start, else
    `objective.source` of the config (Gaussian noise by default)."""
    return flow_path.source_from_config(self.config.objective, self.objective.source)

  @functools.cached_property
  def encoder(self):
    """The latent encoder of a latent-space run (loads the VAE on first use), else None."""
    return latents_lib.encoder_from_config(self.config)

  def to_images(self, samples):
    """Generated samples -> images in [-1, 1] (decoded by the VAE in latent space)."""
    return latents_lib.to_images(self.config, samples)

  def prepare_batch(self, batch, key):
    """A pipeline batch as the objective sees it (encoded to latents in latent space)."""
    if self.encoder is None:
      return batch
    return _encode_jit(self.encoder)(self.encoder.vae.params, batch, key)

  @property
  def model(self) -> VelocityModel:
    return self.network.model

  def init_state(self, rng) -> train_state_lib.TrainState:
    """A fresh train state (pure: use under jit / eval_shape)."""
    param_rng, state_rng = jax.random.split(rng)
    params = self.network.init(param_rng)
    return train_state_lib.create_train_state(
        params, self.tx, state_rng,
        objective_state=self.objective.init_state(params, self.config.objective))

  def abstract_state(self):
    return jax.eval_shape(self.init_state, jax.random.PRNGKey(0))


@functools.lru_cache(maxsize=4)
def _encode_jit(encoder):
  return jax.jit(encoder)


def batch_spec(config: ml_collections.ConfigDict, image_shape) -> Dict[str, Tuple[int, ...]]:
  """Per-example shapes of the model's inputs: the sample (`image`), for super-resolution
  (`data.low_res_factor > 0`) the upsampled low-resolution input (`cond_image`, same shape),
  and for text / vector conditioning (`data.embedding_dim > 0`) the `embedding` [D]."""
  spec = {"image": tuple(int(d) for d in image_shape)}
  if config.data.low_res_factor:
    spec["cond_image"] = spec["image"]
  if config.data.get("embedding_dim", 0):
    spec["embedding"] = (int(config.data.embedding_dim),)
  return spec


def build_experiment(config: ml_collections.ConfigDict, image_shape=None) -> Experiment:
  """Validates the config and builds network, objective and optimizer (no compilation).

  Args:
    config: the experiment config.
    image_shape: (H, W, C) of one sample the network generates (latents in latent space);
      default: from the dataset's metadata (and the VAE for online latents).
  """
  config_lib.validate(config, device_count=jax.device_count())
  if image_shape is None:
    info = pipeline.dataset_info(config.data)
    size = info.get("image_size", config.data.image_size)
    image_shape = latents_lib.sample_shape(config, (size, size, info["channels"]))
  objective = objectives.get_objective(config.objective.name)
  spec = batch_spec(config, image_shape)
  network = models_lib.build_network(config, spec, objective)
  tx, lr_schedule = train_state_lib.make_optimizer(config.optim, config.max_steps)
  return Experiment(config=config, batch_spec=spec, network=network, objective=objective, tx=tx,
                    lr_schedule=lr_schedule)


def make_mesh(config: ml_collections.ConfigDict, devices=None) -> jax.sharding.Mesh:
  """The config's (`data`, `fsdp`) mesh, checked against `sharding` and `batch_size`.

  Raises:
    sharding_lib.ShardingError: mesh sizes that do not fit the devices, or a batch size that
      does not split evenly (the message names `mesh.*` / `batch_size`).
  """
  mesh = sharding_lib.make_mesh(config.mesh, devices)
  sharding_lib.validate(config.sharding, mesh, config.batch_size)
  return mesh


def sharded_abstract_state(exp: Experiment, mesh: jax.sharding.Mesh) -> Tuple[Any, Any]:
  """(abstract state whose leaves carry their target sharding, the shardings pytree)."""
  abstract = exp.abstract_state()
  shardings = sharding_lib.state_shardings(abstract, mesh, exp.config.sharding)
  return sharding_lib.with_shardings(abstract, shardings), shardings


def restore_or_init(exp: Experiment, ckpt: CheckpointManager,
                    mesh: Optional[jax.sharding.Mesh] = None) -> Tuple[Any, int]:
  """The latest intact checkpoint in the workdir if any, else a fresh state. Returns (state, step).

  Either way the state is placed on `mesh` (default: the config's) with the config's sharding:
  a checkpoint written on any mesh is read straight into these shardings. Damaged newer
  checkpoints are skipped with a warning naming the step and file (and kept, renamed
  `<step>.damaged`); the returned step is the intact checkpoint's data position.

  Raises:
    DamagedCheckpointError: there are checkpoints but every one is damaged (nothing moved).
    CheckpointReadError: a step could not be read for another reason than damage (I/O,
      permissions, memory, an Orbax version); every process raises it, nothing is moved.
    CheckpointMismatchError: the checkpoint's arrays do not fit the config's state.
  """
  mesh = make_mesh(exp.config) if mesh is None else mesh
  abstract, shardings = sharded_abstract_state(exp, mesh)
  init_workdir = exp.config.get("init", {}).get("workdir")
  if ckpt.latest_step() is not None:
    state, meta = ckpt.restore_latest_intact(abstract)
    logging.info("resumed from %s at step %d", ckpt.directory, meta["step"])
    if init_workdir:
      logging.warning("init.workdir=%s ignored: this run resumes its own checkpoint",
                      init_workdir)
    return state, int(meta.get("data_position", meta["step"]))
  init = lambda: jax.jit(exp.init_state, out_shardings=shardings)(
      jax.random.PRNGKey(exp.config.seed))
  if init_workdir:
    return start_from_run(exp, init, abstract, shardings, mesh), 0
  # A fresh run starts where its objective says (a distillation student from its teacher).
  state = exp.objective.start_state(init, config=exp.config, abstract_state=abstract,
                                    shardings=shardings, mesh=mesh)
  return state, 0


def start_from_run(exp: Experiment, init_fn, abstract, shardings, mesh):
  """A fresh state whose online and EMA weights come from another run (`config.init`,
  `shortcut_jax.finetune`), restored onto `mesh` and placed like this run's parameters."""
  config = exp.config
  if exp.objective.needs_teacher:
    raise finetune.InitError(
        f"init.workdir is set, but objective {exp.objective.name!r} starts from its teacher "
        f"(objective.teacher_workdir): unset init.workdir")
  workdir, step = finetune.resolve(config.init)
  finetune.check_source(workdir)
  source_config = load_config(workdir)
  problems = finetune.mismatches(config, source_config)
  if problems:
    raise finetune.InitError(f"init.workdir: the run in {workdir} is another network or data "
                             f"than this one:\n  " + "\n  ".join(problems))
  source_exp, source, source_step = restore_experiment(workdir, config=source_config, step=step,
                                                        mesh=mesh)
  weights = finetune.source_weights(
      source, config.init, source_uses_level=source_exp.objective.uses_level,
      uses_level=exp.objective.uses_level, hidden_size=source_config.model.hidden_size,
      dtype=jax.numpy.dtype(source_config.model.dtype))
  problems = shape_mismatches(abstract.params, weights)
  if problems:
    raise finetune.InitError(f"init.workdir: the parameters of {workdir} (step {source_step}) "
                             f"do not fit this run's:\n  " + "\n  ".join(problems[:20]))
  state = init_fn()
  state = state.replace(params=sharding_lib.placed_copy(weights, shardings.params),
                        ema_params=sharding_lib.placed_copy(weights, shardings.ema_params))
  logging.info("weights from %s at step %d (%s, objective %r), fresh optimizer, step 0",
               workdir, source_step, config.init.weights, source_config.objective.name)
  return state


def evaluator_state(state):
  """What evaluators get: the state itself on one process (jit takes sharded arrays as they
  are); with several processes, a host copy of everything but the optimizer state, so that
  evaluators that work on process 0 only, or on local devices, never wait for the others."""
  if jax.process_count() == 1:
    return state
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(state.replace(opt_state=None), tiled=True)


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
  exp = build_experiment(config)
  pipeline.require_data(config.data)  # Missing training data: an error before compiling.
  storage.makedirs(workdir)
  # One job per workdir: a second job (e.g. processes that did not join one cluster) stops here.
  lock = distributed.WorkdirLock(workdir).acquire()
  try:
    return _train_and_evaluate(config, workdir, exp, lock)
  finally:
    lock.release()


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, exp: Experiment,
                        lock: distributed.WorkdirLock) -> Dict[str, float]:
  """`train_and_evaluate` once the workdir is this job's."""
  from shortcut_jax.evaluators import registry as evaluators_lib  # Imports plotting code.
  is_main = jax.process_index() == 0
  mesh = make_mesh(config)
  _, state_shardings = sharded_abstract_state(exp, mesh)
  logging.info("mesh %s, sharding %r, %d processes; sharded parameters:\n%s", dict(mesh.shape),
               config.sharding, jax.process_count(), sharding_lib.describe(
                   jax.tree.map(lambda s: s.spec, state_shardings.params)) or "(none)")

  c = config.checkpoint
  ckpt = CheckpointManager(workdir, every_steps=c.every_steps, max_to_keep=c.max_to_keep,
                           async_save=c.async_save)
  try:
    state, start_step = restore_or_init(exp, ckpt, mesh)
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
  train_iter = pipeline.make_dataset(config.data, split="train", global_batch_size=config.batch_size,
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
      eval_state = evaluator_state(state) if due else None
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


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a training run saved as workdir/config.json."""
  path = storage.join(workdir, "config.json")
  if not storage.exists(path):
    raise errors.MissingFileError(
        f"{path} not found: is {workdir!r} a training workdir? (pass --config to say which "
        "config the checkpoint was trained with)")
  raw = storage.read_json(path)
  config = config_lib.base_config()
  config.update_from_flattened_dict(_flatten(raw))
  if guidance.FIELD not in raw:
    # Written before the field existed: the old meaning of eval-time scales (`guidance`).
    config[guidance.FIELD] = guidance.LEGACY
    logging.warning(guidance.legacy_notice(path))
  return config


def _flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
  return out


def eval_mesh(config: ml_collections.ConfigDict, devices=None) -> jax.sharding.Mesh:
  """The config's mesh on the current devices, or a 1-device mesh where it does not fit.

  A checkpoint trained with `mesh.fsdp=8` thus restores (with its weights placed by the
  config's rules) on a host with 8 devices, and whole on one device anywhere else.
  """
  devices = list(jax.devices() if devices is None else devices)
  try:
    return sharding_lib.make_mesh(config.mesh, devices)
  except sharding_lib.ShardingError as e:
    logging.info("config mesh does not fit the %d devices here (%s): using one device",
                 len(devices), e)
    return sharding_lib.single_device_mesh(jax.local_devices()[0])


def restore_experiment(workdir: str, config: Optional[ml_collections.ConfigDict] = None,
                       step: Optional[int] = None, mesh: Optional[jax.sharding.Mesh] = None):
  """Builds the experiment of a workdir and restores its latest (or `step`) checkpoint.

  The state is restored onto `mesh` (default `eval_mesh(config)`), whatever mesh wrote it.

  Returns:
    (experiment, train_state, step).

  Raises:
    DamagedCheckpointError: the step's files changed since the save; the message names the
      file and the intact steps (for `--checkpoint_step`).
  """
  config = config if config is not None else load_config(workdir)
  ckpt = CheckpointManager(workdir, read_only=True)
  try:
    meta = ckpt.read_meta(step)
    exp = build_experiment(config, image_shape=tuple(meta["image_shape"]))
    abstract, _ = sharded_abstract_state(exp, eval_mesh(config) if mesh is None else mesh)
    state, meta = ckpt.restore(abstract, step)
  finally:
    ckpt.close()
  return exp, state, int(meta["step"])
