"""Tests for the FID InceptionV3, its weight files and the pytorch-fid converter.

The real weights are not available here; tests use a synthetic state dict with
pytorch-fid's key names and shapes, written out below from the architecture
(torchvision's Inception3 with pytorch-fid's FID blocks), independently of the
Flax module. A test comparing against a hand-written functional PyTorch
forward runs only when torch is installed.
"""

import importlib.util
import os
import pickle
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shortcut_jax.models import inception
from shortcut_jax.tools import convert_inception
from torch_inception import functional_inception


def _pytorch_fid_convs():
  """(key prefix, out, in, kh, kw) of every BasicConv2d in pytorch-fid."""
  convs = [('Conv2d_1a_3x3', 32, 3, 3, 3), ('Conv2d_2a_3x3', 32, 32, 3, 3),
           ('Conv2d_2b_3x3', 64, 32, 3, 3), ('Conv2d_3b_1x1', 80, 64, 1, 1),
           ('Conv2d_4a_3x3', 192, 80, 3, 3)]

  def block(name, rows):
    return [(f'{name}.{b}', o, i, kh, kw) for b, o, i, kh, kw in rows]

  for name, cin, pool in [('Mixed_5b', 192, 32), ('Mixed_5c', 256, 64),
                          ('Mixed_5d', 288, 64)]:
    convs += block(name, [
        ('branch1x1', 64, cin, 1, 1), ('branch5x5_1', 48, cin, 1, 1),
        ('branch5x5_2', 64, 48, 5, 5), ('branch3x3dbl_1', 64, cin, 1, 1),
        ('branch3x3dbl_2', 96, 64, 3, 3), ('branch3x3dbl_3', 96, 96, 3, 3),
        ('branch_pool', pool, cin, 1, 1)])
  convs += block('Mixed_6a', [
      ('branch3x3', 384, 288, 3, 3), ('branch3x3dbl_1', 64, 288, 1, 1),
      ('branch3x3dbl_2', 96, 64, 3, 3), ('branch3x3dbl_3', 96, 96, 3, 3)])
  for name, c7 in [('Mixed_6b', 128), ('Mixed_6c', 160), ('Mixed_6d', 160),
                   ('Mixed_6e', 192)]:
    convs += block(name, [
        ('branch1x1', 192, 768, 1, 1), ('branch7x7_1', c7, 768, 1, 1),
        ('branch7x7_2', c7, c7, 1, 7), ('branch7x7_3', 192, c7, 7, 1),
        ('branch7x7dbl_1', c7, 768, 1, 1), ('branch7x7dbl_2', c7, c7, 7, 1),
        ('branch7x7dbl_3', c7, c7, 1, 7), ('branch7x7dbl_4', c7, c7, 7, 1),
        ('branch7x7dbl_5', 192, c7, 1, 7), ('branch_pool', 192, 768, 1, 1)])
  convs += block('Mixed_7a', [
      ('branch3x3_1', 192, 768, 1, 1), ('branch3x3_2', 320, 192, 3, 3),
      ('branch7x7x3_1', 192, 768, 1, 1), ('branch7x7x3_2', 192, 192, 1, 7),
      ('branch7x7x3_3', 192, 192, 7, 1), ('branch7x7x3_4', 192, 192, 3, 3)])
  for name, cin in [('Mixed_7b', 1280), ('Mixed_7c', 2048)]:
    convs += block(name, [
        ('branch1x1', 320, cin, 1, 1), ('branch3x3_1', 384, cin, 1, 1),
        ('branch3x3_2a', 384, 384, 1, 3), ('branch3x3_2b', 384, 384, 3, 1),
        ('branch3x3dbl_1', 448, cin, 1, 1), ('branch3x3dbl_2', 384, 448, 3, 3),
        ('branch3x3dbl_3a', 384, 384, 1, 3),
        ('branch3x3dbl_3b', 384, 384, 3, 1), ('branch_pool', 192, cin, 1, 1)])
  return convs


