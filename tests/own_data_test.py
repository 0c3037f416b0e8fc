"""A user's own folder: every kind of bad and unusual input, and the exact outcome of each file.

The corpus is built from real LFW faces, so detection is MTCNN's real answer, and embedded with the real
`python -m mir_jax.embed --dataset=folder` and the default backbone. Each image file must come out as
embedded with a detected face, embedded with a named fallback box and its reason, or skipped with its
reason; whatever is not an image file is left out by the folder reader with a reason (or as ignored).
"""

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from typing import Dict, Tuple

import fixtures
import numpy as np
from PIL import Image
import pytest

from mir_jax import align
from mir_jax import images
from mir_jax import paths
from mir_jax.cache import lookup
from mir_jax.cache import reader
from mir_jax.datasets import folder

LFW_DIR = fixtures.lfw_images_dir()
needs_lfw = pytest.mark.skipif(LFW_DIR is None, reason=fixtures.MISSING_DATA_REASON)
# chmod cannot deny root a read, so the unreadable file only is one for other users.
IS_ROOT = os.geteuid() == 0
NOBODY = 65534  # the conventional unprivileged uid

PERSON = 'Alice'  # the identity folder holding most cases
UNICODE_PERSON = 'Zoë Ñúñez  名前 (copy 2)'

# Outcomes: ('detected', ''), ('center', reason), ('skip', reason) for a no-face skip, ('bad', reason) for a
# file that could not be decoded; reasons are substrings of the recorded text.
DETECTED = ('detected', '')


def build_corpus(lfw: pathlib.Path, root: pathlib.Path, *, unreadable: bool) -> Dict[str, Tuple[str, str]]:
  """Writes the bad-input folder under `root`; returns image id -> expected outcome with the default aligner."""
  (name_a, files_a), (name_b, files_b) = fixtures.lfw_people_with(lfw, min_images=4, count=2)
  src = [lfw / name_a / f for f in files_a[:4]]
  a = root / PERSON
  a.mkdir(parents=True)
  expected = {}

  def case(stem, outcome):
    expected[f'{PERSON}/{stem}'] = outcome

  shutil.copyfile(src[0], a / 'normal.jpg')
  case('normal', DETECTED)
  # A thumbnail below MTCNN's min_face_size (20): facenet-pytorch's detect_face fails on it.
  with Image.open(src[1]) as img:
    img.resize((12, 12), Image.BILINEAR).save(a / 'tiny.jpg')
  case('tiny', ('center', '12x12 image is smaller than min_face_size=20'))
  fixtures.write_zero_byte(a / 'empty.jpg')
  case('empty', ('bad', 'file is empty (0 bytes)'))
  fixtures.write_truncated_jpeg(src[1], a / 'truncated.jpg')
  case('truncated', ('bad', 'corrupt or truncated image data'))
  fixtures.write_text_as_jpg(a / 'text.jpg')
  case('text', ('bad', 'not a recognised image file'))
  fixtures.write_converted(src[1], a / 'cmyk.jpg', 'CMYK')
  case('cmyk', DETECTED)
  fixtures.write_rgba_png(src[2], a / 'rgba.png')
  case('rgba', DETECTED)
  fixtures.write_16bit_png(src[2], a / 'gray16.png')
  case('gray16', DETECTED)
  fixtures.write_converted(src[3], a / 'gray.pgm', 'L')
  case('gray', DETECTED)
  with Image.open(src[3]) as img:
    img.resize((4000, 4000), Image.BILINEAR).save(a / 'huge.jpg', quality=90)
  case('huge', DETECTED)
  # MTCNN is trained on upright faces; a face turned on its side is not found.
  with Image.open(src[0]) as img:
    img.rotate(90, expand=True).save(a / 'rotated.jpg')
  case('rotated', ('center', 'no face found by MTCNN'))
  Image.fromarray(np.full((250, 250, 3), 128, np.uint8)).save(a / 'noface.jpg')
  case('noface', ('center', 'no face found by MTCNN'))
  os.symlink(src[1], a / 'link.jpg')
  case('link', DETECTED)
  os.symlink(root / 'nowhere.jpg', a / 'dangling.jpg')
  case('dangling', ('bad', 'broken symbolic link'))
  os.symlink(a / 'loop2.jpg', a / 'loop1.jpg')
  os.symlink(a / 'loop1.jpg', a / 'loop2.jpg')
  case('loop1', ('bad', 'symbolic link loop'))
  case('loop2', ('bad', 'symbolic link loop'))
  if unreadable:
    shutil.copyfile(src[2], a / 'unreadable.jpg')
    os.chmod(a / 'unreadable.jpg', 0)
    case('unreadable', ('bad', 'permission denied'))

  b = root / UNICODE_PERSON
  b.mkdir()
  for f in files_b[:2]:
    shutil.copyfile(lfw / name_b / f, b / f)
    expected[f'{UNICODE_PERSON}/{os.path.splitext(f)[0]}'] = DETECTED
  (b / 'nested' / 'deeper').mkdir(parents=True)
  shutil.copyfile(lfw / name_b / files_b[2], b / 'nested' / 'deeper' / files_b[2])
  shutil.copyfile(lfw / name_b / files_b[3], b / 'nested' / files_b[3])
  fixtures.make_empty_identity(root, 'Empty Person')
  shutil.copyfile(src[0], root / 'stray.jpg')
  return expected


