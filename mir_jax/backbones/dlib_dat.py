"""A pure-numpy reader of dlib's serialized DNN files (`*.dat` written by `dlib::serialize(net)`).

No C++ build and no XML dump: the file is read byte by byte following dlib's own serialization code
(dlib/serialize.h, dlib/float_details.h, dlib/cuda/tensor.h, dlib/dnn/core.h, layers.h, input.h, loss.h).

Encodings (all little-endian):
  * integers: one control byte, then that many bytes of magnitude, least significant first. The low
    nibble of the control byte is the byte count (1..8; zero is written as `01 00`), bit 0x80 is the
    sign; bits 0x70 are always zero.
  * bool: the ASCII character '0' or '1'.
  * string: its length as an integer, then the bytes.
  * float/double (dlib's portable encoding, `float_details`): an int64 mantissa and an int16
    exponent, both as integers above; the value is mantissa * 2**exponent, except exponents
    32000/32001/32002 = +inf/-inf/NaN.
  * tensor: version (1 or 2), num_samples, k, nr, nc, then the n*k*nr*nc values, row-major in that
    order: version 1 writes each as a portable float, version 2 as raw IEEE float32.
  * alias_tensor (a view into a layer's params): version 1, then num_samples, k, nr, nc.

A network is `add_loss_layer` (version 1, loss details, subnetwork). Every `add_layer` writes its
version, then its whole subnetwork, then its own layer details and its state (3 bools; the tensors
x_grad, cached_output and params_grad, empty in a cleaned network). `add_tag_layer` and
`add_skip_layer` write version 1 and their subnetwork, nothing else: which tag a layer is, and what a
skip jumps to, lives only in the C++ type, so the reader reports them as anonymous markers and the
caller checks them against the architecture it expects. The innermost `add_layer` (the one over the
input layer) has its own format (version 2 or 3, input layer first, then grad_final and, in version
3, the sample expansion factor). Because each layer's version comes before its subnetwork, the file
holds all the versions first (outermost first), then the input layer, then the layers' details from
the input upward: the order in which the network runs.

Only the layer types the face-recognition ResNets use are understood (con, affine, relu, max_pool,
avg_pool, add_prev, fc, input_rgb_image[_sized], loss_metric); anything else is a `DatFormatError`
naming the offset.
"""

import dataclasses
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

# float_details' special exponents.
_EXP_INF, _EXP_NINF, _EXP_NAN = 32000, 32001, 32002
_MAX_STRING = 1 << 16  # Longer "version strings" mean we are reading garbage.
_INPUT_LAYERS = (b'input_rgb_image_sized', b'input_rgb_image')


class DatFormatError(ValueError):
  """The file is not a dlib network of a supported kind, or is corrupt or truncated."""

  def __init__(self, offset: int, expected: str, found: Optional[str] = None, path: Optional[str] = None):
    self.offset = offset
    self.expected = expected
    self.found = found
    self.path = path
    where = f'{path}: ' if path else ''
    message = f'{where}at byte offset {offset}: expected {expected}'
    if found is not None:
      message += f', found {found}'
    super().__init__(message)


@dataclasses.dataclass
class Layer:
  """One layer of a dlib network as stored in the file.

  Attributes:
    kind: 'con', 'affine', 'relu', 'max_pool', 'avg_pool', 'add_prev', 'fc', or 'marker' (an
      add_tag_layer or add_skip_layer; which one is not stored in the file).
    version: the layer's version string in the file ('con_4', 'fc_2', ...), '' for markers.
    offset: byte offset of the layer's details (of its add_layer's version int for markers).
    attrs: hyper-parameters (filter sizes, strides, paddings, ...).
    arrays: float32 parameter arrays, in dlib's layouts (see `_parse_details`).
  """

  kind: str
  version: str
  offset: int
  attrs: Dict[str, Any] = dataclasses.field(default_factory=dict)
  arrays: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Network:
  """A parsed dlib network: loss details, input layer and the layers from the input upward."""

  loss: Dict[str, Any]
  input: Dict[str, Any]
  layers: List[Layer]
  size: int  # bytes read = file size


