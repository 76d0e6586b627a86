"""The evaluator interface: `due(step)` and `run(state, step) -> dict of scalar metrics`."""

from typing import Dict


class Evaluator:
  """Base class: runs every `every` steps (0 = never) and at the last step."""

  def __init__(self, exp, workdir: str, every: int):
    self.exp = exp
    self.workdir = workdir
    self.every = every

  def due(self, step: int) -> bool:
    return self.every > 0 and (step % self.every == 0 or step == self.exp.config.max_steps)

  def run(self, state, step: int) -> Dict[str, float]:
    raise NotImplementedError
