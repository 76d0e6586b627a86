"""Baseline for the benchmarks: the original shortcut-models code's training update and sampling loop.

The original research code (jax 0.4.23, `train.py` / `targets_shortcut.py` / `helper_eval.py`)
cannot run under the jax here, so this module re-implements it with the same structure and the
same cost, written from reading it (nothing is copied):

Training update (`make_original_update`), all inside one `jax.jit`, no buffer donation:
  * the rng of the state split in four (new rng, targets, dropout, permutation);
  * the batch permuted (images and labels gathered with one random permutation);
  * labels set to the null label when `cfg_scale == 0`;
  * `get_targets` of the chosen objective:
      - shortcut: level assignment L-1 .. 0 repeated B_b // L times padded with 0 (float levels),
        t on each level's grid, x_t, then the teacher (EMA weights when `bootstrap_ema`) called
        twice on the B_b bootstrap rows (with `bootstrap_cfg`: on the doubled batch, B_b + B_b // L
        rows, conditional then unconditional), clipped targets; the flow-matching targets are
        computed for the *whole* batch and then sliced to the first B - B_b rows;
      - naive: flow-matching targets for the whole batch;
  * the student forward with `return_activations=True`: the original DiT returns (v, logvars,
    activations) and the loss function logs the RMS of every activation (patch embedding, position
    embedding, time / level / label embeddings, conditioning, every block's output, the final
    layer). Here the DiT is this library's (`attention_impl='einsum'`: the original's attention
    arithmetic) and the activations are captured with flax `capture_intermediates`; the unused
    log-variance head (`Embed_0`, times 100) is evaluated as the original does;
  * loss = mean over the batch of the per-sample MSE, plus the flow / bootstrap split of it;
  * `jax.grad(..., has_aux=True)`, `optax.chain(optax.adamw(...))`, the global norms of the
    gradients, the updates and the new parameters, the learning rate;
  * the EMA as one `tree_map` (`p * (1 - tau) + ema * tau`).

Sampling (`original_sample`): a Python loop over the N steps; every step builds the t and level
vectors with jnp on the host side, calls one jitted model function that receives the whole train
state (params, EMA params and optimizer state, as the original's `call_model(train_state, ...)`
does), and does the Euler update `x = x + v * delta_t` as eager jnp ops. With a guidance scale
other than 0 or 1 it makes two model calls per step (unconditional, then conditional), as the
original does. The level is log2(N) for shortcut models and L = log2(M) for flow models.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from shortcut_jax.models import dit as dit_lib

Array = Any

# Modules whose outputs the original's DiT returns as activations (name in the original).
_ACTIVATION_MODULES = (dit_lib.PatchEmbed, dit_lib.TimestepEmbedder, dit_lib.LabelEmbedder,
                       dit_lib.DiTBlock, dit_lib.FinalLayer)


class OriginalState(flax.struct.PyTreeNode):
  """The original's `TrainStateEma` fields that live on device."""
  rng: Array
  step: Array
  params: Any
  params_ema: Any
  opt_state: Any


def original_module(module: dit_lib.DiT) -> dit_lib.DiT:
  """The same network with the original's attention arithmetic (einsum, float32 softmax)."""
  return module.clone(attention_impl="einsum", parent=None)


def create_state(params, tx, rng) -> OriginalState:
  # The original starts with params_ema = params (the same buffers); a copy here, so that both
  # benchmarks see the same memory footprint.
  return OriginalState(rng=rng, step=jnp.asarray(1, jnp.int32), params=params,
                       params_ema=jax.tree.map(jnp.array, params), opt_state=tx.init(params))


