"""Builders of small test fixtures, made from real LFW images.

YouTube Faces frames and MegaFace images are not available offline, so their readers are tested on
trees laid out exactly like the official datasets but filled with copies of LFW deep-funneled images.
These are fixtures for exercising readers, never YTF or MegaFace data: nothing computed on them says
anything about those datasets. The bad-image builders derive each broken file from a real image, so
what breaks is exactly the property under test.
"""

import dataclasses
import functools
import json
import os
import pathlib
import shutil
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from mir_jax import paths

# Frame numbers in numeric order; their string order (10, 100, 1000, 9) differs, so a reader that
# sorts frame names as text lists them wrongly.
FIXTURE_FRAME_NUMBERS = (9, 10, 100, 1000)

MISSING_DATA_REASON = (
  f'shared face data not found at {paths.shared_data_location()} (set ${paths.ENV_VAR} to its location)'
)


def lfw_images_dir() -> Optional[pathlib.Path]:
  """The shared LFW deep-funneled tree, or None when the shared data is absent."""
  shared = paths.shared_data_dir()
  if shared is None or not (shared / 'lfw' / 'lfw-deepfunneled').is_dir():
    return None
  return shared / 'lfw' / 'lfw-deepfunneled'


def require_lfw_images() -> pathlib.Path:
  """The shared LFW tree, or a pytest skip saying where it was looked for."""
  import pytest  # pylint: disable=g-import-not-at-top

  lfw = lfw_images_dir()
  if lfw is None:
    pytest.skip(MISSING_DATA_REASON)
  return lfw


@functools.lru_cache(maxsize=None)
def _lfw_people(lfw_dir: pathlib.Path) -> Tuple[Tuple[str, Tuple[str, ...]], ...]:
  """(name, sorted jpg names) of every LFW person, sorted by name."""
  return tuple(
    (name, tuple(sorted(os.listdir(lfw_dir / name))))
    for name in sorted(os.listdir(lfw_dir))
    if (lfw_dir / name).is_dir()
  )


def lfw_people_with(
  lfw_dir: pathlib.Path, *, min_images: int, max_images: Optional[int] = None, count: int, skip: int = 0
) -> List[Tuple[str, Tuple[str, ...]]]:
  """The first `count` LFW people (by name, after `skip`) with an image count in range."""
  chosen = [
    (n, files)
    for n, files in _lfw_people(lfw_dir)
    if len(files) >= min_images and (max_images is None or len(files) <= max_images)
  ]
  if len(chosen) < skip + count:
    raise ValueError(f'LFW at {lfw_dir} has too few people with >= {min_images} images')
  return chosen[skip : skip + count]


def some_lfw_image(lfw_dir: pathlib.Path) -> pathlib.Path:
  """One real LFW jpg, the same every run."""
  name, files = _lfw_people(lfw_dir)[0]
  return lfw_dir / name / files[0]


@dataclasses.dataclass(frozen=True)
class YtfFixture:
  """A YTF-layout tree built from LFW images, with what a reader should find in it.

  Attributes:
    root: the folder holding `aligned_images_DB`.
    splits_path: a splits.txt in the official format naming the fixture's videos.
    frames: video id -> image ids of its frames in numeric frame order.
    pairs: (fold, video_a, video_b, same) as written to splits_path, fold counted from 0.
    num_folds: splits in splits_path.
    same_per_fold: same (and different) pairs per split.
  """

  root: pathlib.Path
  splits_path: pathlib.Path
  frames: Dict[str, List[str]]
  pairs: List[Tuple[int, str, str, bool]]
  num_folds: int
  same_per_fold: int


