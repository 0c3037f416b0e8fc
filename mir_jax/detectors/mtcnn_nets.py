"""MTCNN's P-, R- and O-Net in Flax, with the weights that ship inside the facenet-pytorch wheel.

The layers are facenet-pytorch's (`facenet_pytorch/models/mtcnn.py`), in NHWC: 3x3 and 2x2 'VALID'
convolutions, per-channel PReLU, max pools in torch's `ceil_mode=True` (the last window may hang over the
edge, which -inf padding reproduces), and R-/O-Net's dense layers read the conv output in torch's
`permute(0, 3, 2, 1)` order (width before height), so that the torch weights apply unchanged.

The weights are read from `facenet_pytorch/data/{pnet,rnet,onet}.pt` as they are: every key of the torch
module must be there with its shape, or loading fails naming what is missing or mis-shaped.
"""

import functools
import os
from typing import Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mir_jax.backbones import facenet

_HIGHEST = jax.lax.Precision.HIGHEST  # float32 convs at full precision on GPU (no TF32), as CPU computes them


def _prelu(x, slope):
  return jnp.where(x > 0, x, slope * x)


def _max_pool_ceil(x, size: int, stride: int):
  """torch's MaxPool2d(size, stride, ceil_mode=True) on NHWC."""
  pads = []
  for n in x.shape[1:3]:
    out = -(-(n - size) // stride) + 1
    if (out - 1) * stride >= n:  # torch drops a last window that would start past the input
      out -= 1
    pads.append((0, max(0, (out - 1) * stride + size - n)))
  return nn.max_pool(x, (size, size), strides=(stride, stride), padding=pads)


class _Conv(nn.Module):
  features: int
  size: int

  @nn.compact
  def __call__(self, x):
    return nn.Conv(self.features, (self.size, self.size), padding='VALID', precision=_HIGHEST)(x)


class _PReLU(nn.Module):
  @nn.compact
  def __call__(self, x):
    return _prelu(x, self.param('slope', nn.initializers.constant(0.25), (x.shape[-1],)))


def _dense(features):
  return nn.Dense(features, precision=_HIGHEST)


def _flatten_torch_order(x):
  """torch's `x.permute(0, 3, 2, 1).reshape(n, -1)` of an NCHW tensor, from NHWC: (n, w, h, c) order."""
  return jnp.transpose(x, (0, 2, 1, 3)).reshape(x.shape[0], -1)


class PNet(nn.Module):
  """Fully convolutional proposal net: (n, h, w, 3) -> box regression (n, h', w', 4), face prob (n, h', w')."""

  @nn.compact
  def __call__(self, x, valid_hw=None):
    """valid_hw (n, 2): each input's own height and width, when it is zero-padded to x's size.

    The padding then changes no output inside the image's own output: the first pool's windows that hang
    over the image's edge see -inf there, as torch's ceil-mode pool does past a tensor's edge, and every
    later layer is a 'VALID' convolution. Outputs beyond it are meaningless (the caller masks them).
    """
    x = _PReLU(name='prelu1')(_Conv(10, 3, name='conv1')(x))
    if valid_hw is not None:
      rows = jnp.arange(x.shape[1])[None, :, None] < valid_hw[:, 0, None, None] - 2
      cols = jnp.arange(x.shape[2])[None, None, :] < valid_hw[:, 1, None, None] - 2
      x = jnp.where((rows & cols)[..., None], x, -jnp.inf)
    x = _max_pool_ceil(x, 2, 2)
    if valid_hw is not None:
      x = jnp.where(jnp.isneginf(x), 0.0, x)
    x = _PReLU(name='prelu2')(_Conv(16, 3, name='conv2')(x))
    x = _PReLU(name='prelu3')(_Conv(32, 3, name='conv3')(x))
    prob = jax.nn.softmax(_Conv(2, 1, name='conv4_1')(x), axis=-1)[..., 1]
    return _Conv(4, 1, name='conv4_2')(x), prob


class RNet(nn.Module):
  """Refinement net on 24x24 crops: box regression (n, 4), face prob (n,)."""

  @nn.compact
  def __call__(self, x):
    x = _max_pool_ceil(_PReLU(name='prelu1')(_Conv(28, 3, name='conv1')(x)), 3, 2)
    x = _max_pool_ceil(_PReLU(name='prelu2')(_Conv(48, 3, name='conv2')(x)), 3, 2)
    x = _PReLU(name='prelu3')(_Conv(64, 2, name='conv3')(x))
    x = _PReLU(name='prelu4')(_dense(128)(_flatten_torch_order(x)))
    prob = jax.nn.softmax(_dense(2)(x), axis=-1)[..., 1]
    return _dense(4)(x), prob


class ONet(nn.Module):
  """Output net on 48x48 crops: box regression (n, 4), landmarks (n, 10: 5 x, then 5 y), face prob (n,)."""

  @nn.compact
  def __call__(self, x):
    x = _max_pool_ceil(_PReLU(name='prelu1')(_Conv(32, 3, name='conv1')(x)), 3, 2)
    x = _max_pool_ceil(_PReLU(name='prelu2')(_Conv(64, 3, name='conv2')(x)), 3, 2)
    x = _max_pool_ceil(_PReLU(name='prelu3')(_Conv(64, 3, name='conv3')(x)), 2, 2)
    x = _PReLU(name='prelu4')(_Conv(128, 2, name='conv4')(x))
    x = _PReLU(name='prelu5')(_dense(256)(_flatten_torch_order(x)))
    prob = jax.nn.softmax(_dense(2)(x), axis=-1)[..., 1]
    return _dense(4)(x), _dense(10)(x), prob


# Flax module name of each dense layer, in the order nn.compact numbers them, per torch key prefix.
_DENSE_NAMES = {
  'rnet': {'dense4': 'Dense_0', 'dense5_1': 'Dense_1', 'dense5_2': 'Dense_2'},
  'onet': {'dense5': 'Dense_0', 'dense6_1': 'Dense_1', 'dense6_2': 'Dense_2', 'dense6_3': 'Dense_3'},
}
NETS = {'pnet': PNet, 'rnet': RNet, 'onet': ONet}
INPUT_SIZES = {'pnet': 12, 'rnet': 24, 'onet': 48}


def weights_dir() -> str:
  """Where facenet-pytorch's wheel keeps the three state_dicts."""
  try:
    import facenet_pytorch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise FileNotFoundError(
      "mtcnn-jax reads MTCNN's weights from the facenet-pytorch wheel (facenet_pytorch/data/*.pt); "
      'install it: pip install --no-deps facenet-pytorch (make env does)'
    ) from e
  return os.path.join(os.path.dirname(facenet_pytorch.__file__), 'data')


def _read_state_dict(path: str) -> Dict[str, np.ndarray]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f'MTCNN weights file {path} is missing')
  import torch  # pylint: disable=g-import-not-at-top

  try:
    state = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises several types for a truncated or foreign file
    raise ValueError(f'{path} is not a readable torch state_dict ({type(e).__name__}: {e})') from e
  if not isinstance(state, dict):
    raise ValueError(f'{path} holds a {type(state).__name__}, not a state_dict')
  return {k: v.detach().cpu().numpy() for k, v in state.items()}


