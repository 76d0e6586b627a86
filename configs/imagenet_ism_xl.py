"""ImageNet 256, improved shortcut models (iSM, Nguyen et al., NeurIPS 2025) on DiT-XL/2.

Command (after preparing the data, see docs/training.md):
  python train.py --config=configs/imagenet_ism_xl.py --workdir=gs://.../imagenet_ism_xl
Not run at this scale here (no accelerator; the tests exercise only its `:smoke` stand-in). The
paper reports FID-50k 5.27 at 1 step, 2.05 at 4 and 1.88 at 128 (SiT-XL/2, 800k iterations);
its code is not public, so its settings come from the paper's text as summarised in
docs/objectives.md: twin EMA (teacher 0.95, sampled 0.9999), 5-level wavelet loss, intrinsic
guidance on a 0.25 grid up to 3.5 with no guidance below t = 0.3. sOT over 32 batches matches
noise to latents on the host, so it needs precomputed latents (`encode_dataset`): add
`--config.data.latents=precomputed --config.data.latents_dir=DIR --config.objective.ot_pool=32`
(its host cost: benchmarks/ot_coupling.py; `--config.objective.ot_within_class=True` matches
within each class, the digits' fix for the class the label-blind matching loses). The batch size is not stated: 256, the original's.
The network is `imagenet_dit_xl.py`'s with 1/sqrt(head_dim) attention (SiT's) and the guidance
input. Sampling: `eval.py --cfg_scale=w` is omega = w - 1, one network call per step.
"""

from shortcut_jax import config as config_lib


def get_config(arg=None):
  c = config_lib.load_sibling_config(__file__, "imagenet_dit_xl")()
  c.unlock()
  c.max_steps = 800_000
  c.model.update(attention_scale="sqrt", guidance_input=True)
  c.objective.update(target_ema_rate=0.95, wavelet_levels=5, guidance_max=3.5,
                     guidance_grid=0.25, guidance_t_min=0.3, bootstrap_cfg=False)
  c.optim.ema_rate = 0.9999
  c.evals.fid.update(protocol="guided", steps=(1, 2, 4, 8, 128), cfg_scale=1.5)
  return config_lib.finalize(c, arg)
