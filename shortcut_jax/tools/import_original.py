"""Turns a checkpoint of the original shortcut-models code into a library workdir.

  python -m shortcut_jax.tools.import_original --checkpoint model.pkl \
      --config configs/imagenet_dit_b.py --workdir workdirs/imagenet_dit_b_released

The config must describe the checkpoint's network (sizes, num_classes, image size); every
parameter shape is checked against it before anything is written. The workdir then works with
eval.py and with resumed training (the Adam moments and the step are imported too).
"""

import os

import jax
import numpy as np
import optax
from absl import app, flags, logging
from ml_collections import config_flags

from shortcut_jax import trainer
from shortcut_jax.checkpoints.legacy import load_original_checkpoint
from shortcut_jax.checkpoints.manager import (CheckpointManager, CheckpointMismatchError,
                                               shape_mismatches)


def _check_params(expected, got, what):
  problems = shape_mismatches(expected, got)
  if problems:
    raise CheckpointMismatchError(f"{what} of the checkpoint do not match the config "
                                  f"({len(problems)} differences): " + "; ".join(problems[:8]))


def import_original(checkpoint: str, config, workdir: str) -> int:
  """Writes `workdir/checkpoints/<step>` and `workdir/config.json`; returns the step."""
  legacy = load_original_checkpoint(checkpoint)
  channels = legacy["params"]["PatchEmbed_0"]["Conv_0"]["kernel"].shape[2]
  size = config.data.image_size
  exp = trainer.build_experiment(config, image_shape=(size, size, channels))
  abstract = exp.abstract_state()
  _check_params(abstract.params, legacy["params"], "params")
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
  os.makedirs(workdir, exist_ok=True)
  ckpt = CheckpointManager(workdir, async_save=False)
  if ckpt.latest_step() is not None:
    ckpt.close()
    raise FileExistsError(f"{workdir} already holds checkpoints; import into an empty workdir")
  ckpt.save(legacy["step"], state, {"data_position": legacy["step"], "image_shape": [size, size, channels],
                                    "imported_from": os.path.abspath(checkpoint)}, force=True)
  ckpt.close()
  trainer.save_config(config, workdir)
  logging.info("imported %s (step %d) into %s", checkpoint, legacy["step"], workdir)
  return legacy["step"]


def main(argv):
  del argv
  import_original(FLAGS.checkpoint, FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  FLAGS = flags.FLAGS
  flags.DEFINE_string("checkpoint", None, "The original's checkpoint pickle.")
  flags.DEFINE_string("workdir", None, "New workdir to create.")
  config_flags.DEFINE_config_file("config", None, "Config describing the checkpoint's model.")
  flags.mark_flags_as_required(["checkpoint", "workdir", "config"])
  app.run(main)
