"""Loading Stable Diffusion VAE weights into `shortcut_jax.models.vae`, without torch.

Two on-disk formats, each a folder with diffusers' `config.json` (the architecture, read with
`VAEConfig.from_dict`) and one weight file:
  * diffusers' PyTorch format, `diffusion_pytorch_model.safetensors` (e.g.
    `stabilityai/sd-vae-ft-mse`), read with `safetensors.numpy` and converted: conv kernels
    OIHW -> HWIO, Linear [out, in] -> [in, out]; the mid-block attention may be stored under the
    current names (`to_q`, `to_k`, `to_v`, `to_out.0`), the legacy ones (`query`, `key`,
    `value`, `proj_attn`) or as 1x1 convs ([out, in, 1, 1]), all accepted;
  * the former diffusers Flax format, `flax_model.msgpack` (e.g. `pcuenq/sd-vae-ft-mse-flax`,
    what the original shortcut-models code loaded), whose tree is the module's own.
A `vae/` subfolder (Stable Diffusion pipeline repositories) is used when the folder itself has
no config.json.

`load_vae(name_or_path)` takes a folder (local or remote, e.g. gs://bucket/sd-vae-ft-mse: its
files are read through `shortcut_jax.storage`) or a Hugging Face hub id. A hub id is looked up in the
local hub cache first and downloaded only when that fails and the hub is reachable. With no
name it uses `$SHORTCUT_JAX_VAE`, else `DEFAULT_VAE`. Weights that cannot be found raise one
`VAEWeightsNotFoundError` saying which files, where to get them and where to put them; weights
that do not fit the config (missing, unexpected or mis-shaped tensors) raise `VAEWeightsError`
naming the first bad key.
"""

import os
import pathlib
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from absl import logging
import flax
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from shortcut_jax import errors
from shortcut_jax import storage
from shortcut_jax.models import vae as vae_lib

DEFAULT_VAE = "stabilityai/sd-vae-ft-mse"
ENV_VAR = "SHORTCUT_JAX_VAE"
CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "diffusion_pytorch_model.safetensors"
MSGPACK_FILE = "flax_model.msgpack"
_WEIGHT_FILES = (SAFETENSORS_FILE, MSGPACK_FILE)

PathLike = Union[str, os.PathLike]


class VAEWeightsNotFoundError(errors.UserError, FileNotFoundError):
  """The VAE's config.json / weight file is neither on disk nor obtainable from the hub."""


class VAEWeightsError(errors.UserError, ValueError):
  """A weight file does not match its config: a missing, unexpected or mis-shaped tensor."""


def _how_to_get(hub_id: str) -> str:
  return (f"\n  Needed: {CONFIG_FILE} plus {SAFETENSORS_FILE} (diffusers format) or "
          f"{MSGPACK_FILE} (the former diffusers Flax format), in one folder."
          f"\n  Get them from https://huggingface.co/{hub_id} on a machine with internet access, "
          f"e.g. `hf download {hub_id} {CONFIG_FILE} {SAFETENSORS_FILE} --local-dir DIR`."
          f"\n  Put them here: copy DIR to this machine and pass it as vae.path=DIR "
          f"(load_vae(DIR)), or set ${ENV_VAR}=DIR (used when no path is given).")


def _weights_folder(folder) -> Optional[Tuple[pathlib.Path, pathlib.Path]]:
  """(folder holding config.json, weight file) inside `folder` or its `vae/`, or None."""
  for candidate in (folder, folder / "vae"):
    if (candidate / CONFIG_FILE).is_file():
      for name in _WEIGHT_FILES:
        if (candidate / name).is_file():
          return candidate, candidate / name
  return None


def _looks_like_hub_id(name: str) -> bool:
  parts = name.split("/")
  return (len(parts) == 2 and all(parts) and not name.startswith((".", "~"))
          and "\\" not in name)


def _hub_offline() -> bool:
  from huggingface_hub import constants  # pylint: disable=g-import-not-at-top
  value = os.environ.get("HF_HUB_OFFLINE", "")
  return constants.HF_HUB_OFFLINE or value.upper() in ("1", "ON", "YES", "TRUE")


