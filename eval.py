"""Evaluates a trained workdir.

Every path (workdirs, --out, --fid_stats, --inception, --lpips_weights, --input_dir,
--output_dir, --prompts, --embeddings) may be local or a bucket URI (gs://bucket/...,
`shortcut_jax.storage`).

  python eval.py --workdir=W --mode=sample --steps=1,4,128 --num_samples=1000 [--cfg_scale=1.5]
  python eval.py --workdir=W --mode=digits_metrics --steps=1,2,4,8,128
  python eval.py --mode=fid_stats --config=configs/x.py --out=stats.npz [--split=train] [--inception=I]
  python eval.py --workdir=W --mode=fid --num_samples=50000 --fid_stats=stats.npz \
      [--protocol=original|guided] [--steps=1,4,128] [--inception=I] [--cfg_scale=1.5] \
      [--extra_metrics=is,sfid,precision_recall]
  python eval.py --workdir=W --mode=super_resolve --input_dir=IN --output_dir=OUT --steps=1 \
      [--input_is_lr] [--overwrite] [--nouse_ema] [--seed=0]
  python eval.py --workdir=W --mode=sr_metrics --steps=1,2,4,8 [--num_samples=N]
  python eval.py --workdir=W --mode=sr_metrics --steps=1,8 --input_dir=Set14/HR  # benchmark

Guidance scales have the original's meaning (`shortcut_jax.core.guidance`): 0 unconditional, 1
conditional (no unconditional pass), above 1 guided. --mode=fid takes what is not given from the
workdir config's `evals.fid` (steps, num_samples, cfg_scale, use_ema, protocol); a workdir whose
config.json predates `guidance_convention` keeps the old meanings and defaults (with a notice).
"""

from shortcut_jax import console  # First: quiets TensorFlow's C++ logs before it is imported.

from absl import app, flags, logging
from ml_collections import config_flags

from shortcut_jax.parallel import cpu_devices
from shortcut_jax.parallel import distributed
from shortcut_jax import evaluation

FLAGS = flags.FLAGS
# Modes whose work is split over every device (generation, Inception): on a CPU-only machine
# they get one single-threaded XLA device per core (`cpu_devices`, SHORTCUT_JAX_CPU_DEVICES=0:
# off). The super-resolution modes sample unsharded, so several devices would not help them.
DATA_PARALLEL_MODES = ("sample", "digits_metrics", "fid_stats", "fid")
flags.DEFINE_string("workdir", None, "A training workdir (holds config.json and checkpoints/).")
flags.DEFINE_list("workdirs", None, "cascade: the generator's workdir, then each upscaler's "
                  "(one --steps entry per stage).")
flags.DEFINE_enum("mode", "sample", evaluation.MODES, "What to compute.")
flags.DEFINE_list("steps", None, "Step budgets to sample with (default: 1,4,128; --mode=fid: "
                  "the workdir config's evals.fid.steps).")
flags.DEFINE_integer("num_samples", None, "Images per step budget (default: 1000; --mode=fid: "
                     "evals.fid.num_samples).")
flags.DEFINE_float("cfg_scale", None, "Classifier-free guidance scale w, v_u + w (v_c - v_u): "
                   "0 = unconditional, 1 = conditional without guidance (one call a step), "
                   "> 1 guided (default: the workdir config's evals.samples.cfg_scale, 1.5 in "
                   "the defaults; --mode=fid: evals.fid.cfg_scale).")
flags.DEFINE_bool("cfg", True, "--nocfg samples without guidance (as --cfg_scale=1).")
flags.DEFINE_integer("seed", 0, "Noise seed (image i uses fold_in(seed, i)).")
flags.DEFINE_bool("use_ema", None, "Sample with the EMA weights (default: yes; --mode=fid: "
                  "evals.fid.use_ema, whose default is the protocol's: online weights for "
                  "'original', EMA for 'guided').")
flags.DEFINE_enum("protocol", None, ["original", "guided"], "fid: 'original' (the original's "
                  "helper_eval.py: --steps at cfg 1, one more entry at --cfg_scale with "
                  "objective.denoise_timesteps steps, online weights) or 'guided' (--cfg_scale "
                  "at every budget, EMA) (default: the workdir config's evals.fid.protocol).")
flags.DEFINE_list("extra_metrics", None, "fid: ADM's metrics of the same samples besides FID, "
                  "any of is,sfid,precision_recall (default: the workdir config's "
                  "evals.fid.extra_metrics); see docs/evaluation.md.")
