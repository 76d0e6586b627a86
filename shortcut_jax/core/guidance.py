"""What a guidance scale means, the one guided network call, and which (steps, guidance) pairs an
FID evaluation samples.

**One meaning of the guidance scale w** (the original's, `v = v_u + w (v_c - v_u)`), in training
(`objective.cfg_scale`), in configs (`evals.*.cfg_scale`) and on eval.py's command line:

  * w = 0: unconditional, the null condition only (one network call a step);
  * w = 1: conditional, no unconditional pass (one network call a step);
  * any other w (e.g. 1.5): guided, v_u and v_c from one call on the doubled batch.

This is config field `guidance_convention = 'original'`, the default of every new config. A
workdir whose config.json predates the field (written before this convention existed) is read
as `'legacy'` by `experiment.load_config`, with a one-line notice, and evaluates exactly as it did:
there a scale of 0 given to eval.py (`--cfg_scale=0`, or `evals.samples.cfg_scale=0`) meant
"conditional, no guidance", and eval.py's `--mode=fid` took its defaults from the command line
(steps 1, 4, 128; 1,000 samples; EMA weights; `evals.samples.cfg_scale`) instead of `evals.fid`.
Training never changed meaning: `objective.cfg_scale = 0` trains unconditionally (every label
nulled), as the original does.

**FID protocols** (`evals.fid.protocol`):

  * `'original'`: the original's training-time FID (`helper_eval.py`, `do_fid_calc`): the step
    sweep (`evals.fid.steps`) at cfg 1 (conditional, no unconditional pass; cfg 0 for an
    unconditional model), plus one entry with the config's CFG (`evals.fid.cfg_scale`) at
    M = `objective.denoise_timesteps` steps (none for an unconditional model, or a CFG of 1 or
    None). Its lines 223-229:

        if FLAGS.model.cfg_scale != 0:
            denoise_timesteps_list.append('cfg')
        for denoise_timesteps in denoise_timesteps_list:
            if denoise_timesteps == 'cfg':
                activations = do_fid_calc(FLAGS.model.cfg_scale, FLAGS.model.denoise_timesteps)
            else:
                activations = do_fid_calc(1 if FLAGS.model.cfg_scale != 0 else 0, denoise_timesteps)

    Weights: the **online** ones. `call_model` in helper_eval.py (lines 53-56) reads
    `if use_ema and FLAGS.model.use_ema: call_fn = train_state.call_model_ema` /
    `else: call_fn = train_state.call_model`, and train.py's default is `'use_ema': 0`
    (train.py line 57; the README's paper commands do not set it), so the EMA weights it keeps
    (for `bootstrap_ema`) are never evaluated. helper_inference.py (the offline FID) samples
    the same way, at `--inference_cfg_scale` (default 1.0).
    Guidance for the few-step levels comes from training (`bootstrap_cfg` distils it), which
    is why the sweep samples at cfg 1: guiding a `bootstrap_cfg` model again at 1 step guides
    twice, through a null-label branch its coarse levels never trained.
  * `'guided'`: one CFG (`evals.fid.cfg_scale`) for every step budget, EMA weights: what this
    library did before the protocols existed, and still the default of `base_config()`.

`evals.fid.use_ema` None (the default) takes the protocol's weights; True / False overrides.
"""

import dataclasses
from typing import List, Optional, Sequence

import jax
import jax.numpy as jnp

from shortcut_jax.core.conditioning import GUIDANCE, concat_rows, guidance_rows, take_rows

CONVENTIONS = ("original", "legacy")
ORIGINAL, LEGACY = CONVENTIONS
FIELD = "guidance_convention"
PROTOCOLS = ("original", "guided")
# eval.py's defaults outside --mode=fid, and a legacy workdir's for --mode=fid too.
EVAL_STEPS = (1, 4, 128)
EVAL_NUM_SAMPLES = 1000


def takes_guidance(model) -> bool:
  """Whether the network takes guidance as an input (`model.guidance_input`)."""
  return model.conditioning.kind(GUIDANCE) is not None


def with_guidance(model, cond, w, n: int):
  """`cond` with guidance scale w ([n] or a float; the interval a `guidance` row of `cond`
  already has, else [0, 1]) for a network that takes guidance as input; `cond` as is for one
  that does not."""
  if not takes_guidance(model):
    return dict(cond)
  rows = cond.get(GUIDANCE)
  rows = guidance_rows(1.0, n) if rows is None else rows
  w = jnp.broadcast_to(jnp.asarray(w, jnp.float32), (n,))
  return dict(cond, **{GUIDANCE: rows.at[:, 0].set(w)})


