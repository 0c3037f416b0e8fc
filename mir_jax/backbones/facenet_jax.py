"""Sandberg's FaceNet (Inception-ResNet-v1, 512-D) in pure JAX, batched under jit.

The same function as facenet-pytorch's `InceptionResnetV1(classify=False)` in eval mode, written
here so that FaceNet runs on whatever XLA runs on (CPU, GPU, TPU) in large fixed-shape batches,
without torch. Weights come in facenet-pytorch's state-dict naming (what `facenet.load_state_dict`
returns from a .pt or a .pb) and are checked against one table generated from the architecture
(`LAYERS`, `expected_shapes`): a missing, unexpected or mis-shaped tensor, or a 128-D checkpoint
given to this 512-D network, is an error, and nothing is ever initialised at random.

Each BasicConv2d (conv without bias, eval-mode batch norm with eps 0.001, ReLU) becomes one conv
with a bias: the batch norm is an affine map per output channel, so it folds into the kernel
(folded in float64, stored float32). The final batch norm folds into the bottleneck likewise.

  conv2d_1a 3x3/2, conv2d_2a 3x3, conv2d_2b 3x3 pad 1, max pool 3/2,        160 -> 79 -> 77 -> 38
  conv2d_3b 1x1, conv2d_4a 3x3, conv2d_4b 3x3/2                              38 -> 36 -> 17 (256)
  5 x Block35 (scale 0.17), Mixed_6a                                         17 -> 8 (896)
  10 x Block17 (scale 0.10), Mixed_7a                                        8 -> 3 (1792)
  5 x Block8 (scale 0.20), Block8 (scale 1, no ReLU)
  global average pool, last_linear + last_bn (folded), L2-normalise          (512)

Strided convs and max pools are unpadded ('VALID'), as in torch. Convolutions and the bottleneck
run at `jax.lax.Precision.HIGHEST`, which keeps float32 in float32 on GPUs (their default is TF32);
`dtype='bfloat16'` computes in bfloat16 instead, faster and less exact, for speed measurements.

Input: float32 NHWC crops (`mir_jax.align.crop`) standardised as (x - 127.5) / 128
(facenet-pytorch's `fixed_image_standardization`) or with Sandberg's per-image `prewhiten`.
"""

import dataclasses
import functools
import os
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from mir_jax import align
from mir_jax.backbones import base
from mir_jax.backbones import facenet

DIM = 512
FEATURES = 1792  # channels after block8, the bottleneck's input
BN_EPS = 0.001  # BasicConv2d's and last_bn's eps (facenet-pytorch's value, found in TensorFlow)
NORMALIZE_EPS = 1e-12  # F.normalize's
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
_BN_FIELDS = ('weight', 'bias', 'running_mean', 'running_var')


# --------------------------------------------------------------------------------------------
# The architecture, as one table: the forward pass and the state-dict check both read it.


@dataclasses.dataclass(frozen=True)
class Conv:
  """One convolution, named by its facenet-pytorch module path.

  bn=True: a BasicConv2d (conv without bias, batch norm, ReLU); bn=False: a plain conv with bias and
  no ReLU (a residual block's `conv2d`).
  """

  name: str
  cin: int
  cout: int
  kernel: Tuple[int, int]
  stride: int = 1
  padding: Tuple[int, int] = (0, 0)
  bn: bool = True


MAXPOOL = 'maxpool'  # max pool 3x3, stride 2, VALID (a stem layer or a Mixed branch)


@dataclasses.dataclass(frozen=True)
class Mixed:
  """Branches run on the same input and concatenated along channels (Mixed_6a, Mixed_7a)."""

  branches: Tuple[Union[Tuple[Conv, ...], str], ...]


@dataclasses.dataclass(frozen=True)
class Block:
  """A residual block: relu?(x + scale * up(concat(branches(x))))."""

  branches: Tuple[Tuple[Conv, ...], ...]
  up: Conv
  scale: float
  relu: bool = True


def _basic(name, cin, cout, kernel, stride=1, padding=0) -> Conv:
  kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
  padding = (padding, padding) if isinstance(padding, int) else tuple(padding)
  return Conv(name, cin, cout, kernel, stride, padding)


def _up(name, cin, cout) -> Conv:
  return Conv(f'{name}.conv2d', cin, cout, (1, 1), bn=False)