flags.DEFINE_integer("batch_size", 256, "Images per sampler call.")
flags.DEFINE_integer("checkpoint_step", None, "Which checkpoint (default: the latest).")
flags.DEFINE_list("guidance_interval", None, "t_min,t_max: the guidance interval a model with a "
                  "guidance-interval input (model.guidance_interval) is told; the scale is "
                  "--cfg_scale. Default: the config's evals.samples.guidance_interval.")
config_flags.DEFINE_config_file("config", None, "fid_stats: the config whose dataset to read "
                                 "(default: the --workdir's config.json).", lock_config=True)
flags.DEFINE_string("out", None, "fid_stats: the .npz to write.")
flags.DEFINE_string("split", "train", "fid_stats: the dataset split to read (TFDS split syntax).")
flags.DEFINE_string("fid_stats", None, "fid: reference statistics .npz (mu/sigma, or ADM arr_0) "
                    "(default: the workdir config's evals.fid.stats_path).")
flags.DEFINE_string("input_dir", None, "super_resolve: folder of PNG/JPEG images (any size); "
                    "sr_metrics: score on this folder of whole HR images (a benchmark such as "
                    "Set14) instead of the held-out crops.")
flags.DEFINE_string("output_dir", None, "super_resolve: where the PNG results go (same stems); "
                    "cascade: where samples.npz, the grids and cascade.json go.")
flags.DEFINE_bool("input_is_lr", False, "super_resolve: the inputs are the low-resolution images "
                  "(default: they are HR references, downsampled by the model's factor first).")
flags.DEFINE_bool("overwrite", False, "super_resolve: replace existing outputs.")
flags.DEFINE_string("lpips_weights", None, "sr_metrics: LPIPS (AlexNet) weights .npz from "
                    "shortcut_jax.tools.convert_lpips (default: $SHORTCUT_JAX_LPIPS; neither: "
                    "LPIPS is skipped).")
flags.DEFINE_string("prompts", None, "sample: a text file, one prompt a line, embedded with the "
                    "run's text model (data.text_model, or the digit words of the embedded demo); "
                    "image i gets prompt i % N.")
flags.DEFINE_string("embeddings", None, "sample: .npy [N, D] (or an .npz with 'embedding') of "
                    "vectors to condition on instead of --prompts.")
flags.DEFINE_string("inception", None, "FID Inception weights (default: evals.fid.inception_path, "
                    "else $SHORTCUT_JAX_INCEPTION).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.workdir is None and FLAGS.mode not in ("fid_stats", "cascade"):
    raise app.UsageError(f"--mode={FLAGS.mode} needs --workdir")
  # Before anything starts jax's backends (importing jax does not): the flags are read once.
  cpu_count = cpu_devices.configure() if FLAGS.mode in DATA_PARALLEL_MODES else 0
  distributed.initialize()
  console.setup(FLAGS.output_dir if FLAGS.mode == "cascade" else FLAGS.workdir,
                f"eval.py --mode={FLAGS.mode}")
  if cpu_count:
    logging.info("XLA CPU: %d single-threaded devices, batches split over them "
                 "(SHORTCUT_JAX_CPU_DEVICES=0: off)", cpu_count)
  evaluation.run(FLAGS.mode, FLAGS.workdir,
                 steps=None if FLAGS.steps is None else [int(s) for s in FLAGS.steps],
                 num_samples=FLAGS.num_samples, cfg_scale=FLAGS.cfg_scale if FLAGS.cfg else 1.0,
                 seed=FLAGS.seed,
                 use_ema=FLAGS.use_ema, batch_size=FLAGS.batch_size, step=FLAGS.checkpoint_step,
                 config=FLAGS.config, out=FLAGS.out, split=FLAGS.split,
                 fid_stats=FLAGS.fid_stats, inception_path=FLAGS.inception,
                 input_dir=FLAGS.input_dir, output_dir=FLAGS.output_dir,
                 input_is_lr=FLAGS.input_is_lr, overwrite=FLAGS.overwrite,
                 lpips_weights=FLAGS.lpips_weights, workdirs=FLAGS.workdirs,
                 prompts=FLAGS.prompts, embeddings=FLAGS.embeddings, protocol=FLAGS.protocol,
                 extra_metrics=FLAGS.extra_metrics,
                 guidance_interval=FLAGS.guidance_interval)


if __name__ == "__main__":
  console.run(main)
