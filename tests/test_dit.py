"""DiT: the original's parameter tree and outputs (fixture), and an independent numpy forward."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shortcut_jax.checkpoints.legacy import load_original_checkpoint
from shortcut_jax.models import dit as dit_lib


@pytest.fixture(scope="module")
def fixture(original_fixture_dir):
  d = original_fixture_dir
  meta = json.loads((d / "original_dit_small_meta.json").read_text())
  io = dict(np.load(d / "original_dit_small_io.npz"))
  ckpt = load_original_checkpoint(d / "original_dit_small.pkl")
  return meta, io, ckpt


def _param_shapes(params):
  return {jax.tree_util.keystr(k): list(v.shape)
          for k, v in jax.tree_util.tree_leaves_with_path(params)}


def test_parameter_tree_is_the_originals(fixture):
  meta, io, ckpt = fixture
  module = dit_lib.DiT(**meta["dit_args"])
  params = dit_lib.init_params(module, jax.random.PRNGKey(0), tuple(meta["input_shape"]))
  assert _param_shapes(params) == meta["param_tree"]
  assert _param_shapes(ckpt["params"]) == meta["param_tree"]
  assert _param_shapes(ckpt["params_ema"]) == meta["param_tree"]


@pytest.mark.parametrize("which", ["params", "params_ema"])
def test_float32_outputs_match_fixture(fixture, which):
  meta, io, ckpt = fixture
  module = dit_lib.DiT(**meta["dit_args"], dtype=jnp.float32)
  out = module.apply({"params": ckpt[which]}, io["x"], io["t"], io["dt_base"], io["y"])
  np.testing.assert_allclose(np.asarray(out), io[f"out_f32_{which}"], atol=2e-5, rtol=0)


@pytest.mark.parametrize("which", ["params", "params_ema"])
def test_bfloat16_outputs_match_fixture(fixture, which):
  meta, io, ckpt = fixture
  ref = io[f"out_bf16_{which}"]
  args = (io["x"], io["t"], io["dt_base"], io["y"])
  # The original's attention arithmetic: bit for bit.
  exact = dit_lib.DiT(**meta["dit_args"], attention_impl="einsum").apply({"params": ckpt[which]}, *args)
  assert exact.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(exact, np.float32), ref)
  # jax.nn.dot_product_attention rounds the probabilities to bf16: a few bf16 ulps.
  fused = np.asarray(dit_lib.DiT(**meta["dit_args"]).apply({"params": ckpt[which]}, *args), np.float32)
  scale = np.abs(ref).max()
  assert np.abs(fused - ref).max() <= scale * 2.0**-6
  assert np.abs(fused - ref).mean() <= np.abs(ref).mean() * 2.0**-7
  # ... and the bf16 model really differs from the float32 one (the test can tell them apart).
  assert np.abs(io[f"out_f32_{which}"] - ref).max() > 0


# ---------------------------------------------------------------------------------------------
# An independent float32 numpy forward pass of the original code's DiT (kvfrans/shortcut-models),
# written without the Flax module, for configurations other than
# the fixture's (non-square input, patch 1 and 4, odd depth, no label table beyond null).


def _np_layernorm(x):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-6)


def _np_dense(p, x):
  return x @ p["kernel"] + p["bias"]


def _np_silu(x):
  return x / (1 + np.exp(-x))


def _np_gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _np_timestep(p, t):
  freqs = np.exp(-np.log(10000) * np.arange(128) / 128)
  args = t[:, None] * freqs[None]
  emb = np.concatenate([np.cos(args), np.sin(args)], -1)
  return _np_dense(p["Dense_1"], _np_silu(_np_dense(p["Dense_0"], emb)))


def _np_pos(dim, gh, gw):
  def one(d, pos):
    f = 10000.0 ** (-np.arange(d // 2) / (d / 2))
    a = pos[:, None] * f[None]
    return np.concatenate([np.sin(a), np.cos(a)], 1)
  rows = np.repeat(np.arange(gh), gw).astype(np.float64)
  cols = np.tile(np.arange(gw), gh).astype(np.float64)
  return np.concatenate([one(dim // 2, cols), one(dim // 2, rows)], 1)


def _np_dit(params, x, t, level, y, *, patch, heads):
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  b, h, w, c = x.shape
  gh, gw = h // patch, w // patch
  patches = x.reshape(b, gh, patch, gw, patch, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, -1)
  kernel = p["PatchEmbed_0"]["Conv_0"]["kernel"].reshape(-1, p["PatchEmbed_0"]["Conv_0"]["kernel"].shape[-1])
  tok = patches @ kernel + p["PatchEmbed_0"]["Conv_0"]["bias"]
  hidden = tok.shape[-1]
  tok = tok + _np_pos(hidden, gh, gw)[None]
  cvec = (_np_timestep(p["TimestepEmbedder_0"], t) + _np_timestep(p["TimestepEmbedder_1"], level)
          + p["LabelEmbedder_0"]["Embed_0"]["embedding"][y])
  hd = hidden // heads
  i = 0
  while f"DiTBlock_{i}" in p:
    bp = p[f"DiTBlock_{i}"]
    mod = _np_dense(bp["Dense_0"], _np_silu(cvec))
    s1, c1, g1, s2, c2, g2 = np.split(mod, 6, -1)
    hh = _np_layernorm(tok) * (1 + c1[:, None]) + s1[:, None]
    k, q, v = (_np_dense(bp[f"Dense_{j}"], hh).reshape(b, -1, heads, hd) for j in (1, 2, 3))
    logits = np.einsum("bqhc,bkhc->bhqk", q, k) / hd
    wts = np.exp(logits - logits.max(-1, keepdims=True))
    wts /= wts.sum(-1, keepdims=True)
    att = np.einsum("bhqk,bkhc->bqhc", wts, v).reshape(b, -1, hidden)
    tok = tok + g1[:, None] * _np_dense(bp["Dense_4"], att)
    hh = _np_layernorm(tok) * (1 + c2[:, None]) + s2[:, None]
    mlp = bp["MlpBlock_0"]
    tok = tok + g2[:, None] * _np_dense(mlp["Dense_1"], _np_gelu_tanh(_np_dense(mlp["Dense_0"], hh)))
    i += 1
  fp = p["FinalLayer_0"]
  shift, scale = np.split(_np_dense(fp["Dense_0"], _np_silu(cvec)), 2, -1)
  out = _np_dense(fp["Dense_1"], _np_layernorm(tok) * (1 + scale[:, None]) + shift[:, None])
  cout = out.shape[-1] // patch ** 2
  out = out.reshape(b, gh, gw, patch, patch, cout).transpose(0, 1, 3, 2, 4, 5)
  return out.reshape(b, h, w, cout)


@jax.jit
def _randomize(params, rng):
  """Non-zero values everywhere (the zero-initialised final layer would hide most of the net)."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(rng, len(leaves))
  return jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, l.shape) for k, l in zip(keys, leaves)])


