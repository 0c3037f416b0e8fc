"""Tests for mir_jax.align: the face-selection rule, the fallback box, the crop and MTCNN on LFW."""

import fixtures
import numpy as np
import pytest

from mir_jax import align

LFW_FILES = [
  'George_W_Bush/George_W_Bush_0001.jpg',
  'Colin_Powell/Colin_Powell_0001.jpg',
  'Aaron_Eckhart/Aaron_Eckhart_0001.jpg',
  'Serena_Williams/Serena_Williams_0002.jpg',
]


@pytest.fixture(scope='module')
def aligner():
  pytest.importorskip('facenet_pytorch', reason='facenet-pytorch (MTCNN) not installed')
  return align.Aligner()


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


def test_config_key_without_detector(aligner):
  key = align.config_key()
  assert key == aligner.config_key()
  assert key['min_face_size'] == 20 and key['thresholds'] == [0.6, 0.7, 0.7]
  assert align.config_key(align.AlignerConfig(min_face_size=40)) != key
