"""Tests for mir_jax.align: the face-selection rule, the fallback box, the crop and MTCNN on LFW."""

import json

import fixtures
import numpy as np
from PIL import Image
import pytest

from mir_jax import align
from mir_jax import paths

LFW_FILES = [
  'George_W_Bush/George_W_Bush_0001.jpg',
  'Colin_Powell/Colin_Powell_0001.jpg',
  'Aaron_Eckhart/Aaron_Eckhart_0001.jpg',
  'Serena_Williams/Serena_Williams_0002.jpg',
]


@pytest.fixture(scope='module')
def aligner():
  pytest.importorskip('facenet_pytorch', reason='facenet-pytorch (MTCNN) not installed')
  # These tests reach into facenet-pytorch's MTCNN (`_mtcnn`); mtcnn_jax_test.py tests the JAX one.
  return align.Aligner(align.AlignerConfig(detector='mtcnn-torch'))


@pytest.fixture(scope='module')
def lfw_images():
  from mir_jax import images  # pylint: disable=g-import-not-at-top

  lfw = fixtures.require_lfw_images()
  return [images.load_rgb(lfw / f) for f in LFW_FILES]


class TestSelectFace:
  def test_central_face_beats_bigger_corner_face(self):
    shape = (250, 250, 3)
    central = [85, 85, 165, 165]  # area 6400, centred: score 6400
    corner = [0, 0, 120, 120]  # area 14400, offset (-65, -65): 14400 - 2 * 8450 = -2500
    assert align.select_face(np.array([corner, central]), shape) == 1

  def test_big_slightly_off_centre_face_wins(self):
    shape = (250, 250, 3)
    central = [85, 85, 165, 165]  # score 6400
    big = [20, 20, 170, 170]  # area 22500, offset (-30, -30): 22500 - 3600 = 18900
    assert align.select_face(np.array([central, big]), shape) == 1

  def test_offset_weight_is_two(self):
    shape = (250, 250, 3)
    central = [85, 85, 165, 165]  # score 6400
    # Area 14400, centre (175, 175): offset^2 = 5000. Weight 2 -> 4400 (loses); weight 1 would
    # give 9400 (win).
    off = [115, 115, 235, 235]
    assert align.select_face(np.array([off, central]), shape) == 1

  def test_rule_is_not_largest_nor_most_central(self):
    # Image 200 high x 400 wide: centre (200, 100). Scores: a = 2500 - 2 * 0 = 2500;
    # b = 10000 - 2 * (60^2 + 0) = 2800 (wins); c = 12100 - 2 * (95^2) = -5950 (largest).
    shape = (200, 400)
    a = [175, 75, 225, 125]
    b = [210, 50, 310, 150]
    c = [240, 45, 350, 155]
    assert align.select_face(np.array([a, b, c]), shape) == 1

  def test_uses_width_for_x_and_height_for_y(self):
    # A non-square image catches swapped axes: centre is (x=300, y=50).
    shape = (100, 600)
    at_centre = [280, 30, 320, 70]
    transposed_centre = [30, 280, 70, 320]
    assert align.select_face(np.array([transposed_centre, at_centre]), shape) == 1

  def test_empty_raises(self):
    with pytest.raises(ValueError):
      align.select_face(np.zeros((0, 4)), (10, 10))


def test_center_box_matches_lfw_face_size():
  np.testing.assert_allclose(align.center_box((250, 250, 3)), [78.75, 62.5, 171.25, 187.5])
  # Non-square: fractions of the short side, centred on the image.
  np.testing.assert_allclose(align.center_box((100, 300)), [131.5, 25, 168.5, 75])


class TestCrop:
  @staticmethod
  def _ramp(h=200, w=220):
    yy, xx = np.mgrid[:h, :w]
    return np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)

  def test_margin_is_in_original_pixels_half_per_side(self):
    img = self._ramp()
    # Box (20, 30)-(100, 110), margin 32 -> rows 14:126, cols 4:116 (112 x 112): no resampling.
    out = align.crop(img, (20, 30, 100, 110), size=112, margin=32)
    np.testing.assert_array_equal(out, img[14:126, 4:116])

  def test_clamps_to_image(self):
    img = self._ramp()
    out = align.crop(img, (-10, -10, 50, 50), size=66, margin=32)
    np.testing.assert_array_equal(out, img[:66, :66])
    out = align.crop(img, (180, 160, 230, 210), size=64, margin=0)
    assert out.shape == (64, 64, 3)
    # Right/bottom clamp at the image border: top-left pixel of the crop is (x=180, y=160).
    np.testing.assert_array_equal(out[0, 0], img[160, 180])

  def test_resizes_to_size(self):
    out = align.crop(self._ramp(), (50, 50, 150, 150), size=160, margin=32)
    assert out.shape == (160, 160, 3) and out.dtype == np.uint8


