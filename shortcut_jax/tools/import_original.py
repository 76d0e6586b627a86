"""Turns a checkpoint of the original shortcut-models code into a library workdir.

  python -m shortcut_jax.tools.import_original --checkpoint model.pkl \
      --config configs/imagenet_dit_b.py --workdir workdirs/imagenet_dit_b_released

The config must describe the checkpoint's network (sizes, num_classes, image size); every
parameter shape is checked against it before anything is written. The workdir then works with
eval.py and with resumed training (the Adam moments and the step are imported too). Its
config.json evaluates FID with the original's protocol (`evals.fid.protocol='original'`,
`shortcut_jax.core.guidance`: the step sweep at cfg 1, one entry at the config's CFG with
denoise_timesteps steps, the online weights), whatever the given config says, and with the
original's meaning of guidance scales (`guidance_convention='original'`).

Latent space (`data.latents` 'online' or 'precomputed', as the paper's configs): the DiT's
sample is the VAE latent of a `data.image_size` image (32x32x4 for 256x256 and the SD VAE), so
the VAE named by the config (`vae.path` / $SHORTCUT_JAX_VAE, or `vae.random_init`) is loaded to
read its downsampling factor and latent channels; the checkpoint's input channels must equal
the latter. The same VAE then decodes the samples of `eval.py`.

`--checkpoint` and `--workdir` may be remote (gs://...): the pickle is read and config.json
written through `shortcut_jax.storage`, the checkpoint through the checkpoint manager (Orbax
and TensorStore, which write gs:// themselves). A remote workdir is checked first
(`storage.check`), so a missing bucket or missing credentials fail before anything is loaded.
"""

import jax
import numpy as np
import optax
from absl import flags, logging
from ml_collections import config_flags

from shortcut_jax import console
from shortcut_jax.core import guidance
from shortcut_jax import latents as latents_lib
from shortcut_jax import storage
from shortcut_jax import experiment
from shortcut_jax.train import trainer
from shortcut_jax.checkpoints.legacy import load_original_checkpoint
from shortcut_jax.checkpoints.manager import (CheckpointManager, CheckpointMismatchError,
                                               checkpoint_dir, shape_mismatches)


def _check_params(expected, got, what):
  problems = shape_mismatches(expected, got)
  if problems:
    raise CheckpointMismatchError(f"{what} of the checkpoint do not match the config "
                                  f"({len(problems)} differences): " + "; ".join(problems[:8]))


def describe_checkpoint(params) -> str:
  """What a checkpoint's parameter shapes say about its network (for error messages)."""
  try:
    kernel = params["PatchEmbed_0"]["Conv_0"]["kernel"]
    patch, _, channels, hidden = kernel.shape
    depth = sum(1 for k in params if k.startswith("DiTBlock_"))
    mlp = params["DiTBlock_0"]["MlpBlock_0"]["Dense_0"]["kernel"].shape[1]
    classes = params["LabelEmbedder_0"]["Embed_0"]["embedding"].shape[0] - 1
  except (KeyError, TypeError, ValueError):
    return "not a DiT of the original code"
  return (f"model.patch_size={patch} model.hidden_size={hidden} model.depth={depth} "
          f"model.mlp_ratio={mlp / hidden:g} data.num_classes={classes}, {channels} input "
          "channels (model.num_heads and the sample size are not stored in the parameters)")


def sample_shape(config, channels: int):
  """(H, W, C) of the checkpoint's samples under `config`: the image for pixel space, its VAE
  latent in latent space (loads the config's VAE)."""
  size = config.data.image_size
  if not latents_lib.uses_latents(config):
    return (size, size, channels)
  vae = latents_lib.vae_from_config(config)
  shape = tuple(vae.latent_shape((size, size, vae.config.in_channels)))
  if shape[-1] != channels:
    raise CheckpointMismatchError(
        f"the checkpoint's DiT takes {channels} input channels, but the config's VAE makes "
        f"{shape[-1]}-channel latents (data.latents={latents_lib.mode(config)!r}; a pixel-space "
        "checkpoint needs --config.data.latents=none)")
  return shape


def check_empty(workdir: str) -> None:
  """Raises FileExistsError if `workdir` already holds checkpoints (an import never overwrites)."""
  if not storage.isdir(checkpoint_dir(workdir)):
    return
  ckpt = CheckpointManager(workdir, read_only=True)
  try:
    if ckpt.latest_step() is not None:
      raise FileExistsError(f"{workdir} already holds checkpoints; import into an empty workdir")
  finally:
    ckpt.close()


