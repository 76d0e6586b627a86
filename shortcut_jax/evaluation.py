"""Offline evaluation (what eval.py runs): samples, digits metrics, FID reference stats and FID."""

import json
from typing import Dict, List, Optional

import jax
import numpy as np
from absl import logging

from shortcut_jax import errors
from shortcut_jax.core import guidance as guidance_lib
from shortcut_jax import storage
from shortcut_jax import experiment
from shortcut_jax.evaluators import generate as gen
from shortcut_jax.evaluators import progress as progress_lib
from shortcut_jax.evaluators import image_files
from shortcut_jax.evaluators import conditions
from shortcut_jax.evaluators import batch_rows

MODES = ("sample", "digits_metrics", "fid_stats", "fid", "super_resolve", "sr_metrics", "cascade")


def restore_weights(workdir: str, step: Optional[int], use_ema: bool, config=None):
  """(experiment, weights to sample with, checkpoint step) of a workdir (`config`: its config
  when already loaded). With several processes every one gets the whole weights, as evaluators
  in training do (the generation and Inception loops run on each process's own devices)."""
  exp, state, ckpt_step = experiment.restore_experiment(workdir, config=config, step=step)
  state = experiment.evaluator_state(state)
  return exp, (state.ema_params if use_ema else state.params), ckpt_step


def guidance(exp, cfg_scale: Optional[float]) -> Optional[float]:
  """The guidance to sample with, in the sampler's meaning (`shortcut_jax.core.guidance`): None
  (eval.py without --cfg_scale) means the workdir config's evals.samples.cfg_scale, the guidance
  the in-training grids use. w = 1 (--nocfg) is conditional without guidance, w = 0
  unconditional, other w guided; a 'legacy' workdir (config.json without guidance_convention)
  keeps its old reading, where 0 meant conditional without guidance (returned as None)."""
  cfg_scale = exp.config.evals.samples.get("cfg_scale") if cfg_scale is None else cfg_scale
  return guidance_lib.sampler_scale(exp.config, cfg_scale)


def fid_settings(config, *, steps: Optional[List[int]] = None,
                 num_samples: Optional[int] = None, cfg_scale: Optional[float] = None,
                 use_ema: Optional[bool] = None, protocol: Optional[str] = None) -> Dict:
  """What `--mode=fid` evaluates when given these flags (None: not given), as a dict of
  steps, num_samples, cfg_scale (the sampler's meaning), use_ema and protocol.

  A workdir config with `guidance_convention='original'` (every new one) fills what is not
  given from `evals.fid` (steps, num_samples, cfg_scale, protocol; use_ema, whose None is the
  protocol's weights). A 'legacy' one (config.json from before that field) keeps eval.py's old
  defaults: steps 1, 4, 128, 1,000 samples, `evals.samples.cfg_scale` (0: no guidance), EMA
  weights, and `evals.fid.protocol` ('guided' for such a config).
  """
  f = config.evals.fid
  protocol = protocol or f.get("protocol", "guided")
  if protocol not in guidance_lib.PROTOCOLS:
    raise errors.ArgumentError(f"--protocol={protocol!r}: use one of {guidance_lib.PROTOCOLS}")
  if guidance_lib.convention(config) == guidance_lib.LEGACY:
    steps = list(guidance_lib.EVAL_STEPS) if steps is None else steps
    num_samples = guidance_lib.EVAL_NUM_SAMPLES if num_samples is None else num_samples
    cfg_scale = config.evals.samples.get("cfg_scale") if cfg_scale is None else cfg_scale
    use_ema = True if use_ema is None else use_ema
  else:
    steps = list(f.steps) if steps is None else steps
    num_samples = f.num_samples if num_samples is None else num_samples
    cfg_scale = f.cfg_scale if cfg_scale is None else cfg_scale
    use_ema = f.get("use_ema") if use_ema is None else use_ema
  return {"steps": [int(n) for n in steps], "num_samples": int(num_samples),
          "cfg_scale": guidance_lib.sampler_scale(config, cfg_scale),
          "use_ema": guidance_lib.protocol_use_ema(protocol, use_ema), "protocol": protocol}


