"""Scanned DiT blocks (`model.scan_layers`), remat policies, and the two parameter layouts.

The scanned DiT is compared with the unrolled one (the original's tree) on the same weights,
converted by `core.layer_stack`: outputs and gradients to float32 rounding. Checkpoints of
either layout restore into the other (parameters, EMA and Adam's moments); the sharding rules
place a stacked layer as its layers, never splitting the layer axis.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from digits_configs import digits_config
from shortcut_jax import config as config_lib
from shortcut_jax.checkpoints.manager import CheckpointManager
from shortcut_jax.core import layer_stack
from shortcut_jax.models import dit as dit_lib
from shortcut_jax.parallel import sharding as sharding_lib
from shortcut_jax.train import train_state as ts

pytestmark = pytest.mark.usefixtures("fast_compile")

SHAPE = (8, 8, 1)
KW = dict(patch_size=2, hidden_size=32, depth=3, num_heads=2, mlp_ratio=2.0, out_channels=1,
          class_dropout_prob=0.1, num_classes=10, dtype=jnp.float32)


@functools.lru_cache(maxsize=None)
def _noisy_numpy():
  params = dit_lib.init_params(dit_lib.DiT(**KW), jax.random.PRNGKey(0), SHAPE)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  return jax.tree.unflatten(tree, [np.asarray(l + 0.05 * jax.random.normal(k, l.shape))
                                   for l, k in zip(leaves, keys)])


def _noisy_params():
  """Unrolled DiT weights with noise on every leaf (the zero-initialised output layers would
  otherwise make every output 0)."""
  return jax.tree.map(jnp.asarray, _noisy_numpy())


def _inputs():
  x = jax.random.normal(jax.random.PRNGKey(2), (2, *SHAPE))
  return x, jnp.array([0.2, 0.7]), jnp.array([1, 3]), jnp.array([1, 10])


def test_layouts_convert_both_ways():
  params = _noisy_params()
  scanned = layer_stack.convert(params, True)
  assert "DiTBlock_scan" in scanned and not any(k.startswith("DiTBlock_") and k[-1].isdigit()
                                                for k in scanned)
  kernel = scanned["DiTBlock_scan"]["MlpBlock_0"]["Dense_0"]["kernel"]
  assert kernel.shape == (3, 32, 64)
  np.testing.assert_array_equal(kernel[2], params["DiTBlock_2"]["MlpBlock_0"]["Dense_0"]["kernel"])
  assert layer_stack.is_scanned(scanned) and layer_stack.is_scanned(params) is False
  back = layer_stack.convert(scanned, False)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  jax.tree.map(np.testing.assert_array_equal, back, params)
  # Idempotent: converting into the layout a tree already has changes nothing.
  assert jax.tree.structure(layer_stack.convert(scanned, True)) == jax.tree.structure(scanned)
  # The scanned DiT's own tree is the converted one.
  own = dit_lib.init_params(dit_lib.DiT(**KW, scan_layers=True), jax.random.PRNGKey(0), SHAPE)
  assert jax.tree.structure(own) == jax.tree.structure(scanned)


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
def test_scanned_dit_computes_the_unrolled_one(remat):
  params, (x, t, dt, y) = _noisy_params(), _inputs()
  unrolled = dit_lib.DiT(**KW)
  scanned = dit_lib.DiT(**KW, scan_layers=True, remat=remat)
  sparams = layer_stack.convert(params, True)

  def out_and_grad(module, p):
    loss = lambda q: jnp.sum(jnp.square(module.apply({"params": q}, x, t, dt, y, train=True)))
    return module.apply({"params": p}, x, t, dt, y), jax.grad(loss)(p)

  out_u, grads_u = jax.jit(functools.partial(out_and_grad, unrolled))(params)
  out_s, grads_s = jax.jit(functools.partial(out_and_grad, scanned))(sparams)
  assert float(jnp.max(jnp.abs(out_u))) > 0.1
  np.testing.assert_allclose(out_s, out_u, rtol=1e-5, atol=1e-5)
  grads_s = layer_stack.convert(grads_s, False)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               grads_s, grads_u)


def test_remat_policy_names():
  assert dit_lib.remat_policy(True) == (True, None)  # The original's bool still works.
  assert dit_lib.remat_policy("none") == (False, None)
  assert dit_lib.remat_policy("dots")[0]
  with pytest.raises(ValueError, match="model.remat"):
    dit_lib.remat_policy("some")
  with pytest.raises(ValueError, match="model.remat"):
    config_lib.validate(digits_config(model__remat="some"))


def test_stacked_layers_are_placed_as_their_layers():
  params = _noisy_params()
  shapes = jax.eval_shape(lambda: params)
  unrolled = sharding_lib.param_partition_specs(shapes, "fsdp", 4, min_size=257)
  scanned = sharding_lib.param_partition_specs(
      jax.eval_shape(lambda: layer_stack.convert(params, True)), "fsdp", 4, min_size=257)
  for path in (("MlpBlock_0", "Dense_0", "kernel"), ("Dense_2", "kernel"), ("Dense_0", "bias"),
               ("Dense_0", "kernel")):  # The last: adaLN, on its input dimension.
    layer = unrolled["DiTBlock_1"]
    stacked = scanned["DiTBlock_scan"]
    for key in path:
      layer, stacked = layer[key], stacked[key]
    assert stacked == jax.sharding.PartitionSpec(None, *layer), path
  assert any("fsdp" in tuple(s) for s in jax.tree.leaves(
      scanned["DiTBlock_scan"], is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec)))


@pytest.mark.parametrize("written_scanned", [False, True])
def test_a_checkpoint_restores_into_the_other_layout(tmp_path, written_scanned):
  params = layer_stack.convert(_noisy_params(), written_scanned)
  tx = optax.adam(1e-3)
  state = ts.create_train_state(params, tx, jax.random.PRNGKey(0))
  grads = jax.tree.map(jnp.ones_like, params)  # One update, so Adam's moments are not zeros.
  updates, opt_state = tx.update(grads, state.opt_state, params)
  state = state.replace(params=optax.apply_updates(params, updates), opt_state=opt_state)
  writer = CheckpointManager(str(tmp_path), async_save=False)
  writer.save(3, state, {"data_position": 3}, force=True)
  writer.close()

  wanted = layer_stack.convert(state, not written_scanned)
  reader = CheckpointManager(str(tmp_path), read_only=True)
  restored, meta = reader.restore(jax.eval_shape(lambda: wanted))
  reader.close()
  assert meta["step"] == 3
  assert jax.tree.structure(restored) == jax.tree.structure(wanted)
  jax.tree.map(np.testing.assert_array_equal, restored, wanted)
  assert float(jnp.max(jnp.abs(jax.tree.leaves(restored.opt_state[0].mu)[0]))) > 0
