"""Config files: the `get_config(arg)` argument and configs that derive from a sibling file."""

from typing import Optional

import ml_collections

from shortcut_jax import errors as errors_lib
from shortcut_jax import storage
from shortcut_jax.config.smoke import apply_smoke


def finalize(c: ml_collections.ConfigDict, arg: Optional[str]) -> ml_collections.ConfigDict:
  """Applies the `get_config(arg)` argument ('smoke' or None) and locks the config."""
  if arg not in (None, "", "smoke"):
    raise errors_lib.ConfigError(f"unknown config argument {arg!r}: use ':smoke' or nothing")
  if arg == "smoke":
    apply_smoke(c)
  c.lock()
  return c


def load_sibling_config(this_file: str, name: str):
  """`get_config` of another file in the same configs folder, loaded by path so that a config
  deriving from another works however it is loaded (config_flags, import, tests); the folder
  may be remote (gs://...: the file is read through `shortcut_jax.storage`)."""
  import os
  import types
  this_file = os.fspath(this_file)
  folder = (this_file.rsplit("/", 1)[0] if storage.is_remote(this_file)
            else os.path.dirname(os.path.abspath(this_file)))
  path = storage.join(folder, f"{name}.py")
  module = types.ModuleType(f"shortcut_jax_config_{name}")
  module.__file__ = path
  code = compile(storage.read_bytes(path), path, "exec")
  exec(code, module.__dict__)  # pylint: disable=exec-used
  return module.get_config