def build_ytf_fixture_from_lfw(
  lfw_dir: pathlib.Path, out_dir: pathlib.Path, *, num_people: int = 4, frames_per_video: int = 3
) -> YtfFixture:
  """Writes `<out_dir>/aligned_images_DB/<Person>/<video>/aligned_detect_<video>.<frame>.jpg`.

  People alternate between 2 and 3 videos; every frame is a distinct LFW image of that person, and
  frame numbers come from FIXTURE_FRAME_NUMBERS, so only a numeric sort lists them in order. The
  splits file has 2 folds x (2 same + 2 different) pairs.
  """
  if frames_per_video > len(FIXTURE_FRAME_NUMBERS):
    raise ValueError(f'frames_per_video must be <= {len(FIXTURE_FRAME_NUMBERS)}')
  people = lfw_people_with(lfw_dir, min_images=3 * frames_per_video, count=num_people)
  frames: Dict[str, List[str]] = {}
  videos_of: Dict[str, List[str]] = {}
  for p, (name, files) in enumerate(people):
    num_videos = 2 + p % 2
    videos_of[name] = []
    for v in range(num_videos):
      video_dir = out_dir / 'aligned_images_DB' / name / str(v)
      video_dir.mkdir(parents=True)
      video_id = f'{name}/{v}'
      videos_of[name].append(video_id)
      frames[video_id] = []
      for f in range(frames_per_video):
        stem = f'aligned_detect_{v}.{FIXTURE_FRAME_NUMBERS[f]}'
        shutil.copyfile(lfw_dir / name / files[v * frames_per_video + f], video_dir / f'{stem}.jpg')
        frames[video_id].append(f'{video_id}/{stem}')
  same = [(vs[i], vs[j]) for vs in videos_of.values() for i in range(len(vs)) for j in range(i + 1, len(vs))]
  names = list(videos_of)
  different = [(videos_of[a][0], videos_of[b][-1]) for a, b in zip(names, names[1:] + names[:1])]
  num_folds, same_per_fold = 2, 2
  if len(same) < num_folds * same_per_fold or len(different) < num_folds * same_per_fold:
    raise ValueError('too few people for the fixture splits; use num_people >= 4')
  pairs = []
  lines = ['split number, pair number in split, first name, second name, is same:']
  for fold in range(num_folds):
    chunk = slice(fold * same_per_fold, (fold + 1) * same_per_fold)
    rows = [(a, b, True) for a, b in same[chunk]] + [(a, b, False) for a, b in different[chunk]]
    for k, (a, b, is_same) in enumerate(rows, 1):
      lines.append(f'{fold + 1}, {k}, {a}, {b}, {int(is_same)}')
      pairs.append((fold, a, b, is_same))
  splits_path = out_dir / 'splits.txt'
  splits_path.write_text('\n'.join(lines) + '\n')
  return YtfFixture(out_dir, splits_path, frames, pairs, num_folds, same_per_fold)


@dataclasses.dataclass(frozen=True)
class MegafaceFixture:
  """A MegaFace-challenge-1-layout tree built from LFW images.

  Attributes:
    root: the MegaFace root (facescrub_images/, megaface_images/, devkit/templatelists/).
    probes: celebrity -> probe paths relative to facescrub_images, sorted.
    distractors: distractor paths relative to megaface_images, as listed for `set_size`.
    set_size: the distractor set size whose list file was written.
  """

  root: pathlib.Path
  probes: Dict[str, List[str]]
  distractors: List[str]
  set_size: int


def build_megaface_fixture_from_lfw(
  lfw_dir: pathlib.Path,
  out_dir: pathlib.Path,
  *,
  num_probe_identities: int = 3,
  images_per_probe: int = 3,
  set_size: int = 10,
  write_probe_list: bool = True,
) -> MegafaceFixture:
  """Writes probes (LFW people with several images) and distractors (single-image LFW people).

  Distractors go to `megaface_images/<NNN>/<NNNNN>@N00/<file>.jpg`, echoing MegaFace's nested Flickr
  folders, and are listed in `devkit/templatelists/megaface_features_list.json_<set_size>_1`; the probe
  list `facescrub_features_list.json` is written when `write_probe_list`.
  """
  probes: Dict[str, List[str]] = {}
  for name, files in lfw_people_with(lfw_dir, min_images=images_per_probe, count=num_probe_identities, skip=1):
    (out_dir / 'facescrub_images' / name).mkdir(parents=True)
    probes[name] = []
    for file in files[:images_per_probe]:
      shutil.copyfile(lfw_dir / name / file, out_dir / 'facescrub_images' / name / file)
      probes[name].append(f'{name}/{file}')
  distractors = []
  for i, (name, files) in enumerate(lfw_people_with(lfw_dir, min_images=1, max_images=1, count=set_size)):
    relative = f'{i // 4:03d}/{i:05d}@N00/{files[0]}'
    (out_dir / 'megaface_images' / relative).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(lfw_dir / name / files[0], out_dir / 'megaface_images' / relative)
    distractors.append(relative)
  lists = out_dir / 'devkit' / 'templatelists'
  lists.mkdir(parents=True)
  (lists / f'megaface_features_list.json_{set_size}_1').write_text(json.dumps({'path': distractors}))
  if write_probe_list:
    listed = [(n, p) for n, ps in probes.items() for p in ps]
    (lists / 'facescrub_features_list.json').write_text(
      json.dumps({'id': [n for n, _ in listed], 'path': [p for _, p in listed]})
    )
  return MegafaceFixture(out_dir, probes, distractors, set_size)


