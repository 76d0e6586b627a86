"""Super-resolution with an image-conditioned model: whole images of any size, and PSNR / SSIM.

* `super_resolve_image`: the upsampled LR image (the model's condition) is cut into overlapping
  tiles of the training size and sampled as one canvas in `num_steps` steps: one noise image per
  output image, cropped per tile, and the tiles blended back into the canvas after every step
  (`shortcut_jax.tiling.blend_steps`; in latent space the tiles are encoded first and the
  canvas decoded tile by tile and blended in pixel space). A label-conditional model gets the
  null label (the image's class is unknown) unless a label is given.
* `super_resolve_folder` (`eval.py --mode=super_resolve`): every PNG/JPEG of a folder, grey or
  RGB, any size, is degraded by the configured factor (or taken as the LR input with
  `input_is_lr`), super-resolved at full size and written as PNG under the same stem. Either
  folder may be local or remote (`storage`).
* `sr_metrics` (`eval.py --mode=sr_metrics`): PSNR and SSIM (RGB and Y) on the held-out split
  against HR, next to the bicubic upsampling of the same LR input (which is exactly the model's
  `cond_image`); LPIPS too when given its weights (`evaluators.lpips`). A label-conditional
  model is sampled with each held-out example's own label (so is `comparison_strip`).
"""

import os
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np
from absl import logging

from shortcut_jax import latents as latents_lib
from shortcut_jax import sampling
from shortcut_jax import storage
from shortcut_jax import tiling
from shortcut_jax.data import low_res
from shortcut_jax.evaluators import generate as gen
from shortcut_jax.evaluators import image_files
from shortcut_jax.evaluators import conditions
from shortcut_jax.evaluators import lpips
from shortcut_jax.evaluators import sr_quality

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def check_super_resolution_model(exp) -> int:
  """The model's upsampling factor; raises ValueError for a model without an image condition."""
  factor = exp.config.data.low_res_factor
  if not factor or "cond_image" not in exp.model.conditioning.keys:
    raise ValueError("this workdir's model is not a super-resolution model "
                     "(its config has data.low_res_factor=0)")
  return int(factor)


def read_image(path: str, channels: int) -> np.ndarray:
  """An image file (local or remote) as float32 [H, W, channels] in [-1, 1] (grey <-> RGB
  converted, alpha dropped).

  Raises:
    OSError / ValueError: the file cannot be read as an image.
  """
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image
  with Image.open(io.BytesIO(storage.read_bytes(path))) as im:
    im = im.convert("L" if channels == 1 else "RGB")
    pixels = np.asarray(im, np.float32)
  if pixels.ndim == 2:
    pixels = pixels[..., None]
  return pixels / 127.5 - 1.0