def _synthetic_state_dict(seed=0, num_batches_tracked=False):
  """pytorch-fid state dict with random, well-scaled values."""
  rng = np.random.default_rng(seed)
  sd = {}
  for prefix, out, cin, kh, kw in _pytorch_fid_convs():
    fan_in = cin * kh * kw
    sd[f'{prefix}.conv.weight'] = (rng.normal(size=(out, cin, kh, kw)) *
                                   np.sqrt(2.0 / fan_in)).astype(np.float32)
    sd[f'{prefix}.bn.weight'] = rng.uniform(0.5, 1.5, out).astype(np.float32)
    sd[f'{prefix}.bn.bias'] = rng.uniform(-0.2, 0.2, out).astype(np.float32)
    sd[f'{prefix}.bn.running_mean'] = rng.uniform(-0.2, 0.2, out).astype(
        np.float32)
    sd[f'{prefix}.bn.running_var'] = rng.uniform(0.5, 1.5, out).astype(
        np.float32)
    if num_batches_tracked:
      sd[f'{prefix}.bn.num_batches_tracked'] = np.array(0, np.int64)
  sd['fc.weight'] = rng.normal(size=(1008, 2048)).astype(np.float32) * 0.01
  sd['fc.bias'] = rng.normal(size=1008).astype(np.float32)  # Non-zero: logits vs unbiased.
  return sd


@pytest.fixture(scope='module')
def state_dict():
  return _synthetic_state_dict()


@pytest.fixture(scope='module')
def variables(state_dict):
  return convert_inception.convert_state_dict(state_dict)


def _images(seed, shape):
  return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


# --- Architecture ------------------------------------------------------------


def test_state_dict_table_matches_pytorch_fid_counts(state_dict):
  # 94 BasicConv2d (5 stem + 3*7 + 4 + 4*10 + 6 + 2*9), 5 tensors each, + fc.
  assert len(_pytorch_fid_convs()) == 94
  assert len(state_dict) == 94 * 5 + 2
  # A few shapes as pytorch-fid's checkpoint stores them.
  assert state_dict['Conv2d_1a_3x3.conv.weight'].shape == (32, 3, 3, 3)
  assert state_dict['Mixed_5b.branch5x5_2.conv.weight'].shape == (64, 48, 5, 5)
  assert state_dict['Mixed_6e.branch7x7dbl_5.conv.weight'].shape == (
      192, 192, 1, 7)
  assert state_dict['Mixed_7b.branch3x3dbl_1.conv.weight'].shape == (
      448, 1280, 1, 1)
  assert state_dict['Mixed_7c.branch_pool.conv.weight'].shape == (
      192, 2048, 1, 1)


def test_block_output_shapes_at_299():
  model = inception.InceptionV3()
  names = set(inception.MIXED_NAMES)

  def run(images):
    shapes = inception.unflatten_variables(
        {k: jnp.zeros(s) for k, s in inception.expected_variable_shapes()
         .items()})
    return model.apply(
        shapes, images, capture_intermediates=lambda m, _: m.name in names,
        mutable=['intermediates'])

  out, state = jax.eval_shape(run, jax.ShapeDtypeStruct((2, 64, 48, 3),
                                                        jnp.float32))
  expected = {
      'Mixed_5b': (35, 35, 256), 'Mixed_5c': (35, 35, 288),
      'Mixed_5d': (35, 35, 288), 'Mixed_6a': (17, 17, 768),
      'Mixed_6b': (17, 17, 768), 'Mixed_6c': (17, 17, 768),
      'Mixed_6d': (17, 17, 768), 'Mixed_6e': (17, 17, 768),
      'Mixed_7a': (8, 8, 1280), 'Mixed_7b': (8, 8, 2048),
      'Mixed_7c': (8, 8, 2048)}
  captured = state['intermediates']
  assert set(captured) == set(expected)
  for name, shape in expected.items():
    assert captured[name]['__call__'][0].shape == (2,) + shape, name
  assert out.shape == (2, inception.FEATURE_DIM)
  assert out.dtype == jnp.float32


def test_flax_tree_matches_converter_and_init():
  # The Flax module's own init has exactly the converted names and shapes.
  model = inception.InceptionV3(image_size=None)
  init_shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                               jnp.zeros((1, 75, 75, 3)))
  flat = inception.flatten_variables(init_shapes)
  assert {k: v.shape for k, v in flat.items()} == (
      inception.expected_variable_shapes())
  assert len(flat) == 94 * 5


