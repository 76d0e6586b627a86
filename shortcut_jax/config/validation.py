"""`validate(config)`: every value checked before anything is compiled, one error listing every
problem, each naming its field. Each part of the config has its check below; the objectives'
own fields are checked in their modules (`objectives.field_checks`, `Objective.check_config`),
the datasets' in `data.catalog`.
"""

from typing import Optional

import ml_collections
from absl import logging

from shortcut_jax import errors as errors_lib
from shortcut_jax import objectives
from shortcut_jax import text_encoders
from shortcut_jax.core import guidance
from shortcut_jax.core.paths import PATHS
from shortcut_jax.core.precision import MATMUL_PRECISIONS
from shortcut_jax.data import catalog
from shortcut_jax.data.catalog import LATENTS, SPECS
from shortcut_jax.models.dit import (EMBEDDING_MODES, EMBEDDING_NULLS, REMAT_POLICIES,
                                     validate_dit_args)
from shortcut_jax.models.registry import MODELS
from shortcut_jax.parallel.sharding import MODES as SHARDINGS
from shortcut_jax.train import finetune
from shortcut_jax.train.train_state import SCHEDULES, WEIGHT_DECAY_MASKS

# Every enum is defined once, next to the code that uses it; the validator reads them there.
DTYPES = ("float32", "bfloat16", "float16")  # model.dtype, vae.dtype.
DATASETS = tuple(SPECS)
LOW_RES_FACTORS = (0, 2, 4, 8)
ACCELERATIONS = ("network", "head")
PREDICTIONS = ("velocity", "data")
EVAL_ERRORS = ("continue", "stop")
# ADM's metrics beside FID (`evals.fid.extra_metrics`; computed by `evaluators.adm_metrics`).
EXTRA_FID_METRICS = ("is", "sfid", "precision_recall")


def _is_power_of_two(n) -> bool:
  return isinstance(n, int) and n >= 1 and (n & (n - 1)) == 0


def validate(c: ml_collections.ConfigDict, *, device_count: Optional[int] = None) -> None:
  """Checks every value; raises one ConfigError listing all problems, each naming its field.
  Each part of the config has its own check below; they run in this order and collect."""
  errors = []

  def check(ok, msg):
    if not ok:
      errors.append(msg)

  try:
    objective = objectives.get_objective(c.objective.name)
  except ValueError as e:
    objective = None
    problem = f"objective.name: {e}"
  else:
    problem = None
  _check_run_and_model(c, check)
  check(problem is None, problem)
  _check_objective(c, objective, check)
  _check_optimizer_and_start(c, check)
  _check_data(c, check)
  _check_checkpoints_and_mesh(c, check, device_count)
  _check_evaluators(c, objective, check)
  if errors:
    raise errors_lib.ConfigError("invalid config:\n  " + "\n  ".join(errors))


def _check_run_and_model(c, check) -> None:
  """The run's sizes and the network (`model.*`)."""
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
    check(False, str(e))
  check(m.name in MODELS, f"model.name must be one of {sorted(MODELS)}, got {m.name!r}")
  check(m.dtype in DTYPES, f"model.dtype must be one of {DTYPES}, got {m.dtype!r}")
  check(m.dtype != "float16", "model.dtype='float16' would train without loss scaling (small "
        "gradients underflow float16's 5-bit exponent), which this library does not do: use "
        "'bfloat16' (the same memory with float32's range) or 'float32' (core/precision.py)")
  check(m.remat in REMAT_POLICIES, f"model.remat must be one of {REMAT_POLICIES}, got {m.remat!r}")
  check(isinstance(m.scan_layers, bool), f"model.scan_layers must be True or False, got "
        f"{m.scan_layers!r}")
  check(m.matmul_precision in MATMUL_PRECISIONS,
        f"model.matmul_precision must be one of {MATMUL_PRECISIONS}, got {m.matmul_precision!r}")
  check(m.prediction in PREDICTIONS,
        f"model.prediction must be one of {PREDICTIONS}, got {m.prediction!r}")
  check(0.0 <= m.dropout < 1.0, f"model.dropout must be in [0, 1), got {m.dropout!r}")



def _check_objective(c, objective, check) -> None:
  """The objective (`objective.*`) and the model fields that depend on it or on the conditions."""
  o, m = c.objective, c.model
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
  check(isinstance(o.ot_pool, int) and o.ot_pool >= 0,
        f"objective.ot_pool (sOT) must be an integer >= 0 (0: off), got {o.ot_pool!r}")
  check(isinstance(o.ot_within_class, bool),
        f"objective.ot_within_class must be True or False, got {o.ot_within_class!r}")
  check(not o.ot_within_class or o.ot_pool,
        "objective.ot_within_class matches noise within each class of the sOT pool: set "
        "objective.ot_pool > 0")
  check(not o.ot_within_class or c.data.num_classes > 1,
        "objective.ot_within_class needs class labels (data.num_classes > 1), got "
        f"data.num_classes={c.data.num_classes!r}")
  if o.ot_pool:
    check(objective is None or objective.name in ("shortcut", "naive"),
          f"objective.ot_pool (sOT) is an option of objectives 'shortcut' and 'naive', not of "
          f"{getattr(objective, 'name', None)!r}")
    check(o.source == "gaussian" and not o.faithful and c.data.latents != "online",
          "objective.ot_pool (sOT) matches Gaussian noise to pixels or precomputed latents: it "
          "needs objective.source='gaussian', objective.faithful=False and data.latents "
          "'none' or 'precomputed'")
  if objective is not None and m.guidance_input:
    trains = objective.name == "imf" or (objective.name == "shortcut" and o.guidance_max)
    check(trains, f"model.guidance_input: objective {objective.name!r} does not train the "
          "guidance input (only 'imf', and 'shortcut' with objective.guidance_max > 0, do), so "
          "guided sampling would feed it scales it never saw")
  check(m.guidance_input or not m.guidance_interval,
        "model.guidance_interval is part of the guidance input: set model.guidance_input=True")
  # Each objective module's own fields, then what the trained objective needs of the config.
  for field_check in objectives.field_checks():
    field_check(o, check)
  if objective is not None:
    objective.check_config(c, check)
  check(o.path in PATHS, f"objective.path must be one of {sorted(PATHS)}, got {o.path!r}")
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