class _Stream:
  """A cursor over the file's bytes whose every read names what it expects (for error messages)."""

  def __init__(self, data: bytes, path: Optional[str]):
    self.buf = np.frombuffer(data, dtype=np.uint8)
    self.data = data
    self.pos = 0
    self.path = path

  def error(self, expected: str, found: Optional[str] = None, offset: Optional[int] = None):
    return DatFormatError(self.pos if offset is None else offset, expected, found, self.path)

  def need(self, n: int, what: str) -> None:
    if self.pos + n > len(self.data):
      raise self.error(f'{n} bytes of {what}', f'end of file after {len(self.data) - self.pos} (file truncated?)')

  def int(self, what: str, signed: bool = True, max_bytes: int = 8) -> int:
    self.need(1, what)
    start = self.pos
    control = self.data[start]
    size = control & 0x0F
    if control & 0x70 or size == 0 or size > max_bytes or (control & 0x80 and not signed):
      raise self.error(f'an integer ({what}) of at most {max_bytes} bytes', f'control byte 0x{control:02x}')
    self.pos += 1
    self.need(size, what)
    value = int.from_bytes(self.data[self.pos : self.pos + size], 'little')
    self.pos += size
    return -value if control & 0x80 else value

  def count(self, what: str, limit: int = 1 << 40) -> int:
    """A non-negative size (dlib writes sizes as long / unsigned long)."""
    start = self.pos
    value = self.int(what)
    if not 0 <= value <= limit:
      raise self.error(f'{what} in [0, {limit}]', str(value), offset=start)
    return value

  def bool(self, what: str) -> bool:
    self.need(1, what)
    ch = self.data[self.pos]
    if ch not in b'01':
      raise self.error(f"a bool ('0' or '1') for {what}", f'byte 0x{ch:02x}')
    self.pos += 1
    return ch == ord('1')

  def string(self, what: str) -> bytes:
    n = self.count(f'length of {what}', _MAX_STRING)
    self.need(n, what)
    s = self.data[self.pos : self.pos + n]
    self.pos += n
    return s

  def float(self, what: str) -> float:
    mantissa = self.int(f'mantissa of {what}')
    exponent = self.int(f'exponent of {what}', max_bytes=2)
    return _float_from_details(mantissa, exponent)

  def version(self, what: str, allowed: Tuple[int, ...]) -> int:
    start = self.pos
    v = self.int(f'version of {what}')
    if v not in allowed:
      raise self.error(f'{what} version in {allowed}', str(v), offset=start)
    return v

  def tensor(self, what: str) -> np.ndarray:
    """A dlib tensor as float32 (num_samples, k, nr, nc)."""
    version = self.version(f'tensor {what}', (1, 2))
    shape = tuple(self.count(f'{d} of tensor {what}', 1 << 31) for d in ('num_samples', 'k', 'nr', 'nc'))
    n = int(np.prod(shape, dtype=np.int64))
    if version == 2:
      self.need(4 * n, f'{n} float32 values of tensor {what}')
      values = np.frombuffer(self.data, dtype='<f4', count=n, offset=self.pos).astype(np.float32)
      self.pos += 4 * n
    else:
      values, self.pos = decode_portable_floats(self.buf, self.pos, n, what, self.path)
    return values.reshape(shape)

  def alias(self, what: str) -> Tuple[int, int, int, int]:
    self.version(f'alias_tensor {what}', (1,))
    return tuple(self.count(f'{d} of alias_tensor {what}', 1 << 31) for d in ('num_samples', 'k', 'nr', 'nc'))

  def peek_string(self) -> Optional[bytes]:
    """The string at the cursor if one plausibly starts there, else None; does not move."""
    saved = self.pos
    try:
      return self.string('string')
    except DatFormatError:
      return None
    finally:
      self.pos = saved


