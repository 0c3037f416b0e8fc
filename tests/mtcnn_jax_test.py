"""Tests for mir_jax.detectors: MTCNN's nets and detector in JAX against facenet-pytorch's."""

import types

import fixtures
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import mtcnn_equality
from mir_jax import align
from mir_jax import images
from mir_jax.cache import flags as cache_flags
from mir_jax.cache import lookup
from mir_jax.cache import selection
from mir_jax.detectors import mtcnn_jax
from mir_jax.detectors import mtcnn_nets

torch = pytest.importorskip('torch')
facenet_pytorch = pytest.importorskip('facenet_pytorch', reason='facenet-pytorch (MTCNN weights) not installed')

LFW_FILES = [
  'George_W_Bush/George_W_Bush_0001.jpg',
  'Colin_Powell/Colin_Powell_0001.jpg',
  'Aaron_Eckhart/Aaron_Eckhart_0001.jpg',
  'Serena_Williams/Serena_Williams_0002.jpg',
]


@pytest.mark.parametrize('name, shape', [('pnet', (2, 3, 37, 41)), ('rnet', (5, 3, 24, 24)), ('onet', (5, 3, 48, 48))])
def test_nets_equal_torch(name, shape):
  from facenet_pytorch.models import mtcnn as torch_mtcnn  # pylint: disable=g-import-not-at-top

  x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
  with torch.no_grad():
    want = [o.numpy() for o in getattr(torch_mtcnn, name[0].upper() + 'Net')().eval()(torch.from_numpy(x))]
  got = [np.asarray(o) for o in mtcnn_nets.apply(name, mtcnn_nets.load()[name], x.transpose(0, 2, 3, 1))]
  if name == 'pnet':  # torch: (reg NCHW, probs NCHW); here: (reg NHWC, face prob)
    want = [want[0].transpose(0, 2, 3, 1), want[1][:, 1]]
  else:  # torch puts the probabilities last (R-Net: reg, probs; O-Net: reg, landmarks, probs)
    want = want[:-1] + [want[-1][:, 1]]
  for w, g in zip(want, got):
    np.testing.assert_allclose(g, w, atol=2e-6)


def test_bad_state_dicts_are_named():
  good = {k: v.copy() for k, v in mtcnn_nets._read_state_dict(f'{mtcnn_nets.weights_dir()}/rnet.pt').items()}
  missing = dict(good)
  del missing['dense4.bias']
  with pytest.raises(ValueError, match='1 missing keys: dense4.bias'):
    mtcnn_nets.params_from_state_dict('rnet', missing)
  wrong = dict(good, **{'conv1.weight': np.zeros((28, 3, 5, 5), np.float32)})
  with pytest.raises(
    ValueError, match=r'1 mis-shaped keys: conv1.weight: expected \(28, 3, 3, 3\), got \(28, 3, 5, 5\)'
  ):
    mtcnn_nets.params_from_state_dict('rnet', wrong)
  with pytest.raises(ValueError, match='does not fit pnet'):
    mtcnn_nets.params_from_state_dict('pnet', good)


def test_missing_and_corrupt_weight_files(tmp_path):
  with pytest.raises(FileNotFoundError, match='pnet.pt is missing'):
    mtcnn_nets.load(str(tmp_path))
  for name in mtcnn_nets.NETS:
    (tmp_path / f'{name}.pt').write_bytes(b'not a torch file')
  with pytest.raises(ValueError, match='not a readable torch state_dict'):
    mtcnn_nets.load(str(tmp_path))


def test_pyramid_is_facenet_pytorchs():
  # LFW's 250 x 250: the shorter side 150, 106, 75, ... px, while >= 12.
  scales = mtcnn_jax.pyramid_scales(250, 250, 20, 0.709)
  assert len(scales) == 8 and scales[0] == 0.6 and scales[1] == 0.6 * 0.709


