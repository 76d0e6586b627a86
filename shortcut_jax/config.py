"""The configuration schema: defaults for every field, the `:smoke` shrink, and validation.

Experiment files in `configs/` start from `base_config()` and change what they need. Every value
is checked by `validate(config)` before anything is compiled; errors name the field
(`objective.bootstrap_every`, ...) so a typo on the command line is caught in a second.
"""

from typing import Optional

import ml_collections
from absl import logging

from shortcut_jax import errors as errors_lib
from shortcut_jax import guidance
from shortcut_jax import storage
from shortcut_jax import text_encoders
from shortcut_jax.models.dit import validate_dit_args

DTYPES = ("float32", "bfloat16", "float16")
SCHEDULES = ("constant", "cosine")
SHARDINGS = ("dp", "fsdp", "hybrid")
DATASETS = ("digits", "photos", "celebahq256", "imagenet256", "lsun_church", "image_folder")
MANUAL_DATASETS = ("celebahq256", "imagenet256", "lsun_church")  # Downloaded by hand.
LOW_RES_FACTORS = (0, 2, 4, 8)
ACCELERATIONS = ("network", "head")
PREDICTIONS = ("velocity", "data")
LATENTS = ("none", "online", "precomputed")
EVAL_ERRORS = ("continue", "stop")
# ADM's metrics beside FID (`evals.fid.extra_metrics`; `evaluators.adm_metrics.METRICS`).
EXTRA_FID_METRICS = ("is", "sfid", "precision_recall")
WEIGHT_DECAY_MASKS = ("all", "no_bias_norm_embed")