@pytest.mark.usefixtures("fast_compile_test")  # Compared at float32 tolerances, not bits.
@pytest.mark.parametrize("patch,shape,depth,heads,hidden,classes", [
    (1, (4, 6, 3), 1, 2, 16, 3),
    (4, (8, 16, 2), 3, 4, 32, 1),
])
def test_forward_matches_independent_numpy(patch, shape, depth, heads, hidden, classes):
  module = dit_lib.DiT(patch_size=patch, hidden_size=hidden, depth=depth, num_heads=heads,
                       mlp_ratio=2.0, out_channels=shape[-1], class_dropout_prob=0.1,
                       num_classes=classes, dtype=jnp.float32)
  params = _randomize(dit_lib.init_params(module, jax.random.PRNGKey(1), shape), jax.random.PRNGKey(2))
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, *shape)).astype(np.float32)
  t = np.array([0.0, 0.3, 0.99], np.float32)
  level = np.array([0, 3, 7], np.float32)
  y = np.array([0, classes, classes - 1], np.int32)
  out = jax.jit(module.apply)({"params": params}, x, t, level, y)  # One compile, not one per op.
  ref = _np_dit(params, x, t, level, y, patch=patch, heads=heads)
  np.testing.assert_allclose(np.asarray(out), ref, rtol=2e-4, atol=2e-4 * np.abs(ref).max())


