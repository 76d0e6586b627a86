"""Converts LPIPS (v0.1, AlexNet) weights from PyTorch into the library's `.npz` file.

Usage:

  python -m shortcut_jax.tools.convert_lpips \
      --alexnet=alexnet-owt-7be5be79.pth --lin=PATH/lpips/weights/v0.1/alex.pth \
      --out=lpips_alex.npz

Two inputs, neither shipped with this library:
  * the AlexNet trunk: torchvision's ImageNet weights (`AlexNet_Weights.IMAGENET1K_V1`, what
    `lpips.LPIPS(net='alex')` loads), https://download.pytorch.org/models/alexnet-owt-7be5be79.pth
    (torchvision keeps a downloaded copy in ~/.cache/torch/hub/checkpoints/);
  * the learned linear layers: `lpips/weights/v0.1/alex.pth` inside the `lpips` pip package
    (`pip install lpips`; the folder is `python -c "import lpips, os;
    print(os.path.dirname(lpips.__file__))"`), also in github.com/richzhang/PerceptualSimilarity.
Reading them needs torch (only here; the library itself never imports torch). The trunk may
also come from a saved `lpips.LPIPS` module's state dict (keys `net.slice<k>.<i>.*`), which
can then be given as --lin too. Then pass `--lpips_weights=lpips_alex.npz` to `eval.py --mode=sr_metrics`, or
set `$SHORTCUT_JAX_LPIPS`. All three files may be remote (gs://...): they are read and written
through `shortcut_jax.storage`.

The mapping is a pure function on numpy arrays, `convert_state_dict`, testable without torch:

  features.<i>.weight [O, I, k, k]  -> conv<n>/kernel [k, k, I, O]   i = 0, 3, 6, 8, 10 -> n = 1..5
  features.<i>.bias   [O]           -> conv<n>/bias   [O]
  lin<l>.model.1.weight [1, C, 1, 1] -> lin<l>/kernel [C, 1]          (model.0 without dropout)

and, from a saved `lpips.LPIPS` module, `net.slice<k>.<i>.*` as `features.<i>.*` and
`lins.<l>.*` as `lin<l>.*` (a tensor under two names must have one value).

`classifier.*` (AlexNet's fully connected layers) and `scaling_layer.*` (constants the library
has built in) are skipped.
"""

import re
from typing import Mapping, Optional

import numpy as np
from absl import app
from absl import flags
from absl import logging

from shortcut_jax import console
from shortcut_jax.evaluators import lpips
from shortcut_jax.tools.torch_weights import load_torch_state_dict

# torchvision `features` index of each convolution (its ReLU follows at index + 1).
_FEATURE_INDEX = {0: "conv1", 3: "conv2", 6: "conv3", 8: "conv4", 10: "conv5"}
_CONV_KEY = re.compile(r"^(?:features|net\.slice[1-5])\.(\d+)\.(weight|bias)$")
_LIN_KEY = re.compile(r"^lin(?:s\.)?([0-4])\.model\.[01]\.weight$")
_SKIPPED = re.compile(r"^(classifier\.|scaling_layer\.)|num_batches_tracked$")


def convert_state_dict(state_dict: Mapping[str, np.ndarray]) -> lpips.Variables:
  """Maps torchvision AlexNet + lpips linear-layer tensors (one mapping) to Flax variables.

  Args:
    state_dict: PyTorch key -> numpy array, e.g. 'features.3.weight', 'lin2.model.1.weight'
      (both files' entries together).

  Returns:
    {'params': {'conv1': {'kernel', 'bias'}, ..., 'lin4': {'kernel'}}}, float32, checked
    against `lpips.expected_shapes()`.

  Raises:
    ValueError: an unknown key, a tensor given twice with different values, or missing /
      mis-shaped tensors.
  """
  flat, origin = {}, {}
  for key, value in state_dict.items():
    if _SKIPPED.search(key):
      continue
    array = np.asarray(value, np.float32)
    conv, lin = _CONV_KEY.match(key), _LIN_KEY.match(key)
    if conv and int(conv.group(1)) in _FEATURE_INDEX:
      name = _FEATURE_INDEX[int(conv.group(1))]
      if conv.group(2) == "weight":
        if array.ndim != 4:
          raise ValueError(f"{key}: expected a 4-d OIHW convolution weight, got shape "
                           f"{array.shape}")
        target, array = f"{name}/kernel", array.transpose(2, 3, 1, 0)
      else:
        target = f"{name}/bias"
    elif lin:
      if array.ndim != 4 or array.shape[0] != 1 or array.shape[2:] != (1, 1):
        raise ValueError(f"{key}: expected a 1x1 convolution weight [1, C, 1, 1], got shape "
                         f"{array.shape}")
      target, array = f"lin{lin.group(1)}/kernel", array[0, :, 0, 0][:, None]
    else:
      raise ValueError(f"{key!r} is not part of LPIPS's AlexNet trunk or linear layers "
                       "(expected torchvision AlexNet and lpips v0.1 alex.pth state dicts)")
    if target in flat:
      if np.array_equal(flat[target], array):
        continue  # The same tensor under two names (lpips.LPIPS has `lin<l>` and `lins.<l>`).
      raise ValueError(f"{target} is given twice, with different values: by "
                       f"{origin[target]!r} and {key!r}")
    flat[target], origin[target] = np.ascontiguousarray(array), key
  return lpips.check_variables(flat, source="converted state dicts")


def convert_files(alexnet_path: str, lin_path: Optional[str], out_path: str) -> lpips.Variables:
  """Converts the two `.pth` files and writes the library's `.npz` to `out_path`.

  Raises:
    ValueError: a key both files hold with different values, or what `convert_state_dict`
      raises.
  """
  state_dict = load_torch_state_dict(alexnet_path)
  if lin_path:
    lin = load_torch_state_dict(lin_path)
    clash = sorted(k for k in set(state_dict) & set(lin)
                   if not np.array_equal(state_dict[k], lin[k]))
    if clash:
      raise ValueError(f"{alexnet_path} and {lin_path} hold different values for {clash[:5]}")
    state_dict.update(lin)
  variables = convert_state_dict(state_dict)
  lpips.save_lpips_variables(out_path, variables)
  logging.info("wrote %s (%d tensors)", out_path, len(lpips.flatten_variables(variables)))
  return variables


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if not f.alexnet or not f.lin:
    raise app.UsageError("--alexnet (torchvision's alexnet-owt-7be5be79.pth, "
                         f"{lpips.ALEXNET_URL}) and --lin (lpips/weights/v0.1/alex.pth from the "
                         "lpips pip package) are both required.")
  convert_files(f.alexnet, f.lin, f.out)
  print(f"wrote {f.out}; use it with eval.py --mode=sr_metrics --lpips_weights={f.out}"
        f" (or ${lpips.ENV_VAR})")


if __name__ == "__main__":
  # Defined here, not on import: other tools define --out too, and tests import them together.
  flags.DEFINE_string("alexnet", None, "torchvision's AlexNet weights, alexnet-owt-7be5be79.pth "
                      f"({lpips.ALEXNET_URL}).")
  flags.DEFINE_string("lin", None, "The LPIPS linear layers: lpips/weights/v0.1/alex.pth from "
                      "the lpips pip package.")
  flags.DEFINE_string("out", "lpips_alex.npz", "Output .npz path.")
  console.run(main)