def test_blank_image_falls_back_to_centre_box(aligner):
  before = aligner.num_fallbacks
  det = aligner.detect(np.full((250, 250, 3), 128, np.uint8))
  assert not det.detected
  assert det.landmarks is None
  np.testing.assert_allclose(det.box, align.center_box((250, 250)))
  assert aligner.num_fallbacks == before + 1


def test_rejects_non_rgb(aligner):
  with pytest.raises(ValueError):
    aligner.detect(np.zeros((20, 20), np.uint8))


def test_detects_centred_face_on_lfw(aligner, lfw_images):
  dets = aligner.detect_batch(lfw_images)
  for det in dets:
    assert det.detected
    x1, y1, x2, y2 = det.box
    centre = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
    assert np.linalg.norm(centre - 125) < 25, det.box
    assert 60 < x2 - x1 < 160 and 60 < y2 - y1 < 180, det.box
    assert det.landmarks.shape == (5, 2)
    # Eyes (first two landmarks) inside the box, left eye left of right eye.
    assert np.all((det.landmarks[:2] >= [x1, y1]) & (det.landmarks[:2] <= [x2, y2]))
    assert det.landmarks[0, 0] < det.landmarks[1, 0]


def test_batched_equals_single_and_is_deterministic(aligner, lfw_images):
  batched = aligner.detect_batch(lfw_images)
  again = aligner.detect_batch(lfw_images)
  single = [aligner.detect(im) for im in lfw_images]
  for b, a, s in zip(batched, again, single):
    np.testing.assert_array_equal(b.box, a.box)
    # Batching changes float summation order in the network, not the detection.
    np.testing.assert_allclose(b.box, s.box, atol=1e-2)
    np.testing.assert_allclose(b.landmarks, s.landmarks, atol=1e-2)


def test_mixed_sizes_keep_order(aligner, lfw_images):
  blank = np.full((120, 90, 3), 200, np.uint8)
  dets = aligner.detect_batch([lfw_images[0], blank, lfw_images[1]])
  assert [d.detected for d in dets] == [True, False, True]
  np.testing.assert_allclose(dets[1].box, align.center_box(blank.shape))


def test_images_below_min_face_size_get_the_fallback(aligner, lfw_images):
  face = Image.fromarray(lfw_images[0])
  # facenet-pytorch's MTCNN itself fails below min_face_size (20): its scale pyramid is empty.
  with pytest.raises(ValueError, match='non-empty list'):
    aligner._mtcnn.detect(np.asarray(face.resize((19, 19)))[None])
  sizes = [(12, 12), (1, 1), (19, 250), (250, 12)]
  small = [np.asarray(face.resize((w, h))) for h, w in sizes]
  # A batch mixing them with normal images, two of one small size among them.
  dets = aligner.detect_batch([lfw_images[1], small[0], *small, lfw_images[2]])
  assert [d.path for d in dets] == ['detected'] + ['center'] * 5 + ['detected']
  for (h, w), det in zip([sizes[0], *sizes], dets[1:-1]):
    assert det.reason == f'{w}x{h} image is smaller than min_face_size=20'
    np.testing.assert_allclose(det.box, align.center_box((h, w)))
  # Just big enough: MTCNN runs, and finds the face even in a 20-pixel thumbnail.
  assert aligner.detect(np.asarray(face.resize((20, 20)))).path == 'detected'
  assert align.too_small((19, 19), 20) and not align.too_small((20, 20), 20)
  assert align.too_small((39, 500), 40) and not align.too_small((40, 500), 40)


