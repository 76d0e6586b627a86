"""shortcut_jax: one-step and few-step generative models (shortcut models, flow matching) in JAX/Flax."""

import os as _os

__version__ = "0.1.0"

# TensorFlow serves tf.data and TFDS only here. Left alone, `import tensorflow` also imports all
# of Keras 3 (about 2 s at every start of a program, docs/benchmarks.md); told to use the legacy
# Keras, it looks for the tf_keras package, which this project does not install, and goes on
# without it. Set TF_USE_LEGACY_KERAS=0 before importing shortcut_jax to use tf.keras in the
# same process (no effect once TensorFlow is imported).
_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def load(workdir, **kwargs):
  """A trained workdir's model, to sample in Python: `shortcut_jax.api.load` (imported on first
  use, so that `import shortcut_jax` stays free of JAX)."""
  from shortcut_jax import api  # pylint: disable=g-import-not-at-top
  return api.load(workdir, **kwargs)