def test_pooling_quirks():
  # TensorFlow's average pool ignores padding: a constant stays constant at
  # the border (counting the zeros would give 4/9 in the corners).
  ones = jnp.ones((1, 5, 6, 2))
  np.testing.assert_allclose(np.asarray(inception._avg_pool_3x3(ones)), 1.0,
                             atol=1e-6)
  # Max pooling pads with -inf, so negative borders are not lifted to 0.
  negative = -jnp.arange(1, 31, dtype=jnp.float32).reshape(1, 5, 6, 1)
  pooled = np.asarray(inception._max_pool_3x3(negative))
  assert pooled[0, 0, 0, 0] == -1.0 and pooled.max() < 0


def test_mixed_7b_averages_and_7c_max_pools(variables):
  # The last 192 channels of an InceptionE block are the pool branch,
  # relu(bn(conv1x1(pool(x)))); recompute them with numpy pools.
  x = _images(5, (1, 3, 3, 2048))
  for name, numpy_pool in [('Mixed_7b', 'avg'), ('Mixed_7c', 'max')]:
    params = jax.tree_util.tree_map(np.array, variables['params'][name])
    stats = variables['batch_stats'][name]
    cin = 1280 if name == 'Mixed_7b' else 2048
    block = inception.InceptionE(pool=numpy_pool)
    xin = x[..., :cin]
    out = np.asarray(block.apply({'params': params, 'batch_stats': stats},
                                 xin))[..., -192:]
    padded = np.pad(xin[0].astype(np.float64), ((1, 1), (1, 1), (0, 0)),
                    constant_values=np.nan)
    # windows[i, j] holds the 9 inputs of output pixel (i, j); NaN = padding.
    windows = np.stack([padded[i:i + 3, j:j + 3].reshape(9, cin)
                        for i in range(3) for j in range(3)]).reshape(
                            3, 3, 9, cin)
    pooled = (np.nanmean(windows, axis=2) if numpy_pool == 'avg' else
              np.nanmax(windows, axis=2))
    kernel = params['branch_pool']['conv']['kernel'][0, 0]
    bn_p, bn_s = params['branch_pool']['bn'], stats['branch_pool']['bn']
    y = pooled @ kernel
    y = (y - bn_s['mean']) / np.sqrt(bn_s['var'] + 1e-3) * bn_p['scale'] + (
        bn_p['bias'])
    np.testing.assert_allclose(out[0], np.maximum(y, 0), rtol=1e-4, atol=1e-4)


# --- Converter ---------------------------------------------------------------


def test_converter_maps_keys_and_layouts(state_dict, variables):
  params, stats = variables['params'], variables['batch_stats']
  for prefix in ['Conv2d_1a_3x3', 'Mixed_5b.branch5x5_2',
                 'Mixed_6b.branch7x7_2', 'Mixed_7c.branch3x3dbl_3b']:
    node, stat = params, stats
    for part in prefix.split('.'):
      node, stat = node[part], stat[part]
    weight = state_dict[f'{prefix}.conv.weight']
    kernel = node['conv']['kernel']
    out, cin, kh, kw = weight.shape
    assert kernel.shape == (kh, kw, cin, out)
    # Kernel[h, w, i, o] = weight[o, i, h, w], checked element-wise.
    assert kernel[kh - 1, 0, cin - 1, 1] == weight[1, cin - 1, kh - 1, 0]
    np.testing.assert_array_equal(kernel, np.transpose(weight, (2, 3, 1, 0)))
    np.testing.assert_array_equal(node['bn']['scale'],
                                  state_dict[f'{prefix}.bn.weight'])
    np.testing.assert_array_equal(node['bn']['bias'],
                                  state_dict[f'{prefix}.bn.bias'])
    np.testing.assert_array_equal(stat['bn']['mean'],
                                  state_dict[f'{prefix}.bn.running_mean'])
    np.testing.assert_array_equal(stat['bn']['var'],
                                  state_dict[f'{prefix}.bn.running_var'])
  # The classifier is kept for the Inception Score's logits: torch's [out, in] transposed.
  np.testing.assert_array_equal(params['fc']['kernel'], state_dict['fc.weight'].T)
  np.testing.assert_array_equal(params['fc']['bias'], state_dict['fc.bias'])
  assert len(inception.flatten_variables(variables)) == 94 * 5 + 2
  # A state dict without it converts as before (no logits).
  no_fc = {k: v for k, v in state_dict.items() if not k.startswith('fc.')}
  converted = convert_inception.convert_state_dict(no_fc)
  assert len(inception.flatten_variables(converted)) == 94 * 5
  assert not inception.has_classifier(converted)