def test_resampling_is_bit_identical_to_torchs_under_jit():
  # As the detector runs it: compiled, the sizes traced. XLA's rewrites of the two divisions (into a
  # reciprocal product, or one division by the product) changed thousands of these pixels by an ulp.
  from torch.nn import functional  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (250, 250, 3), dtype=np.uint8)
  canvas = np.zeros((256, 256, 3), np.uint8)
  canvas[:250, :250] = image
  torch_image = torch.from_numpy(image.copy())[None].permute(0, 3, 1, 2).float()  # facenet-pytorch's layout

  @jax.jit
  def level(canvas, out, size):
    ys, ye = mtcnn_jax._windows(154, out, size)
    return mtcnn_jax._area_average(mtcnn_jax._integral(canvas), ys, ye, ys, ye)

  for out in (151, 107, 76, 13):
    want = functional.interpolate(torch_image, size=(out, out), mode='area')[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(np.asarray(level(canvas, out, 250))[:out, :out], want)

  boxes = np.array([[10.2, 20.7, 90.1, 110.9], [0.0, 0.0, 249.0, 249.0], [100.0, 30.0, 130.0, 61.0]], np.float32)
  crop = jax.jit(lambda i, b: mtcnn_jax._crops(i[None], jnp.zeros(3, jnp.int32), b, jnp.full((3, 2), 250), 24))
  got, ok = crop(mtcnn_jax._integral(canvas), boxes)
  assert np.asarray(ok).all()
  for box, g in zip(boxes.astype(int), np.asarray(got)):
    x, y, ex, ey = max(box[0], 1), max(box[1], 1), min(box[2], 250), min(box[3], 250)
    window = torch_image[:, :, y - 1 : ey, x - 1 : ex]
    want = (functional.interpolate(window, size=(24, 24), mode='area')[0].permute(1, 2, 0).numpy() - 127.5) * 0.0078125
    np.testing.assert_array_equal(g, want)


@pytest.fixture(scope='module')
def lfw_stack():
  lfw = fixtures.require_lfw_images()
  return np.stack([images.load_rgb(lfw / f) for f in LFW_FILES])


@pytest.fixture(scope='module')
def detector():
  return mtcnn_jax.Detector(batch_size=2)


def test_detector_equals_facenet_pytorch_on_lfw(lfw_stack, detector):
  mtcnn = facenet_pytorch.MTCNN(keep_all=True, device='cpu').eval()
  got = detector.detect(lfw_stack)
  assert detector.overflowed == [False] * len(lfw_stack)
  for image, (boxes, probs, points) in zip(lfw_stack, got):
    want_boxes, want_probs, want_points = (
      np.asarray(v[0], np.float64) for v in mtcnn.detect(image[None], landmarks=True)
    )
    assert boxes is not None and len(boxes) == len(want_boxes)
    i, j = align.select_face(want_boxes, image.shape), align.select_face(boxes, image.shape)
    # Float rounding only: the nets' inputs are bit-identical, their arithmetic order is XLA's.
    np.testing.assert_allclose(boxes[j], want_boxes[i], atol=1e-2)
    np.testing.assert_allclose(points[j], want_points[i], atol=1e-2)
    np.testing.assert_allclose(probs[j], want_probs[i], atol=1e-5)


def test_an_images_boxes_do_not_depend_on_its_batchmates(lfw_stack, detector):
  together = detector.detect(lfw_stack)
  alone = detector.detect(lfw_stack[2:3])[0]
  # Second in its batch, its R-Net and O-Net crops sit after another image's, in other calls and places.
  second = detector.detect(lfw_stack[[1, 2]])[1]
  for got in (together[2], second):
    np.testing.assert_array_equal(alone[0], got[0])
    np.testing.assert_array_equal(alone[2], got[2])


def test_images_of_other_sizes_share_a_bucket_and_keep_their_own_boxes(lfw_stack, detector):
  # A 240x230 crop and a 250x250 image run in one 256x256 program, each zero-padded to it.
  crop = np.ascontiguousarray(lfw_stack[1][5:245, 12:242])
  assert mtcnn_jax.bucket_side(240) == mtcnn_jax.bucket_side(230) == mtcnn_jax.bucket_side(250) == 256
  together = detector.detect([lfw_stack[0], crop])
  alone = detector.detect([crop])[0]
  np.testing.assert_array_equal(together[1][0], alone[0])
  mtcnn = facenet_pytorch.MTCNN(keep_all=True, device='cpu').eval()
  for image, (boxes, probs, points) in zip([lfw_stack[0], crop], together):
    want_boxes, want_probs, want_points = (
      np.asarray(v[0], np.float64) for v in mtcnn.detect(image[None], landmarks=True)
    )
    assert boxes is not None and len(boxes) == len(want_boxes)
    order, want_order = np.argsort(-probs), np.argsort(-want_probs)
    np.testing.assert_allclose(boxes[order], want_boxes[want_order], atol=1e-2)
    np.testing.assert_allclose(points[order], want_points[want_order], atol=1e-2)


def test_overflowing_capacity_is_retried_larger(lfw_stack):
  tiny = mtcnn_jax.Detector(capacities=mtcnn_jax.Capacities(32, 8, 16, 2), batch_size=2)
  full = mtcnn_jax.Detector(batch_size=2).detect(lfw_stack[:1])[0]
  got = tiny.detect(lfw_stack[:1])[0]
  # x 4, then x 16 (the defaults, which LFW fits): the boxes are then the uncapped ones.
  assert tiny.overflowed == [False]
  np.testing.assert_allclose(got[0], full[0], atol=1e-4)


@pytest.mark.parametrize('mode', ['union', 'min'])
def test_nms_breaks_an_exact_tie_as_the_reference_reads(mode):
  """Two overlapping boxes with one score: torchvision's `nms` keeps the first (a stable descending sort);
  facenet-pytorch's `nms_numpy`, which sorts ascending and takes the last, keeps the second when its sort
  is stable (numpy's is not: on larger arrays its choice varies, benchmarks/mtcnn_ties.py)."""
  from facenet_pytorch.models.utils import detect_face  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top

  boxes = np.asarray([[10.0, 10.0, 60.0, 60.0], [12.0, 11.0, 61.0, 62.0], [100.0, 100.0, 130.0, 130.0]], np.float32)
  scores = np.asarray([0.99999994, 0.99999994, 0.9], np.float32)
  if mode == 'union':
    want = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5).numpy()
  else:  # three elements: numpy's argsort sorts them stably
    want = detect_face.nms_numpy(boxes, scores, 0.7, 'Min')
  picks, kept, _ = mtcnn_jax._nms(
    jnp.asarray(boxes), jnp.asarray(scores), jnp.ones(3, bool), 0.5 if mode == 'union' else 0.7, 3, mode=mode
  )  # pylint: disable=protected-access
  assert list(np.asarray(picks)[np.asarray(kept)]) == list(want) == ([0, 2] if mode == 'union' else [1, 2])


