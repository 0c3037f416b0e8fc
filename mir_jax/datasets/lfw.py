"""Labeled Faces in the Wild: the image tree and the official protocol files.

Layout (the shared copy is `<shared data>/lfw/`):

  lfw-deepfunneled/<Name>/<Name>_<NNNN>.jpg    13,233 images of 5,749 people (any LFW variant works)
  protocol/pairs.txt                           View 2: `10 300`, then 10 folds x (300 `name i j`
                                               matched + 300 `name1 i name2 j` mismatched)
  protocol/pairsDevTrain.txt, pairsDevTest.txt View 1: `N`, then N matched + N mismatched lines
  protocol/people.txt                          View 2: `10`, then per fold `count` + count `name n`
  protocol/peopleDevTrain.txt, peopleDevTest.txt  View 1: `N`, then N `name n` lines

Folds are numbered from 0 here (the files do not number them); View 1 files are fold 0.
"""

import dataclasses
import os
import pathlib
from typing import List, Optional, Tuple

from mir_jax import images
from mir_jax.datasets import folder
from mir_jax.datasets.listing import DatasetError
from mir_jax.datasets.listing import Listing
from mir_jax.datasets.listing import Skipped
from mir_jax.datasets.records import FaceRecord

IMAGES_SUBDIR = 'lfw-deepfunneled'
PROTOCOL_SUBDIR = 'protocol'

_HELP = """\
  <images dir>/<Name>/<Name>_<NNNN>.jpg   e.g. lfw-deepfunneled/Aaron_Eckhart/Aaron_Eckhart_0001.jpg
Get LFW (deep-funneled images lfw-deepfunneled.tgz, plus pairs.txt and people.txt) from
https://vis-www.cs.umass.edu/lfw/ (mirror: github.com/umass-vis-lfw/umass-vis-lfw.github.io),
unpack it and pass the folder holding the per-person folders."""


@dataclasses.dataclass(frozen=True)
class Pair:
  """One verification pair; image ids are `<name>/<name>_<i:04d>` (the file path without `.jpg`)."""

  fold: int
  image_id_a: str
  image_id_b: str
  same: bool


@dataclasses.dataclass(frozen=True)
class Person:
  """One line of a people file: a person, the fold it belongs to, and its number of images."""

  fold: int
  name: str
  num_images: int


def image_id(name: str, number: int) -> str:
  """The image id LFW's protocol files mean by `name number` (numbers start at 1)."""
  return f'{name}/{name}_{number:04d}'


def image_path(images_dir: images.PathLike, image_id_: str) -> pathlib.Path:
  """The file of an LFW image id."""
  return pathlib.Path(images_dir) / f'{image_id_}.jpg'


def read_lfw(images_dir: images.PathLike) -> Listing[FaceRecord]:
  """Lists the LFW image tree (a folder per person), sorted; see `folder.read_folder`."""
  return folder.read_folder(images_dir, missing_help=_HELP)


def read_pairs(
  path: images.PathLike, *, images_dir: Optional[images.PathLike] = None, skip_missing: bool = False
) -> Listing[Pair]:
  """Parses pairs.txt (View 2) or pairsDevTrain/pairsDevTest.txt (View 1).

  The header decides the format: `folds n` (View 2) or `n` (View 1, one fold). Every fold must hold
  exactly n matched lines (`name i j`) followed by n mismatched lines (`name1 i name2 j`), and nothing
  may follow the last fold.

  Args:
    path: the pairs file.
    images_dir: when given, both images of every pair must exist in this LFW tree.
    skip_missing: with `images_dir`, leave out (and record in `skipped`) pairs naming a missing image
      instead of raising.

  Returns:
    A listing of Pair in file order.

  Raises:
    DatasetError: the file is missing, malformed, does not match its header's counts, or (without
      `skip_missing`) names an image missing from `images_dir`.
  """
  lines = _numbered_lines(path)
  header_no, header = lines[0]
  counts = _ints(header, path, header_no)
  if len(counts) == 2:
    num_folds, per_class = counts
  elif len(counts) == 1:
    num_folds, per_class = 1, counts[0]
  else:
    raise DatasetError(f'{path}:{header_no}: header should be `folds n` or `n`, got {header!r}')
  body = lines[1:]
  expected = num_folds * 2 * per_class
  if len(body) != expected:
    raise DatasetError(f'{path}: header {header!r} promises {expected} pair lines, found {len(body)}')
  pairs, skipped = [], []
  for k, (line_no, text) in enumerate(body):
    fold, same = k // (2 * per_class), (k % (2 * per_class)) < per_class
    fields = text.split()
    if same and len(fields) == 3:
      name, i, j = fields
      a, b = (image_id(name, n) for n in _ints(f'{i} {j}', path, line_no))
    elif not same and len(fields) == 4:
      name1, i, name2, j = fields
      n1, n2 = _ints(f'{i} {j}', path, line_no)
      a, b = image_id(name1, n1), image_id(name2, n2)
    else:
      want = 'matched `name i j`' if same else 'mismatched `name1 i name2 j`'
      raise DatasetError(f'{path}:{line_no}: fold {fold} expects a {want} line here, got {text!r}')
    if images_dir is not None:
      missing = [x for x in (a, b) if not image_path(images_dir, x).is_file()]
      if missing:
        where = f'{path}:{line_no}'
        reason = f'pair {text!r} names images missing on disk: ' + ', '.join(
          str(image_path(images_dir, x)) for x in missing
        )
        if not skip_missing:
          raise DatasetError(f'{where}: {reason}')
        skipped.append(Skipped(where, reason))
        continue
    pairs.append(Pair(fold, a, b, same))
  return Listing(pairs, skipped)


