"""Sample grids (PNG) at every step budget, with and without classifier-free guidance."""

import jax

from shortcut_jax.core import guidance as guidance_lib
from shortcut_jax import storage
from shortcut_jax.evaluators import generate as gen
from shortcut_jax.evaluators import image_files
from shortcut_jax.evaluators import conditions
from shortcut_jax.evaluators.base import Evaluator


class SampleGridEvaluator(Evaluator):
  """Writes `workdir/samples/step_<k>/grid_<N>steps[_cfg<w>].png` for each N in `steps`.

  Every budget gets the conditional grid (no suffix) and, for a guidable model, one at
  `cfg_scale` unless that is 1 (the same grid): 0 is the unconditional one (`guidance`). A
  'legacy' config (`guidance.convention`) keeps the old reading, where 0 meant no second grid.
  """

  def __init__(self, exp, workdir, every, *, steps, num_images, cfg_scale, use_ema):
    super().__init__(exp, workdir, every)
    self.steps, self.num_images, self.cfg_scale, self.use_ema = steps, num_images, cfg_scale, use_ema

  def run(self, state, step):
    if jax.process_index() != 0:
      return {}
    params = state.ema_params if self.use_ema else state.params
    out_dir = storage.join(self.workdir, "samples", f"step_{step}")
    storage.makedirs(out_dir)
    guidance = [None]
    w = guidance_lib.sampler_scale(self.exp.config, self.cfg_scale)
    if guidance_lib.convention(self.exp.config) == guidance_lib.LEGACY:
      second = w is not None  # As before: any nonzero scale, 1 included.
    else:
      second = not guidance_lib.is_conditional_scale(w)
    if second and conditions.is_guidable(self.exp):
      guidance.append(w)
    cols = self.exp.config.data.num_classes if conditions.is_conditional(self.exp.config) else None
    examples = None
    if "cond_image" in self.exp.model.conditioning.keys:
      # Image-conditioned: also the inputs and the targets (pixels), in the same grid layout.
      examples = conditions.held_out_examples(self.exp.config, self.num_images)
      for name, images in (("conditions.png", examples["cond_image"]),
                           ("targets.png", examples["image"])):
        image_files.save_png(storage.join(out_dir, name), image_files.image_grid(image_files.to_uint8(images), cols),
                     max(1, 64 // images.shape[1]))
    cond = conditions.sample_cond(self.exp, self.num_images, examples=examples)
    for n in self.steps:
      for w in guidance:
        images, _ = gen.generate(self.exp, params, num_images=self.num_images, num_steps=n,
                                 cfg_scale=w, seed=0, cond=cond)
        name = f"grid_{n}steps" + ("" if w is None else f"_cfg{w:g}") + ".png"
        image_files.save_png(storage.join(out_dir, name), image_files.image_grid(image_files.to_uint8(images), cols),
                     max(1, 64 // images.shape[1]))
    return {}