def _block35(name: str) -> Block:
  b = lambda i, *args, **kw: _basic(f'{name}.{i}', *args, **kw)
  return Block(
    (
      (b('branch0', 256, 32, 1),),
      (b('branch1.0', 256, 32, 1), b('branch1.1', 32, 32, 3, padding=1)),
      (b('branch2.0', 256, 32, 1), b('branch2.1', 32, 32, 3, padding=1), b('branch2.2', 32, 32, 3, padding=1)),
    ),
    _up(name, 96, 256),
    0.17,
  )


def _block17(name: str) -> Block:
  b = lambda i, *args, **kw: _basic(f'{name}.{i}', *args, **kw)
  return Block(
    (
      (b('branch0', 896, 128, 1),),
      (
        b('branch1.0', 896, 128, 1),
        b('branch1.1', 128, 128, (1, 7), padding=(0, 3)),
        b('branch1.2', 128, 128, (7, 1), padding=(3, 0)),
      ),
    ),
    _up(name, 256, 896),
    0.10,
  )


def _block8(name: str, scale: float = 0.20, relu: bool = True) -> Block:
  b = lambda i, *args, **kw: _basic(f'{name}.{i}', *args, **kw)
  return Block(
    (
      (b('branch0', 1792, 192, 1),),
      (
        b('branch1.0', 1792, 192, 1),
        b('branch1.1', 192, 192, (1, 3), padding=(0, 1)),
        b('branch1.2', 192, 192, (3, 1), padding=(1, 0)),
      ),
    ),
    _up(name, 384, 1792),
    scale,
    relu,
  )


def _architecture() -> Tuple[Any, ...]:
  """InceptionResnetV1's layers in the order they run (facenet_pytorch/models/inception_resnet_v1.py)."""
  return (
    _basic('conv2d_1a', 3, 32, 3, stride=2),
    _basic('conv2d_2a', 32, 32, 3),
    _basic('conv2d_2b', 32, 64, 3, padding=1),
    MAXPOOL,  # maxpool_3a
    _basic('conv2d_3b', 64, 80, 1),
    _basic('conv2d_4a', 80, 192, 3),
    _basic('conv2d_4b', 192, 256, 3, stride=2),
    *(_block35(f'repeat_1.{i}') for i in range(5)),
    Mixed(
      (
        (_basic('mixed_6a.branch0', 256, 384, 3, stride=2),),
        (
          _basic('mixed_6a.branch1.0', 256, 192, 1),
          _basic('mixed_6a.branch1.1', 192, 192, 3, padding=1),
          _basic('mixed_6a.branch1.2', 192, 256, 3, stride=2),
        ),
        MAXPOOL,
      )
    ),
    *(_block17(f'repeat_2.{i}') for i in range(10)),
    Mixed(
      (
        (_basic('mixed_7a.branch0.0', 896, 256, 1), _basic('mixed_7a.branch0.1', 256, 384, 3, stride=2)),
        (_basic('mixed_7a.branch1.0', 896, 256, 1), _basic('mixed_7a.branch1.1', 256, 256, 3, stride=2)),
        (
          _basic('mixed_7a.branch2.0', 896, 256, 1),
          _basic('mixed_7a.branch2.1', 256, 256, 3, padding=1),
          _basic('mixed_7a.branch2.2', 256, 256, 3, stride=2),
        ),
        MAXPOOL,
      )
    ),
    *(_block8(f'repeat_3.{i}') for i in range(5)),
    _block8('block8', scale=1.0, relu=False),
  )


LAYERS = _architecture()


def convs() -> Tuple[Conv, ...]:
  """Every convolution of the network, in the order they run."""
  out = []
  for layer in LAYERS:
    if isinstance(layer, Conv):
      out.append(layer)
    elif isinstance(layer, Mixed):
      out += [c for br in layer.branches if br != MAXPOOL for c in br]
    elif isinstance(layer, Block):
      out += [c for br in layer.branches for c in br] + [layer.up]
  return tuple(out)


