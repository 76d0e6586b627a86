"""Tests for the Flax Stable Diffusion VAE and its weight loading.

Torch-free: the ResNet, attention, down- and upsampling blocks against numpy written from the
definitions (GroupNorm, SiLU, convolution by explicit loops over kernel offsets, single-head
attention over positions); weight files written here in diffusers' PyTorch layout (from the
naming rules, written out below independently of the loader) and in the diffusers-Flax msgpack
layout, read back by `load_vae`; error messages. With torch and diffusers installed: small
randomly initialised diffusers `AutoencoderKL`s, saved with `save_pretrained`, give the same
posterior, latents and decoded images through `load_vae`, from safetensors and from a msgpack
built from their state dicts.
"""

import json
import re

import flax
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shortcut_jax.models import vae as vae_lib
from shortcut_jax.models import vae_layers
from shortcut_jax.models import vae_weights

EPS = 1e-6
pytestmark = pytest.mark.usefixtures("fast_compile")


def _rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12)


def _perturbed(params, seed, scale=0.2):
  """Adds noise to every parameter, so GroupNorm scales / biases and zero biases matter."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda p: jnp.asarray(p + scale * rng.normal(size=p.shape).astype(np.float32)), params)


def _images(shape, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# numpy references, from the definitions.


def np_group_norm(x, groups, scale, bias):
  b, h, w, c = x.shape
  g = x.reshape(b, h, w, groups, c // groups).astype(np.float64)
  mean = g.mean(axis=(1, 2, 4), keepdims=True)
  var = ((g - mean) ** 2).mean(axis=(1, 2, 4), keepdims=True)
  return ((g - mean) / np.sqrt(var + EPS)).reshape(x.shape) * scale + bias


def np_silu(x):
  return x / (1 + np.exp(-x))


def np_conv(x, kernel, bias, stride=1, pad=((1, 1), (1, 1))):
  """x [B, H, W, I], kernel [kh, kw, I, O]: sum over kernel offsets of shifted einsums."""
  kh, kw = kernel.shape[:2]
  xp = np.pad(x.astype(np.float64), ((0, 0), pad[0], pad[1], (0, 0)))
  out_h = (xp.shape[1] - kh) // stride + 1
  out_w = (xp.shape[2] - kw) // stride + 1
  out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[3]))
  for i in range(kh):
    for j in range(kw):
      patch = xp[:, i:i + stride * (out_h - 1) + 1:stride, j:j + stride * (out_w - 1) + 1:stride]
      out += np.einsum("bhwi,io->bhwo", patch, kernel[i, j])
  return out + bias


def np_resnet(x, p, groups):
  h = np_conv(np_silu(np_group_norm(x, groups, p["norm1"]["scale"], p["norm1"]["bias"])),
              p["conv1"]["kernel"], p["conv1"]["bias"])
  h = np_conv(np_silu(np_group_norm(h, groups, p["norm2"]["scale"], p["norm2"]["bias"])),
              p["conv2"]["kernel"], p["conv2"]["bias"])
  if "conv_shortcut" in p:
    x = np_conv(x, p["conv_shortcut"]["kernel"], p["conv_shortcut"]["bias"], pad=((0, 0), (0, 0)))
  return x + h


def np_attention(x, p, groups):
  b, hh, ww, c = x.shape
  h = np_group_norm(x, groups, p["group_norm"]["scale"], p["group_norm"]["bias"])
  h = h.reshape(b, hh * ww, c)
  q, k, v = (h @ p[n]["kernel"] + p[n]["bias"] for n in ("query", "key", "value"))
  out = np.zeros_like(h)
  for n in range(b):
    logits = q[n] @ k[n].T / np.sqrt(c)
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    out[n] = weights @ v[n]
  out = out @ p["proj_attn"]["kernel"] + p["proj_attn"]["bias"]
  return x + out.reshape(x.shape)


def _init_block(module, x, seed):
  params = module.init(jax.random.PRNGKey(seed), x)["params"]
  params = _perturbed(params, seed + 1)
  out = module.apply({"params": params}, x)
  return jax.tree.map(np.asarray, params), np.asarray(out)


@pytest.mark.parametrize("in_channels,out_channels", [(8, 8), (8, 12)])
def test_resnet_block_matches_numpy(in_channels, out_channels):
  x = _images((2, 6, 5, in_channels), seed=1) * 2
  params, out = _init_block(vae_layers.ResnetBlock(out_channels, groups=4), x, seed=2)
  assert ("conv_shortcut" in params) == (in_channels != out_channels)
  assert _rel_err(out, np_resnet(x, params, 4)) < 1e-5


def test_attention_block_matches_numpy():
  x = _images((2, 4, 3, 8), seed=3) * 3
  params, out = _init_block(vae_layers.AttentionBlock(groups=2), x, seed=4)
  expected = np_attention(x, params, 2)
  assert _rel_err(out, expected) < 1e-5
  # Attention mixes positions: the residual alone would not pass.
  assert _rel_err(out, x) > 1e-2


def test_downsample_and_upsample_match_numpy():
  x = _images((2, 6, 6, 4), seed=5)
  params, out = _init_block(vae_layers.Downsample(5), x, seed=6)
  assert out.shape == (2, 3, 3, 5)
  expected = np_conv(x, params["conv"]["kernel"], params["conv"]["bias"], stride=2,
                     pad=((0, 1), (0, 1)))
  assert _rel_err(out, expected) < 1e-5
  params, out = _init_block(vae_layers.Upsample(5), x, seed=7)
  up = np.zeros((2, 12, 12, 4), np.float32)
  for di in range(2):
    for dj in range(2):
      up[:, di::2, dj::2] = x
  assert _rel_err(out, np_conv(up, params["conv"]["kernel"], params["conv"]["bias"])) < 1e-5


# ----------------------------------------------------------------------------------------------
# The wrapper.


@pytest.fixture(scope="module")
def tiny():
  vae = vae_lib.tiny_vae(seed=0)
  vae.params = _perturbed(vae.params, 1, scale=0.1)
  return vae


def test_sd_vae_config_has_the_sd_vae_size():
  config = vae_lib.VAEConfig.from_dict(vae_lib.SD_VAE_CONFIG)
  assert config.block_out_channels == (128, 256, 512, 512)
  assert config.downsample_factor == 8
  shapes = vae_weights.expected_shapes(config)
  # stabilityai/sd-vae-ft-mse has 83,653,863 parameters (34,163,592 in the encoder).
  assert sum(int(np.prod(s)) for s in shapes.values()) == 83_653_863
  encoder = sum(int(np.prod(s)) for k, s in shapes.items() if k.startswith("encoder/"))
  assert encoder == 34_163_592


def test_encode_decode_shapes_and_scaling(tiny):
  x = _images((3, 16, 16, 3))
  mean, std = tiny.posterior(x)
  assert mean.shape == std.shape == (3, 8, 8, 4) == tiny.latent_shape(x.shape)
  assert np.all(np.asarray(std) > 0)
  latents = tiny.encode(x)
  np.testing.assert_allclose(latents, np.asarray(mean) * 0.18215, rtol=1e-6)
  images = tiny.decode(latents)
  assert images.shape == x.shape and images.dtype == jnp.float32
  clipped = np.asarray(tiny.decode(latents, clip=True))
  assert clipped.min() >= -1 and clipped.max() <= 1
  np.testing.assert_allclose(clipped, np.clip(images, -1, 1))


def test_shift_factor_applies_before_scale():
  vae = vae_lib.tiny_vae(seed=0, shift_factor=0.3, scaling_factor=2.0)
  x = _images((2, 16, 16, 3))
  mean, _ = vae.posterior(x)
  assert _rel_err(vae.encode(x), (np.asarray(mean) - 0.3) * 2.0) < 1e-6
  z = np.random.default_rng(0).normal(size=(2, 8, 8, 4)).astype(np.float32)
  direct = vae.module.apply({"params": vae.params}, z / 2.0 + 0.3, method="decode")
  assert _rel_err(vae.decode(z), direct) < 1e-5


def test_sampled_latents_follow_the_posterior(tiny):
  x = _images((2, 16, 16, 3))
  mean, std = tiny.posterior(x)
  a = tiny.encode(x, key=jax.random.PRNGKey(0))
  b = tiny.encode(x, key=jax.random.PRNGKey(1))
  assert _rel_err(a, b) > 1e-3
  noise = (np.asarray(a) / 0.18215 - np.asarray(mean)) / np.asarray(std)
  assert abs(noise.mean()) < 0.15 and 0.85 < noise.std() < 1.15
  stored = tiny.sample_latents(mean, std, jax.random.PRNGKey(0))
  np.testing.assert_allclose(stored, a, rtol=1e-6)


def test_chunked_equals_whole_batch(tiny):
  x = _images((5, 16, 16, 3), seed=2)
  chunked = vae_lib.VAE(tiny.config, tiny.params, chunk_size=2)
  assert _rel_err(chunked.encode(x), tiny.encode(x)) < 1e-5
  z = np.asarray(tiny.encode(x))
  assert _rel_err(chunked.decode(z), tiny.decode(z)) < 1e-5
  assert chunked.decode(z).shape == (5, 16, 16, 3)


def test_bfloat16_compute_is_close_to_float32(tiny):
  bf16 = vae_lib.VAE(tiny.config, tiny.params, dtype=jnp.bfloat16)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(bf16.params))
  x = _images((2, 16, 16, 3), seed=3)
  latents = bf16.encode(x)
  assert latents.dtype == jnp.float32
  assert _rel_err(latents, tiny.encode(x)) < 5e-2
  z = np.asarray(tiny.encode(x))
  out = bf16.decode(z)
  assert out.dtype == jnp.float32
  assert 1e-5 < _rel_err(out, tiny.decode(z)) < 5e-2  # bf16 really is used, and stays close


def test_config_from_dict_rejects_what_it_cannot_compute():
  with pytest.raises(ValueError, match="unknown field 'norm_type'"):
    vae_lib.VAEConfig.from_dict({"norm_type": "spatial"})
  with pytest.raises(ValueError, match="act_fn"):
    vae_lib.VAEConfig.from_dict({"act_fn": "gelu"})
  with pytest.raises(ValueError, match="latents_mean"):
    vae_lib.VAEConfig.from_dict({"latents_mean": [0.0] * 4})
  with pytest.raises(ValueError, match="down_block_types"):
    vae_lib.VAEConfig.from_dict({"block_out_channels": [8, 16], "norm_num_groups": 4,
                                 "down_block_types": ["DownEncoderBlock2D"]})
  config = vae_lib.VAEConfig.from_dict({"_class_name": "AutoencoderKL", "sample_size": 32,
                                        "block_out_channels": [8, 16], "norm_num_groups": 4})
  assert vae_lib.VAEConfig.from_dict(config.to_dict()) == config


# ----------------------------------------------------------------------------------------------
# Weight files written here: diffusers' PyTorch layout and the diffusers-Flax msgpack layout.

_TORCH_ATTENTION = {
    "new": {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"},
    "legacy": {"query": "query", "key": "key", "value": "value", "proj_attn": "proj_attn"},
    "conv1x1": {"query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"},
}
_FLAX_LIST_MODULE = re.compile(r"^(down_blocks|up_blocks|resnets|attentions|downsamplers|"
                               r"upsamplers)_(\d+)$")


def to_diffusers_state_dict(params, attention="new"):
  """Module parameters -> a diffusers state dict (numpy, PyTorch layout), by diffusers' naming:
  `name_i` -> `name.i`, kernels HWIO -> OIHW, Dense [in, out] -> Linear [out, in] (or a 1x1
  conv [out, in, 1, 1] for old checkpoints), GroupNorm scale -> weight."""
  names = _TORCH_ATTENTION[attention]
  state = {}
  for path, value in traverse_util.flatten_dict(flax.core.unfreeze(params)).items():
    value = np.asarray(value)
    *modules, leaf = path
    torch_modules = []
    for m in modules:
      match = _FLAX_LIST_MODULE.match(m)
      if match:
        torch_modules.append(f"{match.group(1)}.{match.group(2)}")
      else:
        torch_modules.append(names.get(m, m))
    dense = modules[-1] in names
    if leaf == "kernel" and value.ndim == 4:
      value = value.transpose(3, 2, 0, 1)
    elif leaf == "kernel" and dense:
      value = value.T
      if attention == "conv1x1":
        value = value[:, :, None, None]
    state[".".join(torch_modules + ["bias" if leaf == "bias" else "weight"])] = value
  return state


def from_diffusers_state_dict_to_flax_tree(state):
  """A diffusers state dict -> the nested tree diffusers' FlaxAutoencoderKL stored in
  flax_model.msgpack (`down_blocks.0` -> `down_blocks_0`, `to_q` -> `query`, `to_out.0` ->
  `proj_attn`, kernels OIHW -> HWIO, Linear transposed, norm weight -> scale)."""
  rename = {"to_q": "query", "to_k": "key", "to_v": "value"}
  flat = {}
  for key, value in state.items():
    key = key.replace("to_out.0", "proj_attn")
    key = re.sub(r"\.(\d+)\.", r"_\1.", key)
    *modules, leaf = key.split(".")
    modules = [rename.get(m, m) for m in modules]
    if leaf == "weight":
      if value.ndim == 4:
        value, leaf = value.transpose(2, 3, 1, 0), "kernel"
      elif value.ndim == 2:
        value, leaf = value.T, "kernel"
      else:
        leaf = "scale"
    flat[tuple(modules + [leaf])] = np.asarray(value)
  return traverse_util.unflatten_dict(flat)


def write_safetensors(folder, state, config):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  folder.mkdir(parents=True, exist_ok=True)
  save_file({k: np.ascontiguousarray(v) for k, v in state.items()},
            str(folder / vae_weights.SAFETENSORS_FILE))
  (folder / vae_weights.CONFIG_FILE).write_text(json.dumps(config))
  return folder


def write_msgpack(folder, tree, config):
  folder.mkdir(parents=True, exist_ok=True)
  (folder / vae_weights.MSGPACK_FILE).write_bytes(flax.serialization.msgpack_serialize(tree))
  (folder / vae_weights.CONFIG_FILE).write_text(json.dumps(config))
  return folder


def _outputs(vae, x, z):
  mean, std = vae.posterior(x)
  return [np.asarray(a) for a in (mean, std, vae.encode(x), vae.decode(z))]


@pytest.fixture(scope="module")
def tiny_outputs(tiny):
  x = _images((2, 16, 16, 3), seed=4)
  z = np.random.default_rng(5).normal(size=(2, 8, 8, 4)).astype(np.float32)
  return x, z, _outputs(tiny, x, z)


@pytest.mark.parametrize("attention", ["new", "legacy", "conv1x1"])
def test_safetensors_round_trip(tmp_path, tiny, tiny_outputs, attention):
  state = to_diffusers_state_dict(tiny.params, attention)
  assert any(".mid_block.attentions.0." + _TORCH_ATTENTION[attention]["query"] in k for k in state)
  folder = write_safetensors(tmp_path / "vae", state, tiny.config.to_dict())
  loaded = vae_weights.load_vae(folder)
  x, z, expected = tiny_outputs
  for got, want in zip(_outputs(loaded, x, z), expected):
    assert _rel_err(got, want) < 1e-6


@pytest.mark.parametrize("wrapped", [False, True])
def test_msgpack_round_trip(tmp_path, tiny, tiny_outputs, wrapped):
  tree = jax.tree.map(np.asarray, flax.core.unfreeze(tiny.params))
  folder = write_msgpack(tmp_path / "vae", {"params": tree} if wrapped else tree,
                         tiny.config.to_dict())
  loaded = vae_weights.load_vae(folder, chunk_size=4)
  x, z, expected = tiny_outputs
  for got, want in zip(_outputs(loaded, x, z), expected):
    assert _rel_err(got, want) < 1e-6


def test_env_var_and_vae_subfolder(tmp_path, monkeypatch, tiny):
  state = to_diffusers_state_dict(tiny.params)
  write_safetensors(tmp_path / "pipeline" / "vae", state, tiny.config.to_dict())
  monkeypatch.setenv(vae_weights.ENV_VAR, str(tmp_path / "pipeline"))
  config, params = vae_weights.load_vae_params()
  assert config == tiny.config
  jax.tree.map(np.testing.assert_array_equal, params, tiny.params)


# ----------------------------------------------------------------------------------------------
# Errors.


def test_missing_hub_weights_offline_say_what_and_where(monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.delenv(vae_weights.ENV_VAR, raising=False)
  with pytest.raises(vae_weights.VAEWeightsNotFoundError) as info:
    vae_weights.load_vae("shortcut-jax-tests/no-such-vae")
  assert isinstance(info.value, FileNotFoundError)
  message = str(info.value)
  for needed in ("config.json", "diffusion_pytorch_model.safetensors", "flax_model.msgpack",
                 "https://huggingface.co/shortcut-jax-tests/no-such-vae", "vae.path",
                 "$SHORTCUT_JAX_VAE", "offline"):
    assert needed in message, needed


def test_missing_local_folder(tmp_path):
  with pytest.raises(vae_weights.VAEWeightsNotFoundError, match="does not exist"):
    vae_weights.load_vae(str(tmp_path / "nowhere" / "vae" / "folder"))
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "config.json").write_text("{}")
  with pytest.raises(vae_weights.VAEWeightsNotFoundError,
                     match="diffusion_pytorch_model.safetensors"):
    vae_weights.load_vae(tmp_path / "empty")


def test_removed_key_is_named(tmp_path, tiny):
  state = to_diffusers_state_dict(tiny.params)
  key = "decoder.up_blocks.1.resnets.0.conv2.weight"
  del state[key]
  folder = write_safetensors(tmp_path / "vae", state, tiny.config.to_dict())
  with pytest.raises(vae_weights.VAEWeightsError, match=f"missing key '{re.escape(key)}'"):
    vae_weights.load_vae(folder)


def test_wrong_shape_is_named(tmp_path, tiny):
  state = to_diffusers_state_dict(tiny.params)
  key = "encoder.mid_block.attentions.0.to_k.weight"
  state[key] = state[key][:, :-1]
  folder = write_safetensors(tmp_path / "vae", state, tiny.config.to_dict())
  with pytest.raises(vae_weights.VAEWeightsError,
                     match=rf"key '{re.escape(key)}' has shape \(16, 15\), expected \(16, 16\)"):
    vae_weights.load_vae(folder)


def test_extra_key_and_wrong_config_are_named(tmp_path, tiny):
  state = to_diffusers_state_dict(tiny.params)
  state["encoder.down_blocks.1.downsamplers.0.conv.weight"] = np.zeros((16, 16, 3, 3), np.float32)
  folder = write_safetensors(tmp_path / "extra", state, tiny.config.to_dict())
  with pytest.raises(vae_weights.VAEWeightsError,
                     match=r"unexpected key 'encoder\.down_blocks\.1\.downsamplers"):
    vae_weights.load_vae(folder)
  # The right weights under a config with another latent size: the first mismatch is named.
  config = dict(tiny.config.to_dict(), latent_channels=3)
  folder = write_safetensors(tmp_path / "config", to_diffusers_state_dict(tiny.params), config)
  with pytest.raises(vae_weights.VAEWeightsError, match=r"key 'decoder\.conv_in\.weight'"):
    vae_weights.load_vae(folder)


def test_msgpack_missing_key_is_named(tmp_path, tiny):
  tree = jax.tree.map(np.asarray, flax.core.unfreeze(tiny.params))
  del tree["encoder"]["conv_out"]["bias"]
  folder = write_msgpack(tmp_path / "vae", tree, tiny.config.to_dict())
  with pytest.raises(vae_weights.VAEWeightsError, match="missing key 'encoder/conv_out/bias'"):
    vae_weights.load_vae(folder)


# ----------------------------------------------------------------------------------------------
# Equivalence with diffusers (needs torch and diffusers; skipped without them).

_DIFFUSERS_CASES = {
    # (config, image shape [H, W, C])
    "two_blocks": (dict(block_out_channels=(8, 16), layers_per_block=1, latent_channels=4,
                        norm_num_groups=4), (16, 16, 3)),
    "three_blocks_no_quant_shift": (dict(block_out_channels=(8, 16, 24), layers_per_block=2,
                                         latent_channels=3, norm_num_groups=8, in_channels=1,
                                         out_channels=2, use_quant_conv=False,
                                         use_post_quant_conv=False, scaling_factor=0.5,
                                         shift_factor=0.1), (16, 12, 1)),
    "no_mid_attention": (dict(block_out_channels=(8, 8), layers_per_block=1, latent_channels=2,
                              norm_num_groups=2, mid_block_add_attention=False), (8, 8, 3)),
}


@pytest.fixture(scope="module", params=sorted(_DIFFUSERS_CASES))
def diffusers_vae(request, tmp_path_factory):
  """(folder with save_pretrained output, the torch model, config dict, image shape)."""
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  torch.set_num_threads(2)
  config, image_shape = _DIFFUSERS_CASES[request.param]
  n = len(config["block_out_channels"])
  torch.manual_seed(0)
  model = diffusers.AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * n,
                                  up_block_types=("UpDecoderBlock2D",) * n, **config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  folder = tmp_path_factory.mktemp(request.param)
  model.save_pretrained(folder)
  return folder, model, config, image_shape


def _diffusers_outputs(model, x, latents, config):
  import torch  # pylint: disable=g-import-not-at-top
  scale = config.get("scaling_factor", 0.18215)
  shift = config.get("shift_factor") or 0.0
  nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
  nhwc = lambda t: t.numpy().transpose(0, 2, 3, 1)
  with torch.no_grad():
    dist = model.encode(nchw(x)).latent_dist
    decoded = model.decode(nchw(latents / scale + shift)).sample
  return nhwc(dist.mean), nhwc(dist.std), (nhwc(dist.mode()) - shift) * scale, nhwc(decoded)


def _check_against_diffusers(vae, model, config, image_shape):
  x = _images((2, *image_shape), seed=7)
  f = 2 ** (len(config["block_out_channels"]) - 1)
  latents = np.random.default_rng(8).normal(
      size=(2, image_shape[0] // f, image_shape[1] // f, config["latent_channels"]))
  latents = latents.astype(np.float32)
  ours = _outputs(vae, x, latents)
  theirs = _diffusers_outputs(model, x, latents, config)
  for name, got, want in zip(("mean", "std", "latents", "decoded"), ours, theirs):
    assert got.shape == want.shape, name
    assert _rel_err(got, want) < 1e-4, name


@pytest.mark.reference
def test_matches_diffusers_from_safetensors(diffusers_vae):
  folder, model, config, image_shape = diffusers_vae
  assert (folder / vae_weights.SAFETENSORS_FILE).exists()
  vae = vae_weights.load_vae(folder)
  assert vae.config.use_quant_conv == config.get("use_quant_conv", True)
  _check_against_diffusers(vae, model, config, image_shape)


@pytest.mark.reference
def test_matches_diffusers_from_flax_msgpack(diffusers_vae, tmp_path):
  folder, model, config, image_shape = diffusers_vae
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  tree = from_diffusers_state_dict_to_flax_tree(state)
  if config.get("mid_block_add_attention", True):
    assert "query" in tree["encoder"]["mid_block"]["attentions_0"]
  full_config = json.loads((folder / vae_weights.CONFIG_FILE).read_text())
  folder = write_msgpack(tmp_path / "flax", tree, full_config)
  _check_against_diffusers(vae_weights.load_vae(folder), model, config, image_shape)


@pytest.mark.reference
def test_matches_diffusers_with_legacy_attention_names(diffusers_vae, tmp_path):
  folder, model, config, image_shape = diffusers_vae
  if not config.get("mid_block_add_attention", True):
    pytest.skip("no attention in this config")
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  state = load_file(str(folder / vae_weights.SAFETENSORS_FILE))
  legacy = {}
  for key, value in state.items():
    for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"),
                     ("to_out.0", "proj_attn")):
      if f".{new}." in key:
        key = key.replace(f".{new}.", f".{old}.")
        value = value[:, :, None, None] if value.ndim == 2 else value  # old 1x1-conv form
    legacy[key] = value
  config_dict = json.loads((folder / vae_weights.CONFIG_FILE).read_text())
  vae = vae_weights.load_vae(write_safetensors(tmp_path / "legacy", legacy, config_dict))
  _check_against_diffusers(vae, model, config, image_shape)


@pytest.mark.reference
def test_sd_vae_config_matches_diffusers_parameter_shapes():
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  with torch.device("meta"):
    model = diffusers.AutoencoderKL(**{k: v for k, v in vae_lib.SD_VAE_CONFIG.items()})
  config = vae_lib.VAEConfig.from_dict(vae_lib.SD_VAE_CONFIG)
  shapes = vae_weights.expected_shapes(config)
  theirs = {k: tuple(v.shape) for k, v in model.state_dict().items()}
  assert len(theirs) == len(shapes)
  # pylint: disable=protected-access
  for key, shape in theirs.items():
    path = vae_weights._torch_key_to_path(key)
    assert path in shapes, key
    assert vae_weights._torch_layout(path, shapes[path]) == shape, key
