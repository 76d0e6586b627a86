"""Turns a PyTorch SiT or DiT checkpoint into a library workdir, e.g. to fine-tune a public
flow model into a one-step model (`config.init`, docs/training.md):

  python -m shortcut_jax.tools.import_pytorch_dit --checkpoint=SiT-XL-2-256x256.pt --source=sit \
      --config=configs/imagenet_shortcut_from_sit_xl.py --workdir=workdirs/sit_xl_2

SiT (Ma et al. 2024, github.com/willisma/SiT) and DiT (Peebles & Xie 2023,
github.com/facebookresearch/DiT) share one network: the blocks of this library's DiT with
1/sqrt(head_dim) attention (`model.attention_scale='sqrt'`), a single time embedder and a class
table. What the conversion does, layer by layer (`convert`):

* names and layouts: `x_embedder.proj` (a [D, C, p, p] conv on NCHW images) -> `PatchEmbed_0`
  ([p, p, C, D], NHWC); each torch Linear [out, in] -> a Dense kernel [in, out]; the fused
  `attn.qkv` [3D, D] (q, k, v in that order) -> the original's separate k, q, v projections
  (`Dense_1`, `Dense_2`, `Dense_3`); `attn.proj`, `mlp.fc1`, `mlp.fc2`, both `adaLN_modulation.1`
  and `final_layer.linear` -> their Dense layers. The fixed `pos_embed` is not a parameter here
  (the library computes the same 2-D sin-cos table); it is compared with it.
* learned sigma: with `learn_sigma` the output layer makes 2C channels per pixel, the velocity
  (SiT) or noise (DiT) in the first C; the other C are dropped.
* the class table: num_classes + 1 rows, the last the null label, as here. A table without the
  null row (a model trained without label dropout) gets a zero row, with a warning.
* what SiT and DiT lack: the step-size embedder (`TimestepEmbedder_1`) gets the fresh
  initialisation of its first layer and an output layer of zeros, so it adds nothing and the
  network ignores the step size until fine-tuning trains it; so do the guidance embedders of a
  config with `model.guidance_input` (`train.finetune.added_inputs`); the original's unused
  log-variance table (`Embed_0`) is zeros.
* time. SiT (its `transport`, linear path, velocity prediction) embeds t in [0, 1] as it is,
  with t = 0 noise and t = 1 data, x_t = t x1 + (1 - t) x0 and velocity x1 - x0: this library's
  convention, so nothing changes and the converted network's velocity is SiT's. DiT embeds the
  integer diffusion step (0 ... 999, 999 = noise) and predicts the noise of its VP schedule: no
  change of weights turns that into a velocity at t in [0, 1], so a converted DiT predicts DiT's
  noise when given DiT's step as t. It is a starting point for fine-tuning (the weights), not a
  velocity model.

The workdir holds the weights as both the online and the EMA weights at step 0, with a fresh
optimizer; its config is the given one, which must describe the checkpoint's network (sizes,
`data.num_classes`, the image size; `model.num_heads` is not stored in the checkpoint) and say
`model.attention_scale='sqrt'`; an `init.workdir` it names (the fine-tuning config's, which
points at this import) is cleared. Every name and shape is checked before anything is written.
Reading a `.pt` file needs torch (`pip install torch`, CPU build); nothing else in the library
does.
"""

import argparse
import re
from typing import Dict, Tuple

import jax
import numpy as np
from absl import flags, logging
from ml_collections import config_flags

from shortcut_jax import console
from shortcut_jax import errors
from shortcut_jax import experiment
from shortcut_jax import storage
from shortcut_jax.checkpoints.manager import CheckpointMismatchError, shape_mismatches
from shortcut_jax.core import layer_stack
from shortcut_jax.models.dit_embeddings import sincos_2d_position_embedding
from shortcut_jax.tools import import_original
from shortcut_jax.tools import torch_weights
from shortcut_jax.train import finetune

SOURCES = ("sit", "dit")
WEIGHTS = ("ema", "model")
# Library parameters that SiT and DiT do not have, and what they start as (module docstring).
_ADDED = ("TimestepEmbedder_1", "Embed_0")
_BLOCK = re.compile(r"blocks\.(\d+)\.")


class PyTorchCheckpointError(errors.UserError, ValueError):
  """A state dict that is not a SiT / DiT of the layout `convert` reads."""


def _dense(sd, name) -> dict:
  return {"kernel": sd[f"{name}.weight"].T, "bias": sd[f"{name}.bias"]}


def expected_keys(depth: int, with_pos_embed: bool = True):
  """The state-dict keys of a SiT / DiT of `depth` blocks."""
  keys = {"x_embedder.proj.weight", "x_embedder.proj.bias", "y_embedder.embedding_table.weight"}
  linears = ["t_embedder.mlp.0", "t_embedder.mlp.2", "final_layer.linear",
             "final_layer.adaLN_modulation.1"]
  for i in range(depth):
    linears += [f"blocks.{i}.{n}" for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2",
                                            "adaLN_modulation.1")]
  keys |= {f"{n}.{p}" for n in linears for p in ("weight", "bias")}
  if with_pos_embed:
    keys.add("pos_embed")
  return keys


