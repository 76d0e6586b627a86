"""The digits configs the tests start from, changed by `section__key=value` keyword overrides."""

import importlib


def override(c, **changes):
  """Applies `objective__bootstrap_every=8`-style changes to the unlocked config `c`; lists
  become tuples. Returns `c`."""
  for dotted, value in changes.items():
    *path, key = dotted.split("__")
    node = c
    for name in path:
      node = node[name]
    node[key] = tuple(value) if isinstance(value, list) else value
  return c


def digits_config(arg=None, **changes):
  """`configs/digits_shortcut.py` (`arg`: e.g. "smoke"), unlocked, with `changes` applied."""
  c = importlib.import_module("configs.digits_shortcut").get_config(arg)
  c.unlock()
  return override(c, **changes)


def smoke_config(data_dir, **changes):
  """The smoke config on `data_dir`, synchronous checkpoints, every evaluator off, then `changes`."""
  c = digits_config("smoke")
  c.data.data_dir = data_dir
  c.checkpoint.async_save = False
  for name in c.evals:
    c.evals[name].every = 0
  return override(c, **changes)


def quick_run_config(name, data_dir, steps):
  """`configs/<name>.py:smoke` for a run of `steps` steps on `data_dir`: synchronous checkpoint
  at the last step, every evaluator off."""
  c = importlib.import_module(f"configs.{name}").get_config("smoke")
  c.unlock()
  c.data.data_dir = data_dir
  c.checkpoint.async_save = False
  c.max_steps = steps
  c.checkpoint.every_steps = steps
  for ev in c.evals.values():
    ev.every = 0
  return c
