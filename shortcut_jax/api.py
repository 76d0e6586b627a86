"""The Python API for what users do outside the command line: load a trained workdir (or one
written by `tools.import_original`) and sample it at any step count.

    import shortcut_jax
    model = shortcut_jax.load("workdirs/digits_shortcut")       # its latest checkpoint, EMA
    images = model.sample(labels=range(10), num_steps=1)        # uint8 [10, 16, 16, 1]

`sample` takes the condition the model was trained with: class labels, text prompts (a model
trained on embeddings), low-resolution images (a super-resolution model), or nothing (labels
spread over the classes, held-out conditions). The images are the ones `eval.py --mode=sample`
writes for the same seed, step count and guidance (both go through `evaluators.generate`).
"""

from typing import Optional, Sequence

import numpy as np

from shortcut_jax import errors
from shortcut_jax import experiment
from shortcut_jax import text_encoders
from shortcut_jax.core import guidance
from shortcut_jax.evaluators import generate as gen
from shortcut_jax.evaluators import image_files
from shortcut_jax.evaluators import conditions


class TrainedModel:
  """A restored model: `sample(...)`; `config`, `step`, `image_shape`, `params`, `experiment`."""

  def __init__(self, exp, params, step: int, workdir: str):
    self.experiment, self.params, self.step, self.workdir = exp, params, step, workdir
    self.config = exp.config
    self.image_shape = tuple(exp.image_shape)

  def __repr__(self):
    return (f"TrainedModel({self.workdir!r}, step {self.step}, objective "
            f"{self.config.objective.name!r}, images {self.image_shape})")

  def sample(self, num_images: Optional[int] = None, *, labels=None,
             prompts: Optional[Sequence[str]] = None, cond_image=None, num_steps: int = 1,
             cfg_scale: Optional[float] = 1.0, seed: int = 0, batch_size: int = 256,
             uint8: bool = True) -> np.ndarray:
    """Generates images.

    Args:
      num_images: how many; by default one per label, prompt or condition image given.
      labels: an int (every image) or one class per image; default: spread over the classes.
        Ignored by a model trained without labels.
      prompts: one text per image (a model trained on embeddings, `data.embedding_dim > 0`).
      cond_image: the low-resolution input of a super-resolution model, float [N, H, W, C] in
        [-1, 1] at the output size (the upsampled LR image, `data.low_res.cond_image`); default:
        held-out images of its dataset.
      num_steps: sampling steps (1 = one network call per image for a shortcut model).
      cfg_scale: the guidance weight w: 1 conditional (the default), 0 unconditional, other
        values guided, v_u + w (v_c - v_u) (`core.guidance`).
      seed: the per-image noise seed (image i's noise does not depend on num_images).
      batch_size: images per network call.
      uint8: images as uint8 (else float32 in [-1, 1], unclipped).

    Returns:
      [num_images, H, W, C] images.
    """
    exp = self.experiment
    keys = exp.model.conditioning.keys
    if labels is not None and not np.isscalar(labels):
      labels = np.asarray(list(labels), np.int32)
    given = {"labels": labels if np.ndim(labels) else None, "prompts": prompts,
             "cond_image": cond_image}
    sizes = {name: len(v) for name, v in given.items() if v is not None}
    if num_images is None:
      if not sizes:
        raise errors.ArgumentError("give num_images, or labels / prompts / cond_image to count")
      num_images = next(iter(sizes.values()))
    for name, n in sizes.items():
      if n != num_images:
        raise errors.ArgumentError(f"{name} has {n} entries for {num_images} images")
    embedding = None
    if prompts is not None:
      if "embedding" not in keys:
        raise errors.ArgumentError("prompts: this model was trained without embeddings "
                                   "(data.embedding_dim=0)")
      embedding = text_encoders.encode_prompts(self.config.data, list(prompts))
    examples = None
    if cond_image is not None:
      if "cond_image" not in keys:
        raise errors.ArgumentError("cond_image: this model takes no conditioning image "
                                   "(data.low_res_factor=0)")
      cond_image = np.asarray(cond_image, np.float32)
      size = int(self.config.data.image_size)
      if cond_image.ndim != 4 or cond_image.shape[1:3] != (size, size):
        raise errors.ArgumentError(f"cond_image: expected [N, {size}, {size}, C] images at the "
                                   f"output size, got {cond_image.shape}")
      examples = {"cond_image": cond_image}
    cond = conditions.sample_cond(exp, num_images, examples=examples, embedding=embedding,
                           labels=labels)
    w = guidance.sampler_scale(self.config, cfg_scale)
    images, _ = gen.generate(exp, self.params, num_images=num_images, num_steps=num_steps,
                             cfg_scale=w, seed=seed, batch_size=batch_size, cond=cond,
                             progress=False)
    return image_files.to_uint8(images) if uint8 else images


def load(workdir: str, *, step: Optional[int] = None, use_ema: bool = True) -> TrainedModel:
  """A trained workdir's model, restored onto this machine's devices.

  Args:
    workdir: a training workdir (its config.json and checkpoints/), local or gs://, or one
      written by `python -m shortcut_jax.tools.import_original`.
    step: the checkpoint step (default: the latest intact one).
    use_ema: the EMA weights (default) or the online ones.
  """
  exp, state, restored = experiment.restore_experiment(workdir, step=step)
  state = experiment.evaluator_state(state)
  return TrainedModel(exp, state.ema_params if use_ema else state.params, restored, workdir)