def base_config() -> ml_collections.ConfigDict:
  """All fields with their defaults (the original's defaults where it has one)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # What a guidance scale w means (`shortcut_jax.guidance`): 'original' (the original's, for
  # every new config: w = 0 unconditional, w = 1 conditional with no unconditional pass, w > 1
  # guided, in training, in `evals.*.cfg_scale` and on eval.py's command line) or 'legacy' (a
  # workdir whose config.json predates this field: eval.py's scale 0 meant conditional without
  # guidance, and `--mode=fid` kept its own defaults; `experiment.load_config` sets it, with a notice).
  c.guidance_convention = "original"
  c.batch_size = 256  # Global batch size, summed over all devices and processes.
  c.max_steps = 100_000
  c.log_every = 100
  c.eval_every = 5_000  # Default period for the evaluators below that leave `every` at -1.
  # An evaluator that raises: 'continue' logs the error with the step and trains on (the step's
  # checkpoint is saved before evaluators run), 'stop' re-raises after the save.
  c.eval_errors = "continue"
  # Profile train steps N..M (inclusive; (N, M), 1-based) with jax.profiler into
  # workdir/profile (TensorBoard's profile tab, Perfetto); () = off. Process 0 only.
  c.profile_steps = ()
  # Weights & Biases, written next to TensorBoard by process 0 when the `wandb` package is
  # installed and `project` is set (None: off). `mode`: 'online' | 'offline' | 'disabled'.
  c.wandb = ml_collections.ConfigDict(dict(
      project=ml_collections.FieldReference(None, field_type=str),
      entity=ml_collections.FieldReference(None, field_type=str),
      name=ml_collections.FieldReference(None, field_type=str), mode="online"))

  c.model = ml_collections.ConfigDict(dict(
      name="dit",  # The network (shortcut_jax.models.registry).
      patch_size=2, hidden_size=768, depth=12, num_heads=12, mlp_ratio=4.0, dropout=0.0,
      dtype="bfloat16",  # Compute dtype; parameters are always float32.
      attention_impl="xla",  # 'xla' | 'cudnn' | 'auto' | 'einsum' (the original's arithmetic).
      attention_scale="original",  # 'original' (1/head_dim) | 'sqrt' (1/sqrt(head_dim)).
      remat=False,
      # How a conditioning image (super-resolution input) enters the DiT, when the data has
      # one: 'concat' (extra input channels) | 'tokens' (second patch embedding, fused tokens).
      cond_image_mode="concat",
      # What the network outputs: 'velocity' (the original) or 'data' (a prediction of x1,
      # turned into the velocity it implies on the objective's path; see models.registry).
      prediction="velocity",
      # Where a higher-order objective's acceleration comes from (objective 'homo'): 'network'
      # (a second DiT taking the velocity as input) | 'head' (a second output of one DiT).
      acceleration="network",
      # A vector condition (`data.embedding_dim > 0`, e.g. CLIP text embeddings): 'add' (projected
      # and added to c, where the label embedding goes) | 'tokens' (extra tokens); its null:
      # 'zero' (the zero vector) | 'learned' (a learned vector replaces null rows).
      embedding_mode="add", embedding_null="zero",
  ))
  c.objective = ml_collections.ConfigDict(dict(
      name="shortcut", denoise_timesteps=128, bootstrap_every=8, bootstrap_ema=True,
      bootstrap_dt_bias=0, bootstrap_cfg=False, cfg_scale=1.5, class_dropout_prob=0.1,
      faithful=False,  # True: the original's level assignment and key reuse, bit for bit.
      # Classifier-free-guidance dropout of a conditioning image (null: the zero image); a model
      # trained with it > 0 nulls the image in the unconditional CFG branch.
      image_dropout_prob=0.0,
      embedding_dropout_prob=0.1,  # CFG dropout of a vector condition (`embedding`).
      path="linear",  # Interpolation path (objectives.paths): 'linear' | 'smoothstep' | 'cosine'.
      # Where flows start (objectives.flow_path.Source): 'gaussian' noise (the original) or
      # 'cond_image' (coupling flow matching from the upsampled LR input of super-resolution
      # data), optionally noised by the DDPM forward process at `source_noise_step` (0 = none;
      # linear 1,000-step schedule).
      source="gaussian", source_noise_step=0,
      # MeanFlow (objective 'meanflow'): logit-normal (mu, sigma) of the paper's times, share of
      # the batch with r = t, adaptive loss weight 1 / (mse + c)^p.
      meanflow_time_mu=-0.4, meanflow_time_sigma=1.0, meanflow_equal_share=0.75,
      meanflow_adaptive_p=1.0, meanflow_adaptive_c=1e-3,
      # HOMO (objective 'homo'): loss weights of the velocity, acceleration and self-consistency
      # terms (1.0 / 0.5 / 0.1, not tuned here), whether the self-consistency rows also
      # train the acceleration, and whether u1's velocity enters u2 without its gradient.
      homo_lambda_v=1.0, homo_lambda_a=0.5, homo_lambda_sc=0.1, homo_sc_acceleration=True,
      homo_velocity_stop_grad=False,
  ))
  # The original's baselines (objectives.progressive, .consistency): the frozen teacher of
  # 'progressive' and 'consistency-distillation' is the training workdir (or one
  # `<workdir>/checkpoints/<step>` folder) of a flow-matching run of the same model and data,
  # at checkpoint `teacher_step` (-1: its latest). `schedule_steps` is the number of training
  # steps over which progressive distillation's phases and consistency training's N schedule
  # run (the original's max_steps; it follows `max_steps` unless set).
  c.objective.teacher_workdir = ml_collections.FieldReference(None, field_type=str)
  c.objective.teacher_step = -1
  # Fine-tuning (`shortcut_jax.finetune`): a run without checkpoints of its own starts from the
  # weights of the training workdir `workdir` (or one `<workdir>/checkpoints/<step>` folder) at
  # checkpoint `step` (-1: its latest), its 'ema' or 'online' weights; fresh optimizer, step 0.
  c.init = ml_collections.ConfigDict(dict(
      workdir=ml_collections.FieldReference(None, field_type=str), step=-1, weights="ema"))
  c.objective.schedule_steps = c.get_ref("max_steps") + 0
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-4, b1=0.9, b2=0.999, weight_decay=0.1, warmup_steps=0, schedule="constant",
      ema_rate=0.999,
      grad_clip_norm=0.0,  # > 0: gradients clipped to this global L2 norm before AdamW; 0 = off.
      weight_decay_mask="all",  # 'all' (the original: decay everything) | 'no_bias_norm_embed'.
  ))
  c.data = ml_collections.ConfigDict(dict(
      name="digits", image_size=16, num_classes=10,
      data_dir=ml_collections.FieldReference(None, field_type=str),  # None: TFDS default.
      folder=ml_collections.FieldReference(None, field_type=str),  # For name='image_folder'.
      # Super-resolution: 0 = none; 2, 4 or 8 = every batch also gets `cond_image`, the HR image
      # downsampled by this factor (antialiased) and bicubic-upsampled back to image_size. HR
      # images are then crops of image_size (random crop + flip in training, centre crop in
      # evaluation) instead of resized images.
      low_res_factor=0,
      # Training augmentation on top of the dataset's flips: each training image is also turned
      # by a random multiple of 90 degrees (square images; pixel or online-latent pipelines).
      random_rot90=False,
      # Latent space (the paper's ImageNet / CelebA-HQ runs): 'none' (pixels), 'online' (the
      # frozen VAE of `vae` encodes each batch inside the train step: the original's way) or
      # 'precomputed' (posterior moments
      # written once by `python -m shortcut_jax.tools.encode_dataset` into `latents_dir`).
      latents="none",
      latents_dir=ml_collections.FieldReference(None, field_type=str),
      # Text / vector conditioning: > 0 = every example carries `embedding`, a float32 vector
      # of this size (a TFDS feature 'embedding'; for `image_folder`, the .npz `embeddings`
      # written by `python -m shortcut_jax.tools.embed_text`).
      embedding_dim=0,
      embeddings=ml_collections.FieldReference(None, field_type=str),
      # `embeddings='digit_words'` (digits only): each example's embedding is its class word's
      # fixed vector plus noise of this standard deviation (`shortcut_jax.text_encoders`).
      embedding_noise=0.0,
      # The CLIP text model folder the embeddings were made with (`tools.embed_text --model`):
      # `eval.py --mode=sample --prompts=FILE` embeds prompts with it.
      text_model=ml_collections.FieldReference(None, field_type=str),
  ))
  # The Stable Diffusion VAE of latent runs: `path` is a folder (diffusers or Flax layout) or a
  # hub id (None: $SHORTCUT_JAX_VAE, else stabilityai/sd-vae-ft-mse); `random_init` builds a tiny
  # randomly initialised VAE in process instead (smoke runs; no files).
  c.vae = ml_collections.ConfigDict(dict(
      path=ml_collections.FieldReference(None, field_type=str), dtype="float32", chunk_size=16,
      random_init=False,
  ))
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1_000, max_to_keep=3, async_save=True))
  # Scale-out: mesh axis sizes (-1 = all remaining devices) and the parameter sharding mode.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
  c.sharding = "dp"
  c.evals = ml_collections.ConfigDict(dict(
      samples=dict(every=-1, steps=(1, 2, 4, 8, 16, 32, 64, 128), num_images=64, cfg_scale=1.5,
                   use_ema=True),
      loss_per_t=dict(every=-1, num_batches=2, num_bins=16),
      validation=dict(every=-1, num_batches=4),
      # FID against `stats_path` (an .npz with mu/sigma, e.g. from `eval.py --mode=fid_stats`)
      # with the Inception weights at `inception_path` (None: $SHORTCUT_JAX_INCEPTION). Off by
      # default (every=0): it needs both files, which are read before training starts.
      # `protocol` (`shortcut_jax.guidance`): 'guided' (`cfg_scale` at every budget of `steps`,
      # EMA weights) or 'original' (the original's: `steps` at cfg 1, one more entry at
      # `cfg_scale` with objective.denoise_timesteps steps, online weights; the paper configs').
      # `use_ema` None: the protocol's weights. eval.py --mode=fid reads these fields too.
      # `extra_metrics`: ADM's metrics of the same samples besides FID (`EXTRA_FID_METRICS`:
      # 'is', 'sfid', 'precision_recall'; evaluators/adm_metrics.py); they need an ADM
      # reference batch at `stats_path` where images are needed, and 'is' the classifier weights.
      fid=dict(every=0, steps=(1, 4, 128), num_samples=4096, cfg_scale=1.5,
               stats_path=ml_collections.FieldReference(None, field_type=str),
               inception_path=ml_collections.FieldReference(None, field_type=str),
               batch_size=256, use_ema=ml_collections.FieldReference(None, field_type=bool),
               protocol="guided", extra_metrics=()),
  ))
  return c


def apply_smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks any config so a few steps run in seconds on a CPU (`--config=file.py:smoke`)."""
  c.batch_size = 16
  c.max_steps = 4
  c.log_every = 2
  c.eval_every = 4
  if c.data.name in MANUAL_DATASETS:
    # A stand-in of the same kind that ships offline: RGB photographs, unconditional.
    c.data.update(name="photos", num_classes=1)
    c.objective.update(cfg_scale=0.0, class_dropout_prob=1.0, bootstrap_cfg=False)
  c.data.image_size = min(c.data.image_size, 32)
  if c.data.latents != "none":
    c.data.latents = "online"
    c.vae.update(random_init=True, dtype="float32")  # Tiny random VAE (factor 2), no files.
  c.model.update(patch_size=min(c.model.patch_size, 4), hidden_size=32, depth=1, num_heads=2,
                 dtype="float32", remat=False)
  c.objective.denoise_timesteps = 8
  c.objective.bootstrap_every = 4
  c.optim.warmup_steps = min(c.optim.warmup_steps, 2)
  c.checkpoint.every_steps = 2
  c.checkpoint.max_to_keep = 2
  from shortcut_jax import objectives  # Imported here: the registry imports model code.
  try:
    most = objectives.get_objective(c.objective.name).max_sample_steps
  except ValueError:
    most = None  # Reported by `validate`.
  within = lambda steps: tuple(n for n in steps if most is None or n <= most)
  c.evals.samples.update(steps=within((1, 2, 8)), num_images=4)
  c.evals.loss_per_t.update(num_batches=1, num_bins=4)
  c.evals.validation.num_batches = 1
  c.evals.fid.update(steps=within((1, 8)), num_samples=32, batch_size=16)
  return c


