"""Converts pytorch-fid's InceptionV3 weights into the library's `.npz` file.

Usage:

  python -m shortcut_jax.tools.convert_inception \
      --pth pt_inception-2015-12-05-6726825d.pth --out inception_fid.npz

The `.pth` is pytorch-fid's release asset
(https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth).
Reading it needs torch (only here; the library itself never imports torch).
Then point `load_inception(path=...)` or `$SHORTCUT_JAX_INCEPTION` at the
output. Both files may be remote (gs://...): they are read and written
through `shortcut_jax.storage`.

The mapping is a pure function on a dict of numpy arrays,
`convert_state_dict`, so it can be tested without torch:

  <block>.conv.weight      [O, I, H, W] -> params/<block>/conv/kernel [H, W, I, O]
  <block>.bn.weight                     -> params/<block>/bn/scale
  <block>.bn.bias                       -> params/<block>/bn/bias
  <block>.bn.running_mean               -> batch_stats/<block>/bn/mean
  <block>.bn.running_var                -> batch_stats/<block>/bn/var
  fc.weight                [1008, 2048] -> params/fc/kernel [2048, 1008]
  fc.bias                               -> params/fc/bias

where <block> is e.g. `Conv2d_1a_3x3` or `Mixed_5b.branch1x1`. The 1008-way
classifier `fc.*` is not used by the FID features; it is kept for the logits
of the Inception Score (`shortcut_jax.evaluators.adm_metrics`). A state dict
without it converts as before (no logits). `AuxLogits.*` and
`*.num_batches_tracked` are skipped.
"""

from typing import Mapping

from absl import app
from absl import flags
from absl import logging
import numpy as np

from shortcut_jax import console
from shortcut_jax.models import inception
from shortcut_jax.tools.torch_weights import load_torch_state_dict

_SUFFIXES = {
    'conv.weight': ('params', 'conv', 'kernel'),
    'bn.weight': ('params', 'bn', 'scale'),
    'bn.bias': ('params', 'bn', 'bias'),
    'bn.running_mean': ('batch_stats', 'bn', 'mean'),
    'bn.running_var': ('batch_stats', 'bn', 'var'),
}
_SKIPPED_PREFIXES = ('AuxLogits.',)
_CLASSIFIER = {'fc.weight': 'params/fc/kernel', 'fc.bias': 'params/fc/bias'}


def convert_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict:
  """Maps a pytorch-fid InceptionV3 state dict to Flax variables.

  Args:
    state_dict: pytorch-fid key -> numpy array (e.g. 'Mixed_5b.branch1x1.conv.weight').

  Returns:
    {'params': ..., 'batch_stats': ...} nested dicts of float32 numpy arrays,
    checked against `shortcut_jax.models.inception.InceptionV3`.

  Raises:
    ValueError: an unknown key, or missing / mis-shaped tensors.
  """
  flat = {}
  unknown = []
  for key, value in state_dict.items():
    if key.startswith(_SKIPPED_PREFIXES) or key.endswith('num_batches_tracked'):
      continue
    if key in _CLASSIFIER:
      array = np.asarray(value, dtype=np.float32)
      # torch's Linear stores [out, in]; the Flax kernel is [in, out] (TF's softmax/weights).
      flat[_CLASSIFIER[key]] = np.ascontiguousarray(array.T) if array.ndim == 2 else array
      continue
    for suffix, (collection, layer, name) in _SUFFIXES.items():
      if key.endswith('.' + suffix):
        module_path = key[:-len(suffix) - 1].replace('.', '/')
        array = np.asarray(value, dtype=np.float32)
        if name == 'kernel':
          if array.ndim != 4:
            raise ValueError(f'{key}: expected a 4-d OIHW weight, got shape '
                             f'{array.shape}')
          array = np.ascontiguousarray(array.transpose(2, 3, 1, 0))
        flat[f'{collection}/{module_path}/{layer}/{name}'] = array
        break
    else:
      unknown.append(key)
  if unknown:
    raise ValueError(f'{len(unknown)} state-dict keys are not part of the FID '
                     f'InceptionV3: {sorted(unknown)[:10]}')
  return inception.check_variables(inception.unflatten_variables(flat),
                                   source='converted state dict')


def convert_file(pth_path: str, out_path: str) -> dict:
  """Converts `pth_path` and writes the library's `.npz` to `out_path`.

  Args:
    pth_path: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`.
    out_path: destination `.npz`.

  Returns:
    The converted variables.
  """
  variables = convert_state_dict(load_torch_state_dict(pth_path))
  inception.save_inception_variables(out_path, variables)
  logging.info('Wrote %s (%d tensors).', out_path,
               len(inception.flatten_variables(variables)))
  return variables


_PTH = flags.DEFINE_string('pth', None, 'pytorch-fid InceptionV3 .pth file.')
_OUT = flags.DEFINE_string('out', 'inception_fid.npz', 'Output .npz path.')


def main(argv):
  del argv
  if not _PTH.value:
    raise app.UsageError('--pth is required (pytorch-fid\'s '
                         'pt_inception-2015-12-05-6726825d.pth).')
  convert_file(_PTH.value, _OUT.value)


if __name__ == '__main__':
  console.run(main)
