"""`digits_shortcut.py` fine-tuned from the trained flow-matching run of `digits_naive.py`.

Commands:
  python train.py --config=configs/digits_naive.py --workdir=workdirs/digits_naive
  python train.py --config=configs/digits_shortcut_from_naive.py \
      --workdir=workdirs/digits_shortcut_from_naive
Starts from workdirs/digits_naive's EMA weights (`init.workdir`; `shortcut_jax.train.finetune`), with
the step-size input the naive network lacked starting as the constant it added: the fine-tuned
model first predicts what the naive one does, at every step size. Then trains the shortcut
objective for 1,500 steps, half of `digits_shortcut.py`'s budget, with a fresh optimizer.
Hardware: 2 CPU cores, 3.75 minutes after the naive run's 7.2. Result (docs/results.md, one
seed): 1-step FD-digits 18.1 against 11.9 for the from-scratch default (3,000 steps); from
4 steps on within 1.2x of it, and the flow model's class accuracy at every budget. Continued to
3,000 steps (`--config.max_steps=3000`) the 1-step score stays near 17, while from 4 steps on
the fine-tuned model matches or beats the from-scratch one.
"""

from shortcut_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.load_sibling_config(__file__, "digits_shortcut")()
  c.unlock()
  c.init.workdir = "workdirs/digits_naive"
  c.max_steps = 1500
  c.eval_every = 750
  return config_lib.finalize(c, arg)
