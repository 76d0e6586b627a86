"""Trains a model: `python train.py --config=configs/digits_shortcut.py --workdir=workdirs/digits`.

Any config field can be overridden, e.g. `--config.optim.lr=3e-4`; unknown fields are errors.
Append `:smoke` to the config path for a seconds-long run on a CPU. Without `--config`, a
workdir that holds a run (its config.json) resumes with that run's config.
The console shows progress, results and warnings; library logs go to WORKDIR/log.txt.
"""

from shortcut_jax import console  # First: quiets TensorFlow's C++ logs before it is imported.

import os

from absl import app, flags, logging
from ml_collections import config_flags

from shortcut_jax.parallel import cpu_devices
from shortcut_jax.parallel import distributed
from shortcut_jax import experiment
from shortcut_jax.train import trainer

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, logs, samples and metrics go here.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = FLAGS.config
  if config is None:
    # Resuming a workdir (e.g. an imported checkpoint): its saved config, or a clear error.
    config = experiment.load_config(FLAGS.workdir)
    config.lock()
  # Opt-in (SHORTCUT_JAX_CPU_DEVICES=auto or =N), before jax starts its backends: one
  # single-threaded XLA CPU device per core (as many as the batch and config.mesh allow), the
  # batch split over them. Off by default: on the idle 2-core machine the digits default ran
  # 0.9x the steps/s of the default single device, 1.2-1.3x only while other jobs held the
  # cores (docs/benchmarks.md). Single-process runs only.
  multi_process = (distributed.launched_as_cluster() or FLAGS.coordinator_address
                   or os.environ.get("SHORTCUT_JAX_COORDINATOR")
                   or os.environ.get("JAX_COORDINATOR_ADDRESS"))
  cpu_count = 0
  if os.environ.get(cpu_devices.ENV_VAR, "").strip() and not multi_process:
    cpu_count = cpu_devices.configure(batch_size=config.batch_size, mesh=dict(config.mesh))
  distributed.initialize()
  console.setup(FLAGS.workdir, "train.py")
  if cpu_count:
    logging.info("XLA CPU: %d single-threaded devices, batches split over them "
                 "(SHORTCUT_JAX_CPU_DEVICES=0: off)", cpu_count)
  console.detail("config:\n%s", config)
  trainer.train_and_evaluate(config, FLAGS.workdir)


if __name__ == "__main__":
  console.run(main)
