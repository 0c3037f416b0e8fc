"""YouTube Faces: the aligned frame tree and the `splits.txt` verification protocol.

Layout (as unpacked from the official YouTubeFaces archive; only these parts are read):

  <root>/aligned_images_DB/<Person>/<video_number>/aligned_detect_<video_number>.<frame>.jpg
  splits.txt   header line, then 5,000 rows `split, pair, Person/video, Person/video, same`
               (comma + space separated; split 1..10 and pair 1..500 numbered from 1; in each split
               250 rows with same=1 and 250 with same=0)

`<root>` may also be the `aligned_images_DB` folder itself. A video is `<Person>/<video_number>`.
Folds are numbered from 0 here: fold = split - 1.
"""

import dataclasses
import os
import pathlib
import re
from typing import Dict, Iterator, List, Optional, Tuple

from absl import logging

from mir_jax import images
from mir_jax.datasets.listing import DatasetError
from mir_jax.datasets.listing import Listing
from mir_jax.datasets.listing import Skipped
from mir_jax.datasets.records import FaceRecord

FRAMES_SUBDIR = 'aligned_images_DB'
NUM_FOLDS = 10
SAME_PER_FOLD = 250

_FRAME_RE = re.compile(r'^aligned_detect_(\d+)\.(\d+)\.jpg$', re.IGNORECASE)

_HELP = f"""\
  <root>/{FRAMES_SUBDIR}/<Person>/<video_number>/aligned_detect_<video_number>.<frame>.jpg
YouTube Faces (Wolf, Hassner, Maoz, CVPR 2011) is distributed by its authors on request
(https://www.cs.tau.ac.il/~wolf/ytfaces/); unpack YouTubeFaces and pass the folder holding
{FRAMES_SUBDIR} (or {FRAMES_SUBDIR} itself)."""


@dataclasses.dataclass(frozen=True)
class VideoPair:
  """One verification pair of videos (`<Person>/<video_number>`); fold counts from 0."""

  fold: int
  video_a: str
  video_b: str
  same: bool
  corrected: bool = False  # replaced by a row of an errata file (`read_splits(errata=...)`)


def frames_dir(root: images.PathLike) -> pathlib.Path:
  """The `aligned_images_DB` folder of a YTF root (or the root itself when it is that folder)."""
  root = pathlib.Path(root)
  return root if root.name == FRAMES_SUBDIR else root / FRAMES_SUBDIR


def read_ytf(root: images.PathLike, *, max_frames_per_video: Optional[int] = None) -> Listing[FaceRecord]:
  """Lists the aligned frames of every video, sorted by person, video number, frame number.

  Numbers sort numerically (frame 9 before frame 10), so `max_frames_per_video=100` keeps the first
  100 frames of each video, as FaceNet's YTF evaluation did.

  Args:
    root: the YTF root (holding `aligned_images_DB`) or `aligned_images_DB` itself.
    max_frames_per_video: keep at most this many leading frames per video; None keeps all.

  Returns:
    A listing of FaceRecord(identity=<Person>, video_id=<Person>/<video>,
    image_id=<Person>/<video>/aligned_detect_<video>.<frame>). Non-jpg files are `ignored`; folders
    with no usable frames and frames whose name or video number do not fit the layout are `skipped`.

  Raises:
    DatasetError: the frame folder is missing or holds no frames at all.
    ValueError: `max_frames_per_video` is not positive.
  """
  if max_frames_per_video is not None and max_frames_per_video < 1:
    raise ValueError(f'max_frames_per_video must be positive, got {max_frames_per_video}')
  base = frames_dir(root)
  if not base.is_dir():
    raise DatasetError(f'YouTube Faces frame folder {base} does not exist. Expected layout:\n{_HELP}')
  records, skipped, ignored = [], [], []
  for person in sorted(os.listdir(base)):
    person_dir = base / person
    if not person_dir.is_dir():
      ignored.append(str(person_dir.absolute()))
      continue
    videos = [v for v in os.listdir(person_dir) if (person_dir / v).is_dir()]
    ignored.extend(str((person_dir / v).absolute()) for v in sorted(os.listdir(person_dir)) if v not in videos)
    if not videos:
      skipped.append(Skipped(str(person_dir.absolute()), 'person folder has no video folders'))
      continue
    for video in sorted(videos, key=_numeric_first):
      frames = _frames_of_video(person_dir / video, video, skipped, ignored)
      if not frames:
        skipped.append(Skipped(str((person_dir / video).absolute()), 'video folder has no frames'))
        continue
      video_id = f'{person}/{video}'
      for _, name in frames[:max_frames_per_video]:
        records.append(
          FaceRecord(
            path=str((person_dir / video / name).absolute()),
            identity=person,
            image_id=f'{video_id}/{os.path.splitext(name)[0]}',
            video_id=video_id,
          )
        )
  for s in skipped:
    logging.warning('YTF: skipping %s: %s', s.where, s.reason)
  if not records:
    raise DatasetError(f'{base} holds no frames. Expected layout:\n{_HELP}')
  return Listing(records, skipped, ignored)