def _float_from_details(mantissa: int, exponent: int) -> float:
  if exponent == _EXP_INF:
    return float('inf')
  if exponent == _EXP_NINF:
    return float('-inf')
  if exponent >= _EXP_NAN:
    return float('nan')
  return float(np.ldexp(np.float64(mantissa), exponent))


def decode_portable_floats(
  buf: np.ndarray, start: int, n: int, what: str = 'tensor', path: Optional[str] = None
) -> Tuple[np.ndarray, int]:
  """Decodes `n` consecutive dlib portable floats (int64 mantissa + int16 exponent) from `buf`.

  Each value has a variable length, so value i+1's position depends on value i's. A Python loop over
  the file's millions of values is slow; instead every byte position p gets the position `nxt[p]` where
  a value starting at p would end, and the chain start, nxt[start], nxt[nxt[start]], ... is unrolled
  by pointer doubling (positions [m, 2m) = nxt^m applied to positions [0, m)), O(L log n) numpy
  work for L candidate bytes.

  Args:
    buf: uint8 array of the whole file.
    start: offset of the first value.
    n: number of values.
    what: name for error messages.
    path: file name for error messages.

  Returns:
    (float32 values, offset just after the last value).

  Raises:
    DatFormatError: a control byte is invalid or the data runs past the end of the file.
  """
  if n == 0:
    return np.zeros(0, np.float32), start
  # A value takes 4..12 bytes (1 + 1..8 mantissa bytes + 1 + 1..2 exponent bytes).
  end = min(len(buf), start + 12 * n)
  region = buf[start:end].astype(np.int64)
  length = len(region)
  sentinel = length  # "runs past the region"
  idx = np.arange(length)
  c1 = region
  size1 = c1 & 0x0F
  p2 = idx + 1 + size1
  c2 = np.where(p2 < length, region[np.minimum(p2, length - 1)], 0)
  size2 = c2 & 0x0F
  nxt = p2 + 1 + size2
  # Positions whose value would be malformed or run off the end point at the sentinel, which maps
  # to itself, so a bad value anywhere in the chain shows up as a sentinel position.
  bad = ((c1 & 0x70) != 0) | (size1 == 0) | (size1 > 8) | (p2 >= length)
  bad |= ((c2 & 0x70) != 0) | (size2 == 0) | (size2 > 2) | (nxt > length)
  nxt = np.where(bad, sentinel, nxt)
  nxt = np.append(nxt, sentinel)
  pos = np.array([0], dtype=np.int64)
  jump = nxt
  while len(pos) < n:
    pos = np.concatenate([pos, jump[pos]])
    if len(pos) < n:
      jump = jump[jump]
  pos = pos[:n]
  if (pos == sentinel).any():
    i = int(np.argmax(pos == sentinel))
    prev = start + int(pos[i - 1]) if i else start
    raise DatFormatError(
      prev,
      f'portable float #{i - 1 if i else 0} of tensor {what} ({n} values from offset {start})',
      'an invalid control byte or the end of the file',
      path,
    )
  c1, size1 = c1[pos], size1[pos]
  mantissa = np.zeros(n, np.int64)
  for j in range(8):
    has = size1 > j
    byte = region[np.minimum(pos + 1 + j, length - 1)]
    mantissa |= np.where(has, byte, 0) << (8 * j)
  mantissa = np.where(c1 & 0x80, -mantissa, mantissa)
  p2 = pos + 1 + size1
  c2 = region[p2]
  size2 = c2 & 0x0F
  exponent = region[p2 + 1] | np.where(size2 > 1, region[np.minimum(p2 + 2, length - 1)] << 8, 0)
  exponent = np.where(c2 & 0x80, -exponent, exponent)
  values = np.ldexp(mantissa.astype(np.float64), np.minimum(exponent, 2000).astype(np.int32))
  values = np.where(exponent == _EXP_INF, np.inf, values)
  values = np.where(exponent == _EXP_NINF, -np.inf, values)
  values = np.where(exponent >= _EXP_NAN, np.nan, values)
  end_pos = start + int(p2[-1] + 1 + size2[-1])
  return values.astype(np.float32), end_pos


