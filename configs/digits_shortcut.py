"""The embedded default: a shortcut model drawing 16x16 digits, trained on a laptop CPU.

Command:
  python train.py --config=configs/digits_shortcut.py --workdir=workdirs/digits_shortcut
Hardware: 2 CPU cores, about 7.5 minutes (3,000 steps at batch 64, float32 compute, about
9 steps/s; the periodic evaluations at steps 1,500 and 3,000 add about a minute and a half).
Result: 1-step samples are readable digits of the requested class; FD-digits and class accuracy
at 1 … 128 steps are in docs/results.md (`python eval.py --mode=digits_metrics ...`).
Differences from the paper's settings, because the run is short: EMA rate 0.99 instead of 0.999
(a 0.999 EMA teacher is still near its zero-initialised output after a few thousand steps, so
its self-consistency targets are near zero), learning rate 1e-3 with a short warmup, and patch
size 4: the digits are 8x8 originals stored at 16x16, so 4x4 patches (16 tokens) carry what 2x2
patches (64 tokens) did at a quarter of the cost per step. Until 2026-12-06 the default was
patch 2 for 2,000 steps (`--config.model.patch_size=2 --config.max_steps=2000
--config.eval_every=1000`); docs/results.md says which results were measured with it.
"""

from shortcut_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.seed = 0
  c.batch_size = 64
  c.max_steps = 3_000
  c.log_every = 50
  c.eval_every = 1_500
  c.model.update(patch_size=4, hidden_size=128, depth=4, num_heads=4, mlp_ratio=4.0,
                 dtype="float32")
  c.objective.update(name="shortcut", denoise_timesteps=128, bootstrap_every=8, cfg_scale=1.5,
                     class_dropout_prob=0.1, bootstrap_cfg=False)
  c.optim.update(lr=1e-3, warmup_steps=100, schedule="constant", weight_decay=0.1, ema_rate=0.99)
  c.data.update(name="digits", image_size=16, num_classes=10)
  c.checkpoint.every_steps = 500
  c.evals.samples.update(num_images=40, cfg_scale=1.5)
  c.evals.loss_per_t.update(num_batches=1, num_bins=8)
  return config_lib.finalize(c, arg)
