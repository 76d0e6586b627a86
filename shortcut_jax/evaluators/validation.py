"""Validation loss on the held-out split, computed without any parameter update."""

import functools

import jax
import numpy as np

from shortcut_jax.train import train_step as train_step_lib
from shortcut_jax.data import pipeline
from shortcut_jax.evaluators.base import Evaluator


class ValidationLossEvaluator(Evaluator):
  """Mean objective loss over `num_batches` held-out batches, with EMA and online weights."""

  def __init__(self, exp, workdir, every, *, num_batches):
    super().__init__(exp, workdir, every)
    self.num_batches = num_batches
    c = exp.config
    self._eval = jax.jit(functools.partial(
        train_step_lib.eval_step, model=exp.model, objective=exp.objective,
        objective_config=c.objective, encoder=exp.encoder))
    self._encoder_params = None if exp.encoder is None else exp.encoder.vae.params

  def _batches(self):
    c = self.exp.config
    it = pipeline.make_dataset(c.data, split="test", global_batch_size=c.batch_size, seed=c.seed,
                               train=False)
    for _, batch in zip(range(self.num_batches), it):
      yield batch

  def run(self, state, step):
    results = {}
    for name, use_ema in (("val/loss", False), ("val/loss_ema", True)):
      losses = [float(jax.device_get(self._eval(state, batch, None, self._encoder_params,
                                                use_ema=use_ema))["train/loss"])
                for batch in self._batches()]
      results[name] = float(np.mean(losses))
    return results
