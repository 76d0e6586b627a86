"""The numeric policy of a model: which dtypes hold what, and how precise its matmuls are.

* Parameters: float32 always (the master weights AdamW and the EMA update; the original's).
* Compute: `model.dtype`, 'float32' or 'bfloat16' (the original's default; each layer's
  activations and matmul inputs). 'float16' is refused: its 5-bit exponent underflows small
  gradients unless the loss is scaled, and this library does not scale losses. bfloat16 has
  float32's range at float16's memory.
* Output: float32 (the velocity every objective and sampler sees; `dit.velocity_model`).
* Matmul precision: `model.matmul_precision`, applied around every call of the model and around
  the whole train and validation step (`scope`):
    - 'default': JAX's setting (`jax_default_matmul_precision`, e.g. set by a tool), which
      leans to speed: float32 matmuls as one bfloat16 pass on TPU, TF32 on Ampere and newer
      GPUs, float32 on CPU;
    - 'high': three bfloat16 passes on TPU (close to float32); on GPU what XLA maps HIGH to;
    - 'highest': full float32 on every backend.
  It acts on float32 matmul inputs: a float32 model, and the float32 parts of a bfloat16 one
  (the timestep embedders' last layers, the 'einsum' attention's weights times v).
"""

import contextlib

import jax

MATMUL_PRECISIONS = ("default", "high", "highest")


def scope(name):
  """A context in which traced matmuls without an explicit precision use `name`'s.

  'default' (or None) changes nothing, so an outer `jax.default_matmul_precision` (the
  original-target checks run under 'highest') still holds.
  """
  if name in (None, "default"):
    return contextlib.nullcontext()
  if name not in MATMUL_PRECISIONS:
    raise ValueError(f"model.matmul_precision must be one of {MATMUL_PRECISIONS}, got {name!r}")
  return jax.default_matmul_precision(name)
