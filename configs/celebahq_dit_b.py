"""CelebA-HQ 256, DiT-B/2, unconditional shortcut model (the paper's CelebA run).

Command (after preparing the data, see docs/training.md):
  python train.py --config=configs/celebahq_dit_b.py --workdir=gs://.../celebahq_dit_b
Hardware: a TPU v3-8 / 8 GPUs; 410k steps at batch 64 (the original README's settings).
Not run at this scale here (no accelerator; the tests exercise only its `:smoke` stand-in):
the numbers below are the paper's, not this library's.
Result reported by the paper (FID-50k): 6.9 at 128 steps, 13.8 at 4 steps, 20.5 at 1 step,
under the original's FID protocol, this config's `evals.fid.protocol='original'`
(`shortcut_jax.core.guidance`): the sweep 1, 4, 32, 128 steps with the null label (an unconditional
model: the original samples it at cfg 0), no guided entry, the online (not EMA) weights.
`python eval.py --mode=fid --workdir=W --num_samples=50000 --fid_stats=...` follows it.
Latent space, as the paper: the frozen SD VAE (`sd-vae-ft-mse`, scaling 0.18215) encodes each
256x256 batch to 32x32x4 latents inside the train step (`data.latents='online'`), where patch 2
gives 256 tokens. The VAE comes from `vae.path` / $SHORTCUT_JAX_VAE (docs/training.md);
`--config.data.latents=precomputed --config.data.latents_dir=DIR` trains on latents encoded once
by `python -m shortcut_jax.tools.encode_dataset`.
Smoke (`:smoke`): a stand-in of the same kind that ships offline — the `photos` dataset (RGB
crops of scikit-image / scikit-learn photographs, unconditional) at 32x32 — and a tiny random
VAE built in process (16x16x4 latents); seconds on a CPU.
"""

from shortcut_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.batch_size = 64
  c.max_steps = 410_000
  c.log_every = 1_000
  c.eval_every = 20_000
  c.model.update(patch_size=2, hidden_size=768, depth=12, num_heads=12, mlp_ratio=4.0)
  # Unconditional: one class and every label dropped; cfg_scale 0 trains on the null label.
  c.objective.update(name="shortcut", cfg_scale=0.0, class_dropout_prob=1.0, bootstrap_cfg=False)
  c.data.update(name="celebahq256", image_size=256, num_classes=1, latents="online")
  c.checkpoint.every_steps = 20_000
  c.evals.samples.cfg_scale = 0.0  # Unconditional (w = 0): the null label, as trained.
  # The original's FID protocol (helper_eval.py do_fid_calc: [1, 4, 32] + [128] when
  # denoise_timesteps is 128); `use_ema` None = its weights, the online ones.
  c.evals.fid.update(protocol="original", steps=(1, 4, 32, 128))
  return config_lib.finalize(c, arg)