def _from_hub(hub_id: str, revision: Optional[str]) -> Tuple[pathlib.Path, pathlib.Path]:
  """Resolves a hub id through the local hub cache, then (when online) a download."""
  try:
    from huggingface_hub import snapshot_download  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise VAEWeightsNotFoundError(
        f"VAE {hub_id!r}: huggingface_hub is not installed, so hub ids cannot be resolved."
        + _how_to_get(hub_id)) from e
  patterns = [CONFIG_FILE, *_WEIGHT_FILES] + [f"vae/{f}" for f in (CONFIG_FILE, *_WEIGHT_FILES)]
  attempts = [True] if _hub_offline() else [True, False]
  problems = []
  for local_only in attempts:
    try:
      folder = snapshot_download(hub_id, revision=revision, allow_patterns=patterns,
                                 local_files_only=local_only)
    except Exception as e:  # pylint: disable=broad-except  # Any hub failure means "not here".
      problems.append(f"{'local cache' if local_only else 'download'}: {type(e).__name__}: {e}")
      continue
    found = _weights_folder(pathlib.Path(folder))
    if found:
      return found
    problems.append(f"{'local cache' if local_only else 'download'}: {folder} lacks the files")
  if len(attempts) == 1:
    where = "the hub is offline (HF_HUB_OFFLINE is set) and the local hub cache lacks them"
  else:
    where = "neither the local hub cache nor a download provided them"
  details = "; ".join(p.splitlines()[0] for p in problems)
  raise VAEWeightsNotFoundError(
      f"VAE weights {hub_id!r} not found: no local folder of that name, and {where} ({details})."
      + _how_to_get(hub_id))


def resolve_vae_files(name_or_path: Optional[PathLike] = None,
                      revision: Optional[str] = None) -> Tuple[pathlib.Path, pathlib.Path]:
  """Finds the VAE's config.json and weight file.

  Args:
    name_or_path: a local folder, a hub id (`owner/name`), or None for `$SHORTCUT_JAX_VAE`,
      falling back to `DEFAULT_VAE`.
    revision: hub revision (branch, tag or commit) for a hub id.

  Returns:
    (config.json path, weight file path): `pathlib.Path`s, or `epath.Path`s in a remote folder.

  Raises:
    VAEWeightsNotFoundError: nothing usable at that folder / hub id.
  """
  if name_or_path is None:
    name_or_path = os.environ.get(ENV_VAR) or DEFAULT_VAE
  name = os.fspath(name_or_path)
  folder = storage.path(name) if storage.is_remote(name) else pathlib.Path(name).expanduser()
  if folder.is_dir():
    found = _weights_folder(folder)
    if found is None:
      present = sorted(p.name for p in folder.iterdir())[:20]
      raise VAEWeightsNotFoundError(
          f"VAE folder {folder} has no {CONFIG_FILE} with {SAFETENSORS_FILE} or {MSGPACK_FILE} "
          f"(it holds {present})." + _how_to_get(DEFAULT_VAE))
    return found[0] / CONFIG_FILE, found[1]
  if not _looks_like_hub_id(name):
    raise VAEWeightsNotFoundError(
        f"VAE folder {folder} does not exist (and {name!r} is not a hub id)."
        + _how_to_get(DEFAULT_VAE))
  found = _from_hub(name, revision)
  return found[0] / CONFIG_FILE, found[1]


def expected_shapes(config: vae_lib.VAEConfig) -> Dict[str, Tuple[int, ...]]:
  """'/'-joined parameter path -> shape of `AutoencoderKL(config)`'s parameters."""
  module = vae_lib.AutoencoderKL(config)
  side = config.downsample_factor
  images = jax.ShapeDtypeStruct((1, side, side, config.in_channels), jnp.float32)
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), images)["params"]
  flat = traverse_util.flatten_dict(flax.core.unfreeze(shapes), sep="/")
  return {k: tuple(v.shape) for k, v in flat.items()}


