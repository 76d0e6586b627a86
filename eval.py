"""Evaluates a trained workdir.

  python eval.py --workdir=W --mode=sample --steps=1,4,128 --num_samples=1000 [--cfg_scale=1.5]
  python eval.py --workdir=W --mode=digits_metrics --steps=1,2,4,8,128
"""

from absl import app, flags

from shortcut_jax import distributed
from shortcut_jax import evaluation

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A training workdir (holds config.json and checkpoints/).")
flags.DEFINE_enum("mode", "sample", evaluation.MODES, "What to compute.")
flags.DEFINE_list("steps", ["1", "4", "128"], "Step budgets to sample with.")
flags.DEFINE_integer("num_samples", 1000, "Images per step budget.")
flags.DEFINE_float("cfg_scale", None, "Classifier-free guidance scale (default: none).")
flags.DEFINE_integer("seed", 0, "Noise seed (image i uses fold_in(seed, i)).")
flags.DEFINE_bool("use_ema", True, "Sample with the EMA weights.")
flags.DEFINE_integer("batch_size", 256, "Images per sampler call.")
flags.DEFINE_integer("checkpoint_step", None, "Which checkpoint (default: the latest).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  distributed.initialize()
  evaluation.run(FLAGS.mode, FLAGS.workdir, steps=[int(s) for s in FLAGS.steps],
                 num_samples=FLAGS.num_samples, cfg_scale=FLAGS.cfg_scale, seed=FLAGS.seed,
                 use_ema=FLAGS.use_ema, batch_size=FLAGS.batch_size, step=FLAGS.checkpoint_step)


if __name__ == "__main__":
  app.run(main)
