"""`config.model.name` -> the network an experiment trains.

A builder takes the experiment config, the batch spec (batch key -> per-example shape, e.g.
`{'image': (16, 16, 1), 'cond_image': (16, 16, 1)}`) and the objective, and returns a `Network`:
the Flax module, the `VelocityModel` every caller uses, and a pure `init(rng)` whose dummy inputs
come from the batch spec. Adding a network is one builder here and one entry in `MODELS`.
"""

import dataclasses
from typing import Any, Callable, Dict, Mapping, Tuple

import jax.numpy as jnp

from shortcut_jax import conditioning as cond_lib
from shortcut_jax.models import dit as dit_lib
from shortcut_jax.models.velocity_model import VelocityModel
from shortcut_jax.objectives import paths

BatchSpec = Mapping[str, Tuple[int, ...]]


@dataclasses.dataclass(frozen=True, eq=False)
class Network:
  """What a model builder returns (see the module docstring)."""
  module: Any
  model: VelocityModel
  init: Callable[[Any], Any]


def build_dit(config, batch_spec: BatchSpec, objective) -> Network:
  """The DiT of `config.model`, conditioned on labels and, when the batch spec has a
  `cond_image`, on that image (`model.cond_image_mode`)."""
  m = config.model
  has_image = "cond_image" in batch_spec
  module = dit_lib.DiT(
      patch_size=m.patch_size, hidden_size=m.hidden_size, depth=m.depth, num_heads=m.num_heads,
      mlp_ratio=m.mlp_ratio, out_channels=batch_spec["image"][-1],
      class_dropout_prob=config.objective.class_dropout_prob, num_classes=config.data.num_classes,
      ignore_dt=not objective.uses_level, dropout=m.dropout, dtype=jnp.dtype(m.dtype),
      attention_impl=m.attention_impl, attention_scale=m.attention_scale, remat=m.remat,
      cond_image_mode=m.cond_image_mode if has_image else None)
  conditioning = cond_lib.from_config(config, cond_image=has_image)
  args, kwargs = dit_lib.init_inputs(module, batch_spec)
  init = lambda rng: module.init({"params": rng}, *args, **kwargs)["params"]
  model = dit_lib.velocity_model(module, conditioning)
  if m.prediction == "data":
    model = data_prediction(model, paths.path_from_config(config.objective))
  return Network(module=module, model=model, init=init)


def data_prediction(model: VelocityModel, path) -> VelocityModel:
  """`model` read as a prediction of the data x1, turned into the velocity it implies on `path`
  (`Path.velocity_from_data`): objectives, samplers and CFG keep seeing velocities.

  `model.prediction='data'` ("x-prediction"): the network no longer has to reproduce the source
  noise in its output, which a DiT with large patches relative to its width does poorly
  (speckled samples); `'velocity'` is the original's parameterisation.
  """
  def apply_fn(params, x, t, level, cond, train, rngs):
    x1_hat = model.apply_fn(params, x, t, level, cond, train, rngs)
    return path.velocity_from_data(x1_hat, x, t)
  return VelocityModel(apply_fn=apply_fn, conditioning=model.conditioning)


MODELS: Dict[str, Callable[..., Network]] = {"dit": build_dit}


def build_network(config, batch_spec: BatchSpec, objective) -> Network:
  """The network `config.model.name` names; raises ValueError listing the known ones."""
  name = config.model.name
  if name not in MODELS:
    raise ValueError(f"model.name must be one of {sorted(MODELS)}, got {name!r}")
  return MODELS[name](config, batch_spec, objective)