_INDEXED = ("down_blocks", "up_blocks", "resnets", "attentions", "downsamplers", "upsamplers")
_ATTENTION_NAMES = {"to_q": "query", "query": "query", "q": "query",
                    "to_k": "key", "key": "key", "k": "key",
                    "to_v": "value", "value": "value", "v": "value",
                    "proj_attn": "proj_attn", "proj_out": "proj_attn"}
_DENSE = ("query", "key", "value", "proj_attn")
_NORMS = ("norm1", "norm2", "group_norm", "conv_norm_out")


def _torch_key_to_path(key: str) -> Optional[str]:
  """diffusers state-dict key -> module parameter path, or None for a key of no known form."""
  parts = key.split(".")
  *modules, leaf = parts
  out = []
  i = 0
  while i < len(modules):
    part = modules[i]
    following = modules[i + 1] if i + 1 < len(modules) else None
    if part in _INDEXED and following is not None and following.isdigit():
      out.append(f"{part}_{following}")
      i += 2
    elif part == "to_out" and following == "0":
      out.append("proj_attn")
      i += 2
    elif part in _ATTENTION_NAMES and out and out[-1].startswith("attentions_"):
      out.append(_ATTENTION_NAMES[part])
      i += 1
    else:
      out.append(part)
      i += 1
  if not out or leaf not in ("weight", "bias"):
    return None
  if leaf == "weight":
    leaf = "scale" if out[-1] in _NORMS else "kernel"
  return "/".join(out + [leaf])


def _path_to_torch_key(path: str) -> str:
  """Module parameter path -> diffusers' current state-dict key (for messages)."""
  *modules, leaf = path.split("/")
  names = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
  out = []
  for m in modules:
    head, _, index = m.rpartition("_")
    out.append(f"{head}.{index}" if head in _INDEXED and index.isdigit() else names.get(m, m))
  return ".".join(out + ["bias" if leaf == "bias" else "weight"])


def _torch_layout(path: str, shape: Tuple[int, ...]) -> Tuple[int, ...]:
  """A module parameter shape written in PyTorch's layout (for messages)."""
  if path.endswith("/kernel") and len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if path.endswith("/kernel") and len(shape) == 2:
    return (shape[1], shape[0])
  return tuple(shape)


def _torch_value(path: str, value: np.ndarray) -> np.ndarray:
  """A PyTorch tensor in the module's layout."""
  if not path.endswith("/kernel"):
    return value
  dense = path.split("/")[-2] in _DENSE
  if dense and value.ndim == 4 and value.shape[2:] == (1, 1):
    value = value[:, :, 0, 0]  # A 1x1 conv over positions is a Linear.
  if value.ndim == 4:
    return np.transpose(value, (2, 3, 1, 0))  # OIHW -> HWIO.
  if value.ndim == 2:
    return value.T  # Linear [out, in] -> Dense [in, out].
  return value


def _checked(converted: Mapping[str, Tuple[np.ndarray, str, Tuple[int, ...]]],
             config: vae_lib.VAEConfig, source: str, torch_names: bool):
  """Validates {path: (value, source key, source shape)} against the module; nested params."""
  expected = expected_shapes(config)
  for path, (_, key, _) in sorted(converted.items(), key=lambda kv: kv[1][1]):
    if path not in expected:
      raise VAEWeightsError(f"{source}: unexpected key {key!r} (no such parameter in an "
                            f"AutoencoderKL with this config.json: {config})")
  for path in sorted(expected):
    if path not in converted:
      key = _path_to_torch_key(path) if torch_names else path
      raise VAEWeightsError(f"{source}: missing key {key!r} (config.json: {config})")
  for path, (value, key, source_shape) in sorted(converted.items(), key=lambda kv: kv[1][1]):
    if tuple(value.shape) != expected[path]:
      want = _torch_layout(path, expected[path]) if torch_names else expected[path]
      raise VAEWeightsError(f"{source}: key {key!r} has shape {tuple(source_shape)}, expected "
                            f"{tuple(want)} (config.json: {config})")
  flat = {tuple(path.split("/")): jnp.asarray(np.asarray(value, np.float32))
          for path, (value, _, _) in converted.items()}
  return traverse_util.unflatten_dict(flat)