def test_the_equality_benchmark_meets_the_targets_on_a_sample(detector):
  del detector  # it compiled the batch-of-2 programs
  root = fixtures.require_lfw_images()
  files = sorted(str(p.relative_to(root)) for p in root.glob('*/*.jpg'))[::1100]  # 13 of 13,233
  summary = mtcnn_equality.compare(root, files, batch_size=2, same_px=1.0)
  assert summary['images'] == 13 and list(summary['against']) == list(mtcnn_equality.REFERENCES)
  # The targets, against each torch reference: the same face chosen, boxes and landmarks within 0.01 px.
  for against in summary['against'].values():
    assert against['same_face_fraction'] == 1.0, against['differ']
    assert against['box_px']['max'] <= 0.01 and against['landmark_px']['max'] <= 0.01, against


def test_exact_ties_go_where_facenet_pytorch_alone_with_a_stable_sort_puts_them(detector):
  del detector  # it compiled the batch-of-2 programs
  from facenet_pytorch.models.utils import detect_face  # pylint: disable=g-import-not-at-top

  root = fixtures.require_lfw_images()
  # Two of the images the whole-LFW run listed against torch's batches of 32: two or three O-Net candidates
  # of one face share the best probability exactly (benchmarks/results/mtcnn_ties.json).
  files = ['Erik_Morales/Erik_Morales_0002.jpg', 'Andy_Madikians/Andy_Madikians_0001.jpg']
  summary = mtcnn_equality.compare(root, files, batch_size=2, same_px=1.0, references=('alone_stable_sort',))
  against = summary['against']['alone_stable_sort']
  assert against['same_face_fraction'] == 1.0, against['differ']
  assert against['box_px']['max'] <= 0.01 and against['landmark_px']['max'] <= 0.01, against
  # The stable sort is the only change, and only inside the context.
  ties = np.array([0.5, 0.9, 0.9, 0.1, 0.9, 0.9], np.float32)
  with mtcnn_equality.stable_tie_order():
    assert list(detect_face.np.argsort(ties)) == [3, 0, 1, 2, 4, 5]
    assert detect_face.np.where is np.where
  assert detect_face.np is np


