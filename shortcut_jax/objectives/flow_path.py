"""What every objective shares besides the path: the source distribution, the level grid and
the faithful mode's batch preparation (the original's update step).

Conventions (the original code's, kvfrans/shortcut-models): t = 0 is noise and t = 1 is data,
x0 is drawn from the source distribution (`Source`, `sample_source`: standard normal noise by
default; zeros, or the batch's
conditioning image for coupling flows) and x1 is a data sample. The interpolation paths live in
`paths` (the original's linear path `interpolate` / `flow_velocity` is re-exported here for the
callers that import it from this module).
"""

import dataclasses
import math
from typing import Any, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from shortcut_jax.core.conditioning import cond_from_batch
from shortcut_jax.core.config_value import config_value  # noqa: F401  (objectives read it here)
from shortcut_jax.core.paths import (SIGMA_MIN, flow_velocity,  # noqa: F401  (re-exported)
                                           interpolate)

Array = Any


def finest_level(denoise_timesteps: int) -> int:
  """L = log2(M); raises ValueError unless M is a positive power of two."""
  m = int(denoise_timesteps)
  if m < 1 or m & (m - 1):
    raise ValueError(f"denoise_timesteps must be a power of two, got {denoise_timesteps!r}")
  return int(round(math.log2(m)))


SOURCES = ("gaussian", "zeros", "cond_image")
# The DDPM forward process that can noise a coupling source: linear betas over 1,000 steps.
DDPM_STEPS = 1000
DDPM_BETA_START, DDPM_BETA_END = 1e-4, 0.02


def ddpm_alpha_bar(step: int) -> float:
  """ᾱ_s = prod_{i <= s} (1 - β_i) of the linear 1,000-step DDPM schedule (s = 0: 1, no noise)."""
  step = int(step)
  if not 0 <= step <= DDPM_STEPS:
    raise ValueError(f"DDPM step must be in [0, {DDPM_STEPS}], got {step}")
  betas = np.linspace(DDPM_BETA_START, DDPM_BETA_END, DDPM_STEPS, dtype=np.float64)
  return float(np.prod(1.0 - betas[:step]))


@dataclasses.dataclass(frozen=True)
class Source:
  """Where a flow starts (x0, t = 0): the one source abstraction of objectives, samplers,
  generation, loss-per-t and FID.

  Attributes:
    name: 'gaussian' (standard normal noise, the default and the original), 'zeros' (a fixed
      all-zero start: a deterministic one-pass regressor, see `regression`) or 'cond_image'
      (coupling flow matching: the batch's conditioning image, e.g. the upsampled low-resolution
      input of super-resolution, in the model's space — pixels, or its latent in latent space).
    noise_step: 'cond_image' only: noise the start by the DDPM forward process at this step of
      the linear 1,000-step schedule, x0 = sqrt(ᾱ_s) c + sqrt(1 - ᾱ_s) ε (0: x0 = c exactly;
      fm-boosting, CompVis/fm-boosting, uses 400).
  """
  name: str = "gaussian"
  noise_step: int = 0

  def __post_init__(self):
    if self.name not in SOURCES:
      raise ValueError(f"unknown source {self.name!r}; known: {SOURCES}")

  @property
  def needs_cond(self) -> bool:
    """Whether `draw` reads the conditioning (a `cond_image`)."""
    return self.name == "cond_image"

  def draw(self, rng: Array, shape: Tuple[int, ...], cond: Optional[Mapping[str, Array]] = None
           ) -> Array:
    """x0 of shape `shape` (the batch's rows of `cond` for a coupling source): `from_noise` of
    the standard normal draw `jax.random.normal(rng, shape)` (made only where it is used)."""
    if self.name == "zeros":
      return jnp.zeros(shape, jnp.float32)
    if self.name == "cond_image" and not self.noise_step:
      return self.from_noise(None, shape, cond)
    return self.from_noise(jax.random.normal(rng, shape), shape, cond)

  def from_noise(self, noise: Optional[Array], shape: Tuple[int, ...],
                 cond: Optional[Mapping[str, Array]] = None) -> Array:
    """x0 from a given standard normal `noise` of shape `shape` (None where the source uses
    none: zeros, an un-noised coupling); `draw` is this of its key's draw. Tiled sampling passes
    each tile its crop of one noise image per output image."""
    if self.name == "gaussian":
      return noise
    if self.name == "zeros":
      return jnp.zeros(shape, jnp.float32)
    if cond is None or "cond_image" not in cond:
      raise ValueError("source 'cond_image' starts from the batch's conditioning image, but the "
                       "batch has none: set data.low_res_factor (super-resolution data)")
    c = jnp.asarray(cond["cond_image"], jnp.float32)
    if tuple(c.shape) != tuple(shape):
      raise ValueError(f"source 'cond_image': the conditioning image has shape {tuple(c.shape)}, "
                       f"the samples {tuple(shape)}; a coupling needs both the same")
    if not self.noise_step:
      return c
    a = ddpm_alpha_bar(self.noise_step)
    return np.sqrt(a) * c + np.sqrt(1.0 - a) * noise