def expected_shapes() -> Dict[str, Tuple[int, ...]]:
  """The facenet-pytorch state-dict entries this network needs, name -> shape (torch layouts)."""
  shapes: Dict[str, Tuple[int, ...]] = {}
  for c in convs():
    weight = (c.cout, c.cin) + c.kernel  # OIHW
    if c.bn:
      shapes[f'{c.name}.conv.weight'] = weight
      shapes.update({f'{c.name}.bn.{f}': (c.cout,) for f in _BN_FIELDS})
    else:
      shapes[f'{c.name}.weight'] = weight
      shapes[f'{c.name}.bias'] = (c.cout,)
  shapes['last_linear.weight'] = (DIM, FEATURES)
  shapes.update({f'last_bn.{f}': (DIM,) for f in _BN_FIELDS})
  return shapes


def _ignored(key: str) -> bool:
  """State-dict entries that carry no inference weights: batch-norm counters, the training classifier."""
  return key.endswith('.num_batches_tracked') or key.startswith('logits.')


# --------------------------------------------------------------------------------------------
# Weights: state dict -> checked, folded params.


def _to_numpy(value) -> np.ndarray:
  if hasattr(value, 'detach'):  # a torch tensor, without importing torch
    value = value.detach().cpu().numpy()
  return np.asarray(value)


def check_state_dict(state: Mapping[str, Any], source: str = 'the state dict') -> Dict[str, np.ndarray]:
  """The state dict's needed entries as numpy arrays, after `facenet.check_state_dict` against `expected_shapes`.

  Raises:
    ValueError: naming the problem: a checkpoint of another embedding size (e.g. 128-D), missing
      keys, unexpected keys, or keys of the wrong shape (each with its expected and actual shape).
  """
  if not isinstance(state, Mapping):
    raise ValueError(f'facenet-jax: expected a state dict (name -> array), got {type(state).__name__}')
  arrays = {k: _to_numpy(v) for k, v in state.items() if not _ignored(k)}
  expected = expected_shapes()
  facenet.check_state_dict(arrays, expected, source)
  return {k: arrays[k] for k in expected}


def _bn_scale_shift(arrays: Mapping[str, np.ndarray], prefix: str) -> Tuple[np.ndarray, np.ndarray]:
  """Eval-mode batch norm as y = x * scale + shift (float64)."""
  gamma, beta, mean, var = (arrays[f'{prefix}.{f}'].astype(np.float64) for f in _BN_FIELDS)
  scale = gamma / np.sqrt(var + BN_EPS)
  return scale, beta - mean * scale


def params_from_state_dict(state: Mapping[str, Any]) -> Dict[str, Dict[str, np.ndarray]]:
  """A facenet-pytorch state dict -> this network's params, batch norms folded.

  Args:
    state: name -> numpy array or torch tensor, facenet-pytorch's names and layouts.
      `*.num_batches_tracked` and `logits.*` are ignored.

  Returns:
    {conv module path: {'kernel': float32 HWIO, 'bias': float32 (cout,)}, ...,
     'last': {'kernel': float32 (1792, 512), 'bias': float32 (512,)}} (numpy).

  Raises:
    ValueError: see `check_state_dict`.
  """
  arrays = check_state_dict(state)
  params: Dict[str, Dict[str, np.ndarray]] = {}
  for c in convs():
    if c.bn:
      weight = arrays[f'{c.name}.conv.weight'].astype(np.float64)
      scale, bias = _bn_scale_shift(arrays, f'{c.name}.bn')
      weight = weight * scale[:, None, None, None]
    else:
      weight = arrays[f'{c.name}.weight'].astype(np.float64)
      bias = arrays[f'{c.name}.bias'].astype(np.float64)
    params[c.name] = {
      'kernel': np.ascontiguousarray(weight.transpose(2, 3, 1, 0), np.float32),  # OIHW -> HWIO
      'bias': bias.astype(np.float32),
    }
  scale, shift = _bn_scale_shift(arrays, 'last_bn')
  kernel = arrays['last_linear.weight'].astype(np.float64).T * scale  # x @ W.T, then the bn
  params['last'] = {'kernel': np.ascontiguousarray(kernel, np.float32), 'bias': shift.astype(np.float32)}
  return params


def cast_params(params, dtype: str = 'float32'):
  """Params for compute in `dtype`: the convs in `dtype`, the bottleneck kept float32."""
  _check_dtype(dtype)
  dt = DTYPES[dtype]
  return {k: {n: jnp.asarray(a, jnp.float32 if k == 'last' else dt) for n, a in v.items()} for k, v in params.items()}


# --------------------------------------------------------------------------------------------
# The forward pass.