@progress_lib.progress_bars  # Sampling, FID and SR metrics show a bar (rate, ETA) on process 0.
def run(mode: str, workdir: Optional[str], *, steps: Optional[List[int]] = None,
        num_samples: Optional[int] = None, cfg_scale: Optional[float] = None, seed: int = 0,
        use_ema: Optional[bool] = None, batch_size: int = 256,
        step: Optional[int] = None, config=None, out: Optional[str] = None, split: str = "train",
        fid_stats: Optional[str] = None, inception_path: Optional[str] = None,
        input_dir: Optional[str] = None, output_dir: Optional[str] = None,
        input_is_lr: bool = False, overwrite: bool = False,
        lpips_weights: Optional[str] = None, workdirs: Optional[List[str]] = None,
        prompts: Optional[str] = None, embeddings: Optional[str] = None,
        protocol: Optional[str] = None, extra_metrics: Optional[List[str]] = None,
        guidance_interval: Optional[List[float]] = None):
  """Runs one evaluation mode; returns its results (also written into the workdir).

  None for `steps`, `num_samples`, `cfg_scale` or `use_ema` means not given: `fid` then takes
  them from the workdir config's `evals.fid` (`fid_settings`, which also resolves `protocol`,
  'original' or 'guided'); the other modes use steps 1, 4, 128, 1,000 samples, the config's
  `evals.samples.cfg_scale` and the EMA weights. Guidance scales have the meaning of
  `shortcut_jax.core.guidance` (0 unconditional, 1 conditional, else guided; a 'legacy' workdir's
  0 is conditional).

  `fid_stats` needs `config` (or a workdir to read it from) and `out`; `config`, `out`, `split`,
  `fid_stats` and `inception_path` are used by the two FID modes only; `input_dir`
  by `super_resolve` and `sr_metrics` (a benchmark folder of HR images instead of the held-out
  crops), `output_dir`, `input_is_lr` and `overwrite` by `super_resolve` only; `lpips_weights` (else
  `$SHORTCUT_JAX_LPIPS`; neither: LPIPS is skipped) by `sr_metrics` only; `workdirs` (generator
  first, then upscalers; one entry of `steps` each) and `output_dir` by `cascade`; `prompts`
  (a text file, one prompt a line) or `embeddings` (.npy [N, D], or an .npz with 'embedding')
  by `sample` only, for a model trained with embeddings: image i gets prompt i % N.
  `guidance_interval` (t_min, t_max) replaces the config's `evals.samples.guidance_interval`
  for a model with a guidance-interval input (`model.guidance_interval`).
  """
  _check_mode_arguments(mode, prompts=prompts, embeddings=embeddings, protocol=protocol,
                        extra_metrics=extra_metrics)
  if mode == "cascade":
    return cascade(workdirs, steps=list(guidance_lib.EVAL_STEPS) if steps is None else steps,
                   num_samples=(guidance_lib.EVAL_NUM_SAMPLES if num_samples is None
                                else num_samples),
                   cfg_scale=cfg_scale, seed=seed, use_ema=True if use_ema is None else use_ema,
                   batch_size=batch_size, output_dir=output_dir)
  if mode == "fid_stats":
    if config is None:
      if not workdir:
        raise errors.ArgumentError(
            "--mode=fid_stats needs --config (or --workdir to read its config)")
      config = experiment.load_config(workdir)
    if not out:
      raise errors.ArgumentError("--mode=fid_stats needs --out (the .npz to write)")
    return reference_fid_stats(config, out, split=split, inception_path=inception_path,
                               batch_size=batch_size)
  if not workdir:
    raise errors.ArgumentError(f"--mode={mode} needs --workdir")
  workdir_config = experiment.load_config(workdir)
  if guidance_interval is not None:
    _set_guidance_interval(workdir_config, guidance_interval)
  if mode == "fid":
    settings = fid_settings(workdir_config, steps=steps, num_samples=num_samples,
                            cfg_scale=cfg_scale, use_ema=use_ema, protocol=protocol)
    steps, num_samples, use_ema = (settings["steps"], settings["num_samples"],
                                   settings["use_ema"])
  else:
    steps = list(guidance_lib.EVAL_STEPS) if steps is None else steps
    num_samples = guidance_lib.EVAL_NUM_SAMPLES if num_samples is None else num_samples
    use_ema = True if use_ema is None else use_ema
  exp, params, ckpt_step = restore_weights(workdir, step, use_ema, config=workdir_config)
  cfg_scale = settings["cfg_scale"] if mode == "fid" else guidance(exp, cfg_scale)
  M = exp.config.objective.denoise_timesteps
  bad = [n for n in steps if not 1 <= n <= M]
  if bad:
    raise errors.ArgumentError(
        f"--steps {bad}: each must be between 1 and denoise_timesteps ({M})")
  exp.objective.check_steps(steps)
  logging.info("restored step %d from %s", ckpt_step, workdir)
  if mode == "sample":
    prompted = conditions.prompted_cond(exp, num_samples, prompts, embeddings)
    return sample(exp, params, workdir, steps, num_samples, cfg_scale, seed, batch_size,
                  prompted)
  if mode == "fid":
    return fid_of_checkpoint(exp, params, workdir, steps, num_samples, cfg_scale, seed,
                             batch_size, ckpt_step, fid_stats=fid_stats,
                             inception_path=inception_path, protocol=settings["protocol"],
                             extra_metrics=extra_metrics,
                             use_ema=use_ema)
  if mode in ("super_resolve", "sr_metrics"):
    return super_resolution_mode(
        mode, exp, params, workdir, ckpt_step, steps=steps, num_samples=num_samples,
        cfg_scale=cfg_scale, seed=seed, batch_size=batch_size, input_dir=input_dir,
        output_dir=output_dir, input_is_lr=input_is_lr, overwrite=overwrite,
        lpips_weights=lpips_weights)
  return digits_metrics(exp, params, workdir, steps, num_samples, cfg_scale, seed, batch_size,
                        ckpt_step)