@pytest.mark.usefixtures("fast_compile_test")
def test_ignore_dt_and_sqrt_scale_change_what_they_should():
  kw = dict(patch_size=2, hidden_size=16, depth=1, num_heads=2, mlp_ratio=2.0, out_channels=1,
            class_dropout_prob=0.0, num_classes=2, dtype=jnp.float32)
  base = dit_lib.DiT(**kw)
  params = _randomize(dit_lib.init_params(base, jax.random.PRNGKey(0), (4, 4, 1)), jax.random.PRNGKey(1))
  x = np.random.default_rng(1).normal(size=(2, 4, 4, 1)).astype(np.float32)
  t, y = np.array([0.2, 0.7], np.float32), np.array([0, 1], np.int32)
  lv = lambda m, lev: np.asarray(jax.jit(m.apply)({"params": params}, x, t,
                                                   np.asarray(lev, np.float32), y))
  assert not np.allclose(lv(base, [0, 0]), lv(base, [5, 5]))
  ignoring = dit_lib.DiT(**kw, ignore_dt=True)
  np.testing.assert_array_equal(lv(ignoring, [5, 5]), lv(ignoring, [0, 0]))
  np.testing.assert_allclose(lv(ignoring, [5, 5]), lv(base, [0, 0]), rtol=1e-6)
  assert not np.allclose(lv(dit_lib.DiT(**kw, attention_scale="sqrt"), [1, 1]), lv(base, [1, 1]))
  np.testing.assert_allclose(lv(dit_lib.DiT(**kw, remat=True), [1, 1]), lv(base, [1, 1]), rtol=1e-6)


def test_initialisers():
  module = dit_lib.DiT(patch_size=2, hidden_size=64, depth=1, num_heads=4, mlp_ratio=4.0,
                       out_channels=3, class_dropout_prob=0.1, num_classes=5)
  p = dit_lib.init_params(module, jax.random.PRNGKey(0), (8, 8, 3))
  # Zero-initialised output path: a fresh DiT predicts exactly zero.
  for name in ("Dense_0", "Dense_1"):
    assert not np.any(np.asarray(p["FinalLayer_0"][name]["kernel"]))
  # PyTorch-style xavier bound for the conv: sqrt(6 / (k*k*in + out)).
  conv = np.asarray(p["PatchEmbed_0"]["Conv_0"]["kernel"])
  bound = np.sqrt(6 / (2 * 2 * 3 + 64))
  assert np.abs(conv).max() <= bound and np.abs(conv).max() > 0.9 * bound
  dense = np.asarray(p["DiTBlock_0"]["Dense_1"]["kernel"])
  assert np.abs(dense).max() <= np.sqrt(6 / 128) and np.abs(dense).max() > 0.9 * np.sqrt(6 / 128)
  emb = np.asarray(p["LabelEmbedder_0"]["Embed_0"]["embedding"])
  assert emb.shape == (6, 64) and 0.015 < emb.std() < 0.025
  assert not np.any(np.asarray(p["Embed_0"]["embedding"]))


def test_presets_and_validation():
  assert dit_lib.DIT_PRESETS["DiT-XL/2"] == dict(hidden_size=1152, depth=28, num_heads=16,
                                                 patch_size=2, mlp_ratio=4.0)
  assert dit_lib.DIT_PRESETS["DiT-B/4"]["hidden_size"] == 768
  with pytest.raises(ValueError, match="model.num_heads"):
    dit_lib.validate_dit_args(patch_size=2, hidden_size=100, num_heads=3, depth=2, mlp_ratio=4)
  with pytest.raises(ValueError, match="model.patch_size"):
    dit_lib.validate_dit_args(patch_size=3, hidden_size=64, num_heads=4, depth=2, mlp_ratio=4,
                              image_size=16)
  with pytest.raises(ValueError, match="attention_impl"):
    dit_lib.validate_dit_args(patch_size=2, hidden_size=64, num_heads=4, depth=2, mlp_ratio=4,
                              attention_impl="flash")