def conditional_and_unconditional(model, params, x, t, level, cond, *,
                                  guided_rows: Optional[int] = None, interleave: bool = False):
  """(v_c [n], v_u [k]) of one network call on the n rows plus unconditional copies
  (`model.null_cond`) of the first k = `guided_rows` (default n); `interleave` puts each row's
  two inputs side by side (rows 2i, 2i+1 of the call; every row), so that a batch split over
  devices keeps both on the device that holds the row. A network that takes guidance as input
  gets the guidance rows of `cond` (none: w = 1) for v_c and w = 1 for v_u."""
  n = x.shape[0]
  k = n if guided_rows is None else int(guided_rows)
  cond = dict(cond)
  null = model.null_cond(cond)
  if takes_guidance(model):  # the unconditional velocity is unguided (w = 1)
    null = with_guidance(model, null, 1.0, n)
  if interleave:
    if k != n:
      raise ValueError(f"interleave guides every row; got guided_rows={k} of {n}")
    pair = lambda a, b: jnp.stack([a, b], axis=1).reshape((2 * a.shape[0],) + a.shape[1:])
    out = model(params, pair(x, x), pair(t, t), pair(level, level), jax.tree.map(pair, cond, null),
                train=False)
    out = out.reshape((n, 2) + out.shape[1:])
    return out[:, 0], out[:, 1]
  rows = slice(0, k)
  out = model(params, jnp.concatenate([x, x[rows]], axis=0), jnp.concatenate([t, t[rows]], axis=0),
              jnp.concatenate([level, level[rows]], axis=0),
              concat_rows(cond, take_rows(null, rows)), train=False)
  return out[:n], out[n:]


def guided_velocity(model, params, x, t, level, cond, w, *, guided_rows: Optional[int] = None,
                    mask=None, interleave: bool = False):
  """The network's velocity guided by w, `v_u + w (v_c - v_u)`, with v_c and v_u from one
  network call on the batch plus unconditional copies of its guided rows (`model.null_cond`).
  The only place the library writes the guided call: the samplers, the shortcut and HOMO
  teachers, progressive distillation and live reflow all call it.

  A network that takes guidance as an input (`model.guidance_input`) is instead called once on
  the n rows with w as its input (1 where a row is not guided), as it was trained to be.

  Args:
    model: a `VelocityModel` (`model(params, x, t, level, cond, train=False)`, `null_cond`).
    params: the weights called.
    x, t, level, cond: the rows ([n, ...], [n], [n], a cond of n rows).
    w: the guidance weight (a float or a traced scalar); None: the conditional velocity of every
      row, one call on the n rows as they are.
    guided_rows: k: only the first k rows are guided, the others get v_c (the call has n + k
      rows: the n rows, then the k unconditional copies). None: every row.
    mask: optional bool [k]: which of the guided rows guidance applies to (the others get v_c).
    interleave: each row's conditional and unconditional inputs side by side (rows 2i, 2i+1 of
      the call) instead of the copies after the batch, so that a batch split over devices keeps
      both calls of a row on the device that holds it; every row guided.

  Returns:
    [n, ...] velocities.
  """
  n = x.shape[0]
  k = n if guided_rows is None else int(guided_rows)
  if w is None or k == 0:
    return model(params, x, t, level, cond, train=False)
  if takes_guidance(model):
    guided = jnp.arange(n) < k
    if mask is not None:
      guided = guided & jnp.concatenate([mask, jnp.zeros((n - k,), bool)])
    return model(params, x, t, level, with_guidance(model, cond, jnp.where(guided, w, 1.0), n),
                 train=False)
  expand = (-1,) + (1,) * (x.ndim - 1)
  v_cond, v_uncond = conditional_and_unconditional(model, params, x, t, level, cond,
                                                   guided_rows=k, interleave=interleave)
  v_guided = v_uncond + w * (v_cond[:k] - v_uncond)
  if mask is not None:
    v_guided = jnp.where(mask.reshape(expand), v_guided, v_cond[:k])
  return v_guided if k == n else jnp.concatenate([v_guided, v_cond[k:]], axis=0)


def convention(config) -> str:
  """The config's guidance convention; a config without the field predates it ('legacy')."""
  return config.get(FIELD, LEGACY) if hasattr(config, "get") else LEGACY