def finalize(c: ml_collections.ConfigDict, arg: Optional[str]) -> ml_collections.ConfigDict:
  """Applies the `get_config(arg)` argument ('smoke' or None) and locks the config."""
  if arg not in (None, "", "smoke"):
    raise errors_lib.ConfigError(f"unknown config argument {arg!r}: use ':smoke' or nothing")
  if arg == "smoke":
    apply_smoke(c)
  c.lock()
  return c


def load_sibling_config(this_file: str, name: str):
  """`get_config` of another file in the same configs folder, loaded by path so that a config
  deriving from another works however it is loaded (config_flags, import, tests); the folder
  may be remote (gs://...: the file is read through `shortcut_jax.storage`)."""
  import os
  import types
  this_file = os.fspath(this_file)
  folder = (this_file.rsplit("/", 1)[0] if storage.is_remote(this_file)
            else os.path.dirname(os.path.abspath(this_file)))
  path = storage.join(folder, f"{name}.py")
  module = types.ModuleType(f"shortcut_jax_config_{name}")
  module.__file__ = path
  code = compile(storage.read_bytes(path), path, "exec")
  exec(code, module.__dict__)  # pylint: disable=exec-used
  return module.get_config


def _is_power_of_two(n) -> bool:
  return isinstance(n, int) and n >= 1 and (n & (n - 1)) == 0


