"""`tools.import_pytorch_dit`: a SiT / DiT PyTorch checkpoint becomes a library workdir whose DiT
reproduces the torch network's velocity (SiT) or noise (DiT, at DiT's step as t) to float32
rounding; bad checkpoints and configs are clear errors before anything is written.

The reference is a tiny SiT written here in torch with the official block structure (SiT's and
DiT's models.py: a conv patch embedding, sinusoidal time features through a two-layer MLP, a
class table with a null row, adaLN-Zero blocks with a fused qkv projection and 1/sqrt(head_dim)
attention, a tanh-GELU MLP, an adaLN final layer, learned-sigma outputs), with random weights
everywhere (the released models' zero-initialised layers would hide errors)."""

import argparse
import importlib.util
import os

import jax.numpy as jnp
import numpy as np
import pytest

import digits_configs
from shortcut_jax import experiment
from shortcut_jax.checkpoints.manager import CheckpointMismatchError
from shortcut_jax.tools import import_pytorch_dit as tool

HAS_TORCH = importlib.util.find_spec("torch") is not None
HIDDEN, DEPTH, HEADS, PATCH, CHANNELS, SIZE, CLASSES = 32, 2, 4, 2, 3, 8, 10


@pytest.fixture(autouse=True, scope="module")
def _fast(fast_compile):
  yield


