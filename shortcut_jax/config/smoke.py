"""`apply_smoke`: any config shrunk so a few steps run in seconds on a CPU (`--config=file.py:smoke`)."""

import ml_collections

from shortcut_jax.data.catalog import SPECS

# Datasets downloaded by hand: a smoke run swaps them for an offline stand-in.
MANUAL_DATASETS = tuple(name for name, spec in SPECS.items() if spec.manual)


def apply_smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks any config so a few steps run in seconds on a CPU (`--config=file.py:smoke`)."""
  c.batch_size = 16
  c.max_steps = 4
  c.log_every = 2
  c.eval_every = 4
  if c.data.name in MANUAL_DATASETS:
    # A stand-in of the same kind that ships offline: RGB photographs, unconditional.
    c.data.update(name="photos", num_classes=1)
    c.objective.update(cfg_scale=0.0, class_dropout_prob=1.0, bootstrap_cfg=False)
  c.data.image_size = min(c.data.image_size, 32)
  if c.data.latents != "none":
    c.data.latents = "online"
    c.vae.update(random_init=True, dtype="float32")  # Tiny random VAE (factor 2), no files.
  c.model.update(patch_size=min(c.model.patch_size, 4), hidden_size=32, depth=1, num_heads=2,
                 dtype="float32", remat="none")
  c.objective.denoise_timesteps = 8
  c.objective.bootstrap_every = 4
  c.optim.warmup_steps = min(c.optim.warmup_steps, 2)
  c.checkpoint.every_steps = 2
  c.checkpoint.max_to_keep = 2
  from shortcut_jax import objectives  # Imported here: the registry imports model code.
  try:
    most = objectives.get_objective(c.objective.name).max_sample_steps
  except ValueError:
    most = None  # Reported by `validate`.
  within = lambda steps: tuple(n for n in steps if most is None or n <= most)
  c.evals.samples.update(steps=within((1, 2, 8)), num_images=4)
  c.evals.loss_per_t.update(num_batches=1, num_bins=4)
  c.evals.validation.num_batches = 1
  c.evals.fid.update(steps=within((1, 8)), num_samples=32, batch_size=16)
  return c
