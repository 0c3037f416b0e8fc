"""Tests for mir_jax.max_pool: the same values and memory layout as torch's max pooling.

Values are compared with `torch.equal`, so a window whose maximum is a tie between -0.0 and +0.0 may
return either zero: which one depends on the SIMD path (torch's own kernels differ there too), and no
later arithmetic in MTCNN can tell them apart. Every other bit must match.
"""

import copy

import numpy as np
import pytest

torch = pytest.importorskip('torch', reason='torch not installed')

import fixtures  # noqa: E402  # pylint: disable=g-import-not-at-top,wrong-import-position

from mir_jax import max_pool  # noqa: E402  # pylint: disable=g-import-not-at-top,wrong-import-position

F = torch.nn.functional


def _same(got, want):
  return got.shape == want.shape and got.stride() == want.stride() and torch.equal(got, want)


def _inputs(shape, seed):
  """Values with many ties, both signs of zero, and -inf."""
  rng = np.random.default_rng(seed)
  x = rng.integers(-3, 4, size=shape).astype(np.float32) * 0.5
  x[rng.random(shape) < 0.05] = -0.0
  x[rng.random(shape) < 0.01] = -np.inf
  return torch.from_numpy(x)


@pytest.mark.parametrize('kernel', [2, 3])
@pytest.mark.parametrize('ceil_mode', [True, False])
@pytest.mark.parametrize('channels_last', [False, True])
def test_matches_torch_on_every_small_size(kernel, ceil_mode, channels_last):
  for h in range(kernel, 30):
    for w in (kernel, h, 31 - h + kernel):
      x = _inputs((2, 3, h, w), seed=h * 100 + w)
      if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
      want = F.max_pool2d(x, kernel, 2, ceil_mode=ceil_mode)
      got = max_pool.max_pool2d(x, kernel, 2, ceil_mode)
      assert _same(got, want), (h, w)


def test_matches_torch_on_mtcnn_sizes():
  # LFW's 250x250 images through P-Net's pyramid (first pool sees conv1's output), and R/O-Net crops.
  for shape, kernel in [
    ((16, 10, 148, 148), 2),
    ((16, 10, 103, 103), 2),
    ((16, 10, 23, 23), 2),
    ((40, 28, 22, 22), 3),
    ((40, 48, 9, 9), 3),
    ((8, 32, 46, 46), 3),
    ((8, 64, 21, 21), 3),
    ((8, 64, 8, 8), 2),
  ]:
    x = torch.randn(*shape)
    for layout in (torch.contiguous_format, torch.channels_last):
      x = x.contiguous(memory_format=layout)
      want = F.max_pool2d(x, kernel, 2, ceil_mode=True)
      got = max_pool.max_pool2d(x, kernel, 2, ceil_mode=True)
      assert _same(got, want), (shape, layout)


def test_too_small_input_gets_torchs_error():
  with pytest.raises(RuntimeError):
    max_pool.max_pool2d(torch.zeros(1, 1, 1, 1), 3, 2, ceil_mode=False)


def test_replaces_only_plain_pools():
  net = torch.nn.Sequential(
    torch.nn.MaxPool2d(3, 2, ceil_mode=True),
    torch.nn.Sequential(torch.nn.MaxPool2d(2, 2)),
    torch.nn.MaxPool2d(3, 2, padding=1),
    torch.nn.MaxPool2d(3, 2, return_indices=True),
    torch.nn.MaxPool2d((3, 2), 2),
  )
  assert max_pool.replace_max_pools(net) == 2
  assert isinstance(net[0], max_pool.MaxPool2d) and net[0].ceil_mode
  assert isinstance(net[1][0], max_pool.MaxPool2d) and not net[1][0].ceil_mode
  assert all(type(m) is torch.nn.MaxPool2d for m in (net[2], net[3], net[4]))  # pylint: disable=unidiomatic-typecheck


@pytest.fixture(scope='module')
def mtcnn_nets():
  pytest.importorskip('facenet_pytorch', reason='facenet-pytorch (MTCNN) not installed')
  from facenet_pytorch import MTCNN  # pylint: disable=g-import-not-at-top

  mtcnn = MTCNN(keep_all=True, device='cpu').eval()
  swapped = copy.deepcopy(mtcnn)
  assert max_pool.replace_max_pools(swapped) == 6  # P-Net 1, R-Net 2, O-Net 3
  return mtcnn, swapped


def _lfw_tensor(size):
  from PIL import Image  # pylint: disable=g-import-not-at-top

  lfw = fixtures.require_lfw_images()
  names = ['George_W_Bush/George_W_Bush_0001.jpg', 'Serena_Williams/Serena_Williams_0002.jpg']
  ims = [np.asarray(Image.open(lfw / n).convert('RGB').resize((size, size), Image.BILINEAR)) for n in names]
  x = torch.from_numpy(np.stack(ims)).permute(0, 3, 1, 2).float()
  return (x - 127.5) * 0.0078125  # MTCNN's input scaling


def test_mtcnn_networks_give_identical_outputs(mtcnn_nets):
  # Network outputs, not boxes: a layout slip changes the convolutions' rounding in the last bits,
  # which moves only a few boxes in a few hundred images, but shows in every batch's raw outputs.
  torch.set_num_threads(1)
  original, swapped = mtcnn_nets
  with torch.inference_mode():
    for net_name, sizes in (('pnet', (150, 149, 106, 105, 53, 25)), ('rnet', (24,)), ('onet', (48,))):
      for size in sizes:
        x = _lfw_tensor(size)
        want = getattr(original, net_name)(x)
        got = getattr(swapped, net_name)(x)
        for w, g in zip(want, got):
          assert torch.equal(g, w), (net_name, size)


def test_aligner_boxes_unchanged_on_lfw():
  pytest.importorskip('facenet_pytorch', reason='facenet-pytorch (MTCNN) not installed')
  from mir_jax import align  # pylint: disable=g-import-not-at-top
  from mir_jax import images  # pylint: disable=g-import-not-at-top

  lfw = fixtures.require_lfw_images()
  paths = sorted(lfw.glob('*/*_0001.jpg'))[::97][:32]
  ims = [images.load_rgb(p) for p in paths]
  torch_mtcnn = align.AlignerConfig(detector='mtcnn-torch')  # the max pools swapped are facenet-pytorch's
  fast = align.Aligner(torch_mtcnn, num_threads=1, batch_size=16, fast_max_pool=True)
  plain = align.Aligner(torch_mtcnn, num_threads=1, batch_size=16, fast_max_pool=False)
  assert any(isinstance(m, max_pool.MaxPool2d) for m in fast._mtcnn.modules())  # pylint: disable=protected-access
  assert not any(isinstance(m, max_pool.MaxPool2d) for m in plain._mtcnn.modules())  # pylint: disable=protected-access
  for a, b in zip(fast.detect_batch(ims), plain.detect_batch(ims)):
    assert a.detected == b.detected
    np.testing.assert_array_equal(a.box, b.box)
    if a.landmarks is not None:
      np.testing.assert_array_equal(a.landmarks, b.landmarks)
