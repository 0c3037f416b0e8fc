"""Tests for FaceNet (Inception-ResNet-v1) in JAX, against facenet-pytorch's own module."""

import numpy as np
import pytest

from mir_jax import align
from mir_jax.backbones import base
from mir_jax.backbones import facenet
from mir_jax.backbones import facenet_jax as fj

torch = pytest.importorskip('torch')
facenet_pytorch = pytest.importorskip('facenet_pytorch')

TOLERANCE = 1e-5  # max abs on unit-norm 512-D embeddings (components ~0.04)
BATCH_SIZE = 4  # the backbone's compiled batch; 3 and 5 inputs both need padding


@pytest.fixture(scope='module')
def torch_model():
  """facenet-pytorch's network, random weights, every batch norm given random statistics and affine params.

  The statistics start from one train-mode pass over random images (as a trained network's would, so the
  embeddings depend on the input rather than on the last batch norm's bias alone) and are then perturbed,
  so that folding them into the convs is tested with arbitrary values.
  """
  torch.manual_seed(0)
  model = facenet_pytorch.InceptionResnetV1(pretrained=None, classify=False)
  bns = [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))]
  for m in bns:
    m.momentum = 1.0  # running stats := this batch's
  model.train()
  model.dropout.eval()
  with torch.no_grad():
    model(torch.rand(4, 3, 160, 160) * 2 - 1)
    for m in bns:
      c = m.num_features
      m.running_mean.add_(torch.randn(c) * 0.1 * m.running_var.sqrt())
      m.running_var.mul_(torch.empty(c).uniform_(0.7, 1.4))
      m.weight.copy_(torch.empty(c).uniform_(0.5, 1.5))
      m.bias.copy_(torch.randn(c) * 0.2)
  return model.eval()


@pytest.fixture(scope='module')
def state_dict(torch_model):
  return {k: v.numpy().copy() for k, v in torch_model.state_dict().items()}


@pytest.fixture(scope='module')
def weights_file(torch_model, tmp_path_factory):
  path = tmp_path_factory.mktemp('facenet_jax') / 'random.pt'
  torch.save(torch_model.state_dict(), path)
  return path


def _build(weights_file, **options):
  """A FaceNetJax on the random weights (read by facenet.load_state_dict, like any user's .pt)."""
  return fj.FaceNetJax(weights_file, batch_size=BATCH_SIZE, **options)


@pytest.fixture(scope='module')
def backbone(state_dict, weights_file):
  return _build(weights_file)


def _inputs(n, seed):
  """Standardised 160x160 crops, NHWC float32, from random uint8 pixels."""
  rng = np.random.default_rng(seed)
  return ((rng.integers(0, 256, (n, 160, 160, 3)).astype(np.float32)) - 127.5) / 128.0


def _torch_embed(model, x):
  with torch.inference_mode():
    return model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()


def test_expected_shapes_match_facenet_pytorch(torch_model):
  got = {k: tuple(v.shape) for k, v in torch_model.state_dict().items() if not k.endswith('num_batches_tracked')}
  assert fj.expected_shapes() == got


@pytest.mark.parametrize('n', [3, 5])
def test_matches_torch(backbone, torch_model, n):
  x = _inputs(n, seed=n)
  want = _torch_embed(torch_model, x)
  got = backbone.embed(list(x))
  assert got.shape == (n, fj.DIM) and got.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
  diff = np.abs(got - want).max()
  assert diff <= TOLERANCE, diff
  # Not a degenerate network whose output ignores its input (which would make the comparison vacuous).
  cos = want @ want.T
  assert cos[~np.eye(n, dtype=bool)].max() < 0.99


def test_flip_sums_mirrored_embeddings(state_dict, weights_file, torch_model):
  flipped = _build(weights_file, flip=True)
  x = _inputs(2, seed=7)
  want = _torch_embed(torch_model, x) + _torch_embed(torch_model, x[:, :, ::-1])
  want /= np.linalg.norm(want, axis=1, keepdims=True)
  assert np.abs(flipped.embed(x) - want).max() <= TOLERANCE
  np.testing.assert_array_equal(flipped.flip_input(x[0]), x[0][:, ::-1])


