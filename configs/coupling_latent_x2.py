"""Coupling flow matching in latent space, 2x: the setting of "Boosting Latent Diffusion with
Flow Matching" (arXiv 2312.07360, code CompVis/fm-boosting), as a shortcut model on
CelebA-HQ 256.

Command (after preparing the data and the VAE, see docs/training.md):
  python train.py --config=configs/coupling_latent_x2.py --workdir=gs://.../coupling_latent_x2
  python eval.py --workdir=W --mode=sr_metrics --steps=1,2,4
Hardware: a TPU v3-8 / 8 GPUs (DiT-B/2 on 32x32x4 latents). Not run at this scale here (no
accelerator; the tests exercise only its `:smoke` stand-in): no result recorded.
Data: HR = 256x256 crops, LR = their 128x128 antialiased downsample, upsampled 2x in pixel
space and encoded by the frozen SD VAE to the HR latent grid: that latent is both the flow's
start x0 — noised by the DDPM forward process at step 400 of the linear 1,000-step schedule, as
fm-boosting does (`noising_step: 400` in its configs/flow400_64-128/unet-base_psu.yaml;
`objective.source_noise_step=400` here) — and context channels concatenated to x_t.
fm-boosting's optimisation: lr 3e-5, EMA 0.999. Unconditional (no labels, no guidance).
Smoke (`:smoke`): the embedded photos at 32x32 with a tiny random VAE; seconds on a CPU.
"""

from shortcut_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.load_sibling_config(__file__, "celebahq_dit_b")()
  c.unlock()
  c.data.low_res_factor = 2
  c.model.cond_image_mode = "concat"
  c.objective.update(source="cond_image", source_noise_step=400)
  c.optim.update(lr=3e-5, ema_rate=0.999)
  c.evals.samples.steps = (1, 2, 4, 8)
  return config_lib.finalize(c, arg)
