"""Builds the evaluators named in `config.evals` (one entry per evaluator, keyed by its name)."""

from shortcut_jax import config as config_lib
from shortcut_jax.evaluators.fid_evaluator import FIDEvaluator
from shortcut_jax.evaluators.loss_per_t import LossPerTEvaluator
from shortcut_jax.evaluators.samples import SampleGridEvaluator
from shortcut_jax.evaluators.validation import ValidationLossEvaluator

# config.evals.<name> -> (class, the config fields passed as keyword arguments).
EVALUATORS = {
    "samples": (SampleGridEvaluator, ("steps", "num_images", "cfg_scale", "use_ema")),
    "loss_per_t": (LossPerTEvaluator, ("num_batches", "num_bins")),
    "validation": (ValidationLossEvaluator, ("num_batches",)),
    "fid": (FIDEvaluator, ("steps", "num_samples", "cfg_scale", "stats_path", "inception_path",
                           "batch_size", "use_ema", "protocol", "extra_metrics")),
}


def build_evaluators(exp, workdir):
  """The evaluators whose period is positive."""
  out = []
  for name, section in exp.config.evals.items():
    if name not in EVALUATORS:
      raise ValueError(f"config.evals.{name}: unknown evaluator; known: {sorted(EVALUATORS)}")
    every = config_lib.eval_period(exp.config, name)
    if every <= 0:
      continue
    cls, fields = EVALUATORS[name]
    out.append(cls(exp, workdir, every, **{f: section[f] for f in fields}))
  return out