def check_keys(sd: Dict[str, np.ndarray]) -> int:
  """The depth of the state dict's network; raises PyTorchCheckpointError naming the keys that
  are missing or unexpected."""
  blocks = {int(m.group(1)) for k in sd for m in [_BLOCK.match(k)] if m}
  depth = max(blocks) + 1 if blocks else 0
  expected = expected_keys(depth, with_pos_embed="pos_embed" in sd)
  missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
  if missing or unexpected or not depth:
    raise PyTorchCheckpointError(
        "not the state dict of a SiT / DiT (github.com/willisma/SiT, "
        "github.com/facebookresearch/DiT): "
        + "; ".join(filter(None, [f"missing {missing[:6]}" if missing else "",
                                  f"unexpected {unexpected[:6]}" if unexpected else "",
                                  "no blocks.<i>" if not depth else ""])))
  return depth


def convert(sd: Dict[str, np.ndarray], num_classes: int) -> Tuple[dict, dict]:
  """A SiT / DiT state dict (key -> numpy array) -> (this library's DiT parameters without the
  parts SiT lacks (`_ADDED`), what the checkpoint says about its network)."""
  depth = check_keys(sd)
  conv = sd["x_embedder.proj.weight"]
  hidden, channels, patch = conv.shape[0], conv.shape[1], conv.shape[2]
  params = {
      "PatchEmbed_0": {"Conv_0": {"kernel": conv.transpose(2, 3, 1, 0),
                                  "bias": sd["x_embedder.proj.bias"]}},
      "TimestepEmbedder_0": {"Dense_0": _dense(sd, "t_embedder.mlp.0"),
                             "Dense_1": _dense(sd, "t_embedder.mlp.2")},
  }
  table = sd["y_embedder.embedding_table.weight"]
  if table.shape[0] == num_classes:
    logging.warning("the checkpoint's class table has no null row (trained without label "
                    "dropout): the null label starts as a zero vector")
    table = np.concatenate([table, np.zeros_like(table[:1])])
  elif table.shape[0] != num_classes + 1:
    raise CheckpointMismatchError(
        f"the checkpoint's class table has {table.shape[0]} rows, but data.num_classes is "
        f"{num_classes} (a table has num_classes + 1 rows with the null label, or num_classes)")
  params["LabelEmbedder_0"] = {"Embed_0": {"embedding": table}}
  for i in range(depth):
    b = f"blocks.{i}."
    qkv_w, qkv_b = (np.split(sd[f"{b}attn.qkv.{p}"], 3) for p in ("weight", "bias"))
    dense = lambda j: {"kernel": qkv_w[j].T, "bias": qkv_b[j]}  # j: 0 q, 1 k, 2 v
    params[f"DiTBlock_{i}"] = {
        "Dense_0": _dense(sd, f"{b}adaLN_modulation.1"),
        "Dense_1": dense(1), "Dense_2": dense(0), "Dense_3": dense(2),  # k, q, v
        "Dense_4": _dense(sd, f"{b}attn.proj"),
        "MlpBlock_0": {"Dense_0": _dense(sd, f"{b}mlp.fc1"), "Dense_1": _dense(sd, f"{b}mlp.fc2")},
    }
  out = _dense(sd, "final_layer.linear")
  out_channels, rest = divmod(out["bias"].shape[0], patch * patch)
  if rest or out_channels not in (channels, 2 * channels):
    raise PyTorchCheckpointError(
        f"final_layer.linear makes {out['bias'].shape[0]} outputs per token: not patch_size^2 "
        f"({patch * patch}) times {channels} or {2 * channels} (learned sigma) channels")
  if out_channels == 2 * channels:  # learned sigma: keep the first C channels of each pixel
    keep = lambda a: a.reshape(*a.shape[:-1], patch, patch, 2 * channels)[..., :channels].reshape(
        *a.shape[:-1], patch * patch * channels)
    out = {"kernel": keep(out["kernel"]), "bias": keep(out["bias"])}
  params["FinalLayer_0"] = {"Dense_0": _dense(sd, "final_layer.adaLN_modulation.1"),
                            "Dense_1": out}
  info = dict(depth=depth, hidden_size=hidden, patch_size=patch, in_channels=channels,
              mlp_ratio=sd["blocks.0.mlp.fc1.weight"].shape[0] / hidden,
              learn_sigma=out_channels == 2 * channels)
  if "pos_embed" in sd:
    _check_pos_embed(sd["pos_embed"], hidden)
  return params, info


