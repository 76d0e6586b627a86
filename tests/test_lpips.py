"""LPIPS (AlexNet, v0.1): the Flax metric, its weight file and converter, and `sr_metrics`.

The real weights are not available here. Synthetic state dicts with torchvision's AlexNet and
the lpips package's key names and shapes are written out below from the published
architectures, independently of the library's tables; a functional PyTorch LPIPS (in float64)
is the reference when torch is installed.
"""

import importlib
import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from shortcut_jax.evaluators import lpips
from shortcut_jax.tools import convert_lpips

HAS_TORCH = importlib.util.find_spec("torch") is not None

# torchvision AlexNet `features` convolutions: (index, out, in, kernel, stride, padding); a
# 3x3 / stride 2 max-pool follows the ReLUs of indices 0 and 3.
TV_CONVS = [(0, 64, 3, 11, 4, 2), (3, 192, 64, 5, 1, 2), (6, 384, 192, 3, 1, 1),
            (8, 256, 384, 3, 1, 1), (10, 256, 256, 3, 1, 1)]
LIN_CHANNELS = [64, 192, 384, 256, 256]
# lpips.pretrained_networks / lpips.lpips (v0.1) ScalingLayer constants.
TORCH_SHIFT = [-0.030, -0.088, -0.188]
TORCH_SCALE = [0.458, 0.448, 0.450]


