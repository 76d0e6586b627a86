"""Cascades: a generator followed by one or more upscalers (`eval.py --mode=cascade`).

Stage 0 is any trained workdir (it generates images from its source, with labels or held-out
conditions as `conditions.sample_cond` gives them); every later stage is a super-resolution model
(`data.low_res_factor = f`) whose input is the previous stage's output, bicubic-upsampled by f
to its size — exactly the condition it was trained on (and, for a coupling model, its start).
Labels travel down the cascade: an upscaler trained with the generator's classes gets its
labels (any other label-conditional upscaler the null label).

Before anything is sampled every stage is checked: an upscaler's LR size (its image size / f)
and channels must be the previous stage's output size and channels, and each step budget must be
one its objective supports; a mismatch is an error naming the stages.

A cascade ending at the embedded digits' size also gets FD-digits and class accuracy of its
saved images (as `--mode=digits_metrics` scores a one-stage model), for the comparison with a
direct generator, and of the control that replaces the last upscaler by bicubic upsampling.

Timing: each stage is first run on one batch (compiling its sampler and, in latent space, its
decoder), then timed on all `num_samples` images; the JSON gives seconds and images/s per stage
(compile excluded) and for the whole cascade.
"""

import time
from typing import Dict, Optional, Sequence

import numpy as np
from absl import logging

from shortcut_jax import latents as latents_lib
from shortcut_jax import storage
from shortcut_jax.data import low_res
from shortcut_jax.evaluators import generate as gen
from shortcut_jax.evaluators import image_files
from shortcut_jax.evaluators import conditions


def pixel_shape(exp):
  """(H, W, C) of the images a stage outputs (decoded RGB for latent-space models)."""
  size = int(exp.config.data.image_size)
  channels = 3 if latents_lib.uses_latents(exp.config) else int(exp.image_shape[-1])
  return (size, size, channels)