def super_resolve_image(exp, params, cond_image: np.ndarray, *, num_steps: int, seed: int = 0,
                        batch_size: int = 16, overlap: Optional[int] = None,
                        cfg_scale: Optional[float] = None, label: Optional[int] = None
                        ) -> np.ndarray:
  """Samples the HR image of one upsampled LR image of any size, tile by tile.

  The whole image is sampled as one canvas (in the model's space: latents in latent space),
  padded to whole tiles. Its noise is one image the size of the canvas, from the key
  `fold_in(PRNGKey(seed), 0)` (the key `generate` gives image 0), cropped per tile: tile j
  starts from its crop (through the run's source, e.g. a coupling's noised LR tile), and a
  sampler that draws fresh noise draws step j's as one canvas from `fold_in(key, j)` too. After
  every step the tiles are blended back into the canvas (`tiling.blend_steps`), so overlapping
  tiles see the same noise and start each step from the same values; a latent canvas is decoded
  tile by tile and blended in pixel space. An image the size of a tile is exactly image 0 of
  `generate` with the same seed and conditions.

  Labels (a label-conditional model): the class of a user's image is unknown, so every tile
  gets the null label unless `label` is given (`conditions.example_labels`); the model then
  samples with its unconditional velocity for the label, which label dropout trained.

  Args:
    exp: the `experiment.Experiment` of a super-resolution model.
    params: its weights.
    cond_image: float32 [H, W, C] in [-1, 1], the LR input upsampled to the output size.
    num_steps: sampling steps.
    seed: noise seed (see above).
    batch_size: tiles per sampler call.
    overlap: overlap of neighbouring tiles in pixels (default: a quarter of the tile; rounded
      up to whole latents in latent space).
    cfg_scale: guidance weight (only for models trained with condition dropout).
    label: the class of the image (label-conditional models); None: the null label.

  Returns:
    float32 [H, W, C] in [-1, 1] (clipped).
  """
  vae = latents_lib.vae_from_config(exp.config)
  factor = 1 if vae is None else vae.downsample_factor  # Pixels per model-space pixel.
  tile = exp.image_shape[0]  # In the model's space (latents in latent space).
  overlap = (tile * factor) // 4 if overlap is None else overlap
  overlap_m = -(-int(overlap) // factor)
  if cfg_scale is not None and not conditions.is_guidable(exp):
    cfg_scale = None
  if (label is None and conditions.is_conditional(exp.config)
      and not exp.config.objective.class_dropout_prob):
    logging.warning("super-resolving with the null label, which this model never trained on "
                    "(objective.class_dropout_prob=0): pass the image's label")
  exp.objective.check_steps([num_steps])
  step = sampling.make_step(exp.model, num_steps, exp.config.objective.denoise_timesteps,
                            exp.objective.uses_level, cfg_scale, objective=exp.objective)
  image = np.asarray(cond_image, np.float32)
  height, width = image.shape[:2]
  canvas_h, canvas_w = max(-(-height // factor), tile), max(-(-width // factor), tile)
  positions = tiling.tile_grid(canvas_h, canvas_w, tile, overlap_m)
  pixel_positions = [(y * factor, x * factor) for y, x in positions]
  pixels = tiling.pad_image(image, canvas_h * factor, canvas_w * factor)
  batches = tiling.tile_batches(len(positions), batch_size)
  # The conditions of every batch of tiles, made once (in latent space: encoded).
  conds = [conditions.sample_cond(exp, len(rows), labels=label, examples={"cond_image": (
      tiling.crop_tiles(pixels, [pixel_positions[r] for r in rows], tile * factor))})
           for rows in batches]

  shape = (canvas_h, canvas_w, exp.image_shape[-1])
  key = jax.random.fold_in(jax.random.PRNGKey(seed), 0)
  noise_of = lambda k: np.asarray(jax.random.normal(k, shape))
  crops = lambda canvas, rows: tiling.crop_tiles(canvas, [positions[r] for r in rows], tile)

  # x0 of every tile from its crop of the noise image, blended into the starting canvas.
  noise = noise_of(key)
  start = lambda tiles, k, rows, j: np.asarray(exp.source.from_noise(
      crops(noise, rows), tiles.shape, conds[k]))
  canvas = tiling.blend_steps(start, noise, positions, tile, overlap_m, batch_size, 1)

  draws_noise = exp.objective.sampler_noise
  step_noise = {}

  def one_step(tiles, k, rows, j):
    if draws_noise and j not in step_noise:
      step_noise.clear()
      step_noise[j] = noise_of(jax.random.fold_in(key, j))
    eps = crops(step_noise[j], rows) if draws_noise else None
    return step(params, tiles, conds[k], j, eps)

  canvas = tiling.blend_steps(one_step, canvas, positions, tile, overlap_m, batch_size, num_steps)
  if vae is None:
    out = canvas
  else:  # Decoded tile by tile, blended in pixel space.
    decoded = [np.asarray(exp.to_images(crops(canvas, rows)))[:len(np.unique(rows))]
               for rows in batches]
    out = tiling.blend_tiles(np.concatenate(decoded), pixel_positions, pixels.shape,
                             tile * factor, overlap_m * factor)
  return np.clip(out[:height, :width], -1.0, 1.0)


def image_names(folder: str) -> List[str]:
  """The PNG / JPEG files directly in `folder`, sorted (FileNotFoundError when there are none)."""
  if not storage.isdir(folder):
    raise FileNotFoundError(f"--input_dir {folder!r} is not a folder")
  names = sorted(f for f in storage.listdir(folder)
                 if os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES)
  if not names:
    raise FileNotFoundError(f"no PNG or JPEG images in {folder!r}")
  return names


def super_resolve_folder(exp, params, input_dir: str, output_dir: str, *, num_steps: int,
                         input_is_lr: bool = False, seed: int = 0, batch_size: int = 16,
                         overwrite: bool = False, cfg_scale: Optional[float] = None,
                         label: Optional[int] = None) -> Dict:
  """Super-resolves every image of `input_dir` into `output_dir/<stem>.png`.

  Without `input_is_lr` each image (cropped to a multiple of the factor) is the HR reference:
  it is downsampled by the factor and super-resolved back to its size. With `input_is_lr` the
  image is the LR input and the output is `factor` times larger. A label-conditional model
  samples every image with the null label (their classes are unknown), or with `label`
  (`super_resolve_image`).

  Returns:
    dict(written=[paths], skipped={file: reason}, existing=[paths not overwritten]).
  """
  factor = check_super_resolution_model(exp)
  names = image_names(input_dir)
  storage.makedirs(output_dir)
  channels = exp.image_shape[-1]
  result = {"written": [], "skipped": {}, "existing": []}
  for name in names:
    out_path = storage.join(output_dir, os.path.splitext(name)[0] + ".png")
    if storage.exists(out_path) and not overwrite:
      result["existing"].append(out_path)
      continue
    try:
      image = read_image(storage.join(input_dir, name), channels)
    except (OSError, ValueError) as e:
      result["skipped"][name] = f"unreadable: {e}"
      continue
    if input_is_lr:
      cond = low_res.upsample(image, factor)
    else:
      hr = low_res.mod_crop(image, factor)
      if min(hr.shape[:2]) < factor:
        result["skipped"][name] = f"smaller than the factor {factor}"
        continue
      cond = low_res.cond_image(hr, factor)
    sr = super_resolve_image(exp, params, cond, num_steps=num_steps, seed=seed,
                             batch_size=batch_size, cfg_scale=cfg_scale, label=label)
    image_files.save_png(out_path, image_files.to_uint8(sr))
    result["written"].append(out_path)
    logging.info("%s: %dx%d -> %dx%d, %s", name, sr.shape[1] // factor, sr.shape[0] // factor,
                 sr.shape[1], sr.shape[0], out_path)
  for name, reason in result["skipped"].items():
    logging.warning("skipped %s: %s", name, reason)
  if result["existing"]:
    logging.warning("%d outputs already exist and were kept (pass --overwrite to replace them)",
                    len(result["existing"]))
  return result


LPIPS_SKIPPED = (f"LPIPS skipped: no weights given (pass {lpips.FLAG}=lpips_alex.npz or set "
                 f"${lpips.ENV_VAR}; make the file with python -m "
                 "shortcut_jax.tools.convert_lpips, see docs/evaluation.md)")


def lpips_scorer(weights: Optional[str], batch_size: int = 32
                 ) -> Tuple[Optional[lpips.LPIPSScorer], Dict]:
  """(scorer, JSON note) for `weights` (else `$SHORTCUT_JAX_LPIPS`); (None, skipped note) when
  neither is set. Raises FileNotFoundError / ValueError for a missing or wrong file."""
  path = lpips.weights_path_or_none(weights)
  if path is None:
    return None, {"skipped": LPIPS_SKIPPED}
  scorer = lpips.LPIPSScorer.from_file(path, batch_size=batch_size)
  return scorer, {"weights": path, "net": "alex", "version": "0.1",
                  "note": "mean over images of 8-bit-rounded pairs; lower is better"}


def score_images(hr: np.ndarray, images: np.ndarray,
                 scorer: Optional[lpips.LPIPSScorer] = None
                 ) -> Tuple[Dict[str, float], np.ndarray]:
  """(means, per-image RGB PSNR [b]): the means of `sr_quality.sr_metrics_per_image` of
  `images` against `hr`, plus `lpips` (mean) with a scorer.

  LPIPS sees the same 8-bit-rounded images as PSNR / SSIM, mapped back to [-1, 1].
  """
  per_image = sr_quality.sr_metrics_per_image(hr, images)
  metrics = {name: float(np.mean(values)) for name, values in per_image.items()}
  if scorer is not None:
    as_png = lambda x: sr_quality.to_pixels(x) / 127.5 - 1.0
    metrics["lpips"] = scorer.mean(as_png(hr), as_png(images))
  return metrics, per_image["psnr_rgb"]


def sr_metrics(exp, params, *, steps: Sequence[int], num_images: Optional[int] = None,
               seed: int = 0, batch_size: int = 64, cfg_scale: Optional[float] = None,
               split: str = "test", lpips_weights: Optional[str] = None) -> Dict:
  """PSNR / SSIM (RGB and Y) of the held-out split's HR crops, per step budget and for bicubic.

  Args:
    exp, params: the model.
    steps: step budgets.
    num_images: held-out crops to score (default: the whole split).
    seed, batch_size, cfg_scale: as for generation.
    split: the held-out split.
    lpips_weights: LPIPS weights `.npz` (None: `$SHORTCUT_JAX_LPIPS`; neither: no LPIPS).

  Returns:
    dict(num_images, factor, bicubic={metric: value}, steps={N: {metric: value}},
    lpips={weights, ...} or {skipped: how to enable it}, gain_by_detail=[...] (where the model
    beats bicubic, `gain_by_detail`)); the metrics include `lpips` when it was computed.

  Raises:
    FileNotFoundError / ValueError: LPIPS weights were given but are missing or wrong, or the
      crops are too small for LPIPS (before anything is sampled).
  """
  factor = check_super_resolution_model(exp)
  from shortcut_jax.data import pipeline
  available = pipeline.dataset_info(exp.config.data)["num_examples"][split]
  num_images = available if num_images is None else min(num_images, available)
  scorer, lpips_note = lpips_scorer(lpips_weights, batch_size=min(batch_size, 32))
  if scorer is None:
    logging.info("%s", LPIPS_SKIPPED)
  held_out = conditions.held_out_examples(exp.config, num_images, split)
  hr = held_out["image"]
  if scorer is not None:
    lpips.check_size(*hr.shape[1:3])
  cond = conditions.sample_cond(exp, num_images, examples=held_out)
  results = {"num_images": int(num_images), "factor": factor, "split": split, "steps": {},
             "lpips": lpips_note}
  results["bicubic"], bicubic_psnr = score_images(hr, held_out["cond_image"], scorer)
  per_image = {"bicubic": bicubic_psnr}
  for n in steps:
    images, _ = gen.generate(exp, params, num_images=num_images, num_steps=n, cfg_scale=cfg_scale,
                             seed=seed, batch_size=batch_size, cond=cond)
    results["steps"][str(n)], per_image[str(n)] = score_images(
        hr, np.clip(images, -1.0, 1.0), scorer)
    logging.info("%d steps: %s", n, results["steps"][str(n)])
  results["gain_by_detail"] = gain_by_detail(per_image)
  return results


def gain_by_detail(psnr: Dict[str, np.ndarray], parts: int = 5) -> List[Dict]:
  """Where a model beats bicubic: the crops in `parts` equal groups by bicubic PSNR, the most
  detailed (lowest) first; per group its mean bicubic PSNR and each budget's mean PSNR gain.

  Args:
    psnr: {'bicubic': [b], '<steps>': [b], ...} per-image RGB PSNR.
    parts: number of groups.
  """
  order = np.argsort(psnr["bicubic"], kind="stable")
  groups = []
  for rows in np.array_split(order, parts):
    if not len(rows):
      continue
    base = psnr["bicubic"][rows]
    groups.append({"crops": int(len(rows)), "bicubic_psnr_rgb": float(np.mean(base)),
                   "gain": {n: float(np.mean(v[rows] - base)) for n, v in psnr.items()
                            if n != "bicubic"}})
  return groups


def benchmark_metrics(exp, params, hr_dir: str, *, steps: Sequence[int], seed: int = 0,
                      batch_size: int = 16, cfg_scale: Optional[float] = None,
                      crop_border: Optional[int] = None) -> Dict:
  """PSNR / SSIM (RGB and Y) on a folder of whole HR images, the SR benchmarks' layout (Set5,
  Set14, BSD100, Urban100, DIV2K's validation HR folder).

  Protocol: each image is cropped to a multiple of the factor ("mod crop"), degraded to LR with
  the training pipeline's antialiased bicubic (so the model sees the degradation it learned;
  published tables use MATLAB's imresize instead, which differs slightly), and super-resolved
  whole (`super_resolve_image`, tiled). Metrics are computed on 8-bit values after shaving
  `crop_border` pixels off every side (default: the factor, as EDSR and BasicSR do), per image,
  then averaged over the images; Y is BT.601 studio-swing luma (`sr_quality`). Bicubic is the
  model's own condition, scored the same way.

  Returns:
    dict(folder, num_images, factor, crop_border, bicubic={metric: mean}, steps={N: {metric:
    mean}}, per_image={name: {'bicubic': {...}, 'N': {...}}}).
  """
  factor = check_super_resolution_model(exp)
  crop_border = factor if crop_border is None else int(crop_border)
  channels = exp.image_shape[-1]
  per_image, skipped = {}, {}
  for name in image_names(hr_dir):
    hr = low_res.mod_crop(read_image(storage.join(hr_dir, name), channels), factor)
    if min(hr.shape[:2]) <= 2 * crop_border + 10:  # SSIM's 11x11 window must fit.
      skipped[name] = f"too small ({hr.shape[1]}x{hr.shape[0]})"
      continue
    cond = low_res.cond_image(hr, factor)
    score = lambda x: {k: float(v[0]) for k, v in sr_quality.sr_metrics_per_image(
        hr[None], np.asarray(x)[None], crop_border=crop_border).items()}
    per_image[name] = {"bicubic": score(cond)}
    for n in steps:
      sr = super_resolve_image(exp, params, cond, num_steps=n, seed=seed, batch_size=batch_size,
                               cfg_scale=cfg_scale)
      per_image[name][str(n)] = score(sr)
    logging.info("%s: %s", name, per_image[name])
  for name, reason in skipped.items():
    logging.warning("skipped %s: %s", name, reason)
  if not per_image:
    raise ValueError(f"no image of {hr_dir!r} is large enough to score")
  mean = lambda key: {m: float(np.mean([r[key][m] for r in per_image.values()]))
                      for m in next(iter(per_image.values()))[key]}
  return {"folder": hr_dir, "num_images": len(per_image), "factor": factor,
          "crop_border": crop_border, "bicubic": mean("bicubic"),
          "steps": {str(n): mean(str(n)) for n in steps}, "per_image": per_image,
          "skipped": skipped}


def comparison_strip(exp, params, *, steps: List[int], num_images: int = 4, seed: int = 0,
                     split: str = "test", candidates: int = 256) -> np.ndarray:
  """A uint8 picture with one row per held-out crop: LR | bicubic | N-step samples | HR.

  The rows are the `num_images` crops, among the first `candidates` of the split, that bicubic
  upsampling gets most wrong (largest mean squared error): the crops with detail to restore,
  not flat sky. They are shown in the split's order."""
  factor = check_super_resolution_model(exp)
  pool = conditions.held_out_examples(exp.config, max(num_images, candidates), split)
  error = np.mean((pool["image"] - pool["cond_image"]) ** 2, axis=(1, 2, 3))
  rows = np.sort(np.argsort(-error, kind="stable")[:num_images])
  held_out = {k: v[rows] for k, v in pool.items()}
  hr = held_out["image"]
  lr = low_res.make_low_res(hr, factor)
  nearest = np.repeat(np.repeat(lr, factor, axis=1), factor, axis=2)
  columns = [nearest, held_out["cond_image"]]
  cond = conditions.sample_cond(exp, num_images, examples=held_out)
  for n in steps:
    images, _ = gen.generate(exp, params, num_images=num_images, num_steps=n, cfg_scale=None,
                             seed=seed, cond=cond)
    columns.append(images)
  columns.append(hr)
  cells = np.stack(columns, axis=1).reshape(-1, *hr.shape[1:])
  return image_files.image_grid(image_files.to_uint8(cells), cols=len(columns))


def write_json(path: str, results: Dict) -> None:
  """`results` as indented JSON into `path` (local or remote), on process 0."""
  if jax.process_index() == 0:
    storage.write_json(path, results, indent=2)