def _embed(manual_dir: pathlib.Path, data_dir: pathlib.Path, *flags: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [
      sys.executable,
      '-m',
      'mir_jax.embed',
      '--dataset=folder',
      f'--manual_dir={manual_dir}',
      f'--data_dir={data_dir}',
      '--num_workers=0',
      *flags,
    ],
    capture_output=True,
    text=True,
    cwd=paths.repo_root(),
    timeout=900,
  )


def outcomes(directory: pathlib.Path) -> Dict[str, Tuple[str, str]]:
  """image id -> (path, reason) as the cache records it."""
  _, _, meta = reader.load_embeddings(directory)
  skipped = meta['info']['skipped']
  fallbacks = {b['image_id']: b for b in skipped['fallback_boxes']}
  out = {}
  for image_id, detected in zip(meta['image_ids'], meta['detected']):
    if detected:
      out[image_id] = DETECTED
    else:
      out[image_id] = (fallbacks[image_id]['box'], fallbacks[image_id]['reason'])
  for b in skipped['bad_images']:
    out[b['image_id']] = ('bad', b['reason'])
  for s in skipped['no_face_skips']:
    out[s['image_id']] = ('skip', s['reason'])
  return out


def assert_outcomes(got: Dict[str, Tuple[str, str]], expected: Dict[str, Tuple[str, str]]) -> None:
  assert sorted(got) == sorted(expected)
  wrong = {i: (got[i], want) for i, want in expected.items() if got[i][0] != want[0] or want[1] not in got[i][1]}
  assert not wrong, wrong


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  lfw = fixtures.require_lfw_images()
  base = tmp_path_factory.mktemp('own data')
  root = base / 'my photos'
  # The embed subprocess runs as this user: as root it would read a chmod 000 file, so the corpus then
  # leaves that file out and test_unreadable_file_is_a_recorded_bad_image checks it under another uid.
  expected = build_corpus(lfw, root, unreadable=not IS_ROOT)
  proc = _embed(root, base / 'cache')
  return root, base / 'cache', expected, proc


@needs_lfw
def test_every_file_is_embedded_fallen_back_or_skipped_with_its_reason(corpus):
  root, data_dir, expected, proc = corpus
  assert proc.returncode == 0, proc.stderr[-3000:]
  directory = lookup.find_cache('folder', 'dlib-resnet', data_dir=data_dir, manual_dir=root)
  assert_outcomes(outcomes(directory), expected)

  info = reader.read_info(directory)
  paths_taken = [o[0] for o in expected.values()]
  assert info['alignment'] == {
    'detected': paths_taken.count('detected'),
    'center': paths_taken.count('center'),
    'whole': 0,
    'skipped_no_face': 0,
    'unreadable': paths_taken.count('bad'),
  }
  assert sum(info['alignment'].values()) == info['num_records'] == len(expected)
  # The fallback box is the centre box of the image's own size, the tiny one's too.
  _, _, meta = reader.load_embeddings(directory)
  tiny = meta['image_ids'].index(f'{PERSON}/tiny')
  np.testing.assert_allclose(meta['boxes'][tiny], align.center_box((12, 12)), atol=1e-4)
  assert f'{paths_taken.count("detected")} detected' in proc.stdout

  # A rerun finds it complete.
  again = _embed(root, data_dir)
  assert again.returncode == 0 and '(already complete' in again.stdout, again.stderr[-3000:]