def check_stages(exps: Sequence, steps: Sequence[int], names: Sequence[str]) -> None:
  """Raises ValueError unless every stage fits the next (module docstring)."""
  if len(exps) < 2:
    raise ValueError("--mode=cascade needs a generator and at least one upscaler: "
                     "--workdirs=GEN,UP1[,UP2...]")
  if len(steps) != len(exps):
    raise ValueError(f"--steps must give one step budget per stage ({len(exps)} stages), got "
                     f"{list(steps)}")
  problems = []
  for k, (exp, n) in enumerate(zip(exps, steps)):
    try:
      exp.objective.check_steps([n])
    except ValueError as e:
      problems.append(f"stage {k} ({names[k]}): {e}")
  for k in range(1, len(exps)):
    exp, prev = exps[k], pixel_shape(exps[k - 1])
    factor = int(exp.config.data.low_res_factor or 0)
    if not factor or "cond_image" not in exp.model.conditioning.keys:
      problems.append(f"stage {k} ({names[k]}) is not an upscaler (data.low_res_factor=0)")
      continue
    h, w, c = pixel_shape(exp)
    want = (h // factor, w // factor, c)
    if tuple(prev) != want:
      problems.append(f"stage {k} ({names[k]}) takes {want[0]}x{want[1]}x{want[2]} inputs "
                      f"(its {h}x{w} images / factor {factor}); stage {k - 1} "
                      f"({names[k - 1]}) outputs {prev[0]}x{prev[1]}x{prev[2]}")
  if problems:
    raise ValueError("cascade stages do not fit: " + "; ".join(problems))


def _stage_cond(exp, previous: Optional[np.ndarray], labels: Optional[np.ndarray],
                generator_config, n: int):
  """Stage conditions: the previous output upsampled; the generator's labels when both stages
  were trained with the same classes (else, for a label-conditional upscaler, the null label:
  the class of its input is unknown, `conditions.example_labels`)."""
  if previous is None:
    return conditions.sample_cond(exp, n)
  factor = int(exp.config.data.low_res_factor)
  cond = conditions.sample_cond(exp, n, examples={"cond_image": low_res.upsample(previous, factor)})
  if (conditions.is_conditional(exp.config) and conditions.is_conditional(generator_config)
      and exp.config.data.num_classes == generator_config.data.num_classes):
    cond["label"] = np.asarray(labels, np.int32)
  return cond


def run_cascade(exps: Sequence, params: Sequence, steps: Sequence[int], *, num_samples: int,
                output_dir: str, cfg_scale: Optional[float], seed: int = 0,
                batch_size: int = 256, names: Optional[Sequence[str]] = None) -> Dict:
  """Runs the cascade; writes OUT/samples.npz, OUT/stage_<k>.png grids and OUT/cascade.json
  (with `digits_metrics` when the last stage is a digits model).

  Args:
    exps, params: each stage's experiment and weights, generator first.
    steps: sampling steps per stage.
    num_samples: images.
    output_dir: where the results go (created; local or remote).
    cfg_scale: guidance for every stage that was trained with condition dropout (None: none).
    seed: stage k uses seed + k (image i of the stage from `fold_in(seed + k, i)`).
    batch_size: images per sampler call.
    names: stage names for messages (the workdirs).

  Returns:
    The JSON written to OUT/cascade.json.
  """
  names = list(names or [f"stage{k}" for k in range(len(exps))])
  check_stages(exps, steps, names)
  storage.makedirs(output_dir)
  previous, labels, stages, before_last = None, None, [], None
  for k, (exp, p, n_steps) in enumerate(zip(exps, params, steps)):
    cond = _stage_cond(exp, previous, labels, exps[0].config, num_samples)
    kwargs = dict(num_steps=n_steps, cfg_scale=cfg_scale, seed=seed + k, progress=False)
    # Compile (and warm up) on one batch; then time the whole stage.
    warm = min(batch_size, num_samples)
    gen.generate(exp, p, num_images=warm, cond={key: v[:warm] for key, v in cond.items()},
                 batch_size=batch_size, **kwargs)
    start = time.perf_counter()
    images, stage_labels = gen.generate(exp, p, num_images=num_samples, cond=cond,
                                        batch_size=batch_size, **kwargs)
    seconds = time.perf_counter() - start
    if labels is None:
      labels = stage_labels
    before_last, previous = previous, np.clip(images, -1.0, 1.0)
    grid = storage.join(output_dir, f"stage_{k}.png")
    image_files.save_png(grid, image_files.image_grid(image_files.to_uint8(previous[:64])))
    stages.append({"workdir": names[k], "steps": int(n_steps),
                   "image_shape": list(previous.shape[1:]), "seconds": seconds,
                   "images_per_s": num_samples / seconds, "grid": grid})
    logging.info("cascade stage %d (%s): %d images %s in %.2f s (%.1f images/s)", k, names[k],
                 num_samples, tuple(previous.shape[1:]), seconds, num_samples / seconds)
  samples = storage.join(output_dir, "samples.npz")
  pixels = image_files.to_uint8(previous)
  storage.write_npz(samples, images=pixels, labels=np.asarray(labels, np.int32))
  total = sum(s["seconds"] for s in stages)
  result = {"stages": stages, "num_samples": num_samples, "seconds": total,
            "images_per_s": num_samples / total, "samples": samples,
            "cfg_scale": cfg_scale, "seed": seed}
  final = exps[-1].config.data
  if final.name == "digits":
    # Scored like a one-stage digits model (`--mode=digits_metrics`), on the saved images.
    from shortcut_jax.evaluators import digits_metrics as dm  # pylint: disable=g-import-not-at-top
    clf = dm.get_classifier(final)
    ref, classes = dm.reference_stats(clf, final), conditions.intended_classes(exps[0], labels)

    def score(images):  # As saved: quantised to uint8.
      return dm.digits_metrics(clf, ref, image_files.to_uint8(images) / 127.5 - 1.0, classes)

    result["digits_metrics"] = score(previous)
    # The control: the last upscaler replaced by bicubic upsampling of its input.
    result["digits_metrics_bicubic_last_stage"] = score(
        low_res.upsample(before_last, int(final.low_res_factor)))
    logging.info("cascade digits metrics: %s (last stage bicubic: %s)", result["digits_metrics"],
                 result["digits_metrics_bicubic_last_stage"])
  storage.write_json(storage.join(output_dir, "cascade.json"), result, indent=2)
  return result