def convert_diffusers_state_dict(state_dict: Mapping[str, np.ndarray], config: vae_lib.VAEConfig,
                                 source: str = "state dict"):
  """diffusers `AutoencoderKL` state dict (numpy, PyTorch layout) -> module parameters.

  Raises:
    VAEWeightsError: a key of unknown form, a duplicate (e.g. both `to_q` and `query`), a
      missing or unexpected parameter or a shape mismatch; the message names the key.
  """
  converted = {}
  for key in sorted(state_dict):
    path = _torch_key_to_path(key)
    if path is None:
      raise VAEWeightsError(f"{source}: unexpected key {key!r} (not an AutoencoderKL parameter)")
    if path in converted:
      raise VAEWeightsError(f"{source}: key {key!r} duplicates {converted[path][1]!r}")
    value = np.asarray(state_dict[key])
    converted[path] = (_torch_value(path, value), key, value.shape)
  return _checked(converted, config, source, torch_names=True)


def convert_flax_tree(tree: Mapping[str, Any], config: vae_lib.VAEConfig, source: str = "tree"):
  """A diffusers-Flax `FlaxAutoencoderKL` parameter tree -> module parameters (same names;
  a top-level {'params': ...} wrapper is removed).

  Raises:
    VAEWeightsError: a missing or unexpected parameter or a shape mismatch, naming the key.
  """
  tree = flax.core.unfreeze(tree)
  if set(tree) == {"params"}:
    tree = tree["params"]
  flat = traverse_util.flatten_dict(tree, sep="/")
  converted = {k: (np.asarray(v), k, np.shape(v)) for k, v in flat.items()}
  return _checked(converted, config, source, torch_names=False)


def read_config(path: PathLike) -> vae_lib.VAEConfig:
  return vae_lib.VAEConfig.from_dict(storage.read_json(path))


def load_vae_params(name_or_path: Optional[PathLike] = None, revision: Optional[str] = None):
  """(VAEConfig, float32 parameters) of a VAE folder or hub id; see `load_vae`."""
  config_path, weights_path = resolve_vae_files(name_or_path, revision)
  config = read_config(config_path)
  data = storage.read_bytes(weights_path)
  if weights_path.name == SAFETENSORS_FILE:
    from safetensors.numpy import load  # pylint: disable=g-import-not-at-top
    params = convert_diffusers_state_dict(load(data), config, str(weights_path))
  else:
    tree = flax.serialization.msgpack_restore(data)
    params = convert_flax_tree(tree, config, str(weights_path))
  logging.info("Loaded VAE weights from %s (%s)", weights_path, config)
  return config, params


def load_vae(name_or_path: Optional[PathLike] = None, dtype: Any = jnp.float32,
             chunk_size: Optional[int] = None, revision: Optional[str] = None) -> vae_lib.VAE:
  """Loads a Stable Diffusion VAE (torch-free) into a jitted `VAE` wrapper.

  Args:
    name_or_path: a folder with config.json and diffusion_pytorch_model.safetensors or
      flax_model.msgpack (or those in its `vae/`); a hub id such as 'stabilityai/sd-vae-ft-mse'
      (local hub cache first, then a download when online); None: `$SHORTCUT_JAX_VAE`, else
      `DEFAULT_VAE`.
    dtype: compute dtype (parameters stay float32).
    chunk_size: examples per compiled call (see `VAE`), or None.
    revision: hub revision for a hub id.

  Returns:
    A `VAE`.

  Raises:
    VAEWeightsNotFoundError: the files are not available (the message says where to get them).
    VAEWeightsError: the weights do not match config.json (the message names the key).
  """
  config, params = load_vae_params(name_or_path, revision)
  return vae_lib.VAE(config, params, dtype=dtype, chunk_size=chunk_size)
