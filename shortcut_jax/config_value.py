"""`config_value`: one field of a config section, with a default, for code that reads configs
given as a ConfigDict, a plain dict or any object (objectives, condition kinds)."""

from typing import Mapping


def config_value(config, name: str, default):
  """`config.<name>`, or `default` when the config (ConfigDict, mapping, object or None) lacks
  the field."""
  if config is None:
    return default
  if isinstance(config, Mapping):
    return config.get(name, default)
  try:
    return getattr(config, name)
  except (AttributeError, KeyError):
    return default
