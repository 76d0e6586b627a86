"""`config.model.name` -> the network an experiment trains.

A builder takes the experiment config, the batch spec (batch key -> per-example shape, e.g.
`{'image': (16, 16, 1), 'cond_image': (16, 16, 1)}`) and the objective, and returns a `Network`:
the Flax module, the `VelocityModel` every caller uses, and a pure `init(rng)` whose dummy inputs
come from the batch spec. Adding a network is one builder here and one entry in `MODELS`.
"""

import dataclasses
from typing import Any, Callable, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp

from shortcut_jax.core import conditioning as cond_lib
from shortcut_jax.models import dit as dit_lib
from shortcut_jax.models.velocity_model import VelocityModel
from shortcut_jax.core import paths

BatchSpec = Mapping[str, Tuple[int, ...]]


@dataclasses.dataclass(frozen=True, eq=False)
class Network:
  """What a model builder returns (see the module docstring)."""
  module: Any
  model: VelocityModel
  init: Callable[[Any], Any]


def _dit_module(config, objective, out_channels: int, has_image: bool,
                has_embedding: bool = False) -> dit_lib.DiT:
  m = config.model
  return dit_lib.DiT(
      patch_size=m.patch_size, hidden_size=m.hidden_size, depth=m.depth, num_heads=m.num_heads,
      mlp_ratio=m.mlp_ratio, out_channels=out_channels,
      class_dropout_prob=config.objective.class_dropout_prob, num_classes=config.data.num_classes,
      ignore_dt=not objective.uses_level, dropout=m.dropout, dtype=jnp.dtype(m.dtype),
      attention_impl=m.attention_impl, attention_scale=m.attention_scale, remat=m.remat,
      scan_layers=m.scan_layers,
      cond_image_mode=m.cond_image_mode if has_image else None,
      embedding_mode=m.embedding_mode if has_embedding else None,
      embedding_null=m.embedding_null, guidance_input=bool(m.guidance_input),
      guidance_interval=bool(m.guidance_interval))


def _init_fn(module, batch_spec: BatchSpec):
  args, kwargs = dit_lib.init_inputs(module, batch_spec)
  return lambda rng: module.init({"params": rng}, *args, **kwargs)["params"]


def build_dit(config, batch_spec: BatchSpec, objective) -> Network:
  """The DiT of `config.model`, conditioned on labels and, when the batch spec has them, on a
  `cond_image` (`model.cond_image_mode`) and an `embedding` (`model.embedding_mode`). An objective with a second output
  (`homo`'s acceleration) gets it from a second DiT or a second head (`velocity_and_acceleration`)."""
  has_image, has_embedding = "cond_image" in batch_spec, "embedding" in batch_spec
  conditioning = cond_lib.from_config(
      config, cond_image=has_image,
      embedding_dim=batch_spec["embedding"][-1] if has_embedding else 0)
  channels = batch_spec["image"][-1]
  if len(getattr(objective, "outputs", ("velocity",))) > 1:
    return velocity_and_acceleration(config, batch_spec, objective, conditioning, has_image,
                                     has_embedding)
  module = _dit_module(config, objective, channels, has_image, has_embedding)
  model = dit_lib.velocity_model(module, conditioning)
  if config.model.prediction == "data":
    model = data_prediction(model, paths.path_from_config(config.objective))
  return Network(module=module, model=model, init=_init_fn(module, batch_spec))


def velocity_and_acceleration(config, batch_spec: BatchSpec, objective, conditioning,
                              has_image: bool, has_embedding: bool) -> Network:
  """The two outputs of a higher-order objective (`objectives.homo`), concatenated along the
  channel axis: [velocity u1, acceleration u2].

  `model.acceleration`:
    * 'network' (default): u2 is a second DiT of the same size that takes u1's predicted
      velocity as extra input channels, u2(concat(x_t, u1), t, d), as the HOMO paper's
      acceleration model does; parameters `{'velocity': ..., 'acceleration': ...}` (each with
      its EMA). `objective.homo_velocity_stop_grad` stops the gradient of u1's velocity into u2
      (the authors' code does not).
    * 'head': one DiT whose final layer outputs both (2C channels): half the parameters and
      about half the step time, but u2 does not see u1's output.
  """
  channels = batch_spec["image"][-1]
  if config.model.acceleration == "head":
    module = _dit_module(config, objective, 2 * channels, has_image, has_embedding)
    return Network(module=module, model=dit_lib.velocity_model(module, conditioning),
                   init=_init_fn(module, batch_spec))
  # One DiT definition for both (it infers its input channels: C for u1, 2C for u2), each
  # network with its own parameters.
  module = _dit_module(config, objective, channels, has_image, has_embedding)
  dit = dit_lib.velocity_model(module, conditioning)
  stop = bool(config.objective.homo_velocity_stop_grad)
  spec2 = {**batch_spec, "image": (*batch_spec["image"][:-1], 2 * channels)}
  init1, init2 = _init_fn(module, batch_spec), _init_fn(module, spec2)

  def init(rng):
    k1, k2 = jax.random.split(rng)
    return {"velocity": init1(k1), "acceleration": init2(k2)}

  def apply_fn(params, x, t, level, cond, train, rngs):
    v = dit.apply_fn(params["velocity"], x, t, level, cond, train, rngs)
    v_in = jax.lax.stop_gradient(v) if stop else v
    rngs2 = None if rngs is None else {k: jax.random.fold_in(r, 1) for k, r in rngs.items()}
    a = dit.apply_fn(params["acceleration"], jnp.concatenate([x, v_in.astype(x.dtype)], axis=-1),
                    t, level, cond, train, rngs2)
    return jnp.concatenate([v, a], axis=-1)
  return Network(module=module, model=VelocityModel(apply_fn=apply_fn, conditioning=conditioning),
                 init=init)


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
  network = MODELS[name](config, batch_spec, objective)
  model = dataclasses.replace(network.model, matmul_precision=config.model.matmul_precision)
  return dataclasses.replace(network, model=model)