def sincos_table(dim, grid):
  """The MAE / DiT 2-D sin-cos table, written from its definition: half the channels for the
  column coordinate, half for the row, each [sin(p w), cos(p w)], w_j = 10000^(-2j/(dim/2))."""
  def one(d, pos):
    w = 1.0 / 10000 ** (np.arange(d // 2) / (d / 2))
    a = pos.reshape(-1)[:, None] * w[None]
    return np.concatenate([np.sin(a), np.cos(a)], axis=1)
  rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
  return np.concatenate([one(dim // 2, cols), one(dim // 2, rows)], axis=1).astype(np.float32)


def state_dict(seed=0, learn_sigma=True, null_row=True, hidden=HIDDEN, depth=DEPTH):
  """Random SiT / DiT tensors (numpy), key -> array, in their state-dict layout."""
  rng = np.random.default_rng(seed)
  out = CHANNELS * (2 if learn_sigma else 1)
  shapes = {"x_embedder.proj.weight": (hidden, CHANNELS, PATCH, PATCH),
            "x_embedder.proj.bias": (hidden,),
            "t_embedder.mlp.0.weight": (hidden, 256), "t_embedder.mlp.0.bias": (hidden,),
            "t_embedder.mlp.2.weight": (hidden, hidden), "t_embedder.mlp.2.bias": (hidden,),
            "y_embedder.embedding_table.weight": (CLASSES + null_row, hidden),
            "final_layer.linear.weight": (PATCH * PATCH * out, hidden),
            "final_layer.linear.bias": (PATCH * PATCH * out,),
            "final_layer.adaLN_modulation.1.weight": (2 * hidden, hidden),
            "final_layer.adaLN_modulation.1.bias": (2 * hidden,)}
  for i in range(depth):
    for name, o, n in (("attn.qkv", 3 * hidden, hidden), ("attn.proj", hidden, hidden),
                       ("mlp.fc1", 4 * hidden, hidden), ("mlp.fc2", hidden, 4 * hidden),
                       ("adaLN_modulation.1", 6 * hidden, hidden)):
      shapes[f"blocks.{i}.{name}.weight"] = (o, n)
      shapes[f"blocks.{i}.{name}.bias"] = (o,)
  sd = {k: (rng.normal(size=s) / np.sqrt(s[1] if len(s) > 1 else 4.0)).astype(np.float32)
        for k, s in shapes.items()}
  sd["pos_embed"] = sincos_table(hidden, SIZE // PATCH)[None]
  return sd


def torch_sit(sd, x, t, y):
  """The SiT forward in torch (float64) on NCHW images: the velocity (first C channels)."""
  import torch
  import torch.nn.functional as F
  p = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in sd.items()}
  lin = lambda h, name: F.linear(h, p[name + ".weight"], p[name + ".bias"])
  modulate = lambda h, shift, scale: h * (1 + scale[:, None]) + shift[:, None]
  norm = lambda h: F.layer_norm(h, h.shape[-1:], eps=1e-6)
  x, t, y = (torch.as_tensor(a) for a in (x, t, y))
  n, _, hgt, wid = x.shape
  h = F.conv2d(x.double(), p["x_embedder.proj.weight"], p["x_embedder.proj.bias"], stride=PATCH)
  h = h.flatten(2).transpose(1, 2) + p["pos_embed"]
  half = 128
  freqs = torch.exp(-np.log(10000) * torch.arange(half, dtype=torch.float64) / half)
  args = t.double()[:, None] * freqs[None]
  temb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
  c = lin(F.silu(lin(temb, "t_embedder.mlp.0")), "t_embedder.mlp.2")
  c = c + p["y_embedder.embedding_table.weight"][y]
  d = h.shape[-1]
  for i in range(sum(k.endswith("attn.qkv.weight") for k in sd)):
    b = f"blocks.{i}."
    sh1, sc1, g1, sh2, sc2, g2 = lin(F.silu(c), b + "adaLN_modulation.1").chunk(6, dim=1)
    qkv = lin(modulate(norm(h), sh1, sc1), b + "attn.qkv")
    q, k, v = qkv.reshape(n, -1, 3, HEADS, d // HEADS).permute(2, 0, 3, 1, 4)
    a = torch.softmax(q @ k.transpose(-2, -1) * (d // HEADS) ** -0.5, dim=-1) @ v
    h = h + g1[:, None] * lin(a.transpose(1, 2).reshape(n, -1, d), b + "attn.proj")
    m = lin(F.gelu(lin(modulate(norm(h), sh2, sc2), b + "mlp.fc1"), approximate="tanh"),
            b + "mlp.fc2")
    h = h + g2[:, None] * m
  shift, scale = lin(F.silu(c), "final_layer.adaLN_modulation.1").chunk(2, dim=1)
  h = lin(modulate(norm(h), shift, scale), "final_layer.linear")
  out = h.shape[-1] // (PATCH * PATCH)
  g = hgt // PATCH
  img = torch.einsum("nhwpqc->nchpwq", h.reshape(n, g, g, PATCH, PATCH, out))
  return img.reshape(n, out, hgt, wid)[:, :CHANNELS].numpy()


def config(**changes):
  c = digits_configs.digits_config("smoke", data__image_size=SIZE, data__num_classes=CLASSES,
                                   model__hidden_size=HIDDEN, model__depth=DEPTH,
                                   model__num_heads=HEADS, model__patch_size=PATCH,
                                   model__attention_scale="sqrt", model__dtype="float32",
                                   objective__name="naive")
  return digits_configs.override(c, **changes)


def _library_velocity(workdir, x_nhwc, t, y):
  exp, state, step = experiment.restore_experiment(workdir)
  assert step == 0
  level = jnp.asarray(np.random.default_rng(3).integers(0, 7, len(t)), jnp.float32)
  out = exp.module.apply({"params": state.ema_params}, jnp.asarray(x_nhwc), jnp.asarray(t), level,
                         jnp.asarray(y))
  np.testing.assert_array_equal(
      np.asarray(out), np.asarray(exp.module.apply({"params": state.params}, jnp.asarray(x_nhwc),
                                                    jnp.asarray(t), level * 0, jnp.asarray(y))))
  return np.asarray(out)


@pytest.mark.reference
@pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
def test_converted_sit_reproduces_the_torch_velocity(tmp_path):
  import torch
  ema, online = state_dict(seed=1), state_dict(seed=2)
  # A training checkpoint of SiT's train.py: model, ema, optimizer, argparse arguments.
  torch.save({"model": {k: torch.from_numpy(v) for k, v in online.items()},
              "ema": {k: torch.from_numpy(v) for k, v in ema.items()}, "opt": {},
              "args": argparse.Namespace(model="SiT-XL/2")}, tmp_path / "sit.pt")
  workdir = str(tmp_path / "imported")
  info = tool.import_pytorch_dit(str(tmp_path / "sit.pt"), config(), workdir)
  assert info["learn_sigma"] and info["depth"] == DEPTH
  rng = np.random.default_rng(0)
  x = rng.normal(size=(6, CHANNELS, SIZE, SIZE)).astype(np.float32)
  y = np.array([0, 3, 9, CLASSES, 5, CLASSES])  # CLASSES: the null label
  # SiT's time (t in [0, 1], 0 = noise) and DiT's (the step 0 ... 999, as t).
  for t in (rng.uniform(0, 1, 6).astype(np.float32), np.array([0, 1, 250, 500, 998, 999], np.float32)):
    want = torch_sit(ema, x, t, y).transpose(0, 2, 3, 1)
    got = _library_velocity(workdir, x.transpose(0, 2, 3, 1), t, y)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def _import(tmp_path, sd, cfg=None):
  """`import_pytorch_dit` on a state dict held in memory (no torch needed)."""
  workdir = str(tmp_path / "imported")
  original = tool.load_state_dict
  tool.load_state_dict = lambda path, weights="ema": sd
  try:
    tool.import_pytorch_dit("in-memory.pt", cfg or config(), workdir)
  finally:
    tool.load_state_dict = original
  return workdir


def test_a_table_without_null_row_gets_a_zero_null_and_the_rest_is_carried_over(tmp_path):
  sd = state_dict(null_row=False, learn_sigma=False)
  params, info = tool.convert(sd, CLASSES)
  table = params["LabelEmbedder_0"]["Embed_0"]["embedding"]
  np.testing.assert_array_equal(table[:CLASSES], sd["y_embedder.embedding_table.weight"])
  np.testing.assert_array_equal(table[CLASSES], 0)
  assert not info["learn_sigma"]
  # q, k, v of the fused projection land on the original's Dense_2, Dense_1, Dense_3.
  qkv = sd["blocks.1.attn.qkv.weight"]
  for name, rows in (("Dense_2", slice(0, HIDDEN)), ("Dense_1", slice(HIDDEN, 2 * HIDDEN)),
                     ("Dense_3", slice(2 * HIDDEN, None))):
    np.testing.assert_array_equal(params["DiTBlock_1"][name]["kernel"], qkv[rows].T)


@pytest.mark.parametrize("damage, message", [
    (lambda sd: sd.pop("blocks.1.mlp.fc2.bias"), "missing ['blocks.1.mlp.fc2.bias']"),
    (lambda sd: sd.update(extra=np.zeros(1)), "unexpected ['extra']"),
    (lambda sd: sd.update(pos_embed=sd["pos_embed"][:, ::-1]), "pos_embed"),
    (lambda sd: sd.update({"y_embedder.embedding_table.weight": np.zeros((7, HIDDEN))}),
     "class table has 7 rows, but data.num_classes is 10"),
])
def test_a_state_dict_of_another_layout_is_named(damage, message):
  sd = state_dict()
  damage(sd)
  with pytest.raises((tool.PyTorchCheckpointError, CheckpointMismatchError)) as e:
    tool.convert(sd, CLASSES)
  assert message in str(e.value)


def test_a_config_of_another_network_fails_before_anything_is_written(tmp_path):
  with pytest.raises(CheckpointMismatchError, match="attention_scale=sqrt"):
    _import(tmp_path, state_dict(), config(model__attention_scale="original"))
  with pytest.raises(CheckpointMismatchError, match=r"DiTBlock_0.*\n.*hidden_size=48"):
    _import(tmp_path, state_dict(hidden=48))
  assert not os.path.exists(tmp_path / "imported" / "checkpoints")
  assert not os.path.exists(tmp_path / "imported" / "config.json")


def test_the_import_is_a_fine_tuning_source_and_never_overwrites(tmp_path):
  sd = state_dict(seed=4)
  workdir = _import(tmp_path, sd)
  exp, state, _ = experiment.restore_experiment(workdir)
  kernel = state.params["PatchEmbed_0"]["Conv_0"]["kernel"]
  np.testing.assert_array_equal(kernel, sd["x_embedder.proj.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(state.params["TimestepEmbedder_1"]["Dense_1"]["kernel"], 0)
  assert np.abs(state.params["TimestepEmbedder_1"]["Dense_0"]["kernel"]).max() > 0
  with pytest.raises(FileExistsError, match="already holds checkpoints"):
    _import(tmp_path, state_dict(seed=5))
  _, again, _ = experiment.restore_experiment(workdir)
  np.testing.assert_array_equal(again.params["PatchEmbed_0"]["Conv_0"]["kernel"], kernel)