@needs_lfw
def test_the_reader_says_what_it_left_out(corpus):
  root = corpus[0]
  listing = folder.read_folder(root)
  unicode_dir = root / UNICODE_PERSON
  assert {s.where: s.reason for s in listing.skipped} == {
    str(root / 'Empty Person'): 'identity folder has no images (1 other entries)',
    str(unicode_dir / 'nested'): (
      f'subfolder inside identity folder {UNICODE_PERSON!r}: not read (the layout is <root>/<identity>/<image>)'
    ),
  }
  assert sorted(listing.ignored) == sorted([str(root / 'stray.jpg'), str(root / 'Empty Person' / 'README.txt')])
  # The cache records the same, so none of it vanishes once the logs are gone.
  root, data_dir, _, proc = corpus
  info = reader.read_info(lookup.find_cache('folder', 'dlib-resnet', data_dir=data_dir, manual_dir=root))
  recorded = {x['path']: x['reason'] for x in info['skipped']['left_out_by_reader']}
  assert recorded == {
    **{s.where: s.reason for s in listing.skipped},
    str(root / 'stray.jpg'): 'beside the identity folders, in none of them (the layout is <root>/<identity>/<image>)',
    str(root / 'Empty Person' / 'README.txt'): 'not an image file (by its extension)',
  }
  assert info['num_left_out_by_reader'] == len(recorded) == 4
  assert '4 entries the dataset reader left out' in proc.stdout


@needs_lfw
def test_unreadable_file_is_a_recorded_bad_image():
  # Root reads a chmod 000 file anyway, so as root the read runs under another effective uid (CI runs as
  # root); the directory is one that uid may enter, so what it meets is the file's own permission.
  directory = pathlib.Path(tempfile.mkdtemp())
  try:
    os.chmod(directory, 0o755)
    path = directory / 'unreadable.jpg'
    shutil.copyfile(fixtures.some_lfw_image(LFW_DIR), path)
    os.chmod(path, 0)
    if IS_ROOT:
      os.seteuid(NOBODY)
    try:
      with pytest.raises(images.ImageError, match='permission denied'):
        images.load_rgb(path)
    finally:
      if IS_ROOT:
        os.seteuid(0)
  finally:
    shutil.rmtree(directory)


@needs_lfw
def test_fallback_policies_and_precropped_faces_from_the_command_line(tmp_path):
  """Each aligner option names its own cache, and the cache records which path every image took."""
  lfw = fixtures.require_lfw_images()
  root = tmp_path / 'photos'
  (a, files_a), (b, files_b) = fixtures.lfw_people_with(lfw, min_images=2, count=2)
  for name, files in ((a, files_a), (b, files_b)):
    (root / name).mkdir(parents=True)
    for f in files[:2]:
      shutil.copyfile(lfw / name / f, root / name / f)
  Image.fromarray(np.full((100, 80, 3), 128, np.uint8)).save(root / a / 'blank.jpg')
  faces = sorted(f'{n}/{os.path.splitext(f)[0]}' for n, fs in ((a, files_a), (b, files_b)) for f in fs[:2])
  blank = f'{a}/blank'
  whole = ('whole', 'the whole image is the box')
  cases = [
    ([], {**{i: DETECTED for i in faces}, blank: ('center', 'no face found by MTCNN')}, {}),
    (
      ['--fallback=skip'],
      {**{i: DETECTED for i in faces}, blank: ('skip', 'no face found by MTCNN')},
      {'fallback': 'skip'},
    ),
    (
      ['--fallback=whole', '--min_face_size=30', '--thresholds=0.6,0.7,0.8'],
      {**{i: DETECTED for i in faces}, blank: ('whole', 'no face found by MTCNN')},
      {'fallback': 'whole', 'min_face_size': 30, 'thresholds': (0.6, 0.7, 0.8)},
    ),
    (['--faces=precropped'], {i: whole for i in [*faces, blank]}, {'faces': 'precropped'}),
  ]
  directories = set()
  for flags, expected, align_options in cases:
    proc = _embed(root, tmp_path / 'cache', *flags)
    assert proc.returncode == 0, proc.stderr[-3000:]
    directory = lookup.find_cache(
      'folder', 'dlib-resnet', data_dir=tmp_path / 'cache', manual_dir=root, align_options=align_options
    )
    assert_outcomes(outcomes(directory), expected)
    directories.add(directory)
  assert len(directories) == len(cases)
  # MTCNN settings mean nothing when no detector runs: refused, not silently ignored.
  proc = _embed(root, tmp_path / 'cache', '--faces=precropped', '--min_face_size=30')
  assert proc.returncode != 0 and 'min_face_size=30 would have no effect' in proc.stderr