def test_preprocess(backbone):
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (250, 250, 3), dtype=np.uint8)
  det = base.Detection(box=np.array([70.0, 60.0, 170.0, 190.0]), landmarks=None, detected=True)
  x = backbone.preprocess(image, det)
  assert x.shape == (160, 160, 3) and x.dtype == np.float32
  crop = align.crop(image, det.box, size=160, margin=32)
  np.testing.assert_array_equal(x, (crop.astype(np.float32) - 127.5) / 128.0)
  w = facenet.standardize(crop, 'prewhiten')
  assert abs(w.mean()) < 1e-5 and abs(w.std() - 1) < 1e-4
  flat = np.full((4, 4, 3), 9, np.uint8)  # std 0: divided by 1/sqrt(size), i.e. all zeros
  np.testing.assert_array_equal(facenet.standardize(flat, 'prewhiten'), 0)


def test_key(backbone, weights_file):
  key = backbone.config_key()
  assert key['backbone'] == 'facenet-jax' and key['dim'] == 512 and key['flip'] is False
  assert key['weights']['name'] == weights_file.name and 'dtype' not in key
  args = dict(variant='casia-webface', weights=weights_file, image_size=160, margin=32, flip=False)
  assert fj.FaceNetJax.key_from_arguments(**args, standardization='fixed', dtype='float32', batch_size=8) == key
  bf16 = fj.FaceNetJax.key_from_arguments(**args, standardization='fixed', dtype='bfloat16')
  assert bf16['dtype'] == 'bfloat16'
  white = fj.FaceNetJax.key_from_arguments(**args, standardization='prewhiten', dtype='float32')
  assert white['standardization'] != key['standardization']
  with pytest.raises(ValueError, match='standardization'):
    fj.FaceNetJax.key_from_arguments(**args, standardization='none', dtype='float32')


# ---------------------------------------------------------------------------------------------------
# Bad state dicts: each names what is wrong.


def test_ignores_counters_and_logits(state_dict):
  extra = dict(state_dict, **{'logits.weight': np.zeros((10, 512)), 'logits.bias': np.zeros(10)})
  params = fj.params_from_state_dict(extra)
  assert params['last']['kernel'].shape == (1792, 512)
  assert params['conv2d_1a']['kernel'].shape == (3, 3, 3, 32)


def test_missing_key(state_dict):
  bad = {k: v for k, v in state_dict.items() if k != 'repeat_2.3.branch1.1.bn.running_var'}
  with pytest.raises(ValueError, match=r'1 missing keys: repeat_2\.3\.branch1\.1\.bn\.running_var'):
    fj.params_from_state_dict(bad)


def test_unexpected_key(state_dict):
  bad = dict(state_dict, **{'repeat_9.0.conv2d.weight': np.zeros((1, 1, 1, 1), np.float32)})
  with pytest.raises(ValueError, match=r'1 unexpected keys: repeat_9\.0\.conv2d\.weight'):
    fj.params_from_state_dict(bad)


def test_wrong_shape(state_dict):
  bad = dict(state_dict, **{'mixed_6a.branch0.conv.weight': np.zeros((384, 256, 1, 1), np.float32)})
  with pytest.raises(
    ValueError, match=r'mixed_6a\.branch0\.conv\.weight: expected \(384, 256, 3, 3\), got \(384, 256, 1, 1\)'
  ):
    fj.params_from_state_dict(bad)


def test_128d_checkpoint(state_dict):
  bad = dict(state_dict)
  bad['last_linear.weight'] = np.zeros((128, 1792), np.float32)
  for f in ('weight', 'bias', 'running_mean', 'running_var'):
    bad[f'last_bn.{f}'] = np.ones(128, np.float32)
  with pytest.raises(ValueError, match=r'128-D FaceNet \(last_linear\.weight.*this network is 512-D'):
    fj.params_from_state_dict(bad)


def test_not_a_mapping():
  with pytest.raises(ValueError, match='state dict'):
    fj.params_from_state_dict([1, 2, 3])
