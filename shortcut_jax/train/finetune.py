"""Starting a run from another run's weights (`config.init`): fine-tuning, e.g. a flow-matching
model into a shortcut model.

`init.workdir` names a training workdir (its `config.json` and `checkpoints/`; an
`import_original` workdir is one), or one of its checkpoint folders `<workdir>/checkpoints/<step>`,
local or remote; `init.step` picks a step (-1: the latest); `init.weights` which weights: 'ema'
(the ones sampled, the default) or 'online'. They start both the online and the EMA weights of
the new run. Everything else starts fresh: the optimizer state, the step (0), the objective's
state, the data order. Only a run without a checkpoint of its own starts this way: a resume
restores its own checkpoint and ignores `init` (with a notice).

The source must be the same network on the same data (`mismatches`, which also checks a
distillation objective's teacher); its objective may differ. What the
new objective adds, and what each part starts as:

* The step-size input. A network that ignored the step size (an objective without
  `uses_level`, e.g. `naive`: its DiT is built with `ignore_dt`, its second `TimestepEmbedder`
  always saw 0 and added a constant vector c0 to the conditioning) is given one that uses it,
  with that embedder's output layer changed to kernel 0 and bias c0 (`step_size_input`): the
  new network adds c0 whatever the step size, so at start it predicts what the source
  predicted, at every level, the finest included; the embedder's first layer keeps its
  weights, so the gradient reaches the new kernel from the first step.
* A source whose network took the step size keeps it as it is, into a network that takes it or
  ignores it (then at level 0, as the source's own `ignore_dt` runs do).
* A guidance input (`model.guidance_input`, `GuidanceEmbedder_<i>`) the source lacks starts
  as this run's fresh initialisation with an output layer of zeros (`added_inputs`): it adds
  nothing until trained, so the new network starts as the source.
* Any other parameter the source lacks, or holds with another shape, is an error naming it
  (`checkpoints.manager.shape_mismatches`).
"""

from typing import List, Optional, Tuple

import jax.numpy as jnp
import ml_collections

from shortcut_jax import errors

WEIGHTS = ("ema", "online")
STEP_SIZE_EMBEDDER = "TimestepEmbedder_1"
ADDED_INPUTS = "GuidanceEmbedder_"

# Fields that must agree between another run's config (a source, a teacher) and this run's.
MODEL_FIELDS = ("name", "patch_size", "hidden_size", "depth", "num_heads", "mlp_ratio",
                "attention_scale", "prediction", "cond_image_mode", "embedding_mode")
DATA_FIELDS = ("image_size", "num_classes", "low_res_factor", "latents", "embedding_dim")


class InitError(errors.UserError, ValueError):
  """`config.init` names no run, or one whose network does not fit this run's."""


def resolve(init_config) -> Tuple[str, Optional[int]]:
  """(source workdir, step or None for the latest) from `init.workdir` / `init.step`."""
  from shortcut_jax.checkpoints import manager  # pylint: disable=g-import-not-at-top
  return manager.run_and_step(init_config.workdir, init_config.step)


def no_source(workdir: str) -> InitError:
  """The error for an `init.workdir` that holds no training run."""
  return InitError(f"init.workdir: {workdir} holds no training run (config.json and "
                   f"checkpoints/); train one first, e.g. `python train.py "
                   f"--config=configs/digits_naive.py --workdir={workdir}`, or import the "
                   f"original's checkpoint with `python -m shortcut_jax.tools.import_original`")


def mismatches(config: ml_collections.ConfigDict, source: ml_collections.ConfigDict,
               names: Tuple[str, str] = ("source", "this run")) -> List[str]:
  """What differs between another run's network and data (`source`: a fine-tuning source, a
  distillation teacher) and this run's, one line each, with `names` for (source, this run)."""
  problems = []
  for section, fields in (("model", MODEL_FIELDS), ("data", DATA_FIELDS)):
    for field in fields:
      a, b = config[section].get(field), source[section].get(field)
      if a != b:
        problems.append(f"{section}.{field}: {names[0]} {b!r}, {names[1]} {a!r}")
  return problems


def step_size_input(params, hidden_size: int, dtype) -> dict:
  """`params` of a network that ignored the step size, changed so that the step size enters
  and the output is unchanged at every step size (module docstring)."""
  from shortcut_jax.models import dit  # pylint: disable=g-import-not-at-top
  embedder = params[STEP_SIZE_EMBEDDER]
  c0 = dit.TimestepEmbedder(hidden_size, dtype).apply({"params": embedder}, jnp.zeros((1,)))[0]
  out = embedder["Dense_1"]
  new = dict(embedder, Dense_1=dict(out, kernel=jnp.zeros_like(out["kernel"]),
                                    bias=c0.astype(out["bias"].dtype)))
  return dict(params, **{STEP_SIZE_EMBEDDER: new})


def source_weights(state, init_config, *, source_uses_level: bool, uses_level: bool,
                   hidden_size: int, dtype):
  """The weights the new run starts from: `init.weights` of the restored source state, given a
  step-size input when the new objective needs one and the source's network ignored it."""
  weights = state.ema_params if init_config.weights == "ema" else state.params
  if uses_level and not source_uses_level and STEP_SIZE_EMBEDDER in weights:
    weights = step_size_input(weights, hidden_size, dtype)
  return weights


def added_inputs(weights, fresh_params) -> dict:
  """`weights` with the input embedders it lacks (`ADDED_INPUTS`) taken from `fresh_params`,
  their output layer (`Dense_1`) set to zeros (module docstring)."""
  weights = dict(weights)
  for name, embedder in fresh_params.items():
    if name.startswith(ADDED_INPUTS) and name not in weights:
      out = embedder["Dense_1"]
      weights[name] = dict(embedder, Dense_1={k: jnp.zeros_like(v) for k, v in out.items()})
  return weights