def test_converter_skips_num_batches_tracked():
  sd = _synthetic_state_dict(seed=1, num_batches_tracked=True)
  converted = convert_inception.convert_state_dict(sd)
  assert len(inception.flatten_variables(converted)) == 94 * 5 + 2


def test_converter_rejects_bad_state_dicts(state_dict):
  extra = dict(state_dict)
  extra['Mixed_5b.branch9x9.conv.weight'] = np.zeros((1, 1, 1, 1))
  with pytest.raises(ValueError, match='unexpected'):
    convert_inception.convert_state_dict(extra)
  unknown = dict(state_dict)
  unknown['Mixed_5b.branch1x1.conv.bias'] = np.zeros(64)
  with pytest.raises(ValueError, match='not part of'):
    convert_inception.convert_state_dict(unknown)
  missing = dict(state_dict)
  del missing['Mixed_6c.branch7x7_3.bn.running_var']
  with pytest.raises(ValueError, match='missing'):
    convert_inception.convert_state_dict(missing)
  misshaped = dict(state_dict)
  misshaped['Mixed_6c.branch7x7_3.conv.weight'] = np.zeros((192, 160, 1, 7))
  with pytest.raises(ValueError, match='shape'):
    convert_inception.convert_state_dict(misshaped)


def test_converter_without_torch_says_how_to_install(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, 'torch', None)  # Makes `import torch` fail.
  with pytest.raises(ImportError, match='pip install torch'):
    convert_inception.load_torch_state_dict(str(tmp_path / 'x.pth'))


@pytest.mark.reference
def test_converter_cli_on_a_torch_file(tmp_path, state_dict, variables):
  torch = pytest.importorskip('torch')
  pth = tmp_path / 'pt_inception-2015-12-05-6726825d.pth'
  torch.save({k: torch.from_numpy(v) for k, v in state_dict.items()}, pth)
  out = tmp_path / 'inception_fid.npz'
  subprocess.run([sys.executable, '-m', 'shortcut_jax.tools.convert_inception',
                  f'--pth={pth}', f'--out={out}'], check=True,
                 env=dict(os.environ, JAX_PLATFORMS='cpu'))
  loaded = inception.load_inception_variables(str(out))
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, variables)
  # A .pth given to the loader directly gets a pointer to the converter.
  with pytest.raises(ValueError, match='convert_inception'):
    inception.load_inception_variables(str(pth))


def test_convert_save_load_round_trip(tmp_path, variables):
  path = str(tmp_path / 'inception_fid.npz')
  inception.save_inception_variables(path, variables)
  loaded = inception.load_inception_variables(path)
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, variables)

  images = _images(0, (2, 80, 76, 3))
  start = time.time()
  feature_fn = inception.load_inception(path, image_size=None)
  features = np.asarray(feature_fn(images))
  elapsed = time.time() - start
  model = inception.InceptionV3(image_size=None)
  direct = np.asarray(jax.jit(model.apply)(variables, images))
  assert features.shape == (2, 2048) and features.dtype == np.float32
  assert np.all(np.isfinite(features)) and np.std(features) > 0
  np.testing.assert_array_equal(features, direct)
  # The two images give different features (the network is not degenerate).
  assert not np.allclose(features[0], features[1])
  print(f'load + first call at 80x76, batch 2: {elapsed:.1f}s')


