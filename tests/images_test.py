"""Tests for mir_jax.images: every mode decodes to uint8 RGB, every bad file fails naming itself."""

import fixtures
import numpy as np
from PIL import Image
from PIL import ImageFile
import pytest

from mir_jax import images

LFW_DIR = fixtures.lfw_images_dir()
pytestmark = pytest.mark.skipif(LFW_DIR is None, reason=fixtures.MISSING_DATA_REASON)


@pytest.fixture
def src():
  return fixtures.some_lfw_image(LFW_DIR)


def _pillow_rgb(path):
  with Image.open(path) as img:
    return np.asarray(img.convert('RGB'))


def test_rgb_jpeg_matches_pillow_decode(src):
  out = images.load_rgb(src)
  assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
  assert out.flags['C_CONTIGUOUS']
  np.testing.assert_array_equal(out, _pillow_rgb(src))


@pytest.mark.parametrize('ext', ['png', 'pgm', 'jpg'])
def test_grayscale_is_repeated_into_three_channels(src, tmp_path, ext):
  path = fixtures.write_converted(src, tmp_path / f'gray.{ext}', 'L')
  with Image.open(path) as img:
    assert img.mode == 'L'
    gray = np.asarray(img)
  out = images.load_rgb(path)
  for c in range(3):
    np.testing.assert_array_equal(out[:, :, c], gray)


def test_16bit_png_is_rescaled_not_clipped(src, tmp_path):
  path = fixtures.write_16bit_png(src, tmp_path / 'deep.png')
  with Image.open(path) as img:
    assert img.mode.startswith('I')
  with Image.open(src) as img:
    gray8 = np.asarray(img.convert('L'))
  out = images.load_rgb(path)
  # Stored values are g * 257, so dropping the low byte must give back g exactly; clipping at 255
  # (Pillow's convert('RGB')) would make nearly every pixel 255.
  np.testing.assert_array_equal(out[:, :, 0], gray8)
  np.testing.assert_array_equal(out[:, :, 2], gray8)


@pytest.mark.parametrize('mode,ext', [('P', 'png'), ('CMYK', 'jpg')])
def test_palette_and_cmyk_convert_like_pillow(src, tmp_path, mode, ext):
  path = fixtures.write_converted(src, tmp_path / f'{mode}.{ext}', mode)
  with Image.open(path) as img:
    assert img.mode == mode
  np.testing.assert_array_equal(images.load_rgb(path), _pillow_rgb(path))


def test_rgba_is_composited_on_black(src, tmp_path):
  path = fixtures.write_rgba_png(src, tmp_path / 'alpha.png')
  with Image.open(path) as img:
    rgba = np.asarray(img).astype(np.float64)
  out = images.load_rgb(path).astype(np.float64)
  # Column 0 is fully transparent over white: it must come out black, not white.
  assert np.all(out[:, 0] == 0)
  np.testing.assert_array_equal(out[:, -1], rgba[:, -1, :3])
  expected = rgba[:, :, :3] * rgba[:, :, 3:] / 255
  assert np.max(np.abs(out - expected)) <= 1


def test_exif_orientation_is_applied_only_on_request(src, tmp_path):
  with Image.open(src) as img:
    crop = img.crop((0, 0, img.width, img.height // 2))
  exif = Image.Exif()
  exif[0x0112] = 6  # rotate 90 degrees clockwise for display
  path = tmp_path / 'rotated.jpg'
  crop.save(path, exif=exif)
  h, w = crop.height, crop.width
  assert images.load_rgb(path).shape[:2] == (h, w)
  assert images.load_rgb(path, exif_transpose=True).shape[:2] == (w, h)


@pytest.mark.parametrize(
  'build,phrase',
  [
    (lambda s, d: fixtures.write_truncated_jpeg(s, d / 'truncated.jpg'), 'truncated'),
    (lambda s, d: fixtures.write_corrupt_jpeg(s, d / 'corrupt.jpg'), 'corrupt'),
    (lambda s, d: fixtures.write_garbage_after_jpeg_signature(s, d / 'garbage.jpg'), 'corrupt'),
    (lambda s, d: fixtures.write_zero_byte(d / 'empty.jpg'), 'empty'),
    (lambda s, d: fixtures.write_text_as_jpg(d / 'text.jpg'), 'not a recognised image'),
    (lambda s, d: d / 'missing.jpg', 'does not exist'),
  ],
)
def test_bad_files_raise_image_error_naming_the_file(src, tmp_path, build, phrase):
  path = build(src, tmp_path)
  with pytest.raises(images.ImageError) as info:
    images.load_rgb(path)
  assert isinstance(info.value, ValueError)
  assert str(path) in str(info.value)
  assert phrase in str(info.value)


def test_refuses_to_run_when_truncated_images_are_allowed(src, tmp_path, monkeypatch):
  path = fixtures.write_truncated_jpeg(src, tmp_path / 'truncated.jpg')
  monkeypatch.setattr(ImageFile, 'LOAD_TRUNCATED_IMAGES', True)
  with pytest.raises(RuntimeError, match='LOAD_TRUNCATED_IMAGES'):
    images.load_rgb(path)


def test_image_extensions_are_case_insensitive():
  for name in ['a.jpg', 'a.JPG', 'a.Jpeg', 'a.png', 'a.PGM', 'a.ppm', 'a.bmp']:
    assert images.is_image_file(name), name
  for name in ['a.txt', 'a.gif', 'a', 'jpg', 'a.jpg.bak']:
    assert not images.is_image_file(name), name