def test_the_ties_benchmark_finds_an_exact_tie_and_noise_moves_only_with_noise():
  from benchmarks import mtcnn_ties  # pylint: disable=g-import-not-at-top  (imports torch)

  root = fixtures.require_lfw_images()
  # Erik_Morales_0002: listed by the whole-LFW run as differing, two O-Net candidates tied at the top.
  stack = np.stack([images.load_rgb(root / f) for f in ('Erik_Morales/Erik_Morales_0002.jpg', LFW_FILES[0])])
  aligner = align.Aligner(align.AlignerConfig(detector='mtcnn-torch'))
  assert list(mtcnn_ties.top_ties(aligner, stack, aligner.config.thresholds[2])) == [2, 1]
  moved = mtcnn_ties.sensitivity(aligner, stack, eps=0.0, repeats=1, same_px=1.0)
  assert all(list(m) == [0, 0] for m in moved.values())  # the wrapper itself changes nothing
  moved = mtcnn_ties.sensitivity(aligner, stack, eps=0.05, repeats=1, same_px=0.0)
  assert any(m.sum() for m in moved.values())  # and noise reaches the choice


def test_no_face_and_bad_input(detector):
  boxes, probs, points = detector.detect(np.zeros((1, 64, 64, 3), np.uint8))[0]
  assert boxes is None and probs is None and points is None
  with pytest.raises(ValueError, match='uint8'):
    detector.detect(np.zeros((1, 64, 64), np.float32))
  with pytest.raises(ValueError, match='smaller than min_face_size=20'):
    detector.detect(np.zeros((1, 15, 40, 3), np.uint8))


def test_the_aligner_runs_mtcnn_jax_as_it_runs_mtcnn_torch(lfw_stack, detector):
  del detector  # it compiled the batch-of-2 programs that this aligner's detector reuses
  jax_aligner = align.Aligner(align.AlignerConfig(detector='mtcnn-jax'), batch_size=2)
  # torch's MTCNN one image at a time: no batch-dependent offsets in its NMS.
  torch_aligner = align.Aligner(align.AlignerConfig(detector='mtcnn-torch'), batch_size=1)
  for got, want in zip(jax_aligner.detect_batch(list(lfw_stack)), torch_aligner.detect_batch(list(lfw_stack))):
    assert got.detected and want.detected
    np.testing.assert_allclose(got.box, want.box, atol=1e-2)
    np.testing.assert_allclose(got.landmarks, want.landmarks, atol=1e-2)
  assert jax_aligner.num_overflowed == 0
  # The aligner's fallbacks, whichever MTCNN: no face, too small for the pyramid, too big to resample exactly.
  blank, tiny = np.zeros((64, 64, 3), np.uint8), np.zeros((15, 40, 3), np.uint8)
  huge = np.zeros((4200, 4100, 3), np.uint8)
  got = jax_aligner.detect_batch([blank, tiny, huge])
  assert [d.path for d in got] == ['center'] * 3
  assert got[0].reason == 'no face found by MTCNN'
  assert 'smaller than min_face_size=20' in got[1].reason
  assert 'beyond mtcnn-jax exact resampling' in got[2].reason and '--aligner=mtcnn-torch' in got[2].reason


def test_the_aligner_flag_is_in_the_cache_key_only_when_not_the_default():
  fv = types.SimpleNamespace(
    faces='detect', fallback='center', aligner='mtcnn-torch', min_face_size=20, thresholds=['0.6', '0.7', '0.7']
  )
  options = cache_flags.align_options(fv)
  assert options == {'detector': 'mtcnn-torch'}
  key, default = align.config_key(lookup.aligner_config(options)), align.config_key()
  # Each detector's caches keep the directories they were built in, whichever is the default: the key names
  # the detector always.
  assert default['detector'] == 'mtcnn-jax-3' and key['detector'] == 'mtcnn-facenet-pytorch-2.6'
  assert {**key, 'detector': default['detector']} == default
  assert cache_flags.align_options(types.SimpleNamespace(**{**vars(fv), 'aligner': 'mtcnn-jax'})) == {}
  with pytest.raises(selection.UsageError, match="detector='mtcnn-torch' would have no effect"):
    lookup.aligner_config({'faces': 'precropped', 'detector': 'mtcnn-torch'})
  with pytest.raises(selection.UsageError, match='detector must be one of'):
    lookup.aligner_config({'detector': 'mtcnn-tf'})