def _numeric_first(name: str) -> Tuple[int, object]:
  """Sort key placing numeric names in numeric order (before any non-numeric ones)."""
  return (0, int(name)) if name.isdigit() else (1, name)


def _frames_of_video(
  video_dir: pathlib.Path, video: str, skipped: List[Skipped], ignored: List[str]
) -> List[Tuple[int, str]]:
  """(frame number, file name) of a video's frames in numeric order; records what does not fit."""
  frames = []
  for name in os.listdir(video_dir):
    path = str((video_dir / name).absolute())
    if not images.is_image_file(name):
      ignored.append(path)
      continue
    match = _FRAME_RE.match(name)
    if not match:
      skipped.append(Skipped(path, 'frame name does not match aligned_detect_<video>.<frame>.jpg'))
    elif match.group(1) != video:
      skipped.append(Skipped(path, f'frame names video {match.group(1)} but lies in folder {video}'))
    else:
      frames.append((int(match.group(2)), name))
  return sorted(frames)


def read_splits(
  path: images.PathLike,
  *,
  root: Optional[images.PathLike] = None,
  skip_missing: bool = False,
  num_folds: Optional[int] = NUM_FOLDS,
  same_per_fold: Optional[int] = SAME_PER_FOLD,
  errata: Optional[images.PathLike] = None,
) -> Listing[VideoPair]:
  """Parses YTF's `splits.txt`, optionally corrected by an errata file.

  Always checked: five comma-separated fields per row; splits numbered 1..k without gaps; pair
  numbers 1..n in order within each split; same in {0, 1}; every split holding as many same as
  different pairs. By default also the official counts (10 splits x (250 + 250)); pass None to accept
  other counts (e.g. for a fixture).

  Args:
    path: the splits file.
    root: when given, every video of every pair must exist as a frame folder under this YTF root.
    skip_missing: with `root`, leave out (and record) pairs naming a missing video instead of raising.
    num_folds: the required number of splits, or None.
    same_per_fold: the required number of same (and of different) pairs per split, or None.
    errata: a file of corrected rows in splits.txt's own format (header line, then `split, pair,
      Person/video, Person/video, same`), e.g. a whole corrected splits.txt; each row replaces the row of
      `path` with the same split and pair numbers (its videos and label); a pair it changes is
      marked `corrected`. The counts are checked on `path` as it is; the videos (with `root`) after correction.

  Returns:
    A listing of VideoPair in file order (fold = split - 1).

  Raises:
    DatasetError: the file is missing or malformed, the counts are wrong, (without `skip_missing`) a
      video is missing under `root`, or an errata row is malformed, repeated or names a pair `path` lacks.
  """
  path = pathlib.Path(path)
  corrections = {} if errata is None else _errata_rows(pathlib.Path(errata))
  pairs, skipped = [], []
  per_fold: Dict[int, List[int]] = {}  # split -> [same count, different count]
  for line_no, text, (split, pair_no, video_a, video_b, same) in _rows(path):
    if split not in per_fold:
      if split != len(per_fold) + 1:
        raise DatasetError(
          f'{path}:{line_no}: split {split} follows split {len(per_fold)}; splits must run 1, 2, ... in order'
        )
      per_fold[split] = [0, 0]
    counts = per_fold[split]
    if pair_no != sum(counts) + 1:
      raise DatasetError(f'{path}:{line_no}: pair number {pair_no} in split {split}, expected {sum(counts) + 1}')
    counts[0 if same else 1] += 1
    corrected = False
    if (split, pair_no) in corrections:
      _, fixed_text, (_, _, *fixed) = corrections.pop((split, pair_no))
      corrected = tuple(fixed) != (video_a, video_b, same)
      if corrected:
        text, (video_a, video_b, same) = fixed_text, fixed
    if root is not None:
      missing = [v for v in (video_a, video_b) if not (frames_dir(root) / v).is_dir()]
      if missing:
        reason = f'pair {text.strip()!r} names videos missing under {frames_dir(root)}: {missing}'
        if not skip_missing:
          raise DatasetError(f'{path}:{line_no}: {reason}')
        skipped.append(Skipped(f'{path}:{line_no}', reason))
        continue
    pairs.append(VideoPair(split - 1, video_a, video_b, bool(same), corrected))
  if not per_fold:
    raise DatasetError(f'{path}: no pair rows after the header')
  if corrections:
    line_no, text, _ = next(iter(corrections.values()))
    raise DatasetError(f'{errata}:{line_no}: no row of {path} has this split and pair number: {text!r}')
  if num_folds is not None and len(per_fold) != num_folds:
    raise DatasetError(f'{path}: {len(per_fold)} splits, expected {num_folds}')
  for split, (n_same, n_diff) in per_fold.items():
    want = same_per_fold if same_per_fold is not None else n_same
    if n_same != want or n_diff != want:
      raise DatasetError(
        f'{path}: split {split} has {n_same} same and {n_diff} different pairs, expected {want} of each'
      )
  return Listing(pairs, skipped)