def validate(c: ml_collections.ConfigDict, *, device_count: Optional[int] = None) -> None:
  """Checks every value; raises one ValueError listing all problems, each naming its field."""
  from shortcut_jax import objectives  # Imported here: the registry imports model code.
  errors = []

  def check(ok, msg):
    if not ok:
      errors.append(msg)

  for field in ("batch_size", "max_steps", "log_every"):
    check(isinstance(c[field], int) and c[field] > 0, f"{field} must be a positive integer, got {c[field]!r}")
  check(isinstance(c.eval_every, int) and c.eval_every >= 0, f"eval_every must be >= 0, got {c.eval_every!r}")

  m = c.model
  try:
    validate_dit_args(patch_size=m.patch_size, hidden_size=m.hidden_size, num_heads=m.num_heads,
                      depth=m.depth, mlp_ratio=m.mlp_ratio, image_size=c.data.image_size,
                      attention_impl=m.attention_impl, attention_scale=m.attention_scale,
                      cond_image_mode=m.cond_image_mode)
  except ValueError as e:
    errors.append(str(e))
  from shortcut_jax.models.registry import MODELS  # Imported here, like the objectives.
  check(m.name in MODELS, f"model.name must be one of {sorted(MODELS)}, got {m.name!r}")
  check(m.dtype in DTYPES, f"model.dtype must be one of {DTYPES}, got {m.dtype!r}")
  check(m.prediction in PREDICTIONS,
        f"model.prediction must be one of {PREDICTIONS}, got {m.prediction!r}")
  check(0.0 <= m.dropout < 1.0, f"model.dropout must be in [0, 1), got {m.dropout!r}")

  o = c.objective
  try:
    objective = objectives.get_objective(o.name)
  except ValueError as e:
    objective = None
    errors.append(f"objective.name: {e}")
  check(_is_power_of_two(o.denoise_timesteps),
        f"objective.denoise_timesteps must be a power of two, got {o.denoise_timesteps!r}")
  check(isinstance(o.bootstrap_every, int) and o.bootstrap_every >= 1,
        f"objective.bootstrap_every must be a positive integer, got {o.bootstrap_every!r}")
  if getattr(objective, "splits_batch", False) and isinstance(o.bootstrap_every, int) \
      and o.bootstrap_every >= 1:
    check(c.batch_size % o.bootstrap_every == 0 and c.batch_size >= o.bootstrap_every,
          f"batch_size ({c.batch_size}) must be a multiple of objective.bootstrap_every "
          f"({o.bootstrap_every}): batch_size // bootstrap_every rows of objective "
          f"{objective.name!r} get other targets")
  check(o.bootstrap_dt_bias in (0, 1), f"objective.bootstrap_dt_bias must be 0 or 1, got {o.bootstrap_dt_bias!r}")
  check(0.0 <= o.class_dropout_prob <= 1.0,
        f"objective.class_dropout_prob must be in [0, 1], got {o.class_dropout_prob!r}")
  check(0.0 <= o.image_dropout_prob <= 1.0,
        f"objective.image_dropout_prob must be in [0, 1], got {o.image_dropout_prob!r}")
  check(o.cfg_scale >= 0, f"objective.cfg_scale must be >= 0, got {o.cfg_scale!r}")
  from shortcut_jax.objectives.paths import PATHS
  check(o.path in PATHS, f"objective.path must be one of {sorted(PATHS)}, got {o.path!r}")
  check(o.meanflow_time_sigma > 0, f"objective.meanflow_time_sigma must be > 0, got {o.meanflow_time_sigma!r}")
  check(0.0 <= o.meanflow_equal_share <= 1.0,
        f"objective.meanflow_equal_share must be in [0, 1], got {o.meanflow_equal_share!r}")
  check(o.meanflow_adaptive_p >= 0, f"objective.meanflow_adaptive_p must be >= 0, got {o.meanflow_adaptive_p!r}")
  check(o.meanflow_adaptive_c > 0, f"objective.meanflow_adaptive_c must be > 0, got {o.meanflow_adaptive_c!r}")
  check(o.source in ("gaussian", "cond_image"),
        f"objective.source must be 'gaussian' or 'cond_image', got {o.source!r}")
  if objective is not None and not objective.takes_source:
    check(o.source == "gaussian", f"objective {objective.name!r} starts from its own source "
          f"({objective.source!r}); objective.source={o.source!r} does not apply")
  if o.source == "cond_image":
    check(c.data.low_res_factor > 0, "objective.source='cond_image' (coupling) starts from the "
          "upsampled low-resolution input: set data.low_res_factor (2, 4 or 8)")
  check(isinstance(o.source_noise_step, int) and 0 <= o.source_noise_step <= 1000,
        f"objective.source_noise_step must be an integer in [0, 1000], got {o.source_noise_step!r}")
  check(o.source_noise_step == 0 or o.source == "cond_image",
        "objective.source_noise_step noises a coupling source: it needs objective.source="
        "'cond_image'")
  if getattr(objective, "needs_curved_path", False) and o.path == "linear":
    logging.warning("objective %r on the linear path: its acceleration target d²x/dt² is zero, "
                    "so that output learns nothing; set objective.path='smoothstep' or "
                    "'cosine'", objective.name)
  for name in ("homo_lambda_v", "homo_lambda_a", "homo_lambda_sc"):
    check(o[name] >= 0, f"objective.{name} must be >= 0, got {o[name]!r}")
  from shortcut_jax.models.dit import EMBEDDING_MODES, EMBEDDING_NULLS
  check(m.embedding_mode in EMBEDDING_MODES,
        f"model.embedding_mode must be one of {EMBEDDING_MODES}, got {m.embedding_mode!r}")
  check(m.embedding_null in EMBEDDING_NULLS,
        f"model.embedding_null must be one of {EMBEDDING_NULLS}, got {m.embedding_null!r}")
  check(isinstance(c.data.embedding_dim, int) and c.data.embedding_dim >= 0,
        f"data.embedding_dim must be an integer >= 0, got {c.data.embedding_dim!r}")
  check(c.data.embedding_noise >= 0, f"data.embedding_noise must be >= 0, got "
        f"{c.data.embedding_noise!r}")
  check(not text_encoders.uses_digit_words(c.data)
        or (c.data.name == "digits" and c.data.embedding_dim),
        f"data.embeddings='{text_encoders.DIGIT_WORDS_NAME}' (the digits' class words as vectors) "
        f"needs data.name='digits' and data.embedding_dim > 0, got {c.data.name!r} and "
        f"{c.data.embedding_dim!r}")
  check(0.0 <= o.embedding_dropout_prob <= 1.0,
        f"objective.embedding_dropout_prob must be in [0, 1], got {o.embedding_dropout_prob!r}")
  check(m.acceleration in ACCELERATIONS,
        f"model.acceleration must be one of {ACCELERATIONS}, got {m.acceleration!r}")
  if objective is not None and len(objective.outputs) > 1:
    check(m.prediction == "velocity",
          f"model.prediction={m.prediction!r} is for single-output objectives; objective "
          f"{objective.name!r} predicts {objective.outputs}: use 'velocity'")
  _check_baselines(c, objective, check)
  if objective is not None and objective.needs_jvp:
    # cuDNN's fused attention has a VJP rule only ('auto' may pick it on a GPU).
    check(m.attention_impl in ("xla", "einsum"),
          f"model.attention_impl={m.attention_impl!r} has no jax.jvp rule, which objective "
          f"{objective.name!r} needs: use 'xla' or 'einsum'")

  p = c.optim
  check(p.lr > 0, f"optim.lr must be positive, got {p.lr!r}")
  check(0 <= p.b1 < 1 and 0 <= p.b2 < 1, f"optim.b1 and optim.b2 must be in [0, 1), got {p.b1!r}, {p.b2!r}")
  check(p.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {p.weight_decay!r}")
  check(isinstance(p.warmup_steps, int) and p.warmup_steps >= 0,
        f"optim.warmup_steps must be a non-negative integer, got {p.warmup_steps!r}")
  check(p.schedule in SCHEDULES, f"optim.schedule must be one of {SCHEDULES}, got {p.schedule!r}")
  if p.schedule == "cosine" and isinstance(p.warmup_steps, int):
    check(p.warmup_steps < c.max_steps,
          f"optim.warmup_steps ({p.warmup_steps}) must be below max_steps ({c.max_steps}) for a cosine schedule")
  check(0 <= p.ema_rate < 1, f"optim.ema_rate must be in [0, 1), got {p.ema_rate!r}")
  clip = p.get("grad_clip_norm", 0.0)
  check(isinstance(clip, (int, float)) and not isinstance(clip, bool) and clip >= 0,
        f"optim.grad_clip_norm must be a number >= 0 (0 = off), got {clip!r}")
  check(p.get("weight_decay_mask", "all") in WEIGHT_DECAY_MASKS,
        f"optim.weight_decay_mask must be one of {WEIGHT_DECAY_MASKS}, got "
        f"{p.get('weight_decay_mask')!r}")
  prof = tuple(c.get("profile_steps", ()) or ())
  check(prof == () or (len(prof) == 2 and all(isinstance(v, int) for v in prof)
                       and 1 <= prof[0] <= prof[1]),
        f"profile_steps must be () (off) or (N, M) with 1 <= N <= M, got {prof!r}")
  if "init" in c:
    from shortcut_jax import finetune  # pylint: disable=g-import-not-at-top
    check(c.init.weights in finetune.WEIGHTS,
          f"init.weights must be one of {finetune.WEIGHTS}, got {c.init.weights!r}")
    check(isinstance(c.init.step, int) and c.init.step >= -1,
          f"init.step must be -1 (the latest) or a checkpoint step, got {c.init.step!r}")
  if "wandb" in c:
    check(c.wandb.mode in ("online", "offline", "disabled"),
          f"wandb.mode must be 'online', 'offline' or 'disabled', got {c.wandb.mode!r}")

  d = c.data
  check(d.name in DATASETS, f"data.name must be one of {DATASETS}, got {d.name!r}")
  check(isinstance(d.image_size, int) and d.image_size > 0,
        f"data.image_size must be a positive integer, got {d.image_size!r}")
  check(isinstance(d.num_classes, int) and d.num_classes >= 1,
        f"data.num_classes must be >= 1 (use 1 with objective.class_dropout_prob=1 for an "
        f"unconditional model), got {d.num_classes!r}")
  if d.name == "image_folder":
    check(bool(d.folder), "data.folder must be set when data.name='image_folder'")
  check(d.low_res_factor in LOW_RES_FACTORS,
        f"data.low_res_factor must be one of {LOW_RES_FACTORS}, got {d.low_res_factor!r}")
  if d.low_res_factor and isinstance(d.image_size, int):
    check(d.image_size % d.low_res_factor == 0,
          f"data.image_size ({d.image_size}) must be divisible by data.low_res_factor "
          f"({d.low_res_factor})")
  check(d.latents in LATENTS, f"data.latents must be one of {LATENTS}, got {d.latents!r}")
  check(not d.random_rot90 or d.latents != "precomputed",
        "data.random_rot90 turns pixels before encoding: it needs data.latents='none' or "
        "'online' (precomputed latents store flips only)")
  if d.latents == "precomputed":
    check(bool(d.latents_dir), "data.latents_dir must be set when data.latents='precomputed' "
          "(write it with `python -m shortcut_jax.tools.encode_dataset --config=... --out=DIR`)")
  check(c.vae.dtype in DTYPES, f"vae.dtype must be one of {DTYPES}, got {c.vae.dtype!r}")
  check(c.vae.chunk_size is None or (isinstance(c.vae.chunk_size, int) and c.vae.chunk_size > 0),
        f"vae.chunk_size must be a positive integer or None, got {c.vae.chunk_size!r}")
  check(c.eval_errors in EVAL_ERRORS, f"eval_errors must be one of {EVAL_ERRORS}, got {c.eval_errors!r}")
  check(guidance.convention(c) in guidance.CONVENTIONS,
        f"{guidance.FIELD} must be one of {guidance.CONVENTIONS}, got {guidance.convention(c)!r}")

  check(isinstance(c.checkpoint.every_steps, int) and c.checkpoint.every_steps > 0,
        f"checkpoint.every_steps must be a positive integer, got {c.checkpoint.every_steps!r}")
  check(isinstance(c.checkpoint.max_to_keep, int) and c.checkpoint.max_to_keep > 0,
        f"checkpoint.max_to_keep must be a positive integer, got {c.checkpoint.max_to_keep!r}")

  check(c.sharding in SHARDINGS, f"sharding must be one of {SHARDINGS}, got {c.sharding!r}")
  for axis in ("data", "fsdp"):
    size = c.mesh[axis]
    check(isinstance(size, int) and (size == -1 or size >= 1),
          f"mesh.{axis} must be -1 (fill) or a positive integer, got {size!r}")
  if device_count is not None:
    check(c.batch_size % device_count == 0,
          f"batch_size ({c.batch_size}) must be divisible by the device count ({device_count})")

  for name, ev in c.evals.items():
    if "every" in ev:
      check(isinstance(ev.every, int) and ev.every >= -1, f"evals.{name}.every must be -1, 0 or positive")
    if "steps" in ev:
      bad = [n for n in ev.steps if not (isinstance(n, int) and 1 <= n)]
      check(not bad, f"evals.{name}.steps must be positive integers, got {tuple(ev.steps)!r}")
      if not bad and _is_power_of_two(o.denoise_timesteps):
        check(max(ev.steps) <= o.denoise_timesteps,
              f"evals.{name}.steps: {max(ev.steps)} steps exceed objective.denoise_timesteps "
              f"({o.denoise_timesteps})")
      enabled = isinstance(ev.get("every", -1), int) and isinstance(c.eval_every, int) and \
          eval_period(c, name) > 0
      if not bad and objective is not None and enabled:
        try:
          objective.check_steps(ev.steps)
        except ValueError as e:
          errors.append(f"evals.{name}.steps: {e}")

  f = c.evals.get("fid")
  if f is not None:
    check(isinstance(f.num_samples, int) and f.num_samples >= 2,
          f"evals.fid.num_samples must be an integer >= 2 (a covariance needs two), got "
          f"{f.num_samples!r}")
    check(isinstance(f.batch_size, int) and f.batch_size > 0,
          f"evals.fid.batch_size must be a positive integer, got {f.batch_size!r}")
    check(f.cfg_scale is None or f.cfg_scale >= 0,
          f"evals.fid.cfg_scale must be None or >= 0, got {f.cfg_scale!r}")
    extra = f.get("extra_metrics", ())
    check(isinstance(extra, (tuple, list)) and set(extra) <= set(EXTRA_FID_METRICS),
          f"evals.fid.extra_metrics must be a tuple of {EXTRA_FID_METRICS}, got {extra!r}")
    protocol = f.get("protocol", "guided")
    check(protocol in guidance.PROTOCOLS,
          f"evals.fid.protocol must be one of {guidance.PROTOCOLS}, got {protocol!r}")
    if (protocol == "original" and objective is not None and f.cfg_scale not in (None, 1.0)
        and _is_power_of_two(o.denoise_timesteps) and isinstance(f.every, int)
        and isinstance(c.eval_every, int) and eval_period(c, "fid") > 0):
      try:  # The original protocol's guided entry samples with M steps.
        objective.check_steps([o.denoise_timesteps])
      except ValueError as e:
        errors.append(f"evals.fid.protocol='original' samples its guided entry with "
                      f"objective.denoise_timesteps ({o.denoise_timesteps}) steps: {e}")
    if isinstance(f.every, int) and isinstance(c.eval_every, int) and eval_period(c, "fid") > 0:
      check(bool(f.stats_path), "evals.fid.stats_path must be set when evals.fid is enabled "
            "(make one with `python eval.py --mode=fid_stats --config=... --out=stats.npz`)")

  if errors:
    raise errors_lib.ConfigError("invalid config:\n  " + "\n  ".join(errors))


def _check_baselines(c: ml_collections.ConfigDict, objective, check) -> None:
  """The fields of the original's baselines (`objectives.progressive`, `.consistency`,
  `.livereflow`): a teacher where one is needed, the schedule length, the linear path of the
  consistency parameterisation (what each needs is a property of the `Objective`)."""
  o = c.objective
  name = getattr(objective, "name", None)
  if getattr(objective, "needs_teacher", False):
    check(bool(o.teacher_workdir),
          f"objective.teacher_workdir must be set for objective {name!r}: its frozen teacher is "
          f"a flow-matching run of the same model and data; train one first, e.g. `python "
          f"train.py --config=configs/digits_naive.py --workdir=workdirs/digits_naive`")
  check(isinstance(o.teacher_step, int) and o.teacher_step >= -1,
        f"objective.teacher_step must be -1 (the latest) or a checkpoint step, got "
        f"{o.teacher_step!r}")
  check(isinstance(o.schedule_steps, int) and o.schedule_steps >= 1,
        f"objective.schedule_steps must be a positive integer, got {o.schedule_steps!r}")
  if getattr(objective, "phased", False) and _is_power_of_two(o.denoise_timesteps) \
      and isinstance(o.schedule_steps, int):
    phases = o.denoise_timesteps.bit_length() - 1
    check(o.schedule_steps >= phases,
          f"objective.schedule_steps ({o.schedule_steps}) must be at least the number of "
          f"phases, log2(objective.denoise_timesteps) = {phases}")
  if getattr(objective, "linear_path_only", False):
    check(o.path == "linear",
          f"objective {name!r} parameterises the consistency function on the linear path "
          f"(f = x + (1 - t) v): objective.path must be 'linear', got {o.path!r}")


def eval_period(c: ml_collections.ConfigDict, name: str) -> int:
  """Steps between runs of evaluator `name` (0 = never; -1 in the config = `eval_every`)."""
  every = c.evals[name].get("every", -1)
  return c.eval_every if every == -1 else every
