"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric"), version 0.1 with the AlexNet trunk: the `lpips` package's default `LPIPS(net='alex')`.

    d(x, y) = sum_l  mean_{h,w}  sum_c  w_lc (x̂_lhwc - ŷ_lhwc)²

where x̂_l are the channel-wise unit-normalised ReLU outputs of AlexNet's five convolutions
(torchvision's `alexnet().features`, indices 1, 4, 7, 9, 11) on the input after the scaling
layer `(x - shift) / scale`, and w_l >= 0 are the learned 1x1 linear layers `lin0..lin4`.
Inputs are RGB in [-1, 1] (what `lpips.LPIPS()(x, y)` expects with `normalize=False`), NHWC;
grey images are repeated to three channels. Lower is more similar; d(x, x) = 0.

The trunk (torchvision `features`, kernel / stride / padding; max-pools 3x3, stride 2, no
padding, floor):
    conv1 11x11/4 pad 2, 3 -> 64      relu1 -> lin0      maxpool
    conv2  5x5/1 pad 2, 64 -> 192     relu2 -> lin1      maxpool
    conv3  3x3/1 pad 1, 192 -> 384    relu3 -> lin2
    conv4  3x3/1 pad 1, 384 -> 256    relu4 -> lin3
    conv5  3x3/1 pad 1, 256 -> 256    relu5 -> lin4
(the trunk's last max-pool and the classifier are not used). Images must be at least
`MIN_SIZE` = 31 pixels on each side, or the second max-pool has nothing to pool.

Weights: one `.npz` (`load_lpips_variables`), made once from torchvision's AlexNet and the
lpips package's linear layers by `python -m shortcut_jax.tools.convert_lpips` (which needs
torch; nothing here does). Its keys and shapes (`expected_shapes()`):
    conv<i>/kernel [k, k, in, out] (HWIO), conv<i>/bias [out]   for i = 1..5
    lin<l>/kernel [channels, 1]                                  for l = 0..4
The file is looked for at the path given, else at `$SHORTCUT_JAX_LPIPS`.
"""

import os
from typing import Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from shortcut_jax import storage

ENV_VAR = "SHORTCUT_JAX_LPIPS"
FLAG = "--lpips_weights"
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
LIN_URL = ("https://github.com/richzhang/PerceptualSimilarity/raw/master/"
           "lpips/weights/v0.1/alex.pth")

# The lpips package's ScalingLayer (v0.1): ImageNet statistics expressed on [-1, 1] inputs.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
# lpips's normalize_tensor: x / (||x||_channels + eps).
EPS = 1e-10

# (name, kernel, stride, padding, in channels, out channels, max-pool after its ReLU).
CONVS = (
    ("conv1", 11, 4, 2, 3, 64, True),
    ("conv2", 5, 1, 2, 64, 192, True),
    ("conv3", 3, 1, 1, 192, 384, False),
    ("conv4", 3, 1, 1, 384, 256, False),
    ("conv5", 3, 1, 1, 256, 256, False),
)
CHANNELS = tuple(c[5] for c in CONVS)  # (64, 192, 384, 256, 256): lin0..lin4's inputs.
MIN_SIZE = 31

HELP = (
    "LPIPS needs network weights, which this library does not ship and cannot download. Make "
    "the file once (needs torch, e.g. `pip install torch lpips`): get torchvision's AlexNet "
    f"weights {ALEXNET_URL} and the LPIPS v0.1 linear layers, which ship inside the `lpips` pip "
    "package at lpips/weights/v0.1/alex.pth (also at "
    f"{LIN_URL}), then run `python -m shortcut_jax.tools.convert_lpips "
    "--alexnet=alexnet-owt-7be5be79.pth --lin=PATH/lpips/weights/v0.1/alex.pth "
    f"--out=lpips_alex.npz` and pass {FLAG}=lpips_alex.npz to eval.py (or set {ENV_VAR}).")

Variables = Dict[str, Dict[str, Dict[str, np.ndarray]]]


def expected_shapes() -> Dict[str, Tuple[int, ...]]:
  """Every key of the weights file and its shape, in file order."""
  shapes = {}
  for name, k, _, _, cin, cout, _ in CONVS:
    shapes[f"{name}/kernel"] = (k, k, cin, cout)
    shapes[f"{name}/bias"] = (cout,)
  for l, c in enumerate(CHANNELS):
    shapes[f"lin{l}/kernel"] = (c, 1)
  return shapes


def _normalize(x: jax.Array) -> jax.Array:
  return x / (jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True)) + EPS)


class LPIPS(nn.Module):
  """LPIPS v0.1 (AlexNet): `apply(variables, x, y)` -> distances [b] (float32).

  x, y: [b, H, W, 3] RGB in [-1, 1] (H, W >= MIN_SIZE).
  """
  precision: Optional[jax.lax.Precision] = jax.lax.Precision.HIGHEST

  def setup(self):
    self.convs = [nn.Conv(cout, (k, k), strides=(stride, stride),
                          padding=((pad, pad), (pad, pad)), precision=self.precision, name=name)
                  for name, k, stride, pad, _, cout, _ in CONVS]
    # 1x1 convolutions to one channel without bias (lpips's NetLinLayer; dropout is off).
    self.lins = [nn.Dense(1, use_bias=False, precision=self.precision, name=f"lin{l}")
                 for l in range(len(CHANNELS))]

  def features(self, x: jax.Array):
    """The five ReLU outputs of the AlexNet trunk of the scaled input."""
    x = (x - jnp.asarray(SHIFT, x.dtype)) / jnp.asarray(SCALE, x.dtype)
    outs = []
    for conv, (_, _, _, _, _, _, pool) in zip(self.convs, CONVS):
      x = nn.relu(conv(x))
      outs.append(x)
      if pool:
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
    return outs

  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    total = 0.0
    for lin, fx, fy in zip(self.lins, self.features(x), self.features(y)):
      diff = (_normalize(fx) - _normalize(fy)) ** 2
      # Where the two feature vectors are identical the difference is 0: said explicitly, as
      # XLA turns `fx / n - fy / m` into `fx * (1/n) - fy * (1/m)`, which LLVM may contract
      # into an FMA that leaves a rounding residue (~1e-16) in d(x, x).
      same = jnp.all(fx == fy, axis=-1, keepdims=True)
      diff = jnp.where(same, 0.0, diff)
      total = total + jnp.mean(lin(diff), axis=(1, 2, 3))
    return total


def check_size(height: int, width: int) -> None:
  """Raises ValueError for images too small for the AlexNet trunk."""
  if min(height, width) < MIN_SIZE:
    raise ValueError(f"LPIPS (AlexNet) needs images of at least {MIN_SIZE}x{MIN_SIZE} pixels, "
                     f"got {height}x{width}")


def check_variables(flat: Mapping[str, np.ndarray], source: str = "weights") -> Variables:
  """Checks a flat `{key: array}` against `expected_shapes()`; returns Flax variables.

  Raises:
    ValueError: naming the first missing key, unexpected key, mis-shaped array or negative
      linear-layer weight (LPIPS's linear layers are trained non-negative).
  """
  expected = expected_shapes()
  for key in expected:
    if key not in flat:
      raise ValueError(f"{source}: missing {key!r} (an LPIPS AlexNet file has the keys "
                       f"{list(expected)})")
  for key in flat:
    if key not in expected:
      raise ValueError(f"{source}: unexpected key {key!r}; not an LPIPS AlexNet weights file "
                       "(make one with python -m shortcut_jax.tools.convert_lpips)")
  params = {}
  for key, shape in expected.items():
    array = np.asarray(flat[key])
    if tuple(array.shape) != shape:
      raise ValueError(f"{source}: {key!r} has shape {tuple(array.shape)}, expected {shape}")
    if key.startswith("lin") and np.any(array < 0):
      raise ValueError(f"{source}: {key!r} has negative weights; LPIPS's linear layers are "
                       "non-negative (is this the lpips v0.1 alex.pth?)")
    module, name = key.split("/")
    params.setdefault(module, {})[name] = array.astype(np.float32)
  return {"params": params}


def flatten_variables(variables: Variables) -> Dict[str, np.ndarray]:
  return {f"{module}/{name}": np.asarray(value)
          for module, leaves in variables["params"].items() for name, value in leaves.items()}


def save_lpips_variables(path: str, variables: Variables) -> None:
  """Writes the library's `.npz` (keys as in the module docstring), checked first; `path` may
  be local or remote (`storage`)."""
  flat = flatten_variables(check_variables(flatten_variables(variables), "variables to save"))
  storage.write_npz(path, **flat)


def resolve_weights_path(path: Optional[str] = None) -> str:
  """The weights file: `path`, else `$SHORTCUT_JAX_LPIPS`.

  Raises:
    FileNotFoundError: neither is set, or the file does not exist (the message says how to
      make it and where to pass it).
  """
  source = FLAG
  if not path:
    path = os.environ.get(ENV_VAR)
    source = f"${ENV_VAR}"
    if not path:
      raise FileNotFoundError(f"no LPIPS weights given ({FLAG} or ${ENV_VAR}). {HELP}")
  path = _expand(path)
  if not storage.isfile(path):
    raise FileNotFoundError(f"LPIPS weights file {path} (from {source}) does not exist. {HELP}")
  return path


def weights_path_or_none(path: Optional[str] = None) -> Optional[str]:
  """`path`, else `$SHORTCUT_JAX_LPIPS`, else None (LPIPS not asked for); '~' expanded."""
  path = path or os.environ.get(ENV_VAR)
  return _expand(path) if path else None


def _expand(path) -> str:
  """A local path with '~' expanded, or a remote one unchanged."""
  return os.fspath(path) if storage.is_remote(path) else os.path.expanduser(os.fspath(path))


def load_lpips_variables(path: Optional[str] = None) -> Variables:
  """Reads and checks the `.npz` at `path` (None: `$SHORTCUT_JAX_LPIPS`).

  Raises:
    FileNotFoundError: no file (see `resolve_weights_path`).
    ValueError: unreadable, or a key / shape does not match (the first one is named).
  """
  path = resolve_weights_path(path)
  try:
    with storage.open(path, "rb") as f, np.load(f, allow_pickle=False) as data:
      flat = {k: data[k] for k in data.files}
  except (OSError, ValueError) as e:
    raise ValueError(f"LPIPS weights file {path} is not a readable .npz ({e}). {HELP}") from e
  variables = check_variables(flat, source=f"LPIPS weights {path}")
  logging.info("loaded LPIPS (AlexNet, v0.1) weights from %s", path)
  return variables


class LPIPSScorer:
  """Jitted, batched LPIPS: `scorer(x, y)` -> float64 numpy distances [n].

  x, y: [n, H, W, C] in [-1, 1], C = 3 (RGB) or 1 (grey, repeated to RGB); any n (the last
  batch is padded, so one shape compiles once).
  """

  def __init__(self, variables: Variables, batch_size: int = 32):
    self.variables = jax.tree_util.tree_map(jnp.asarray, variables)
    self.batch_size = int(batch_size)
    self._apply = jax.jit(LPIPS().apply)

  @classmethod
  def from_file(cls, path: Optional[str] = None, batch_size: int = 32) -> "LPIPSScorer":
    return cls(load_lpips_variables(path), batch_size=batch_size)

  def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
    if x.shape != y.shape:
      raise ValueError(f"LPIPS: images have different shapes {x.shape} and {y.shape}")
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
      raise ValueError(f"LPIPS: expected batches [n, H, W, 1 or 3], got shape {x.shape}")
    check_size(*x.shape[1:3])
    if x.shape[-1] == 1:
      x, y = np.repeat(x, 3, axis=-1), np.repeat(y, 3, axis=-1)
    n = len(x)
    b = max(1, min(self.batch_size, n))
    out = []
    for start in range(0, n, b):
      xb, yb = x[start:start + b], y[start:start + b]
      pad = b - len(xb)
      if pad:
        widths = ((0, pad), (0, 0), (0, 0), (0, 0))
        xb, yb = np.pad(xb, widths), np.pad(yb, widths)
      out.append(np.asarray(self._apply(self.variables, xb, yb))[:b - pad])
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0,), np.float64)

  def mean(self, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(self(x, y)))