def _check_mode_arguments(mode: str, *, prompts, embeddings, protocol, extra_metrics) -> None:
  """Refuses a mode or a flag of another mode before anything is restored."""
  if mode not in MODES:
    raise errors.ArgumentError(f"unknown mode {mode!r}; known: {MODES}")
  if (prompts or embeddings) and mode != "sample":
    raise errors.ArgumentError("--prompts and --embeddings are for --mode=sample")
  if prompts and embeddings:
    raise errors.ArgumentError("give --prompts or --embeddings, not both")
  if prompts and not storage.isfile(prompts):
    raise errors.MissingFileError(f"--prompts: {prompts} does not exist")
  if mode != "fid" and protocol:
    raise errors.ArgumentError("--protocol is for --mode=fid")
  if mode != "fid" and extra_metrics:
    raise errors.ArgumentError("--extra_metrics is for --mode=fid")
  if extra_metrics:  # A bad name stops the run before anything is restored.
    from shortcut_jax.evaluators import adm_metrics  # pylint: disable=g-import-not-at-top
    adm_metrics.check_metrics(extra_metrics)


def _set_guidance_interval(config, guidance_interval) -> None:
  """`--guidance_interval` into the workdir config's `evals.samples`, checked."""
  interval = tuple(float(v) for v in guidance_interval)
  if not config.model.get("guidance_interval"):
    raise errors.ArgumentError("--guidance_interval: the model has no guidance-interval input "
                               "(model.guidance_interval)")
  if len(interval) != 2 or not 0.0 <= interval[0] < interval[1] <= 1.0:
    raise errors.ArgumentError(f"--guidance_interval must be t_min,t_max with 0 <= t_min < "
                               f"t_max <= 1, got {interval}")
  with config.unlocked():
    config.evals.samples.guidance_interval = interval