def test_library_npz_format_errors(tmp_path, variables):
  path = tmp_path / 'inception_fid.npz'
  inception.save_inception_variables(str(path), variables)
  data = path.read_bytes()
  truncated = tmp_path / 'truncated.npz'
  truncated.write_bytes(data[:len(data) // 3])
  with pytest.raises(ValueError, match='truncated or corrupt'):
    inception.load_inception_variables(str(truncated))
  foreign = tmp_path / 'foreign.npz'
  np.savez(foreign, mu=np.zeros(3))
  with pytest.raises(ValueError, match='not a shortcut_jax Inception file'):
    inception.load_inception_variables(str(foreign))


# --- The original's pickle ---------------------------------------------------


def _original_layout(variables):
  """Nested dict in the layout of the original's inception pickle."""
  tree = {}
  flat = inception.flatten_variables(variables)
  for path, value in flat.items():
    collection, *modules, layer, name = path.split('/')
    del collection
    node = tree
    for m in modules:
      node = node.setdefault(m, {})
    renamed = {'kernel': 'kernel', 'scale': 'scale', 'bias': 'bias',
               'mean': 'mean', 'var': 'var'}[name]
    node.setdefault(layer, {})[renamed] = np.asarray(value)
    if name == 'kernel':  # The original stores a (zero) conv bias entry.
      node[layer]['bias'] = np.zeros(value.shape[-1], np.float32)
  # The classifier as a Flax Dense stores it (kernel [2048, 1008]).
  tree['fc'] = {'kernel': np.asarray(variables['params']['fc']['kernel']),
                'bias': np.asarray(variables['params']['fc']['bias'])}
  return tree


@pytest.mark.parametrize('protocol', [2, 4, 5])
def test_original_pickle_reader(tmp_path, variables, protocol):
  tree = _original_layout(variables)
  assert set(tree['Mixed_5b']['branch1x1']) == {'conv', 'bn'}
  assert set(tree['Conv2d_1a_3x3']['bn']) == {'scale', 'bias', 'mean', 'var'}
  path = tmp_path / 'inception_v3_weights_fid.pickle'
  with open(path, 'wb') as f:
    pickle.dump(tree, f, protocol=protocol)
  loaded = inception.load_inception_variables(str(path))
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, variables)


def test_original_pickle_with_another_classifier_layout_loads_without_it(tmp_path, variables):
  tree = _original_layout(variables)
  tree['fc'] = {'kernel': np.zeros((1008, 2048), np.float32)}  # Not a [2048, 1008] Dense.
  path = tmp_path / 'other_fc.pickle'
  with open(path, 'wb') as f:
    pickle.dump(tree, f)
  loaded = inception.load_inception_variables(str(path))
  assert not inception.has_classifier(loaded)
  assert len(inception.flatten_variables(loaded)) == 94 * 5


class _Exploit:

  def __reduce__(self):
    return (os.system, ('touch pwned_marker',))


def test_original_pickle_reader_refuses_code(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  path = tmp_path / 'evil.pickle'
  with open(path, 'wb') as f:
    pickle.dump({'Conv2d_1a_3x3': _Exploit()}, f)
  with pytest.raises(ValueError, match='refusing to load'):
    inception.load_inception_variables(str(path))
  assert not (tmp_path / 'pwned_marker').exists()


def test_original_pickle_missing_entry(tmp_path, variables):
  tree = _original_layout(variables)
  del tree['Mixed_6a']['branch3x3']['bn']['var']
  path = tmp_path / 'broken.pickle'
  with open(path, 'wb') as f:
    pickle.dump(tree, f)
  with pytest.raises(ValueError, match='Mixed_6a/branch3x3'):
    inception.load_inception_variables(str(path))


# --- Missing weights ---------------------------------------------------------


def test_missing_file_names_file_and_env_var(tmp_path, monkeypatch):
  missing = str(tmp_path / 'inception_fid.npz')
  with pytest.raises(FileNotFoundError) as info:
    inception.load_inception(missing)
  message = str(info.value)
  assert missing in message
  assert inception.ENV_VAR in message and 'SHORTCUT_JAX_INCEPTION' in message
  assert 'pt_inception-2015-12-05-6726825d.pth' in message
  assert 'convert_inception' in message

  monkeypatch.delenv(inception.ENV_VAR, raising=False)
  with pytest.raises(FileNotFoundError, match='SHORTCUT_JAX_INCEPTION'):
    inception.load_inception()
  monkeypatch.setenv(inception.ENV_VAR, missing)
  with pytest.raises(FileNotFoundError, match='environment variable'):
    inception.load_inception()


def test_env_var_is_used(tmp_path, monkeypatch, variables):
  path = str(tmp_path / 'weights.npz')
  inception.save_inception_variables(path, variables)
  monkeypatch.setenv(inception.ENV_VAR, path)
  loaded = inception.load_inception_variables()
  np.testing.assert_array_equal(
      loaded['params']['Mixed_7c']['branch_pool']['conv']['kernel'],
      variables['params']['Mixed_7c']['branch_pool']['conv']['kernel'])


# --- Resizing ----------------------------------------------------------------


def _bilinear_align_corners_false(images, out_h, out_w):
  """Direct numpy definition: gather the 4 neighbours of every output pixel.

  Source coordinates in float32 as PyTorch computes them (scale first); the
  interpolation itself in float64.
  """
  in_h, in_w = images.shape[1:3]

  def source(n_in, n_out):
    scale = np.float32(n_in / n_out)
    src = np.array([max(scale * np.float32(i + 0.5) - np.float32(0.5), 0.0)
                    for i in range(n_out)], np.float32)
    lo = np.minimum(src.astype(int), n_in - 1)
    return lo, np.minimum(lo + 1, n_in - 1), (src - lo).astype(np.float64)

  y0, y1, fy = source(in_h, out_h)
  x0, x1, fx = source(in_w, out_w)
  x = images.astype(np.float64)
  fy, fx = fy[None, :, None, None], fx[None, None, :, None]
  top = (1 - fx) * x[:, y0][:, :, x0] + fx * x[:, y0][:, :, x1]
  bottom = (1 - fx) * x[:, y1][:, :, x0] + fx * x[:, y1][:, :, x1]
  return (1 - fy) * top + fy * bottom


@pytest.mark.parametrize('in_hw,out_hw', [((13, 9), (5, 4)),
                                          ((5, 6), (11, 17)),
                                          ((32, 32), (299, 299)),
                                          ((512, 300), (299, 299))])
def test_resize_matches_align_corners_false(in_hw, out_hw):
  images = _images(1, (2,) + in_hw + (3,))
  expected = _bilinear_align_corners_false(images, *out_hw)
  got = np.asarray(inception.resize_images(images, out_hw, antialias=False))
  np.testing.assert_allclose(got, expected, atol=2e-6)
  rows = inception.bilinear_resize_matrix(in_hw[0], out_hw[0])
  np.testing.assert_allclose(rows.sum(1), 1.0, atol=1e-6)


@pytest.mark.reference
def test_resize_matches_torch_interpolate():
  torch = pytest.importorskip('torch')
  images = _images(4, (2, 37, 300, 3))
  expected = torch.nn.functional.interpolate(
      torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), size=(299, 299),
      mode='bilinear', align_corners=False).numpy().transpose(0, 2, 3, 1)
  got = np.asarray(inception.resize_images(images, (299, 299)))
  np.testing.assert_allclose(got, expected, atol=1e-5)


def test_antialias_option_changes_downsampling():
  images = _images(2, (1, 64, 64, 3))
  plain = np.asarray(inception.resize_images(images, (16, 16), False))
  smooth = np.asarray(inception.resize_images(images, (16, 16), True))
  assert np.abs(plain - smooth).max() > 0.05
  # Antialiasing averages more pixels, so the output varies less.
  assert smooth.std() < plain.std()


# --- Against a hand-written PyTorch forward (skipped without torch) ----------


def _torch_features(torch, sd, images_nhwc):
  """pytorch-fid's forward written functionally over its state dict, on NHWC numpy images."""
  x = torch.from_numpy(np.transpose(images_nhwc, (0, 3, 1, 2)).copy())
  # pytorch-fid: resize in [0, 1] then map to [-1, 1]; bilinear resizing
  # commutes with that affine map, so resizing the [-1, 1] input is the same.
  return functional_inception(torch, sd)(x).numpy()


@pytest.mark.reference
def test_matches_functional_pytorch_forward(state_dict, variables):
  torch = pytest.importorskip('torch')
  torch.set_num_threads(2)
  images = _images(3, (2, 48, 64, 3))
  with torch.no_grad():
    expected = _torch_features(torch, state_dict, images)
  feature_fn = inception.make_feature_fn(variables)
  got = np.asarray(feature_fn(images))
  assert got.shape == expected.shape == (2, 2048)
  scale = np.abs(expected).max()
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * scale)