def _split_params(
  s: _Stream, params: np.ndarray, offset: int, shapes: Dict[str, tuple], version: str
) -> Dict[str, np.ndarray]:
  """Cuts a layer's flat params tensor into its alias_tensor views, in order."""
  flat = params.reshape(-1)
  out, at = {}, 0
  for name, shape in shapes.items():
    size = int(np.prod(shape))
    if at + size > flat.size:
      raise s.error(
        f'{version} params of at least {at + size} values for {name} {shape}', str(flat.size), offset=offset
      )
    out[name] = flat[at : at + size].reshape(shape)
    at += size
  if at != flat.size:
    raise s.error(f'{version} params of exactly {at} values', str(flat.size), offset=offset)
  return out


def _parse_details(s: _Stream) -> Layer:
  """One layer's details (its `serialize(layer_details)`), starting at its version string."""
  offset = s.pos
  name = s.string('layer version string')
  try:
    version = name.decode('ascii')
  except UnicodeDecodeError:
    raise s.error('an ASCII layer version string', repr(name[:40]), offset=offset) from None
  layer = Layer(kind='', version=version, offset=offset)
  if version in ('con_4', 'con_5', 'con_6'):
    layer.kind = 'con'
    params = s.tensor('con params')
    a = layer.attrs
    a['num_filters'] = s.count('con num_filters')
    a['nr'], a['nc'] = s.count('con nr'), s.count('con nc')
    a['stride_y'], a['stride_x'] = s.count('con stride_y'), s.count('con stride_x')
    a['padding_y'], a['padding_x'] = s.count('con padding_y'), s.count('con padding_x')
    filters = s.alias('con filters')
    biases = s.alias('con biases')
    for m in ('learning_rate', 'weight_decay', 'bias_learning_rate', 'bias_weight_decay'):
      a[m + '_multiplier'] = s.float(f'con {m} multiplier')
    a['use_bias'] = s.bool('con use_bias') if version in ('con_5', 'con_6') else True
    a['use_relu'] = s.bool('con use_relu') if version == 'con_6' else False
    shapes = {'filters': filters}
    if a['use_bias']:
      shapes['biases'] = biases
    layer.arrays = _split_params(s, params, offset, shapes, version)
    if filters[0] != a['num_filters'] or filters[2:] != (a['nr'], a['nc']):
      raise s.error(f'con filters of shape ({a["num_filters"]}, k, {a["nr"]}, {a["nc"]})', str(filters), offset=offset)
  elif version == 'affine_':
    layer.kind = 'affine'
    params = s.tensor('affine params')
    gamma, beta = s.alias('affine gamma'), s.alias('affine beta')
    layer.attrs['mode'] = s.int('affine mode')  # dlib's layer_mode: 0 = CONV_MODE, 1 = FC_MODE
    layer.arrays = _split_params(s, params, offset, {'gamma': gamma, 'beta': beta}, version)
  elif version in ('max_pool_2', 'avg_pool_2'):
    layer.kind = version[:-2]
    a = layer.attrs
    a['nr'], a['nc'] = s.count('pool nr'), s.count('pool nc')
    a['stride_y'], a['stride_x'] = s.count('pool stride_y'), s.count('pool stride_x')
    a['padding_y'], a['padding_x'] = s.count('pool padding_y'), s.count('pool padding_x')
  elif version == 'relu_':
    layer.kind = 'relu'
  elif version == 'add_prev_':
    layer.kind = 'add_prev'
  elif version == 'fc_2':
    layer.kind = 'fc'
    a = layer.attrs
    a['num_outputs'], a['num_inputs'] = s.count('fc num_outputs'), s.count('fc num_inputs')
    params = s.tensor('fc params')
    weights, biases = s.alias('fc weights'), s.alias('fc biases')
    a['bias_mode'] = s.int('fc bias mode')  # 0 = FC_HAS_BIAS, 1 = FC_NO_BIAS
    for m in ('learning_rate', 'weight_decay', 'bias_learning_rate', 'bias_weight_decay'):
      a[m + '_multiplier'] = s.float(f'fc {m} multiplier')
    shapes = {'weights': weights}
    if a['bias_mode'] == 0:
      shapes['biases'] = biases
    layer.arrays = _split_params(s, params, offset, shapes, version)
  else:
    raise s.error(
      'a supported layer (con_4/5/6, affine_, relu_, max_pool_2, avg_pool_2, add_prev_, fc_2)',
      repr(version[:40]),
      offset=offset,
    )
  return layer