def source_from_config(config, objective_source: str = "gaussian") -> Source:
  """The source of a run: `config.source` / `config.source_noise_step` of the objective config
  (default Gaussian noise), except that an objective with its own fixed start
  (`Objective.source`, e.g. the regressor's zeros) keeps it where the config leaves the default.
  (The regressor also takes a coupling, `source='cond_image'`: it then learns the residual over
  the upsampled LR input.)"""
  configured = str(config_value(config, "source"))
  if objective_source != "gaussian" and configured == "gaussian":
    return Source(objective_source)
  return Source(configured, int(config_value(config, "source_noise_step")))


def sample_source(rng: Array, shape: Tuple[int, ...], source="gaussian",
                  cond: Optional[Mapping[str, Array]] = None,
                  noise: Optional[Array] = None) -> Array:
  """Draws x0: `source` is a `Source` or a source name (see `Source`); with `noise` (the
  batch's OT-coupled noise of these rows, `data.ot_coupling`) from that noise instead of a
  draw. Every objective and generation draw their source through this one function."""
  if isinstance(source, str):
    source = Source(source)
  if noise is not None:
    return source.from_noise(jnp.asarray(noise, jnp.float32), shape, cond)
  return source.draw(rng, shape, cond)


def permute_batch(batch: Mapping[str, Array], rng: Array) -> dict:
  """The batch with its rows shuffled by one random permutation (the original's `perm_key`)."""
  n = batch["image"].shape[0]
  perm = jax.random.permutation(rng, n)
  return {k: v[perm] if getattr(v, "ndim", 0) >= 1 and v.shape[0] == n else v
          for k, v in batch.items()}


# What `faithful=True` reproduces (`objective.faithful_scope`): 'update' (default) the original's
# update step, which shuffles the batch and nulls the labels when cfg_scale = 0 before it calls
# `get_targets`; 'get_targets' that function alone, on the batch as given.
FAITHFUL_SCOPES = ("update", "get_targets")


def faithful_scope(config) -> str:
  """`objective.faithful_scope` (see `FAITHFUL_SCOPES`); raises ValueError for another value."""
  scope = str(config_value(config, "faithful_scope"))
  if scope not in FAITHFUL_SCOPES:
    raise ValueError(f"objective.faithful_scope must be one of {FAITHFUL_SCOPES}, got {scope!r}")
  return scope


def batch_for_targets(model, batch: Mapping[str, Array], rng: Array, config):
  """(batch, cond, rng): the rows the targets see, their conditioning, and the key left for the
  targets' own draws.

  Default: the batch as given (the input pipeline shuffles), every condition kind that says so
  (labels) nulled when `cfg_scale == 0` (unconditional training, `Conditioning.unguided`), `rng`
  untouched. `faithful=True` first does what the original's update step does before it calls its
  `get_targets`: `perm_key, rng = split(rng)` and the rows shuffled with `perm_key`. With
  `faithful_scope='get_targets'` neither the shuffle nor the nulling happens: the targets are the
  original's `get_targets(key=rng)` on the batch and labels exactly as given (what
  `shortcut_jax.tools.check_original_targets` compares with that function's own outputs).
  """
  faithful = bool(config_value(config, "faithful"))
  scope = faithful_scope(config) if faithful else "update"
  if faithful and scope == "update":
    perm_key, rng = jax.random.split(rng)
    batch = permute_batch(batch, perm_key)
  cond = cond_from_batch(batch)
  if scope == "update":
    cond = model.unguided_cond(cond, config)
  return batch, cond, rng