def _pytorch_fid_inception():
  """(torch, pytorch_fid.inception), or a skip when they are not installed.

  A CUDA build of torchvision next to a CPU build of torch cannot register its C++ operators
  (`torchvision::nms` ...); pytorch-fid only needs torchvision's pure-PyTorch Inception3, so
  the operators' fake-tensor registrations are switched off while it is imported.
  """
  torch = pytest.importorskip('torch')
  for name in ('torchvision', 'pytorch_fid'):
    if importlib.util.find_spec(name) is None:
      pytest.skip(f'{name} is not installed (pip install pytorch-fid torchvision)')
  register_fake = torch.library.register_fake
  torch.library.register_fake = lambda *args, **kwargs: (lambda fn: fn)
  try:
    from pytorch_fid import inception as pytorch_fid_inception
  finally:
    torch.library.register_fake = register_fake
  return torch, pytorch_fid_inception


@pytest.mark.reference
def test_matches_the_pytorch_fid_package(monkeypatch, state_dict, variables):
  # pytorch-fid's own InceptionV3 (FID blocks, its resize and normalisation), given the
  # synthetic weights in place of the downloaded file, against our features.
  torch, pfi = _pytorch_fid_inception()
  torch.set_num_threads(2)
  monkeypatch.setattr(pfi, 'load_state_dict_from_url', lambda *args, **kwargs: {
      k: torch.from_numpy(v) for k, v in state_dict.items()})
  model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
  images = _images(4, (2, 48, 64, 3))  # [-1, 1]; pytorch-fid takes [0, 1]
  with torch.no_grad():
    [pool] = model(torch.from_numpy((images + 1) / 2).permute(0, 3, 1, 2))
  expected = pool[:, :, 0, 0].numpy()
  got = np.asarray(inception.make_feature_fn(variables)(images))
  assert got.shape == expected.shape == (2, 2048)
  scale = np.abs(expected).max()
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.reference
def test_extra_outputs_match_the_pytorch_fid_network(monkeypatch, state_dict, variables):
  # ADM's sFID features (TF mixed_6/conv = Mixed_6d.branch1x1, first 7 channels, NHWC order)
  # and the classifier logits, read from pytorch-fid's own network with forward hooks.
  torch, pfi = _pytorch_fid_inception()
  torch.set_num_threads(2)
  monkeypatch.setattr(pfi, 'load_state_dict_from_url', lambda *args, **kwargs: {
      k: torch.from_numpy(v) for k, v in state_dict.items()})
  net = pfi.fid_inception_v3().eval()
  captured = {}
  net.Mixed_6d.branch1x1.register_forward_hook(
      lambda module, args, out: captured.__setitem__('branch1x1', out))
  net.avgpool.register_forward_hook(lambda module, args, out: captured.__setitem__('pool', out))
  images = _images(6, (2, 48, 64, 3))
  x = torch.from_numpy(images).permute(0, 3, 1, 2)
  with torch.no_grad():
    x = torch.nn.functional.interpolate(x, size=(299, 299), mode='bilinear',
                                        align_corners=False)
    logits = net(x).numpy()
  spatial = captured['branch1x1'][:, :7].permute(0, 2, 3, 1).reshape(2, -1).numpy()
  expected = {'pool': captured['pool'][:, :, 0, 0].numpy(), 'spatial': spatial,
              'logits': logits, 'logits_unbiased': logits - state_dict['fc.bias']}
  got = inception.make_feature_fn(variables, outputs=inception.OUTPUTS)(images)
  for name, want in expected.items():
    assert got[name].shape == want.shape, name
    scale = np.abs(want).max()
    np.testing.assert_allclose(np.asarray(got[name]), want, rtol=1e-4, atol=1e-4 * scale,
                               err_msg=name)
  assert spatial.shape == (2, 2023)