def call_model(module, params, x, t, dt, labels, *, train=False, rngs=None,
               return_activations=False):
  """The original DiT call: v, or (v, logvars, activations) with `return_activations`."""
  if not return_activations:
    return module.apply({"params": params}, x, t, dt, labels, train=train, rngs=rngs)

  def keep(mdl, method_name):
    return method_name == "__call__" and isinstance(mdl, _ACTIVATION_MODULES)

  v, state = module.apply({"params": params}, x, t, dt, labels, train=train, rngs=rngs,
                          capture_intermediates=keep, mutable=["intermediates"])
  inter = state["intermediates"]
  grab = lambda name: inter[name]["__call__"][0]
  te, dte = grab("TimestepEmbedder_0"), grab("TimestepEmbedder_1")
  ye = grab("LabelEmbedder_0")
  grid = (x.shape[1] // module.patch_size, x.shape[2] // module.patch_size)
  activations = {
      "patch_embed": grab("PatchEmbed_0"),
      "pos_embed": jnp.asarray(dit_lib.sincos_2d_position_embedding(module.hidden_size, *grid))[None],
      "time_embed": te, "dt_embed": dte, "label_embed": ye, "conditioning": te + ye + dte,
  }
  for i in range(module.depth):
    activations[f"dit_block_{i}"] = grab(f"DiTBlock_{i}")
  activations["final_layer"] = grab("FinalLayer_0")
  # The original's log-variance head: a 256-row table indexed by floor(256 t), times 100.
  table = params["Embed_0"]["embedding"]
  logvars = table[jnp.floor(t * 256).astype(jnp.int32)] * 100
  return v, logvars, activations


def shortcut_targets(cfg, key, state, module, images, labels):
  """The original's `targets_shortcut.get_targets` (force_t = force_dt = -1)."""
  label_key, time_key, noise_key = jax.random.split(key, 3)
  info = {}
  b = images.shape[0]
  m = cfg["denoise_timesteps"]
  b_boot = b // cfg["bootstrap_every"]
  sections = int(np.log2(m))
  if cfg["bootstrap_dt_bias"] == 0:
    dt_base = jnp.repeat(sections - 1 - jnp.arange(sections), b_boot // sections)
    dt_base = jnp.concatenate([dt_base, jnp.zeros(b_boot - dt_base.shape[0])])
    num_dt_cfg = b_boot // sections
  else:
    dt_base = jnp.repeat(sections - 1 - jnp.arange(sections - 2), (b_boot // 2) // sections)
    dt_base = jnp.concatenate([dt_base, jnp.ones(b_boot // 4), jnp.zeros(b_boot // 4)])
    dt_base = jnp.concatenate([dt_base, jnp.zeros(b_boot - dt_base.shape[0])])
    num_dt_cfg = (b_boot // 2) // sections
  dt_base = jnp.where(jnp.full((b_boot,), -1.0) != -1, -1.0, dt_base)  # The force_dt select.
  dt = 1 / (2 ** dt_base)
  dt_base_teacher = dt_base + 1
  dt_half = dt / 2

  sections_per_level = jnp.power(2, dt_base)
  t = jax.random.randint(time_key, (b_boot,), 0, sections_per_level).astype(jnp.float32)
  t = t / sections_per_level
  t = jnp.where(jnp.full((b_boot,), -1.0) != -1, -1.0, t)  # The force_t select.
  t4 = t[:, None, None, None]
  x1 = images[:b_boot]
  x0 = jax.random.normal(noise_key, x1.shape)
  x_t = (1 - (1 - 1e-5) * t4) * x0 + t4 * x1
  boot_labels = labels[:b_boot]

  teacher_params = state.params_ema if cfg["bootstrap_ema"] else state.params
  teacher = lambda *a: call_model(module, teacher_params, *a, train=False)
  if not cfg["bootstrap_cfg"]:
    v_b1 = teacher(x_t, t, dt_base_teacher, boot_labels)
    x_t2 = jnp.clip(x_t + dt_half[:, None, None, None] * v_b1, -4, 4)
    v_b2 = teacher(x_t2, t + dt_half, dt_base_teacher, boot_labels)
  else:
    null = jnp.full((num_dt_cfg,), cfg["num_classes"], jnp.int32)
    labels_2 = jnp.concatenate([boot_labels, null])
    dt_2 = jnp.concatenate([dt_base_teacher, dt_base_teacher[:num_dt_cfg]])

    def guided(x, tt):
      raw = teacher(jnp.concatenate([x, x[:num_dt_cfg]]), jnp.concatenate([tt, tt[:num_dt_cfg]]),
                    dt_2, labels_2)
      v_c, v_u = raw[:b_boot], raw[b_boot:]
      v_cfg = v_u + cfg["cfg_scale"] * (v_c[:num_dt_cfg] - v_u)
      return jnp.concatenate([v_cfg, v_c[num_dt_cfg:]])

    v_b1 = guided(x_t, t)
    x_t2 = jnp.clip(x_t + dt_half[:, None, None, None] * v_b1, -4, 4)
    v_b2 = guided(x_t2, t + dt_half)
  v_boot = jnp.clip((v_b1 + v_b2) / 2, -4, 4)

  # Flow-matching targets for the whole batch, sliced afterwards (as the original does).
  xf, vf, tf, dt_flow, labels_dropped, info["dropped_ratio"] = _flow_targets(
      cfg, label_key, time_key, noise_key, images, labels)

  n_flow = b - b_boot
  x_all = jnp.concatenate([x_t, xf[:n_flow]])
  t_all = jnp.concatenate([t, tf[:n_flow]])
  dt_all = jnp.concatenate([dt_base, dt_flow[:n_flow]])
  v_all = jnp.concatenate([v_boot, vf[:n_flow]])
  labels_all = jnp.concatenate([boot_labels, labels_dropped[:n_flow]])
  info["bootstrap_ratio"] = jnp.mean(dt_all != sections)
  info["v_magnitude_bootstrap"] = jnp.sqrt(jnp.mean(jnp.square(v_boot)))
  info["v_magnitude_b1"] = jnp.sqrt(jnp.mean(jnp.square(v_b1)))
  info["v_magnitude_b2"] = jnp.sqrt(jnp.mean(jnp.square(v_b2)))
  return x_all, v_all, t_all, dt_all, labels_all, info


def _flow_targets(cfg, label_key, time_key, noise_key, images, labels):
  """Flow-matching targets for the whole batch, as both of the original's target files draw them:
  (x_t, v_t, t, level, dropped labels, dropped ratio)."""
  b = images.shape[0]
  m = cfg["denoise_timesteps"]
  drop = jax.random.bernoulli(label_key, cfg["class_dropout_prob"], (b,))
  labels_dropped = jnp.where(drop, cfg["num_classes"], labels)
  t = jax.random.randint(time_key, (b,), 0, m).astype(jnp.float32) / m
  t = jnp.where(jnp.full((b,), -1.0) != -1, -1.0, t)
  t4 = t[:, None, None, None]
  x0 = jax.random.normal(noise_key, images.shape)
  x_t = (1 - (1 - 1e-5) * t4) * x0 + t4 * images
  v_t = images - (1 - 1e-5) * x0
  level = jnp.full((b,), int(np.log2(m)), jnp.int32)
  return x_t, v_t, t, level, labels_dropped, jnp.mean(labels_dropped == cfg["num_classes"])


def naive_targets(cfg, key, state, module, images, labels):
  """The original's `baselines/targets_naive.get_targets`."""
  del state, module
  label_key, time_key, noise_key = jax.random.split(key, 3)
  *targets, dropped_ratio = _flow_targets(cfg, label_key, time_key, noise_key, images, labels)
  return (*targets, {"dropped_ratio": dropped_ratio})


def make_original_update(module, tx, lr_schedule, cfg):
  """The original's jitted `update(train_state, images, labels) -> (train_state, info)`.

  Args:
    module: the DiT (use `original_module` for the original's attention arithmetic).
    tx: the optimizer; the original wraps AdamW in `optax.chain`.
    lr_schedule: learning-rate schedule (logged).
    cfg: dict with `train_type` ('shortcut' | 'naive'), `batch_size`, `denoise_timesteps`,
      `bootstrap_every`, `bootstrap_ema`, `bootstrap_dt_bias`, `bootstrap_cfg`, `cfg_scale`,
      `class_dropout_prob`, `num_classes`, `target_update_rate`.
  """
  get_targets = {"shortcut": shortcut_targets, "naive": naive_targets}[cfg["train_type"]]

  @jax.jit
  def update(state, images, labels):
    new_rng, targets_key, dropout_key, perm_key = jax.random.split(state.rng, 4)
    perm = jax.random.permutation(perm_key, images.shape[0])
    images, labels = images[perm], labels[perm]
    if cfg["cfg_scale"] == 0:
      labels = jnp.full((labels.shape[0],), cfg["num_classes"], jnp.int32)
    x_t, v_t, t, dt_base, labels, info = get_targets(cfg, targets_key, state, module, images,
                                                      labels)

    def loss_fn(grad_params):
      v_prime, logvars, activations = call_model(
          module, grad_params, x_t, t, dt_base, labels, train=True, rngs={"dropout": dropout_key},
          return_activations=True)
      del logvars
      mse_v = jnp.mean((v_prime - v_t) ** 2, axis=(1, 2, 3))
      loss = jnp.mean(mse_v)
      out = {"loss": loss, "v_magnitude_prime": jnp.sqrt(jnp.mean(jnp.square(v_prime)))}
      out.update({"activations/" + k: jnp.sqrt(jnp.mean(jnp.square(a)))
                  for k, a in activations.items()})
      if cfg["train_type"] == "shortcut":
        n_boot = cfg["batch_size"] // cfg["bootstrap_every"]
        out["loss_flow"] = jnp.mean(mse_v[n_boot:])
        out["loss_bootstrap"] = jnp.mean(mse_v[:n_boot])
      return loss, out

    grads, new_info = jax.grad(loss_fn, has_aux=True)(state.params)
    info = {**info, **new_info}
    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    info["grad_norm"] = optax.global_norm(grads)
    info["update_norm"] = optax.global_norm(updates)
    info["param_norm"] = optax.global_norm(new_params)
    info["lr"] = lr_schedule(state.step)
    tau = cfg["target_update_rate"]
    new_ema = jax.tree.map(lambda p, e: p * (1 - tau) + e * tau, new_params, state.params_ema)
    state = state.replace(rng=new_rng, step=state.step + 1, params=new_params,
                          opt_state=new_opt_state, params_ema=new_ema)
    return state, info

  return update


def original_optimizer(lr=1e-4, b1=0.9, b2=0.999, weight_decay=0.1):
  """`optax.chain(optax.adamw(...))` with the original's constant schedule (a Python lambda)."""
  lr_schedule = lambda step: lr
  return optax.chain(optax.adamw(learning_rate=lr_schedule, b1=b1, b2=b2,
                                 weight_decay=weight_decay)), lr_schedule


def make_original_call_model(module):
  """The original's `call_model(train_state, images, t, dt, labels, use_ema=True)` (jitted)."""
  def fn(state, images, t, dt, labels, use_ema=True):
    params = state.params_ema if use_ema else state.params
    return call_model(module, params, images, t, dt, labels, train=False)
  return jax.jit(fn, static_argnums=(5,))


def original_sample(call_fn, state, x, labels, *, num_steps, denoise_timesteps, uses_level,
                    cfg_scale, num_classes):
  """The original's sampling loop (helper_eval): Python for-loop of jitted model calls."""
  b = x.shape[0]
  labels_uncond = jnp.full((b,), num_classes, jnp.int32)
  delta_t = 1.0 / num_steps
  for ti in range(num_steps):
    t = ti / num_steps
    t_vector = jnp.full((b,), t)
    if uses_level:
      dt_base = jnp.ones((b,), jnp.int32) * np.log2(num_steps).astype(np.int32)
    else:
      dt_base = jnp.ones((b,), jnp.int32) * np.log2(denoise_timesteps).astype(np.int32)
    if cfg_scale is None or cfg_scale == 1:
      v = call_fn(state, x, t_vector, dt_base, labels)
    elif cfg_scale == 0:
      v = call_fn(state, x, t_vector, dt_base, labels_uncond)
    else:
      v_uncond = call_fn(state, x, t_vector, dt_base, labels_uncond)
      v_cond = call_fn(state, x, t_vector, dt_base, labels)
      v = v_uncond + cfg_scale * (v_cond - v_uncond)
    x = x + v * delta_t
  return x
