"""Offline evaluation of a workdir (what eval.py runs): samples and digits metrics."""

import json
import os
from typing import Dict, List, Optional

import jax
import numpy as np
from absl import logging

from shortcut_jax import trainer
from shortcut_jax.evaluators import generate as gen

MODES = ("sample", "digits_metrics")


def run(mode: str, workdir: str, *, steps: List[int], num_samples: int, cfg_scale: Optional[float],
        seed: int = 0, use_ema: bool = True, batch_size: int = 256, step: Optional[int] = None):
  """Runs one evaluation mode; returns its results (also written into the workdir)."""
  if mode not in MODES:
    raise ValueError(f"unknown mode {mode!r}; known: {MODES}")
  exp, state, ckpt_step = trainer.restore_experiment(workdir, step=step)
  M = exp.config.objective.denoise_timesteps
  bad = [n for n in steps if not 1 <= n <= M]
  if bad:
    raise ValueError(f"--steps {bad}: each must be between 1 and denoise_timesteps ({M})")
  params = state.ema_params if use_ema else state.params
  logging.info("restored step %d from %s", ckpt_step, workdir)
  if mode == "sample":
    return sample(exp, params, workdir, steps, num_samples, cfg_scale, seed, batch_size)
  return digits_metrics(exp, params, workdir, steps, num_samples, cfg_scale, seed, batch_size,
                        ckpt_step)


def sample(exp, params, workdir, steps, num_samples, cfg_scale, seed, batch_size) -> Dict[int, str]:
  """Writes W/samples/samples_<N>.npz (images uint8 NHWC, labels) and grid_<N>.png per N."""
  out_dir = os.path.join(workdir, "samples")
  os.makedirs(out_dir, exist_ok=True)
  written = {}
  for n in steps:
    images, labels = gen.generate(exp, params, num_images=num_samples, num_steps=n,
                                  cfg_scale=cfg_scale, seed=seed, batch_size=batch_size)
    images = gen.to_uint8(images)
    if jax.process_index() == 0:
      path = os.path.join(out_dir, f"samples_{n}.npz")
      np.savez(path, images=images, labels=labels)
      cols = exp.config.data.num_classes if gen.is_conditional(exp.config) else None
      gen.save_png(os.path.join(out_dir, f"grid_{n}.png"), gen.image_grid(images[:100], cols),
                   max(1, 64 // images.shape[1]))
      written[n] = path
      logging.info("wrote %d samples with %d steps to %s", len(images), n, path)
  return written


def digits_metrics(exp, params, workdir, steps, num_samples, cfg_scale, seed, batch_size, ckpt_step):
  """FD-digits and class accuracy per step budget -> W/digits_metrics.json."""
  from shortcut_jax.evaluators import digits_metrics as dm
  clf = dm.get_classifier(exp.config.data)
  ref = dm.reference_stats(clf, exp.config.data)
  test_images, test_labels = dm.load_split(exp.config.data, "test")
  results = {"checkpoint_step": ckpt_step, "cfg_scale": cfg_scale, "num_samples": num_samples,
             "held_out_test_split": dm.digits_metrics(clf, ref, test_images, test_labels),
             "steps": {}}
  for n in steps:
    images, labels = gen.generate(exp, params, num_images=num_samples, num_steps=n,
                                  cfg_scale=cfg_scale, seed=seed, batch_size=batch_size)
    results["steps"][str(n)] = dm.digits_metrics(
        clf, ref, images, labels if gen.is_conditional(exp.config) else None)
    logging.info("%d steps: %s", n, results["steps"][str(n)])
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "digits_metrics.json"), "w") as f:
      json.dump(results, f, indent=2)
  print(json.dumps(results, indent=2))
  return results
