"""Trains a model: `python train.py --config=configs/digits_shortcut.py --workdir=workdirs/digits`.

Any config field can be overridden, e.g. `--config.optim.lr=3e-4`; unknown fields are errors.
Append `:smoke` to the config path for a seconds-long run on a CPU. Without `--config`, a
workdir that holds a run (its config.json) resumes with that run's config.
The console shows progress, results and warnings; library logs go to WORKDIR/log.txt.
"""

from shortcut_jax import console  # First: quiets TensorFlow's C++ logs before it is imported.

from absl import app, flags
from ml_collections import config_flags

from shortcut_jax import distributed
from shortcut_jax import trainer

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, logs, samples and metrics go here.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  distributed.initialize()
  console.setup(FLAGS.workdir, "train.py")
  config = FLAGS.config
  if config is None:
    # Resuming a workdir (e.g. an imported checkpoint): its saved config, or a clear error.
    config = trainer.load_config(FLAGS.workdir)
    config.lock()
  console.detail("config:\n%s", config)
  trainer.train_and_evaluate(config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