def test_one_failing_image_does_not_take_its_batchmates(aligner, lfw_images, monkeypatch):
  poisoned = lfw_images[0].copy()
  poisoned[0, 0] = (1, 2, 3)
  detect = aligner._mtcnn.detect

  def failing_detect(stack, **kwargs):
    if np.any(np.all(np.asarray(stack)[:, 0, 0] == (1, 2, 3), axis=-1)):
      raise ValueError('boom')
    return detect(stack, **kwargs)

  monkeypatch.setattr(aligner._mtcnn, 'detect', failing_detect)
  batch = [lfw_images[1], poisoned, lfw_images[2], lfw_images[3]]
  dets = aligner.detect_batch(batch)
  assert [d.path for d in dets] == ['detected', 'center', 'detected', 'detected']
  assert dets[1].reason == 'MTCNN failed: ValueError: boom'
  for image, det in zip([batch[0], batch[2], batch[3]], [dets[0], dets[2], dets[3]]):
    np.testing.assert_allclose(det.box, aligner.detect(image).box, atol=1e-2)


def test_fallback_policies(lfw_images):
  pytest.importorskip('facenet_pytorch', reason='facenet-pytorch (MTCNN) not installed')
  blank = np.full((120, 90, 3), 200, np.uint8)
  whole = align.Aligner(align.AlignerConfig(fallback='whole'))
  dets = whole.detect_batch([lfw_images[0], blank])
  assert [d.path for d in dets] == ['detected', 'whole']
  np.testing.assert_array_equal(dets[1].box, [0, 0, 90, 120])
  skip = align.Aligner(align.AlignerConfig(fallback='skip')).detect(blank)
  assert skip.path == 'skip' and skip.box is None and skip.reason == 'no face found by MTCNN'


def test_precropped_faces_are_their_whole_image(lfw_images):
  aligner = align.Aligner(align.AlignerConfig(faces='precropped'))
  dets = aligner.detect_batch([lfw_images[0], np.zeros((7, 5, 3), np.uint8)])
  assert [d.path for d in dets] == ['whole', 'whole']
  np.testing.assert_array_equal(dets[1].box, [0, 0, 5, 7])
  with pytest.raises(ValueError, match='min_face_size=40 would have no effect'):
    align.AlignerConfig(faces='precropped', min_face_size=40)
  with pytest.raises(ValueError, match='fallback must be one of'):
    align.AlignerConfig(fallback='centre')
  with pytest.raises(ValueError, match='three scores'):
    align.AlignerConfig(thresholds=(0.6, 0.7))


def test_default_key_is_the_one_stored_results_were_keyed_on():
  """The stored tuning results record the aligner key of the caches they read: the default must still match
  some, and every one must be the key of a detector the project runs (`--config.aligner` reads those)."""
  stored = []
  for path in sorted((paths.repo_root() / 'experiments' / 'tuned').glob('*.json')):
    config = json.loads(path.read_text()).get('context', {}).get('data', {}).get('align_config')
    if config is not None:
      stored.append(config)
  assert stored, 'no stored result records an align_config'
  assert align.config_key() in stored
  detector_keys = [align.config_key(align.AlignerConfig(detector=d)) for d in align.DETECTORS]
  assert all(c in detector_keys for c in stored)
  assert align.config_key(align.AlignerConfig(fallback='center', faces='detect')) == align.config_key()
  other = [
    align.AlignerConfig(min_face_size=40),
    align.AlignerConfig(thresholds=(0.5, 0.6, 0.6)),
    align.AlignerConfig(fallback='whole'),
    align.AlignerConfig(fallback='skip'),
    align.AlignerConfig(faces='precropped'),
  ]
  keys = [json.dumps(align.config_key(c), sort_keys=True) for c in [align.AlignerConfig(), *other]]
  assert len(set(keys)) == len(keys)


def test_config_key_without_detector(aligner):
  key = align.config_key(aligner.config)
  assert key == aligner.config_key()
  assert key['min_face_size'] == 20 and key['thresholds'] == [0.6, 0.7, 0.7]
  assert align.config_key(align.AlignerConfig(min_face_size=40)) != key


@pytest.mark.parametrize(
  'config', [{'detector': 'mtcnn-jax'}, {'faces': 'precropped'}], ids=['mtcnn-jax', 'precropped']
)
def test_num_threads_sets_torchs_threads_whichever_detector(config):
  # A cache's worker processes get their one torch thread, the backbone's too, from the aligner.
  torch = pytest.importorskip('torch')
  before = torch.get_num_threads()
  torch.set_num_threads(2)
  try:
    align.Aligner(align.AlignerConfig(**config), num_threads=1)
    assert torch.get_num_threads() == 1
  finally:
    torch.set_num_threads(before)
