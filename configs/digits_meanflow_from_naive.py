"""`digits_meanflow.py` fine-tuned from the trained flow-matching run of `digits_naive.py`.

Commands:
  python train.py --config=configs/digits_naive.py --workdir=workdirs/digits_naive
  python train.py --config=configs/digits_meanflow_from_naive.py \
      --workdir=workdirs/digits_meanflow_from_naive
Starts from workdirs/digits_naive's EMA weights (`init.workdir`; `shortcut_jax.train.finetune`): the
interval input the naive network lacked starts as the constant it added, so the fine-tuned model
first predicts the naive model's instantaneous velocity for every interval (MeanFlow's boundary
condition u(z, t, t) = v holds from the first step). Then trains the MeanFlow objective for
the default's 3,000 steps with a fresh optimizer, a checkpoint every 500 for the curve in
docs/results.md ("Fine-tuning the flow-matching model into a one-step model").
"""

from shortcut_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.load_sibling_config(__file__, "digits_meanflow")()
  c.unlock()
  c.init.workdir = "workdirs/digits_naive"
  c.checkpoint.max_to_keep = 6
  return config_lib.finalize(c, arg)