def _layer_state(s: _Stream, version: int) -> None:
  """An add_layer's state after its details: 3 bools and 3 (normally empty) tensors."""
  s.bool('add_layer this_layer_setup_called')
  s.bool('add_layer gradient_input_is_stale')
  s.bool('add_layer get_output_and_gradient_input_disabled')
  s.tensor('add_layer x_grad')
  s.tensor('add_layer cached_output')
  if version == 2:
    s.tensor('add_layer params_grad')


def _parse_input(s: _Stream) -> Dict[str, Any]:
  offset = s.pos
  name = s.string('input layer version string')
  if name not in _INPUT_LAYERS:
    raise s.error(f'an input layer {[n.decode() for n in _INPUT_LAYERS]}', repr(name[:40]), offset=offset)
  info = {
    'type': name.decode(),
    'offset': offset,
    'avg_rgb': tuple(s.float(f'input avg_{c}') for c in ('red', 'green', 'blue')),
  }
  if name == b'input_rgb_image_sized':
    info['nr'], info['nc'] = s.count('input nr'), s.count('input nc')
  return info


def _parse_loss(s: _Stream) -> Dict[str, Any]:
  offset = s.pos
  name = s.string('loss layer version string')
  if name != b'loss_metric_2':
    raise s.error("loss layer 'loss_metric_2'", repr(name[:40]), offset=offset)
  return {
    'type': 'loss_metric',
    'margin': s.float('loss_metric margin'),
    'distance_threshold': s.float('loss_metric distance threshold'),
  }


def parse_network(data: bytes, path: Optional[str] = None) -> Network:
  """Parses a serialized dlib network (see the module docstring for the format)."""
  s = _Stream(data, path)
  s.version('add_loss_layer', (1,))
  loss = _parse_loss(s)
  # The chain of versions, outermost first, down to the add_layer that sits on the input layer;
  # that one is recognised by the input layer's name following its version.
  chain = []  # (offset, version)
  while True:
    offset = s.pos
    v = s.version('add_layer / add_tag_layer / add_skip_layer', (1, 2, 3))
    if v in (2, 3) and s.peek_string() in _INPUT_LAYERS:
      input_version = v
      break
    if v == 3:
      raise s.error('an input layer after add_layer version 3', offset=s.pos)
    chain.append((offset, v))
    if len(chain) > 100000:
      raise s.error('a network of at most 100000 layers')
  input_info = _parse_input(s)
  layers = [_parse_details(s)]
  s.bool('add_layer this_layer_setup_called')
  s.bool('add_layer gradient_input_is_stale')
  s.bool('add_layer get_output_and_gradient_input_disabled')
  s.tensor('add_layer x_grad')
  s.tensor('add_layer cached_output')
  s.tensor('add_layer grad_final')
  if input_version == 3:
    s.count('add_layer sample_expansion_factor')
  for offset, v in reversed(chain):
    if v == 1:  # add_tag_layer / add_skip_layer: nothing after the subnetwork.
      layers.append(Layer(kind='marker', version='', offset=offset))
    else:
      layers.append(_parse_details(s))
      _layer_state(s, v)
  if s.pos != len(data):
    raise s.error('end of file after the network', f'{len(data) - s.pos} more bytes')
  return Network(loss=loss, input=input_info, layers=layers, size=len(data))


def read_network(path: os.PathLike) -> Network:
  """Reads and parses a dlib network file."""
  with open(path, 'rb') as f:
    data = f.read()
  return parse_network(data, str(path))