def legacy_notice(where: str) -> str:
  """The one line `experiment.load_config` logs for a config.json without the field."""
  return (f"{where} predates guidance_convention: evaluating with its old meaning ('legacy': "
          f"eval.py's --cfg_scale=0 / evals.samples.cfg_scale=0 = conditional without guidance; "
          f"--mode=fid keeps its old defaults, steps {','.join(map(str, EVAL_STEPS))}, "
          f"{EVAL_NUM_SAMPLES} samples, EMA, evals.samples.cfg_scale); add "
          f"\"{FIELD}\": \"original\" to it for the new meaning (docs/evaluation.md)")


def sampler_scale(config, cfg_scale: Optional[float]) -> Optional[float]:
  """The sampler's guidance for a scale given on eval.py's command line or in
  `evals.samples.cfg_scale` (None: no guidance, conditional).

  'original': w itself (0 = unconditional, 1 = conditional, else guided). 'legacy': 0 (and None)
  meant no guidance, conditional (None); any other w as is.
  """
  if cfg_scale is None:
    return None
  if convention(config) == LEGACY and not cfg_scale:
    return None
  return float(cfg_scale)


def is_conditional_scale(cfg_scale: Optional[float]) -> bool:
  """Whether the sampler makes exactly the conditional call (None or w = 1)."""
  return cfg_scale is None or float(cfg_scale) == 1.0


@dataclasses.dataclass(frozen=True)
class Entry:
  """One FID of a protocol: `steps` sampling steps at guidance `cfg_scale` (the sampler's
  argument: None or 1 conditional, 0 unconditional, else guided), reported under `key`."""
  key: str
  steps: int
  cfg_scale: Optional[float]

  def as_dict(self):
    return dataclasses.asdict(self)


def fid_entries(protocol: str, steps: Sequence[int], cfg_scale: Optional[float],
                denoise_timesteps: int, guidable: bool) -> List[Entry]:
  """The (steps, guidance) entries an FID evaluation samples.

  Args:
    protocol: 'original' or 'guided' (see the module docstring).
    steps: the step sweep (`evals.fid.steps` or `--steps`).
    cfg_scale: the config's CFG (`evals.fid.cfg_scale` or `--cfg_scale`), in the sampler's
      meaning (`sampler_scale`).
    denoise_timesteps: M, the step count of the original protocol's guided entry.
    guidable: whether guidance applies to the model (`conditions.is_guidable`); an unconditional
      model samples the null condition whatever the scale.

  Returns:
    The entries in order: 'guided' keys them `str(N)`; 'original' keys the sweep `str(N)` and
    the guided entry `f"{M}_cfg{w:g}"`.
  """
  if protocol not in PROTOCOLS:
    raise ValueError(f"unknown FID protocol {protocol!r}; known: {PROTOCOLS}")
  steps = [int(n) for n in steps]
  if protocol == "guided":
    w = None if cfg_scale is None or not guidable else float(cfg_scale)
    return [Entry(str(n), n, w) for n in steps]
  if not guidable:  # The original's cfg_scale == 0: null labels, no 'cfg' entry.
    return [Entry(str(n), n, 0.0) for n in steps]
  entries = [Entry(str(n), n, 1.0) for n in steps]
  if cfg_scale is not None and float(cfg_scale) != 1.0:
    w = float(cfg_scale)
    entries.append(Entry(f"{int(denoise_timesteps)}_cfg{w:g}", int(denoise_timesteps), w))
  return entries


def protocol_use_ema(protocol: str, use_ema: Optional[bool]) -> bool:
  """Whether to evaluate the EMA weights: `use_ema` when set, else the protocol's (the
  original: online weights; guided: EMA)."""
  if use_ema is not None:
    return bool(use_ema)
  return protocol != "original"


def describe(protocol: str, entries: Sequence[Entry], use_ema: bool) -> str:
  """One line saying what an FID evaluation samples, e.g. for eval.py's output."""
  def w(entry):
    if entry.cfg_scale is None or entry.cfg_scale == 1.0:
      return "cfg 1 (conditional)"
    if entry.cfg_scale == 0.0:
      return "cfg 0 (unconditional)"
    return f"cfg {entry.cfg_scale:g} (guided)"
  groups = []
  for e in entries:
    if groups and groups[-1][0] == w(e):
      groups[-1][1].append(e.steps)
    else:
      groups.append((w(e), [e.steps]))
  what = "; ".join(f"{', '.join(map(str, s))} steps at {g}" for g, s in groups)
  origin = (" (the original's helper_eval.py do_fid_calc)" if protocol == "original" else
            " (one CFG for every budget)")
  return (f"FID protocol {protocol!r}{origin}: {what or 'nothing'}; "
          f"{'EMA' if use_ema else 'online'} weights")
