"""The conditions of generated images, one per image: which label, held-out conditioning image or
embedding image i gets (the label policy, the held-out examples, the condition assembly), and
whether guidance applies to a model.

The conditions of image i are `sample_cond(exp, n)[key][i]` for every condition kind the model
takes: for image-conditioned models (super-resolution) the conditioning images of the held-out
split in stored order (repeated when it has fewer) with those examples' own labels; for other
models labels spread evenly over the classes.
"""

from typing import Dict, Mapping, Optional

import numpy as np

from shortcut_jax import errors
from shortcut_jax import latents as latents_lib
from shortcut_jax import text_encoders
from shortcut_jax.core import conditioning as cond_lib


def is_conditional(config) -> bool:
  """Whether the model was trained with labels (CelebA-style unconditional runs were not)."""
  return (config.data.num_classes > 1 and config.objective.class_dropout_prob < 1.0
          and config.objective.cfg_scale != 0)


def sample_labels(config, num_images: int) -> np.ndarray:
  """Labels spread evenly over the classes (0, 1, …, C-1, 0, 1, …); the null label if unconditional."""
  if not is_conditional(config):
    return np.full((num_images,), config.data.num_classes, np.int32)
  return (np.arange(num_images) % config.data.num_classes).astype(np.int32)


def held_out_examples(config, num_images: int, split: str = "test") -> Dict[str, np.ndarray]:
  """The first `num_images` examples of `split` (evaluation preprocessing, stored order; the
  split is cycled when smaller), every key the pixel pipeline yields ('image', 'label',
  'cond_image', 'embedding'): a run on precomputed latents reads the pixel dataset they were
  encoded from. Read whole by every process, so all processes agree."""
  from shortcut_jax.data import pipeline  # TensorFlow is only needed here.
  data_config = latents_lib.pixel_data_config(config.data)
  parts, have = [], 0
  while have < num_images:
    for batch in pipeline.make_dataset(data_config, split=split, global_batch_size=256, seed=0,
                                       train=False, process_index=0, process_count=1):
      parts.append(batch)
      have += len(batch["image"])
      if have >= num_images:
        break
  return {k: np.concatenate([p[k] for p in parts])[:num_images] for k in parts[0]}


def example_labels(config, num_images: int,
                   examples: Optional[Mapping[str, np.ndarray]] = None,
                   labels=None) -> np.ndarray:
  """The labels of `num_images` generated images (int32), by this policy:

  * a model trained without labels (`is_conditional` false): the null label, always;
  * `labels` given (an int or one per image): those;
  * images made from examples (super-resolution of held-out images): each example's own label;
    examples without labels (a user's images, a cascade's input: the class is unknown): the
    null label, i.e. the model's unconditional velocity for that condition (trained by label
    dropout, `objective.class_dropout_prob`);
  * no examples (a generator): `sample_labels`, spread evenly over the classes.
  """
  if not is_conditional(config):
    return sample_labels(config, num_images)
  if labels is not None:
    return np.broadcast_to(np.asarray(labels, np.int32), (num_images,)).copy()
  if examples is not None:
    if "label" in examples:
      return np.asarray(examples["label"], np.int32)[:num_images]
    return np.full((num_images,), config.data.num_classes, np.int32)
  return sample_labels(config, num_images)


def sample_cond(exp, num_images: int, split: str = "test",
                examples: Optional[Mapping[str, np.ndarray]] = None,
                embedding: Optional[np.ndarray] = None,
                labels=None) -> Dict[str, np.ndarray]:
  """The conditions of `num_images` generated images, for every kind the model takes (in the
  model's space: a conditioning image is encoded to latents in latent space). Images come from
  held-out examples; labels follow `example_labels` (the examples' own labels where the
  conditions come from examples, the null label for examples without labels or a model trained
  without labels, else spread evenly over the classes); embeddings come from the text model's
  own prompts (`text_encoders.default_prompts`) or else the held-out captions.

  Args:
    exp: the experiment.
    num_images: rows.
    split: where image conditions come from (`held_out_examples`).
    examples: those held-out examples when the caller already read them (their 'label', when
      they have one, is each image's label).
    embedding: float32 [num_images, embedding_dim] to use instead (e.g. `--prompts`).
    labels: the label of every image (an int, or one per image) instead of the policy above.
  """
  keys = exp.model.conditioning.keys
  if "embedding" in keys and embedding is None:
    prompts = text_encoders.default_prompts(exp.config.data, num_images)
    if prompts is not None:
      embedding = text_encoders.encode_prompts(exp.config.data, prompts)
  needs_examples = "cond_image" in keys or ("embedding" in keys and embedding is None)
  if needs_examples and examples is None:
    examples = held_out_examples(exp.config, num_images, split)
  cond = {"label": example_labels(exp.config, num_images, examples, labels)}
  if "cond_image" in keys:
    pixels = np.asarray(examples["cond_image"])[:num_images]
    cond["cond_image"] = np.asarray(latents_lib.encode_cond(exp.config, {"cond_image": pixels})[
        "cond_image"])
  if "embedding" in keys:
    if embedding is None:
      embedding = examples["embedding"]
    cond["embedding"] = np.asarray(embedding, np.float32)[:num_images]
  if cond_lib.GUIDANCE in keys:  # w = 1 here; the sampler sets the scale it guides with.
    cond[cond_lib.GUIDANCE] = np.asarray(cond_lib.guidance_rows(
        1.0, num_images, tuple(exp.config.evals.samples.get("guidance_interval", (0.0, 1.0)))))
  return cond


def intended_classes(exp, labels: np.ndarray) -> Optional[np.ndarray]:
  """The class each `sample_cond` image was asked for, for class accuracy: its label for a
  label-conditional model, its prompt's class where the text model knows it, else None."""
  if is_conditional(exp.config):
    return labels
  if "embedding" in exp.model.conditioning.keys:
    prompts = text_encoders.default_prompts(exp.config.data, len(labels))
    if prompts is not None:
      return text_encoders.prompt_classes(exp.config.data, prompts)
  return None


def is_guidable(exp) -> bool:
  """Whether classifier-free guidance applies: a label-conditional model, or one trained with
  dropout of another condition kind (its null branch is then meaningful)."""
  if is_conditional(exp.config):
    return True
  return any(k.guided for k in exp.model.conditioning.kinds if k.key != "label")


def prompted_cond(exp, num_samples: int, prompts: Optional[str], embeddings: Optional[str]):
  """(cond, prompt_index, prompts) for `--prompts` / `--embeddings`, or None without either:
  the model's usual conditions with image i's embedding replaced by prompt i % N's."""
  if not prompts and not embeddings:
    return None
  if "embedding" not in exp.model.conditioning.keys:
    raise errors.ArgumentError(
        "--prompts / --embeddings: this model was trained without embeddings "
        "(data.embedding_dim=0)")
  if prompts:
    texts = text_encoders.read_prompts(prompts)  # Local or remote files (`storage`).
    vectors = text_encoders.encode_prompts(exp.config.data, texts)
  else:
    vectors = text_encoders.load_embeddings_file(embeddings, int(exp.config.data.embedding_dim))
    texts = [f"embedding {i}" for i in range(len(vectors))]
  index = np.arange(num_samples) % len(vectors)
  return sample_cond(exp, num_samples, embedding=vectors[index]), index, texts