def read_people(
  path: images.PathLike, *, images_dir: Optional[images.PathLike] = None, skip_missing: bool = False
) -> Listing[Person]:
  """Parses people.txt (View 2, folds) or peopleDevTrain/peopleDevTest.txt (View 1).

  The first line is a count. In people.txt it counts folds and each fold starts with its own count
  line; in the View 1 files it counts people. The two are told apart by the second line: a lone
  number starts a fold.

  Args:
    path: the people file.
    images_dir: when given, every person's folder must hold exactly the listed number of images.
    skip_missing: with `images_dir`, leave out (and record) such people instead of raising.

  Returns:
    A listing of Person in file order.

  Raises:
    DatasetError: the file is missing, malformed, counts disagree, or (without `skip_missing`) a
      person's images do not match `images_dir`.
  """
  lines = _numbered_lines(path)
  folded = len(lines) > 1 and len(lines[1][1].split()) == 1
  pos = 0

  def take_count() -> int:
    nonlocal pos
    if pos >= len(lines):
      raise DatasetError(f'{path}: ended early, expected a count line')
    line_no, text = lines[pos]
    pos += 1
    (n,) = _ints(text, path, line_no, expect=1)
    return n

  num_groups = take_count() if folded else 1
  people, skipped = [], []
  for fold in range(num_groups):
    for _ in range(take_count()):
      if pos >= len(lines):
        raise DatasetError(f'{path}: ended early inside fold {fold}')
      line_no, text = lines[pos]
      pos += 1
      fields = text.split()
      if len(fields) != 2:
        raise DatasetError(f'{path}:{line_no}: expected `name count`, got {text!r}')
      (count,) = _ints(fields[1], path, line_no)
      person = Person(fold, fields[0], count)
      if images_dir is not None:
        reason = _people_mismatch(images_dir, person)
        if reason:
          if not skip_missing:
            raise DatasetError(f'{path}:{line_no}: {reason}')
          skipped.append(Skipped(f'{path}:{line_no}', reason))
          continue
      people.append(person)
  if pos != len(lines):
    raise DatasetError(f'{path}:{lines[pos][0]}: unexpected line after the last counted entry: {lines[pos][1]!r}')
  return Listing(people, skipped)


def _people_mismatch(images_dir: images.PathLike, person: Person) -> Optional[str]:
  """Why a people-file entry disagrees with the image tree, or None when it agrees."""
  person_dir = pathlib.Path(images_dir) / person.name
  if not person_dir.is_dir():
    return f'folder {person_dir} for {person.name} is missing'
  found = sum(1 for n in os.listdir(person_dir) if images.is_image_file(n))
  if found != person.num_images:
    return f'{person_dir} holds {found} images, the people file says {person.num_images}'
  return None


def _numbered_lines(path: images.PathLike) -> List[Tuple[int, str]]:
  """Non-blank lines of a protocol file with their 1-based line numbers."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise DatasetError(
      f'protocol file {path} does not exist. The LFW protocol files (pairs.txt, '
      'people.txt, pairsDevTrain.txt, ...) come from https://vis-www.cs.umass.edu/lfw/'
    )
  lines = [(n, t.strip()) for n, t in enumerate(path.read_text().splitlines(), 1) if t.strip()]
  if not lines:
    raise DatasetError(f'protocol file {path} is empty')
  return lines


def _ints(text: str, path, line_no: int, expect: Optional[int] = None) -> List[int]:
  """Whitespace-separated integers of a protocol line, or a DatasetError naming the line."""
  try:
    values = [int(t) for t in text.split()]
  except ValueError:
    raise DatasetError(f'{path}:{line_no}: expected integers, got {text!r}') from None
  if expect is not None and len(values) != expect:
    raise DatasetError(f'{path}:{line_no}: expected {expect} integer(s), got {text!r}')
  return values
