"""A numpy interpreter of a frozen TensorFlow inference graph: the reference the FaceNet ports are checked against.

It runs the graph file itself, node by node, with no weight mapping in between, so it is an independent third
implementation beside facenet-pytorch's module (`facenet.FaceNet`) and the Flax port (`facenet_jax`). It knows
the ops of a frozen conv net (`OPS`) and refuses any other by name. Convolutions are im2col matrix products in
float32, so it is slow (a reference, not a backbone).
"""

from typing import Callable, Dict, List, Sequence

import numpy as np

from mir_jax.backbones import graphdef


def _same_padding(size: int, kernel: int, stride: int):
  """TensorFlow's 'SAME' padding of one spatial axis: (before, after), the odd pixel after."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def _windows(x: np.ndarray, kh: int, kw: int, strides, padding: str, pad_value: float) -> np.ndarray:
  """(n, oh, ow, c, kh, kw) strided windows of NHWC `x`."""
  if padding == 'SAME':
    ph = _same_padding(x.shape[1], kh, strides[1])
    pw = _same_padding(x.shape[2], kw, strides[2])
    x = np.pad(x, ((0, 0), ph, pw, (0, 0)), constant_values=pad_value)
  elif padding != 'VALID':
    raise ValueError(f'unsupported padding {padding!r}')
  win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))
  return win[:, :: strides[1], :: strides[2]]


def _conv2d(node, x, w):
  _nhwc(node)
  if any(d != 1 for d in node.attrs.get('dilations', [1, 1, 1, 1])):
    raise ValueError(f'{node.name}: dilated convolutions are not supported')
  kh, kw, _, _ = w.shape
  win = _windows(x, kh, kw, node.attrs['strides'], node.attrs['padding'], 0.0)
  # windows (c, kh, kw) against weights (kh, kw, c): one float32 matrix product per layer.
  return np.tensordot(win, w, axes=([3, 4, 5], [2, 0, 1])).astype(np.float32)


def _pool(reduce: Callable):
  def op(node, x):
    _nhwc(node)
    _, kh, kw, _ = node.attrs['ksize']
    if node.attrs['padding'] != 'VALID':
      raise ValueError(f'{node.name}: only VALID pooling is supported')
    return reduce(_windows(x, kh, kw, node.attrs['strides'], 'VALID', 0.0), axis=(4, 5)).astype(np.float32)

  return op


def _nhwc(node):
  if node.attrs.get('data_format', 'NHWC') != 'NHWC':
    raise ValueError(f'{node.name}: only NHWC is supported')


def _reshape(node, x, shape):
  shape = [int(s) for s in shape]
  # The graph was frozen at batch 1, and constant folding baked that 1 into the shapes of its reshapes:
  # read a leading 1 as the batch.
  if shape and shape[0] == 1 and x.shape[0] != 1:
    shape[0] = x.shape[0]
  return x.reshape(shape)


def _fused_batch_norm(node, x, scale, offset, mean, variance):
  if node.attrs.get('is_training', False):
    raise ValueError(f'{node.name}: a training-mode batch norm has no fixed statistics')
  eps = np.float32(node.attrs.get('epsilon', 1e-3))
  return ((x - mean) / np.sqrt(variance + eps) * scale + offset).astype(np.float32)


def _sum(node, x, axes):
  return np.sum(x, axis=tuple(np.atleast_1d(axes).tolist()), keepdims=bool(node.attrs.get('keep_dims', False)))


OPS: Dict[str, Callable] = {
  'Conv2D': _conv2d,
  'BiasAdd': lambda node, x, b: x + b,
  'Relu': lambda node, x: np.maximum(x, np.float32(0)),
  'ConcatV2': lambda node, *args: np.concatenate(args[:-1], axis=int(args[-1])),
  'Mul': lambda node, a, b: (a * b).astype(np.float32),
  'Add': lambda node, a, b: a + b,
  'MaxPool': _pool(np.max),
  'AvgPool': _pool(np.mean),
  'Reshape': _reshape,
  'MatMul': lambda node, a, b: (
    (a.T if node.attrs.get('transpose_a') else a) @ (b.T if node.attrs.get('transpose_b') else b)
  ),
  'FusedBatchNorm': lambda node, *args: _fused_batch_norm(node, *args),
  'Square': lambda node, x: x * x,
  'Sum': _sum,
  'Maximum': lambda node, a, b: np.maximum(a, b),
  'Rsqrt': lambda node, x: (np.float32(1) / np.sqrt(x)).astype(np.float32),
  'Identity': lambda node, x: x,
}


class Interpreter:
  """Runs `output` of a frozen graph on values fed to its placeholders."""

  def __init__(self, nodes: List[graphdef.Node], output: str):
    self.nodes = {n.name: n for n in nodes}
    if output not in self.nodes:
      raise ValueError(f'the graph has no node {output!r}')
    self.output = output
    self.order = self._topological(output)
    unknown = sorted({self.nodes[n].op for n in self.order} - set(OPS) - {'Const', 'Placeholder'})
    if unknown:
      raise ValueError(f'the reference interpreter does not implement ops {unknown}')

  def _topological(self, output: str) -> List[str]:
    order, seen, stack = [], set(), [(output, False)]
    while stack:
      name, done = stack.pop()
      if done:
        order.append(name)
        continue
      if name in seen:
        continue
      seen.add(name)
      stack.append((name, True))
      for inp in self.nodes[name].inputs:
        if not inp.startswith('^'):
          stack.append((_node_name(inp), False))
    return order

  def __call__(self, **feeds: np.ndarray) -> np.ndarray:
    values: Dict[str, np.ndarray] = {}
    for name in self.order:
      node = self.nodes[name]
      if node.op == 'Const':
        values[name] = np.asarray(node.attrs['value'])
      elif node.op == 'Placeholder':
        if name not in feeds:
          raise ValueError(f'feed the placeholder {name!r}')
        values[name] = np.asarray(feeds[name], np.float32)
      else:
        args: Sequence[np.ndarray] = [values[_node_name(i)] for i in node.inputs if not i.startswith('^')]
        values[name] = OPS[node.op](node, *args)
    return values[self.output]


def _node_name(tensor: str) -> str:
  """'name:0' -> 'name' (every op here has one output)."""
  name, _, index = tensor.partition(':')
  if index not in ('', '0'):
    raise ValueError(f'{tensor}: only first outputs are supported')
  return name