def super_resolution_mode(mode: str, exp, params, workdir: str, ckpt_step: int, *, steps,
                          num_samples, cfg_scale, seed, batch_size, input_dir, output_dir,
                          input_is_lr, overwrite, lpips_weights) -> Dict:
  """`super_resolve` (a folder of images) and `sr_metrics` (the held-out crops, or a benchmark
  folder of HR images with `input_dir`); see `run`."""
  from shortcut_jax.evaluators import super_resolution  # pylint: disable=g-import-not-at-top
  if mode == "super_resolve":
    if not input_dir or not output_dir:
      raise errors.ArgumentError("--mode=super_resolve needs --input_dir and --output_dir")
    if len(steps) != 1:
      raise errors.ArgumentError(
          f"--mode=super_resolve takes one step budget, got --steps={steps}")
    result = super_resolution.super_resolve_folder(
        exp, params, input_dir, output_dir, num_steps=steps[0], input_is_lr=input_is_lr,
        seed=seed, overwrite=overwrite, cfg_scale=cfg_scale)
    print(json.dumps(result, indent=2))
    return result
  if mode == "sr_metrics" and input_dir:
    # A benchmark folder of whole HR images (Set5, Set14, DIV2K validation HR, ...).
    results = super_resolution.benchmark_metrics(exp, params, input_dir, steps=steps, seed=seed,
                                                 cfg_scale=cfg_scale)
    results.update(checkpoint_step=ckpt_step, objective=exp.objective.name)
    name = storage.basename(input_dir.rstrip("/")) or "folder"
    super_resolution.write_json(storage.join(workdir, f"sr_metrics_{name}.json"), results)
    print(json.dumps({k: v for k, v in results.items() if k != "per_image"}, indent=2))
    return results
  results = super_resolution.sr_metrics(exp, params, steps=steps, num_images=num_samples,
                                        seed=seed, batch_size=batch_size, cfg_scale=cfg_scale,
                                        lpips_weights=lpips_weights)
  results.update(checkpoint_step=ckpt_step, objective=exp.objective.name)
  super_resolution.write_json(storage.join(workdir, "sr_metrics.json"), results)
  # A picture to look at: LR | bicubic | fewest-step and most-step samples | HR.
  strip = super_resolution.comparison_strip(exp, params, steps=sorted({min(steps), max(steps)}),
                                            seed=seed)
  if jax.process_index() == 0:
    image_files.save_png(storage.join(workdir, "sr_strip.png"), strip,
                         max(1, 128 // exp.config.data.image_size))
  print(json.dumps(results, indent=2))
  return results


def sample(exp, params, workdir, steps, num_samples, cfg_scale, seed, batch_size,
           prompted=None) -> Dict[int, str]:
  """Writes W/samples/samples_<N>.npz (images uint8 NHWC, labels) and grid_<N>.png per N.

  `prompted` (`conditions.prompted_cond`): the images follow those prompts; the .npz then also holds
  `prompt_index` and `prompts`, and the grid has a column per prompt (up to 20). Sharded over
  every device of every process (each process generates its share of the fixed per-image
  seeds); process 0 gathers the images and writes the files.
  """
  cond, extra, cols = None, {}, None
  if conditions.is_conditional(exp.config):
    cols = exp.config.data.num_classes
  if prompted is not None:
    cond, index, texts = prompted
    extra = {"prompt_index": index, "prompts": np.asarray(texts)}
    cols = len(texts) if len(texts) <= 20 else None
  out_dir = storage.join(workdir, "samples")
  if jax.process_index() == 0:
    storage.makedirs(out_dir)
  written = {}
  for n in steps:
    images, labels = gen.generate(exp, params, num_images=num_samples, num_steps=n,
                                  cfg_scale=cfg_scale, seed=seed, batch_size=batch_size,
                                  cond=cond, mesh=batch_rows.data_mesh(), desc=f"sampling {n} steps")
    images = image_files.to_uint8(images)
    if jax.process_index() == 0:
      path = storage.join(out_dir, f"samples_{n}.npz")
      storage.write_npz(path, images=images, labels=labels, **extra)
      image_files.save_png(storage.join(out_dir, f"grid_{n}.png"), image_files.image_grid(images[:100], cols),
                   max(1, 64 // images.shape[1]))
      written[n] = path
      logging.info("wrote %d samples with %d steps to %s", len(images), n, path)
  return written


def digits_metrics(exp, params, workdir, steps, num_samples, cfg_scale, seed, batch_size, ckpt_step):
  """FD-digits and class accuracy per step budget -> W/digits_metrics.json (seed 0) or
  W/digits_metrics_seed{seed}.json, so runs with other noise seeds keep the first one."""
  from shortcut_jax.evaluators import digits_metrics as dm
  clf = dm.get_classifier(exp.config.data)
  ref = dm.reference_stats(clf, exp.config.data)
  test_images, test_labels = dm.load_split(exp.config.data, "test")
  results = {"checkpoint_step": ckpt_step, "cfg_scale": cfg_scale, "num_samples": num_samples,
             "seed": seed, "held_out_test_split": dm.digits_metrics(clf, ref, test_images, test_labels),
             "steps": {}}
  for n in steps:
    images, labels = gen.generate(exp, params, num_images=num_samples, num_steps=n,
                                  cfg_scale=cfg_scale, seed=seed, batch_size=batch_size,
                                  mesh=batch_rows.data_mesh(), desc=f"sampling {n} steps")
    results["steps"][str(n)] = dm.digits_metrics(clf, ref, images,
                                                 conditions.intended_classes(exp, labels))
    logging.info("%d steps: %s", n, results["steps"][str(n)])
  if jax.process_index() == 0:
    name = "digits_metrics.json" if seed == 0 else f"digits_metrics_seed{seed}.json"
    storage.write_json(storage.join(workdir, name), results, indent=2)
  print(json.dumps(results, indent=2))
  return results


def reference_fid_stats(config, out: str, *, split: str = "train",
                        inception_path: Optional[str] = None, batch_size: int = 256) -> Dict:
  """Inception statistics of a dataset split -> `out` (.npz with mu, sigma and metadata).

  Args:
    config: an experiment config; its `data` section says which dataset (TFDS or image folder)
      and at what resolution (`data.image_size`, the resolution the model generates at).
    out: the .npz to write (local or remote).
    split: the split to read in full ('train' by default); each process reads its own part of
      it and the statistics are merged (`fid_evaluator.dataset_stats`).
    inception_path: Inception weights (None: config.evals.fid.inception_path, else
      $SHORTCUT_JAX_INCEPTION).
    batch_size: images per Inception call (rounded up to a multiple of the device count).

  Returns:
    dict(path, num_images, split, dataset, inception).
  """
  from shortcut_jax.evaluators import fid, fid_evaluator
  inception_path = inception_path or config.evals.fid.inception_path
  features, weights = fid_evaluator.load_features(inception_path, batch_size=batch_size)
  mu, sigma, count = fid_evaluator.dataset_stats(config.data, features, split=split,
                                                 batch_size=features.batch_size)
  result = {"path": out, "num_images": count, "split": split, "dataset": config.data.name,
            "image_size": config.data.image_size, "inception": weights}
  if jax.process_index() == 0:
    fid.save_stats(out, mu, sigma, num_images=count, split=split, dataset=config.data.name,
                   image_size=config.data.image_size)
    logging.info("wrote FID statistics of %s/%s (%d images) to %s", config.data.name, split,
                 count, out)
  print(json.dumps(result, indent=2))
  return result


def fid_of_checkpoint(exp, params, workdir, steps, num_samples, cfg_scale, seed, batch_size,
                      ckpt_step, *, fid_stats=None, inception_path=None,
                      protocol: str = "guided", use_ema: bool = True,
                      extra_metrics: Optional[List[str]] = None) -> Dict:
  """FID of each entry of the FID protocol against reference statistics -> W/fid.json.

  `extra_metrics` (None: evals.fid.extra_metrics; names of `adm_metrics.METRICS`) adds ADM's
  Inception Score, sFID and precision / recall of the same samples, as results['extra_metrics']
  = {entry key: {'is', 'sfid', 'precision', 'recall'}}.

  The entries (`guidance.fid_entries`): 'guided', each of `steps` at `cfg_scale`; 'original',
  each of `steps` at cfg 1 (0 for an unconditional model) and one at `cfg_scale` with
  objective.denoise_timesteps steps. `use_ema` says which weights `params` are (reported).
  Reference statistics: `fid_stats`, else the workdir config's evals.fid.stats_path; Inception
  weights: `inception_path`, else evals.fid.inception_path, else $SHORTCUT_JAX_INCEPTION.
  """
  from shortcut_jax.evaluators import adm_metrics, fid_evaluator
  fid_config = exp.config.evals.fid
  extra = adm_metrics.check_metrics(fid_config.get("extra_metrics", ()) if extra_metrics is None
                                    else extra_metrics)
  entries = guidance_lib.fid_entries(protocol, steps, cfg_scale,
                                     exp.config.objective.denoise_timesteps, conditions.is_guidable(exp))
  exp.objective.check_steps(sorted({e.steps for e in entries}))
  summary = guidance_lib.describe(protocol, entries, use_ema)
  logging.info("%s", summary)
  field = "--fid_stats" if fid_stats else "--fid_stats (or evals.fid.stats_path)"
  stats_path = fid_evaluator.resolve_stats_path(fid_stats or fid_config.stats_path, field)
  features, weights = fid_evaluator.load_features(inception_path or fid_config.inception_path,
                                                  batch_size=batch_size,
                                                  outputs=adm_metrics.inception_outputs(extra))
  if extra:  # One pass over the samples gives FID and the extra metrics.
    reference = adm_metrics.load_reference(stats_path, adm_metrics.feature_dict_fn(features),
                                           extra, batch_size=features.batch_size)
    metrics = adm_metrics.model_metrics(exp, params, features, reference, entries=entries,
                                        num_images=num_samples, metrics=extra, seed=seed)
    values = {k: m["fid"] for k, m in metrics.items()}
  else:
    reference = fid_evaluator.load_reference(stats_path, features)
    values = fid_evaluator.protocol_fid(exp, params, features, reference, entries=entries,
                                        num_images=num_samples, seed=seed)
  results = {"steps": dict(values), "num_samples": num_samples,
             "cfg_scale": cfg_scale, "protocol": protocol, "protocol_summary": summary,
             "entries": [e.as_dict() for e in entries],
             "weights": "ema" if use_ema else "online",
             "guidance_convention": guidance_lib.convention(exp.config), "seed": seed,
             "reference_stats": stats_path, "inception_weights": weights,
             "checkpoint_step": ckpt_step}
  if extra:
    results["extra_metrics"] = {k: {n: v for n, v in m.items() if n != "fid"}
                                for k, m in metrics.items()}
  if jax.process_index() == 0:
    storage.write_json(storage.join(workdir, "fid.json"), results, indent=2)
  print(json.dumps(results, indent=2))
  return results


def cascade(workdirs: Optional[List[str]], *, steps: List[int], num_samples: int,
            cfg_scale: Optional[float], seed: int, use_ema: bool, batch_size: int,
            output_dir: Optional[str]) -> Dict:
  """`--mode=cascade`: restores every stage, then `evaluators.cascade.run_cascade` (which checks
  the stages against each other before sampling). cfg_scale None: the generator's config
  default, used by every stage trained with condition dropout."""
  from shortcut_jax.evaluators import cascade as cascade_lib
  if not workdirs or not output_dir:
    raise errors.ArgumentError("--mode=cascade needs --workdirs=GEN,UP1[,UP2...] and --output_dir")
  exps, params = [], []
  for w in workdirs:
    exp, weights, _ = restore_weights(w, None, use_ema)
    exps.append(exp)
    params.append(weights)
  cfg_scale = guidance(exps[0], cfg_scale)
  result = cascade_lib.run_cascade(exps, params, steps, num_samples=num_samples,
                                   output_dir=output_dir, cfg_scale=cfg_scale, seed=seed,
                                   batch_size=batch_size, names=workdirs)
  print(json.dumps(result, indent=2))
  return result