_Row = Tuple[int, int, str, str, int]  # split, pair, video_a, video_b, same


def _rows(path: pathlib.Path) -> Iterator[Tuple[int, str, _Row]]:
  """(line number, text, parsed fields) of every pair row of a splits.txt-format file, checked one by one."""
  if not path.is_file():
    raise DatasetError(
      f'YTF protocol file {path} does not exist; it ships with YouTube Faces as '
      'splits.txt (header line, then `split, pair, Person/video, Person/video, same`).'
    )
  lines = path.read_text().splitlines()
  if not lines or lines[0].split(',')[0].strip().isdigit():
    raise DatasetError(
      f'{path}:1: expected a header line (`split number, pair number in split, first name, second name, is same:`)'
    )
  for line_no, text in enumerate(lines[1:], 2):
    if not text.strip():
      continue
    fields = [f.strip() for f in text.split(',')]
    if len(fields) != 5:
      raise DatasetError(f'{path}:{line_no}: expected 5 comma-separated fields, got {text!r}')
    try:
      split, pair_no, same = int(fields[0]), int(fields[1]), int(fields[4])
    except ValueError:
      raise DatasetError(f'{path}:{line_no}: split, pair and same must be integers: {text!r}') from None
    for v in (fields[2], fields[3]):
      if v.count('/') != 1 or not all(v.split('/')):
        raise DatasetError(f'{path}:{line_no}: video {v!r} is not `Person/video_number`')
    if same not in (0, 1):
      raise DatasetError(f'{path}:{line_no}: same must be 0 or 1, got {fields[4]!r}')
    yield line_no, text, (split, pair_no, fields[2], fields[3], same)


def _errata_rows(path: pathlib.Path) -> Dict[Tuple[int, int], Tuple[int, str, _Row]]:
  """An errata file's rows by (split, pair), each named once."""
  rows = {}
  for line_no, text, row in _rows(path):
    if row[:2] in rows:
      raise DatasetError(
        f'{path}:{line_no}: split {row[0]} pair {row[1]} is corrected twice (also line {rows[row[:2]][0]})'
      )
    rows[row[:2]] = (line_no, text, row)
  if not rows:
    raise DatasetError(f'{path}: no corrected rows after the header')
  return rows