def write_workdir(workdir: str, config, state, step: int, meta: dict) -> None:
  """An imported run: `state` as `workdir/checkpoints/<step>` and `config` as its config.json."""
  check_empty(workdir)
  storage.makedirs(workdir)
  ckpt = CheckpointManager(workdir, async_save=False)
  try:
    ckpt.save(step, state, meta, force=True)
  finally:
    ckpt.close()
  trainer.save_config(config, workdir)


def original_protocol_config(config):
  """A copy of `config` whose FID follows the original's protocol and whose guidance scales
  have the original's meaning (what an imported checkpoint's config.json says)."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    if config.evals.fid.get("protocol") != "original":
      logging.info("imported workdir: evals.fid.protocol %r -> 'original' (the original's FID "
                   "protocol)", config.evals.fid.get("protocol"))
      config.evals.fid.protocol = "original"
    config[guidance.FIELD] = guidance.ORIGINAL
  return config


def import_original(checkpoint: str, config, workdir: str) -> int:
  """Writes `workdir/checkpoints/<step>` and `workdir/config.json` (its FID with the original's
  protocol, `original_protocol_config`); returns the step.

  Raises:
    LegacyCheckpointError: not a readable checkpoint of the original code.
    CheckpointMismatchError: the config does not describe the checkpoint's network (nothing
      is written).
    VAEWeightsNotFoundError: a latent-space config whose VAE weights are not there.
    FileExistsError: the workdir already holds checkpoints.
    StorageError: a remote workdir that cannot be written (bucket, client or credentials).
  """
  storage.check(workdir, write=True)
  legacy = load_original_checkpoint(checkpoint)
  channels = legacy["params"]["PatchEmbed_0"]["Conv_0"]["kernel"].shape[2]
  shape = sample_shape(config, channels)
  exp = experiment.build_experiment(config, image_shape=shape)
  abstract = exp.abstract_state()
  try:
    _check_params(abstract.params, legacy["params"], "params")
  except CheckpointMismatchError as e:
    raise CheckpointMismatchError(
        f"{e}\n  The checkpoint has {describe_checkpoint(legacy['params'])}; set those in the "
        "config (--config.model.hidden_size=..., ...)") from None
  _check_params(abstract.params, legacy["params_ema"], "params_ema")

  fresh = jax.jit(exp.init_state)(jax.random.PRNGKey(config.seed))
  (adam, *_), = legacy["opt_state"]

  def take_adam(node):
    if isinstance(node, optax.ScaleByAdamState):
      _check_params(node.mu, adam.mu, "Adam moments")
      return optax.ScaleByAdamState(count=np.asarray(adam.count, np.asarray(node.count).dtype),
                                    mu=adam.mu, nu=adam.nu)
    return node

  opt_state = jax.tree.map(take_adam, fresh.opt_state,
                           is_leaf=lambda n: isinstance(n, optax.ScaleByAdamState))
  state = fresh.replace(params=legacy["params"], ema_params=legacy["params_ema"],
                        opt_state=opt_state, step=np.asarray(legacy["step"], np.asarray(fresh.step).dtype))
  state = jax.tree.map(lambda ref, x: jax.numpy.asarray(x, ref.dtype), fresh, state)
  write_workdir(workdir, original_protocol_config(config), state, legacy["step"], {
      "data_position": legacy["step"], "image_shape": list(shape),
      "imported_from": storage.absolute(checkpoint)})
  logging.info("imported %s (step %d, samples of shape %s) into %s", checkpoint, legacy["step"],
               shape, workdir)
  return legacy["step"]


def main(argv):
  del argv
  step = import_original(FLAGS.checkpoint, FLAGS.config, FLAGS.workdir)
  print(f"imported step {step} into {FLAGS.workdir}")


if __name__ == "__main__":
  FLAGS = flags.FLAGS
  flags.DEFINE_string("checkpoint", None, "The original's checkpoint pickle.")
  flags.DEFINE_string("workdir", None, "New workdir to create.")
  config_flags.DEFINE_config_file("config", None, "Config describing the checkpoint's model.")
  flags.mark_flags_as_required(["checkpoint", "workdir", "config"])
  console.run(main)
