"""An experiment built from a config, and one restored from a workdir.

`build_experiment(config)` validates the config and builds what training, the evaluators and
eval.py share: the network, the objective, the optimizer, the batch's shapes (`Experiment`);
nothing is compiled. `restore_experiment(workdir)` reads a workdir's saved config
(`load_config`) and restores a checkpoint onto any mesh (`eval_mesh`). `make_mesh` and
`sharded_abstract_state` place a state on the config's mesh.
"""

import dataclasses
import functools
from typing import Any, Dict, Optional, Tuple

import jax
import ml_collections
from absl import logging

from shortcut_jax import config as config_lib
from shortcut_jax import errors
from shortcut_jax.core import guidance
from shortcut_jax import latents as latents_lib
from shortcut_jax import objectives
from shortcut_jax.parallel import sharding as sharding_lib
from shortcut_jax import storage
from shortcut_jax.train import train_state as train_state_lib
from shortcut_jax.checkpoints.manager import CheckpointManager
from shortcut_jax.data import pipeline
from shortcut_jax.models import registry as models_lib
from shortcut_jax.models.velocity_model import VelocityModel
from shortcut_jax.objectives import flow_path
from shortcut_jax.core.config_value import config_value


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
  if config_value(config.data, "embedding_dim", section="data"):
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


def holds_training_run(workdir: str) -> bool:
  """Whether `workdir` holds a training run: its config.json and a checkpoints/ folder."""
  return storage.exists(storage.join(workdir, "config.json")) and storage.isdir(
      storage.join(workdir, "checkpoints"))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a training run saved as workdir/config.json."""
  path = storage.join(workdir, "config.json")
  if not storage.exists(path):
    raise errors.MissingFileError(
        f"{path} not found: is {workdir!r} a training workdir? (pass --config to say which "
        "config the checkpoint was trained with)")
  raw = storage.read_json(path)
  config = config_lib.base_config()
  flat = _flatten(raw)
  if isinstance(flat.get("model.remat"), bool):  # Written when remat was a bool.
    flat["model.remat"] = "full" if flat["model.remat"] else "none"
  config.update_from_flattened_dict(flat)
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


def evaluator_state(state):
  """What evaluators get: the state itself on one process (jit takes sharded arrays as they
  are); with several processes, a host copy of everything but the optimizer state, so that
  evaluators that work on process 0 only, or on local devices, never wait for the others."""
  if jax.process_count() == 1:
    return state
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(state.replace(opt_state=None), tiled=True)