# Bad and unusual image files. Each writes `dst` and returns it.


def write_truncated_jpeg(src_jpg: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
  """The first half of a real JPEG: valid header, scan data cut off."""
  data = src_jpg.read_bytes()
  dst.write_bytes(data[: len(data) // 2])
  return dst


def write_corrupt_jpeg(src_jpg: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
  """A real JPEG whose quantisation-table segment length is broken (header parses, decode fails)."""
  data = bytearray(src_jpg.read_bytes())
  dqt = data.find(b'\xff\xdb')
  if dqt < 0:
    raise ValueError(f'{src_jpg} has no DQT segment')
  data[dqt + 2 : dqt + 4] = b'\x00\x01'
  dst.write_bytes(bytes(data))
  return dst


def write_garbage_after_jpeg_signature(src_jpg: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
  """The JPEG start-of-image marker followed by bytes that are not a JPEG header."""
  dst.write_bytes(src_jpg.read_bytes()[:3] + bytes(range(256)) * 4)
  return dst


def write_zero_byte(dst: pathlib.Path) -> pathlib.Path:
  dst.write_bytes(b'')
  return dst


def write_text_as_jpg(dst: pathlib.Path) -> pathlib.Path:
  """A text file with an image extension."""
  dst.write_text('this is not an image\n')
  return dst


def write_converted(src: pathlib.Path, dst: pathlib.Path, mode: str) -> pathlib.Path:
  """A real image converted to a Pillow mode (L, P, CMYK, ...) and saved in `dst`'s format."""
  with Image.open(src) as img:
    img.convert(mode).save(dst)
  return dst


def write_rgba_png(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
  """A real image with an alpha ramp across columns, 0 on the left to 255 on the right.

  The fully transparent left column stores pure white, so a loader that drops alpha instead of
  compositing shows it.
  """
  with Image.open(src) as img:
    rgba = np.asarray(img.convert('RGBA')).copy()
  width = rgba.shape[1]
  rgba[:, :, 3] = np.round(np.linspace(0, 255, width)).astype(np.uint8)[None, :]
  rgba[:, 0, :3] = 255
  Image.fromarray(rgba, 'RGBA').save(dst)
  return dst


def write_16bit_png(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
  """A real image as 16-bit grayscale (each 8-bit gray value g stored as g * 257)."""
  with Image.open(src) as img:
    gray = np.asarray(img.convert('L')).astype(np.uint16)
  Image.fromarray(gray * 257).save(dst)
  return dst


def make_empty_identity(root: pathlib.Path, name: str) -> pathlib.Path:
  """An identity folder holding no image, only a note (a non-image file)."""
  folder = root / name
  folder.mkdir(parents=True)
  (folder / 'README.txt').write_text('no images here\n')
  return folder


def write_pairs_with_missing_image(lfw_dir: pathlib.Path, dst: pathlib.Path) -> Tuple[pathlib.Path, int]:
  """A one-fold pairs file (`1 2`) whose second matched line names an image missing on disk.

  Returns:
    The file and the 1-based number of the bad line.
  """
  (a, a_files), (b, _) = lfw_people_with(lfw_dir, min_images=2, count=2)
  missing_number = len(a_files) + 1
  lines = ['1\t2', f'{a}\t1\t2', f'{a}\t1\t{missing_number}', f'{a}\t1\t{b}\t1', f'{a}\t2\t{b}\t2']
  dst.write_text('\n'.join(lines) + '\n')
  return dst, 3
