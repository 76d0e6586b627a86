"""`config_value`: one field of a config section, for code that is handed a section as a
ConfigDict, a plain dict or any object (objectives, condition kinds, the optimizer)."""

from typing import Mapping

from shortcut_jax.core import schema

_MISSING = object()


def config_value(config, name: str, section: str = "objective"):
  """`config.<name>`; where the section (ConfigDict, mapping, object or None) lacks the field —
  a hand-made dict, or a section of an old config.json — the schema's default
  (`core.schema.default(section, name)`: defaults are written only there). A field the schema
  does not have is a KeyError naming it."""
  value = _MISSING
  if config is not None:
    if isinstance(config, Mapping):
      value = config.get(name, _MISSING)
    else:
      try:
        value = getattr(config, name)
      except (AttributeError, KeyError):
        pass
  return schema.default(section, name) if value is _MISSING else value