def _check_dtype(dtype: str) -> None:
  if dtype not in DTYPES:
    raise ValueError(f'dtype must be one of {sorted(DTYPES)}, got {dtype!r}')


def _precision(dtype) -> jax.lax.Precision:
  # HIGHEST keeps float32 convolutions out of TF32 on GPUs; bfloat16 runs at its own precision.
  return jax.lax.Precision.HIGHEST if dtype == jnp.float32 else jax.lax.Precision.DEFAULT


def _conv(x: jax.Array, p, c: Conv) -> jax.Array:
  y = jax.lax.conv_general_dilated(
    x,
    p['kernel'].astype(x.dtype),
    (c.stride, c.stride),
    ((c.padding[0], c.padding[0]), (c.padding[1], c.padding[1])),
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    precision=_precision(x.dtype),
  )
  y = y + p['bias'].astype(x.dtype)
  return jax.nn.relu(y) if c.bn else y


def _maxpool(x: jax.Array) -> jax.Array:
  return jax.lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), 'VALID')


def _branch(x, params, branch):
  if branch == MAXPOOL:
    return _maxpool(x)
  for c in branch:
    x = _conv(x, params[c.name], c)
  return x


def forward(params, x: jax.Array, dtype: str = 'float32') -> jax.Array:
  """float32 NHWC standardised crops (n, h, w, 3) -> float32 (n, 512) unit-norm embeddings.

  The same function as facenet-pytorch's InceptionResnetV1(classify=False).eval(), to float32
  rounding (dtype 'float32'). Not jitted: see `compiled_forward`.
  """
  _check_dtype(dtype)
  x = jnp.asarray(x).astype(DTYPES[dtype])
  for layer in LAYERS:
    if isinstance(layer, Conv):
      x = _conv(x, params[layer.name], layer)
    elif layer == MAXPOOL:
      x = _maxpool(x)
    elif isinstance(layer, Mixed):
      x = jnp.concatenate([_branch(x, params, br) for br in layer.branches], axis=-1)
    else:
      y = jnp.concatenate([_branch(x, params, br) for br in layer.branches], axis=-1)
      y = _conv(y, params[layer.up.name], layer.up)
      x = x + jnp.asarray(layer.scale, x.dtype) * y
      if layer.relu:
        x = jax.nn.relu(x)
  x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # AdaptiveAvgPool2d(1); dropout is off in eval
  last = params['last']
  x = jnp.dot(x, last['kernel'].astype(jnp.float32), precision=jax.lax.Precision.HIGHEST) + last['bias']
  norm = jnp.sqrt(jnp.sum(x * x, axis=1, keepdims=True))
  return x / jnp.maximum(norm, NORMALIZE_EPS)


@functools.lru_cache(maxsize=None)
def compiled_forward(dtype: str = 'float32'):
  """jit(params, x) -> unit-norm embeddings, for one compute dtype (memoised)."""
  _check_dtype(dtype)
  return jax.jit(functools.partial(forward, dtype=dtype))


