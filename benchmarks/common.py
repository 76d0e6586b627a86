"""Shared output helper of the benchmark scripts: JSON to stdout and optionally to a file."""

import json


def emit_json(result, out=None):
  """Prints `result` as JSON (what the scripts promise) and writes it to `out` when given."""
  text = json.dumps(result, indent=1)
  print(text)
  if out:
    with open(out, "w") as f:
      f.write(text + "\n")