def _expected_shapes(name: str) -> Dict[str, Tuple[int, ...]]:
  """torch key -> torch shape, derived from the Flax module's own parameter shapes."""
  size = INPUT_SIZES[name]
  # Shapes only: an eager init would compile each of its ops, ~6 s a net in every fresh process (each of the
  # cache builder's workers).
  params = jax.eval_shape(NETS[name]().init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))['params']
  inverse = {v: k for k, v in _DENSE_NAMES.get(name, {}).items()}
  shapes = {}
  for module, leaves in params.items():
    if module.startswith('prelu'):
      shapes[f'{module}.weight'] = leaves['slope'].shape
      continue
    if module in inverse:
      kernel = leaves['kernel'].shape
      shapes[f'{inverse[module]}.weight'] = (kernel[1], kernel[0])
      shapes[f'{inverse[module]}.bias'] = leaves['bias'].shape
      continue
    kernel = leaves['Conv_0']['kernel'].shape  # (kh, kw, in, out) -> torch (out, in, kh, kw)
    shapes[f'{module}.weight'] = (kernel[3], kernel[2], kernel[0], kernel[1])
    shapes[f'{module}.bias'] = leaves['Conv_0']['bias'].shape
  return shapes


def params_from_state_dict(name: str, state: Dict[str, np.ndarray], source: str = 'the state_dict') -> dict:
  """Flax params of net `name` from its torch state_dict; a missing, extra or mis-shaped key is an error."""
  expected = _expected_shapes(name)
  facenet.check_keys(state, expected, source, name)
  dense = _DENSE_NAMES.get(name, {})
  params = {}
  for key, value in state.items():
    module, kind = key.rsplit('.', 1)
    value = np.asarray(value, np.float32)
    if module.startswith('prelu'):
      params[module] = {'slope': value}
    elif module in dense:
      params.setdefault(dense[module], {})['kernel' if kind == 'weight' else 'bias'] = (
        value.T if kind == 'weight' else value
      )
    else:  # torch (out, in, kh, kw) -> Flax (kh, kw, in, out)
      params.setdefault(module, {}).setdefault('Conv_0', {})['kernel' if kind == 'weight' else 'bias'] = (
        value.transpose(2, 3, 1, 0) if kind == 'weight' else value
      )
  return params


@functools.lru_cache(maxsize=None)
def load(directory: str = '') -> Dict[str, dict]:
  """{'pnet' | 'rnet' | 'onet': Flax params} from the three .pt files in `directory` (default: the wheel's)."""
  directory = directory or weights_dir()
  out = {}
  for name in NETS:
    path = os.path.join(directory, f'{name}.pt')
    out[name] = params_from_state_dict(name, _read_state_dict(path), path)
  return out


def apply(name: str, params: dict, x, **kwargs):
  """Runs net `name` (PNet / RNet / ONet outputs, see each) on NHWC float32 input."""
  return NETS[name]().apply({'params': params}, x, **kwargs)