def embed_batches(params, x: np.ndarray, batch_size: int, dtype: str = 'float32') -> np.ndarray:
  """`forward` over `x` in batches of exactly `batch_size` (the last one zero-padded): one compiled shape.

  Returns float32 (n, 512) numpy.
  """
  x = np.asarray(x, np.float32)
  n = len(x)
  if n == 0:
    return np.zeros((0, DIM), np.float32)
  padded = -n % batch_size
  if padded:
    x = np.concatenate([x, np.zeros((padded,) + x.shape[1:], np.float32)])
  fn = compiled_forward(dtype)
  outs = [fn(params, x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
  return np.asarray(jnp.concatenate(outs), np.float32)[:n]


# --------------------------------------------------------------------------------------------
# The backbone.


class FaceNetJax(base.Backbone):
  """facenet-pytorch's Inception-ResNet-v1 (512-D) in JAX: same crops and embeddings, batched under jit.

  `preprocess` cuts the FaceNet crop (`align.crop`) and standardises it to float32 HWC; `embed`
  runs the network on batches of exactly `batch_size` (the last one padded, so one program is
  compiled) and returns unit-norm embeddings.
  """

  name = 'facenet-jax'
  dim = DIM

  def __init__(
    self,
    weights: Optional[os.PathLike] = None,
    *,
    variant: str = 'casia-webface',
    batch_size: int = 16,
    image_size: int = 160,
    margin: int = 32,
    standardization: str = 'fixed',
    flip: bool = False,
    dtype: str = 'float32',
  ):
    """Loads and checks the weights (never downloads).

    Args:
      weights: a weights file (`facenet.load_state_dict` reads .pt state dicts and .pb graphs);
        default: the variant's file in facenet-pytorch's cache (see `facenet.find_weights`).
      variant: 'vggface2' or 'casia-webface' (or their registry names).
      batch_size: faces per compiled forward pass.
      image_size: crop side (160 for these weights).
      margin: crop margin in pixels of the original image (`align.crop`).
      standardization: 'fixed' ((x - 127.5) / 128, what facenet-pytorch's weights expect) or
        'prewhiten' (Sandberg's per-image standardisation).
      flip: add the embedding of the mirrored input before normalising; costs 2x.
      dtype: compute dtype, 'float32' or 'bfloat16' (faster, less exact).

    Raises:
      facenet.WeightsNotFoundError: no weights file.
      ValueError: weights that do not fit this network (see `check_state_dict`), or a bad option.
    """
    _check_dtype(dtype)
    facenet.standardize(np.zeros((1, 1, 3), np.uint8), standardization)  # validates the name
    if batch_size < 1:
      raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    self.variant = facenet.canonical_variant(variant)
    self.weights_path = facenet.find_weights(self.variant, weights)
    self.batch_size = int(batch_size)
    self.image_size = int(image_size)
    self.margin = int(margin)
    self.standardization = standardization
    self.flip = bool(flip)
    self.dtype = dtype
    state = facenet.load_state_dict(self.variant, self.weights_path)
    self._params = jax.device_put(cast_params(params_from_state_dict(state), dtype))

  @classmethod
  def key_from_arguments(cls, *, variant, weights, image_size, margin, standardization, flip, dtype, **unused) -> dict:
    del unused  # batch_size: how fast it runs, not what it computes
    _check_dtype(dtype)
    variant = facenet.canonical_variant(variant)
    key = facenet.key_from_arguments(
      cls.name,
      cls.dim,
      variant=variant,
      weights=weights,
      image_size=image_size,
      margin=margin,
      standardization=standardization,
      flip=flip,
    )
    if dtype != 'float32':
      key['dtype'] = dtype  # bfloat16 changes the embeddings; float32 matches torch to rounding
    return key

  def config_key(self) -> dict:
    return self.key_from_arguments(
      variant=self.variant,
      weights=self.weights_path,
      image_size=self.image_size,
      margin=self.margin,
      standardization=self.standardization,
      flip=self.flip,
      dtype=self.dtype,
    )

  def preprocess(self, image: np.ndarray, detection: base.Detection) -> np.ndarray:
    """uint8 HxWx3 RGB + detection -> float32 (image_size, image_size, 3) standardised crop."""
    crop = align.crop(image, detection.box, size=self.image_size, margin=self.margin)
    return facenet.standardize(crop, self.standardization)

  def flip_input(self, x: np.ndarray) -> np.ndarray:
    """The horizontally mirrored network input (HWC, or NHWC)."""
    return np.ascontiguousarray(np.asarray(x)[..., ::-1, :])

  def embed(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
    """float32 (n, image_size, image_size, 3) inputs -> float32 (n, 512), rows L2-normalised."""
    x = np.asarray(inputs, np.float32)
    if len(x) == 0:
      return np.zeros((0, DIM), np.float32)
    if x.ndim != 4 or x.shape[1:] != (self.image_size, self.image_size, 3):
      raise ValueError(f'{self.name} expects (n, {self.image_size}, {self.image_size}, 3) inputs, got {x.shape}')
    emb = embed_batches(self._params, x, self.batch_size, self.dtype)
    if not self.flip:
      return emb
    emb = emb + embed_batches(self._params, self.flip_input(x), self.batch_size, self.dtype)
    return (emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), NORMALIZE_EPS)).astype(np.float32)


__all__ = [
  'Block',
  'Conv',
  'DIM',
  'FaceNetJax',
  'LAYERS',
  'Mixed',
  'check_state_dict',
  'compiled_forward',
  'convs',
  'embed_batches',
  'expected_shapes',
  'forward',
  'params_from_state_dict',
]