def torch_format_state_dict(seed=0, lin_key="lin{}.model.1.weight"):
  """Random torchvision-AlexNet + lpips-lin tensors (numpy), well scaled, lin weights >= 0."""
  rng = np.random.default_rng(seed)
  sd = {}
  for idx, out, cin, k, _, _ in TV_CONVS:
    sd[f"features.{idx}.weight"] = (rng.normal(size=(out, cin, k, k))
                                    * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
    sd[f"features.{idx}.bias"] = rng.uniform(-0.1, 0.1, out).astype(np.float32)
  # The classifier is in torchvision's file but not used (small stand-ins here).
  sd["classifier.1.weight"] = np.zeros((4, 9), np.float32)
  sd["classifier.6.bias"] = np.zeros((4,), np.float32)
  for l, c in enumerate(LIN_CHANNELS):
    sd[lin_key.format(l)] = np.abs(rng.normal(size=(1, c, 1, 1))).astype(np.float32) * 0.1
  return sd


def torch_lpips(sd, x, y):
  """Functional LPIPS in torch float64; x, y NHWC numpy in [-1, 1] -> numpy [n]."""
  import torch
  import torch.nn.functional as F

  def t(a):
    return torch.as_tensor(np.asarray(a), dtype=torch.float64)

  shift = t(TORCH_SHIFT).view(1, 3, 1, 1)
  scale = t(TORCH_SCALE).view(1, 3, 1, 1)

  def trunk(img):
    h = (t(img).permute(0, 3, 1, 2) - shift) / scale
    outs = []
    for idx, _, _, _, stride, pad in TV_CONVS:
      h = F.relu(F.conv2d(h, t(sd[f"features.{idx}.weight"]), t(sd[f"features.{idx}.bias"]),
                          stride=stride, padding=pad))
      outs.append(h)
      if idx in (0, 3):
        h = F.max_pool2d(h, kernel_size=3, stride=2)
    return outs

  total = 0
  for l, (a, b) in enumerate(zip(trunk(x), trunk(y))):
    na = a / (torch.sqrt(torch.sum(a ** 2, dim=1, keepdim=True)) + 1e-10)
    nb = b / (torch.sqrt(torch.sum(b ** 2, dim=1, keepdim=True)) + 1e-10)
    lin = F.conv2d((na - nb) ** 2, t(sd[f"lin{l}.model.1.weight"]))
    total = total + lin.mean(dim=(2, 3), keepdim=True)
  return total.reshape(-1).numpy()


def images(seed, n, h, w, c=3):
  """Smooth random images in [-1, 1] (a coarse random field upsampled, plus a little noise)."""
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(-1, 1, (n, h // 8 + 2, w // 8 + 2, c))
  smooth = np.asarray(jax.image.resize(coarse, (n, h, w, c), "bilinear"))
  return np.clip(smooth + 0.05 * rng.normal(size=smooth.shape), -1, 1).astype(np.float32)


@pytest.fixture(scope="module")
def scorer():
  return lpips.LPIPSScorer(convert_lpips.convert_state_dict(torch_format_state_dict()),
                           batch_size=4)


# --- the model against an independent torch implementation ---------------------------------

@pytest.mark.reference
@pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
def test_matches_functional_torch_through_the_converter(tmp_path):
  import torch
  sd = torch_format_state_dict(seed=1)
  alex = {k: torch.from_numpy(v) for k, v in sd.items() if not k.startswith("lin")}
  lin = {k: torch.from_numpy(v) for k, v in sd.items() if k.startswith("lin")}
  torch.save(alex, tmp_path / "alexnet.pth")
  torch.save(lin, tmp_path / "alex.pth")
  out = str(tmp_path / "lpips_alex.npz")
  convert_lpips.convert_files(str(tmp_path / "alexnet.pth"), str(tmp_path / "alex.pth"), out)
  flax_scorer = lpips.LPIPSScorer.from_file(out, batch_size=2)
  # Odd, non-square sizes exercise the paddings, strides and floor-mode pools.
  for (h, w), seed in [((64, 64), 0), ((47, 71), 1)]:
    x, y = images(seed, 3, h, w), images(seed + 10, 3, h, w)
    got, want = flax_scorer(x, y), torch_lpips(sd, x, y)
    assert got.shape == (3,) and np.all(want > 0)
    np.testing.assert_allclose(got, want, rtol=1e-5)


# --- properties (no torch) ------------------------------------------------------------------

def test_metric_properties(scorer):
  x, y = images(0, 3, 40, 40), images(1, 3, 40, 40)
  np.testing.assert_array_equal(scorer(x, x), 0.0)
  d_xy, d_yx = scorer(x, y), scorer(y, x)
  np.testing.assert_allclose(d_xy, d_yx, rtol=1e-6)
  assert np.all(d_xy > 0)
  noise = np.random.default_rng(2).normal(size=x.shape).astype(np.float32)
  dists = [scorer.mean(x, np.clip(x + s * noise, -1, 1)) for s in (0.05, 0.2, 0.6)]
  assert 0 < dists[0] < dists[1] < dists[2], dists


def test_batching_and_grey_inputs(scorer):
  x, y = images(3, 5, 40, 40), images(4, 5, 40, 40)
  one_by_one = np.concatenate([scorer(x[i:i + 1], y[i:i + 1]) for i in range(5)])
  np.testing.assert_allclose(scorer(x, y), one_by_one, rtol=1e-6)  # 5 = 4 + padded 1
  grey_x, grey_y = x[..., :1], y[..., :1]
  np.testing.assert_allclose(scorer(grey_x, grey_y),
                             scorer(np.repeat(grey_x, 3, -1), np.repeat(grey_y, 3, -1)),
                             rtol=1e-6)
  with pytest.raises(ValueError, match="at least 31x31"):
    scorer(x[:, :30], y[:, :30])
  with pytest.raises(ValueError, match="different shapes"):
    scorer(x, y[:4])


def test_module_parameters_are_the_file_layout():
  shapes = jax.eval_shape(lpips.LPIPS().init, jax.random.PRNGKey(0),
                          np.zeros((1, 32, 32, 3)), np.zeros((1, 32, 32, 3)))
  flat = {f"{m}/{n}": tuple(v.shape) for m, leaves in shapes["params"].items()
          for n, v in leaves.items()}
  assert flat == lpips.expected_shapes()
  assert flat["conv1/kernel"] == (11, 11, 3, 64) and flat["lin2/kernel"] == (384, 1)


# --- converter ------------------------------------------------------------------------------

def test_converter_mapping():
  sd = torch_format_state_dict()
  params = convert_lpips.convert_state_dict(sd)["params"]
  w = sd["features.3.weight"]  # [O, I, kh, kw] -> [kh, kw, I, O]
  assert params["conv2"]["kernel"][4, 1, 7, 5] == w[5, 7, 4, 1]
  np.testing.assert_array_equal(params["conv5"]["bias"], sd["features.10.bias"])
  np.testing.assert_array_equal(params["lin1"]["kernel"][:, 0], sd["lin1.model.1.weight"][0, :, 0, 0])
  # The lin layers without dropout (model.0), and a saved lpips.LPIPS trunk (net.slice<k>).
  alt = torch_format_state_dict(lin_key="lin{}.model.0.weight")
  for old, new in [("features.0", "net.slice1.0"), ("features.3", "net.slice2.3"),
                   ("features.10", "net.slice5.10")]:
    for suffix in (".weight", ".bias"):
      alt[new + suffix] = alt.pop(old + suffix)
  alt["scaling_layer.shift"] = np.zeros((1, 3, 1, 1), np.float32)
  alt_params = convert_lpips.convert_state_dict(alt)["params"]
  for module, leaves in params.items():
    for name, value in leaves.items():
      np.testing.assert_array_equal(alt_params[module][name], value)


def test_converter_errors():
  sd = torch_format_state_dict()
  with pytest.raises(ValueError, match="features.5.weight"):
    convert_lpips.convert_state_dict({**sd, "features.5.weight": np.zeros((1,), np.float32)})
  with pytest.raises(ValueError, match="given twice, with different values"):
    convert_lpips.convert_state_dict({**sd, "net.slice1.0.bias": sd["features.0.bias"] + 1})
  # The same tensor under two names is fine (lpips.LPIPS's `lin<l>` and `lins.<l>`).
  twice = convert_lpips.convert_state_dict({**sd, "lins.2.model.1.weight": sd["lin2.model.1.weight"]})
  np.testing.assert_array_equal(twice["params"]["lin2"]["kernel"][:, 0],
                                sd["lin2.model.1.weight"][0, :, 0, 0])
  missing = {k: v for k, v in sd.items() if k != "lin3.model.1.weight"}
  with pytest.raises(ValueError, match="missing 'lin3/kernel'"):
    convert_lpips.convert_state_dict(missing)
  with pytest.raises(ValueError, match=r"conv3/kernel.*\(3, 3, 191, 384\)"):
    convert_lpips.convert_state_dict({**sd, "features.6.weight": sd["features.6.weight"][:, :191]})


# --- the weights file -----------------------------------------------------------------------

def _write(tmp_path, name="lpips_alex.npz", **changes):
  flat = lpips.flatten_variables(convert_lpips.convert_state_dict(torch_format_state_dict()))
  flat.update(changes)
  path = str(tmp_path / name)
  np.savez(path, **{k: v for k, v in flat.items() if v is not None})
  return path


def test_loader_round_trip_and_env_var(tmp_path, monkeypatch):
  variables = convert_lpips.convert_state_dict(torch_format_state_dict())
  path = str(tmp_path / "w.npz")
  lpips.save_lpips_variables(path, variables)
  monkeypatch.setenv(lpips.ENV_VAR, path)
  loaded = lpips.load_lpips_variables()
  for key, value in lpips.flatten_variables(variables).items():
    np.testing.assert_array_equal(lpips.flatten_variables(loaded)[key], value)
  assert lpips.weights_path_or_none(None) == path
  assert lpips.weights_path_or_none("~/x.npz") == os.path.expanduser("~/x.npz")


def test_loader_missing_file(tmp_path, monkeypatch):
  monkeypatch.delenv(lpips.ENV_VAR, raising=False)
  with pytest.raises(FileNotFoundError) as e:
    lpips.load_lpips_variables(str(tmp_path / "nope.npz"))
  message = str(e.value)
  for needle in ("nope.npz", "--lpips_weights", lpips.ENV_VAR, "convert_lpips",
                 "alexnet-owt-7be5be79.pth", "lpips/weights/v0.1/alex.pth"):
    assert needle in message
  with pytest.raises(FileNotFoundError, match="no LPIPS weights given"):
    lpips.load_lpips_variables(None)
  assert lpips.weights_path_or_none(None) is None
  monkeypatch.setenv(lpips.ENV_VAR, str(tmp_path / "env.npz"))
  with pytest.raises(FileNotFoundError, match=r"env.npz \(from \$SHORTCUT_JAX_LPIPS\)"):
    lpips.load_lpips_variables(None)


def test_loader_names_the_first_mismatch(tmp_path):
  bad_shape = _write(tmp_path, "shape.npz", **{"conv4/kernel": np.zeros((3, 3, 384, 255))})
  with pytest.raises(ValueError, match=r"'conv4/kernel' has shape \(3, 3, 384, 255\), "
                                       r"expected \(3, 3, 384, 256\)"):
    lpips.load_lpips_variables(bad_shape)
  with pytest.raises(ValueError, match="missing 'conv2/bias'"):
    lpips.load_lpips_variables(_write(tmp_path, "missing.npz", **{"conv2/bias": None}))
  with pytest.raises(ValueError, match="unexpected key 'fc/kernel'"):
    lpips.load_lpips_variables(_write(tmp_path, "extra.npz", **{"fc/kernel": np.zeros(2)}))
  with pytest.raises(ValueError, match="'lin0/kernel' has negative weights"):
    lpips.load_lpips_variables(_write(tmp_path, "neg.npz", **{"lin0/kernel": -np.ones((64, 1))}))
  not_npz = tmp_path / "x.npz"
  not_npz.write_bytes(b"not a zip")
  with pytest.raises(ValueError, match="not a readable .npz"):
    lpips.load_lpips_variables(str(not_npz))


# --- sr_metrics ------------------------------------------------------------------------------

def test_score_images_adds_lpips_of_the_8_bit_images(scorer):
  from shortcut_jax.evaluators import super_resolution, sr_quality
  hr = images(5, 4, 32, 32)
  sr = np.clip(hr + 0.1 * np.random.default_rng(6).normal(size=hr.shape), -1, 1)
  without, psnr = super_resolution.score_images(hr, sr)
  assert "lpips" not in without and without == sr_quality.sr_metrics(hr, sr)
  np.testing.assert_array_equal(psnr, sr_quality.sr_metrics_per_image(hr, sr)["psnr_rgb"])
  metrics, _ = super_resolution.score_images(hr, sr, scorer)
  as_png = lambda x: np.round((np.asarray(x, np.float64) + 1) * 127.5) / 127.5 - 1
  assert metrics["lpips"] == pytest.approx(scorer.mean(as_png(hr), as_png(sr)), rel=1e-6)
  assert metrics["lpips"] > 0
  assert super_resolution.score_images(hr, hr, scorer)[0]["lpips"] == 0.0


def test_lpips_scorer_note(tmp_path, monkeypatch):
  from shortcut_jax.evaluators import super_resolution
  monkeypatch.delenv(lpips.ENV_VAR, raising=False)
  scorer_, note = super_resolution.lpips_scorer(None)
  assert scorer_ is None and "--lpips_weights" in note["skipped"]
  assert lpips.ENV_VAR in note["skipped"]
  with pytest.raises(FileNotFoundError):
    super_resolution.lpips_scorer(str(tmp_path / "missing.npz"))
  path = _write(tmp_path)
  monkeypatch.setenv(lpips.ENV_VAR, path)
  scorer_, note = super_resolution.lpips_scorer(None)
  assert isinstance(scorer_, lpips.LPIPSScorer) and note["weights"] == path


@pytest.mark.slow
@pytest.mark.usefixtures("fast_compile")
def test_sr_metrics_mode_reports_lpips(tmp_path, monkeypatch):
  from shortcut_jax import evaluation
  from shortcut_jax import experiment
  from shortcut_jax.train import trainer
  monkeypatch.delenv(lpips.ENV_VAR, raising=False)
  c = importlib.import_module("configs.sr_x4_photos").get_config("smoke")
  c.unlock()
  c.data.data_dir = str(tmp_path / "data")
  c.checkpoint.async_save = False
  c.max_steps = c.checkpoint.every_steps = 1
  for ev in c.evals.values():
    ev.every = 0
  workdir = str(tmp_path / "w")
  trainer.train_and_evaluate(c, workdir)
  args = dict(steps=[1], num_samples=3, cfg_scale=None, seed=0, batch_size=4)
  weights = _write(tmp_path)
  results = evaluation.run("sr_metrics", workdir, lpips_weights=weights, **args)
  with open(os.path.join(workdir, "sr_metrics.json")) as f:
    saved = json.load(f)
  for entry in (saved["bicubic"], saved["steps"]["1"]):
    assert np.isfinite(entry["lpips"]) and entry["lpips"] > 0
  assert saved["lpips"]["weights"] == weights
  # The bicubic entry, recomputed here: the held-out HR crops, their LR's bicubic upsampling,
  # both rounded to 8 bits.
  from shortcut_jax.data import low_res
  from shortcut_jax.evaluators import image_files
  from shortcut_jax.evaluators import conditions
  exp = experiment.restore_experiment(workdir)[0]
  hr = conditions.held_out_examples(exp.config, 3)["image"]
  eight_bit = lambda x: image_files.to_uint8(x).astype(np.float32) / 127.5 - 1.0
  want = lpips.LPIPSScorer.from_file(weights).mean(eight_bit(hr),
                                                   eight_bit(low_res.cond_image(hr, 4)))
  assert saved["bicubic"]["lpips"] == pytest.approx(want, rel=1e-4)
  skipped = evaluation.run("sr_metrics", workdir, **args)
  assert "lpips" not in skipped["bicubic"] and "lpips" not in skipped["steps"]["1"]
  assert "--lpips_weights" in skipped["lpips"]["skipped"]
  assert skipped["steps"]["1"]["psnr_rgb"] == pytest.approx(results["steps"]["1"]["psnr_rgb"])
  with pytest.raises(FileNotFoundError, match="convert_lpips"):
    evaluation.run("sr_metrics", workdir, lpips_weights=str(tmp_path / "no.npz"), **args)