def _check_optimizer_and_start(c, check) -> None:
  """`optim.*`, the profiler, `init.*` (fine-tuning) and `wandb.*`."""
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
  k = p.accumulate_steps
  check(isinstance(k, int) and not isinstance(k, bool) and k >= 1,
        f"optim.accumulate_steps must be a positive integer (1 = off), got {k!r}")
  if isinstance(k, int) and k >= 1 and isinstance(c.batch_size, int):
    check(c.batch_size % k == 0, f"optim.accumulate_steps ({k}) must divide batch_size "
          f"({c.batch_size}): each update averages {k} microbatches of equal size")
  prof = tuple(c.get("profile_steps", ()) or ())
  check(prof == () or (len(prof) == 2 and all(isinstance(v, int) for v in prof)
                       and 1 <= prof[0] <= prof[1]),
        f"profile_steps must be () (off) or (N, M) with 1 <= N <= M, got {prof!r}")
  if "init" in c:
    check(c.init.weights in finetune.WEIGHTS,
          f"init.weights must be one of {finetune.WEIGHTS}, got {c.init.weights!r}")
    check(isinstance(c.init.step, int) and c.init.step >= -1,
          f"init.step must be -1 (the latest) or a checkpoint step, got {c.init.step!r}")
  if "wandb" in c:
    check(c.wandb.mode in ("online", "offline", "disabled"),
          f"wandb.mode must be 'online', 'offline' or 'disabled', got {c.wandb.mode!r}")



def _check_data(c, check) -> None:
  """`data.*`, `vae.*`, `eval_errors` and the guidance convention."""
  d = c.data
  check(d.name in DATASETS, f"data.name must be one of {DATASETS}, got {d.name!r}")
  check(isinstance(d.image_size, int) and d.image_size > 0,
        f"data.image_size must be a positive integer, got {d.image_size!r}")
  check(isinstance(d.num_classes, int) and d.num_classes >= 1,
        f"data.num_classes must be >= 1 (use 1 with objective.class_dropout_prob=1 for an "
        f"unconditional model), got {d.num_classes!r}")
  if d.name == "image_folder":
    check(bool(d.folder), "data.folder must be set when data.name='image_folder'")
  if d.name in SPECS and SPECS[d.name].variable_size:
    check(bool(d.low_res_factor), catalog.VARIABLE_SIZE_NEEDS_FACTOR.format(name=d.name))
  check(d.low_res_factor in LOW_RES_FACTORS,
        f"data.low_res_factor must be one of {LOW_RES_FACTORS}, got {d.low_res_factor!r}")
  if d.low_res_factor and isinstance(d.image_size, int):
    check(d.image_size % d.low_res_factor == 0,
          f"data.image_size ({d.image_size}) must be divisible by data.low_res_factor "
          f"({d.low_res_factor})")
  check(d.latents in LATENTS, f"data.latents must be one of {LATENTS}, got {d.latents!r}")
  check(isinstance(d.parallel_reads, int) and not isinstance(d.parallel_reads, bool)
        and d.parallel_reads >= 1,
        f"data.parallel_reads must be a positive integer, got {d.parallel_reads!r}")
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



def _check_checkpoints_and_mesh(c, check, device_count) -> None:
  """`checkpoint.*`, `sharding`, `mesh.*` and the batch over the devices."""
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
    k = c.optim.accumulate_steps
    if isinstance(k, int) and k > 1 and c.batch_size % device_count == 0:
      check(c.batch_size % (device_count * k) == 0,
            f"optim.accumulate_steps ({k}) must divide the {c.batch_size // device_count} rows "
            f"each of the {device_count} devices holds (batch_size {c.batch_size}): every "
            "device takes its share of every microbatch")



def _check_evaluators(c, objective, check) -> None:
  """`evals.*`: periods, step budgets the objective can sample, FID's settings."""
  o = c.objective
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
          check(False, f"evals.{name}.steps: {e}")

  interval = c.evals.samples.get("guidance_interval", (0.0, 1.0))
  check(len(interval) == 2 and 0.0 <= interval[0] < interval[1] <= 1.0,
        f"evals.samples.guidance_interval must be (t_min, t_max) with 0 <= t_min < t_max <= 1, "
        f"got {tuple(interval)!r}")
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
        check(False, f"evals.fid.protocol='original' samples its guided entry with "
              f"objective.denoise_timesteps ({o.denoise_timesteps}) steps: {e}")
    if isinstance(f.every, int) and isinstance(c.eval_every, int) and eval_period(c, "fid") > 0:
      check(bool(f.stats_path), "evals.fid.stats_path must be set when evals.fid is enabled "
            "(make one with `python eval.py --mode=fid_stats --config=... --out=stats.npz`)")


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
