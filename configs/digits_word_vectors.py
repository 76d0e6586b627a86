"""Vector (text-like) conditioning without a download: the shortcut default on digits, where
the condition is not the label but a vector — the fixed random vector of the class's word
("zero" … "nine", `shortcut_jax.text_encoders`) plus Gaussian noise (std 1) per example.

Commands:
  python train.py --config=configs/digits_word_vectors.py --workdir=workdirs/digits_words
  python eval.py --workdir=workdirs/digits_words --mode=digits_metrics --steps=1,4 \
      --num_samples=1000 [--cfg_scale=1]   # 1: conditional, without guidance
  printf 'three\nseven\n' > prompts.txt
  python eval.py --workdir=workdirs/digits_words --mode=sample --steps=1 --prompts=prompts.txt
Hardware: 2 CPU cores; the network and budget of `digits_shortcut.py`.
Every label is dropped (`class_dropout_prob=1`: the model only ever sees the null label), so the
class reaches the model through the vector alone; the vector is dropped to a zero null with
probability 0.1 for classifier-free guidance. Class accuracy (`digits_metrics`) is against the
word each image was prompted with (image i: class i % 10), with and without guidance.
Measured (the figures and times here, docs/results.md) with the default's earlier network
and budget, patch 2 for 2,000 steps: `configs/digits_shortcut.py` says how to reproduce it.
"""

from shortcut_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.load_sibling_config(__file__, "digits_shortcut")()
  c.unlock()
  c.data.update(embedding_dim=32, embeddings="digit_words", embedding_noise=1.0)
  c.objective.class_dropout_prob = 1.0
  c.objective.embedding_dropout_prob = 0.1
  return config_lib.finalize(c, arg)