def _check_pos_embed(pos, hidden: int) -> None:
  tokens = pos.reshape(-1, hidden).shape[0]
  grid = int(round(tokens ** 0.5))
  ours = sincos_2d_position_embedding(hidden, grid, grid)
  if grid * grid != tokens or not np.allclose(pos.reshape(tokens, hidden), ours, atol=1e-5):
    raise PyTorchCheckpointError(
        f"the checkpoint's pos_embed ({tokens} tokens) is not the fixed 2-D sin-cos table of a "
        "square grid that this library's DiT computes")


def load_state_dict(path: str, weights: str = "ema") -> Dict[str, np.ndarray]:
  """The network's state dict from a `.pt` file: a bare state dict (the released SiT / DiT
  files), or a training checkpoint of SiT's / DiT's train.py ({'model', 'ema', 'opt', 'args'}),
  from which `weights` ('ema' or 'model') is taken."""
  if weights not in WEIGHTS:
    raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
  # Their train.py stores its argparse.Namespace beside the weights.
  sd = torch_weights.load_torch_state_dict(path, safe_globals=(argparse.Namespace,),
                                           pick=weights)
  return {k.removeprefix("module."): v for k, v in sd.items()}


def import_pytorch_dit(checkpoint: str, config, workdir: str, source: str = "sit",
                       weights: str = "ema") -> dict:
  """Writes `workdir/checkpoints/0` and `workdir/config.json` from a SiT / DiT `.pt` file;
  returns what the checkpoint says about its network.

  Raises:
    PyTorchCheckpointError: not a SiT / DiT state dict.
    CheckpointMismatchError: the config does not describe the checkpoint's network (nothing is
      written).
    FileExistsError: the workdir already holds checkpoints.
  """
  if source not in SOURCES:
    raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
  if config.model.attention_scale != "sqrt":
    raise CheckpointMismatchError(
        "SiT and DiT scale attention by 1/sqrt(head_dim): set "
        "--config.model.attention_scale=sqrt (the config says "
        f"{config.model.attention_scale!r})")
  storage.check(workdir, write=True)
  import_original.check_empty(workdir)
  params, info = convert(load_state_dict(checkpoint, weights), config.data.num_classes)
  shape = import_original.sample_shape(config, info["in_channels"])
  exp = experiment.build_experiment(config, image_shape=shape)
  fresh = jax.jit(exp.init_state)(jax.random.PRNGKey(config.seed))
  fresh_params = layer_stack.convert(fresh.params, scanned=False)
  for name in _ADDED:
    params[name] = jax.tree.map(np.zeros_like, fresh_params[name])
  params["TimestepEmbedder_1"]["Dense_0"] = fresh_params["TimestepEmbedder_1"]["Dense_0"]
  params = finetune.added_inputs(params, fresh_params)  # a guidance input, adding nothing yet
  problems = shape_mismatches(fresh_params, params)
  if problems:
    raise CheckpointMismatchError(
        f"the config does not describe the checkpoint's network ({len(problems)} differences): "
        + "; ".join(problems[:8]) + f"\n  The checkpoint has depth={info['depth']} "
        f"hidden_size={info['hidden_size']} patch_size={info['patch_size']} "
        f"mlp_ratio={info['mlp_ratio']:g} and {info['in_channels']} input channels")
  params = layer_stack.convert(params, scanned=bool(layer_stack.is_scanned(fresh.params)))
  params = jax.tree.map(lambda ref, x: np.asarray(x, ref.dtype), fresh.params, params)
  state = fresh.replace(params=params, ema_params=params)
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.init.workdir = None  # The imported run is the source, not a fine-tuning of one.
  import_original.write_workdir(workdir, config, state, 0, {
      "data_position": 0, "image_shape": list(shape), "imported_from": storage.absolute(checkpoint),
      "imported_source": source})
  if source == "dit":
    logging.warning("a converted DiT predicts DiT's noise at DiT's step (0 ... 999) given as t, "
                    "not a velocity: fine-tune it (init.workdir) before sampling")
  logging.info("imported %s (%s, %s) into %s", checkpoint, source, info, workdir)
  return info


def main(argv):
  del argv
  info = import_pytorch_dit(FLAGS.checkpoint, FLAGS.config, FLAGS.workdir, FLAGS.source,
                            FLAGS.weights)
  print(f"imported a {FLAGS.source} of depth {info['depth']}, hidden size {info['hidden_size']} "
        f"into {FLAGS.workdir}")


if __name__ == "__main__":
  FLAGS = flags.FLAGS
  flags.DEFINE_string("checkpoint", None, "The SiT / DiT .pt file.")
  flags.DEFINE_string("workdir", None, "New workdir to create.")
  flags.DEFINE_enum("source", "sit", SOURCES, "Which network made the checkpoint.")
  flags.DEFINE_enum("weights", "ema", WEIGHTS,
                    "Which weights of a training checkpoint ({'model', 'ema', ...}).")
  config_flags.DEFINE_config_file("config", None, "Config describing the checkpoint's network.")
  flags.mark_flags_as_required(["checkpoint", "workdir", "config"])
  console.run(main)
